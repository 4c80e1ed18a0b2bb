"""The score plan: stage declarations, sizing to the cluster, and the driver's books (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from curate import schema as S
from curate.models import resolve_pretrained
from curate.runtime import ClusterResources
from curate.scoring.config import PipelineConfig, config_from_dict, load_config
from curate.scoring.plan import StageChain, check_resources, fit_to_cluster, operators, stage_specs
from tests.conftest import REPO, SHARDS

TINY_W = resolve_pretrained("tiny", None)


def specs_for(cfg: PipelineConfig, cluster: ClusterResources):
    sized = fit_to_cluster(cfg, cluster)
    specs = {s.name: s for s in stage_specs(sized, TINY_W)}
    check_resources(list(specs.values()), sized.decode.num_cpus, cluster)
    return specs


def test_defaults_fit_a_two_core_laptop():
    specs = specs_for(PipelineConfig(), ClusterResources(cpus=2, gpus=0))
    for name in ("detect", "score"):
        s = specs[name]
        assert s.resources.actor and s.resources.gpus == 0
        assert s.min_actors == s.max_actors == 1
    # both pools and one task fit exactly in 2 CPUs
    assert specs["detect"].resources.cpus + specs["score"].resources.cpus + 0.25 <= 2 + 1e-9
    for name in ("language", "decode", "mask"):
        assert not specs[name].resources.actor


def test_defaults_grow_with_a_cpu_node():
    specs = specs_for(PipelineConfig(), ClusterResources(cpus=16, gpus=0))
    for name in ("detect", "score"):
        assert specs[name].resources.cpus == 1.0 and specs[name].min_actors == 1 and specs[name].max_actors == 7
    total = sum(specs[n].resources.cpus * specs[n].max_actors for n in ("detect", "score"))
    assert total + 0.25 <= 16


def test_defaults_use_every_gpu_of_an_8_gpu_node():
    specs = specs_for(PipelineConfig(), ClusterResources(cpus=128, gpus=8))
    for name in ("detect", "score"):
        s = specs[name]
        assert s.resources.gpus == 0.5 and s.max_actors == 8 and s.resources.cpus == 2.0
    assert sum(specs[n].resources.gpus * specs[n].max_actors for n in ("detect", "score")) == 8
    assert "1..8 actors x 2 CPU + 0.5 GPU" == specs["score"].describe()["runs_on"]


def test_a_joined_cluster_leaves_the_pools_uncapped_and_config_values_win():
    cfg = PipelineConfig()
    cfg.score.max_actors = 3
    cfg.detect.num_actors = 2
    cfg.detect.num_gpus = 0
    cfg.detect.num_cpus = 4
    specs = specs_for(cfg, ClusterResources(cpus=32, gpus=2, fixed=False))
    assert specs["score"].max_actors == 3 and specs["score"].resources.gpus == 0.5
    assert specs["detect"].min_actors == specs["detect"].max_actors == 2
    assert specs["detect"].resources.gpus == 0 and specs["detect"].resources.cpus == 4


def test_dbnet_without_a_cuda_provider_stays_on_cpus(monkeypatch):
    import curate.scoring.plan as plan

    monkeypatch.setattr(plan, "dbnet_has_gpu_provider", lambda: False)
    cfg = PipelineConfig()
    cfg.detect.detector = "dbnet"
    specs = specs_for(cfg, ClusterResources(cpus=16, gpus=1))
    assert specs["detect"].resources.gpus == 0 and specs["score"].resources.gpus == 0.5


def test_detector_none_holds_no_detect_actor():
    cfg = PipelineConfig()
    cfg.detect.detector = "none"
    specs = specs_for(cfg, ClusterResources(cpus=2, gpus=0))
    assert not specs["detect"].resources.actor
    assert specs["score"].resources.cpus == 1.0  # the whole pool budget goes to CLIP


def test_the_fingerprint_ignores_pool_sizes_but_not_the_detector():
    from curate.scoring.provenance import scoring_fingerprint

    a, b = PipelineConfig(), PipelineConfig()
    b.detect.num_actors, b.score.max_actors, b.score.num_gpus, b.detect.num_cpus = 4, 9, 1, 3
    assert scoring_fingerprint(a, TINY_W) == scoring_fingerprint(b, TINY_W)
    b.detect.detector = "none"
    assert scoring_fingerprint(b, TINY_W)["detect"] == {"detector": "none"}


def test_choices_are_validated_against_the_registries():
    from curate.models import PRECISIONS
    from curate.stages.detect import DETECTORS
    from curate.stages.mask import MASK_METHODS

    for section, key, registry in (("detect", "detector", DETECTORS), ("mask", "method", MASK_METHODS),
                                   ("score", "precision", PRECISIONS)):
        for name in registry:
            assert getattr(getattr(config_from_dict({section: {key: name}}), section), key) == name
        with pytest.raises(ValueError, match=f"{section}.{key} must be one of {', '.join(registry)}"):
            config_from_dict({section: {key: "bogus"}})


@pytest.mark.parametrize("embeddings", [False, True])
def test_each_stage_writes_what_it_declares_and_drops_the_rest(embeddings):
    from curate.scoring.records import records_to_batch, shard_record_list

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    cfg.score.embeddings = embeddings
    chain = StageChain(cfg, TINY_W)
    batch = records_to_batch(shard_record_list(str(SHARDS[0]))[:6])
    for spec, stage in zip(chain.specs, chain.stages):
        missing = [c for c in stage.reads if c not in batch]
        assert not missing, (spec.name, missing)
        from curate.scoring.plan import run_stage

        batch = run_stage(stage, spec, batch)
        assert all(c in batch for c in stage.writes), spec.name
        assert not any(c in batch for c in stage.drops), spec.name
    assert "image" not in batch and "masked_image" not in batch
    assert all(c in batch for c in S.EMBEDDING_COLUMNS) == embeddings


def test_detector_none_gives_clip_scores_only():
    from curate.scoring.records import records_to_batch, shard_record_list

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "none"
    out = StageChain(cfg, TINY_W)(records_to_batch(shard_record_list(str(SHARDS[0]))[:8]))
    ok = out[S.STATUS] == S.STATUS_OK
    assert ok.sum() >= 6
    assert (np.asarray(out[S.NUM_TEXT_BOXES])[ok] == 0).all()
    np.testing.assert_array_equal(out[S.CLIP_SCORE][ok], out[S.MASKED_CLIP_SCORE][ok])
    assert (np.asarray(out[S.TEXT_AREA_FRAC])[ok] == 0).all()


def test_the_python_api_rejects_unknown_settings(tmp_path):
    import curate

    with pytest.raises(ValueError, match="unknown setting"):
        curate.score(str(SHARDS[0]), tmp_path, detect__no_such_key=1)
    with pytest.raises(ValueError, match="detect.batch_size"):
        curate.score(str(SHARDS[0]), tmp_path, detect__batch_size="big")


def test_the_plan_checks_what_each_stage_reads_against_what_came_before():
    """The stage declarations are what the plan reads (issue 30): a stage that reads a column no
    record or earlier stage gives, or one an earlier stage dropped, is refused when the plan is
    built, naming the stage."""
    from dataclasses import replace

    from curate.io.samples import RECORD_COLUMNS, sample_to_record
    from curate.scoring.plan import check_chain
    from curate.stages.base import Stage

    cfg = fit_to_cluster(load_config(REPO / "pipelines" / "tiny_cpu.yaml"), ClusterResources(cpus=2.0, gpus=0.0))
    specs = stage_specs(cfg, TINY_W)  # the real chain passes (stage_specs runs check_chain)
    assert tuple(sample_to_record({"__key__": "k", "__url__": "u.tar"})) == RECORD_COLUMNS

    class ReadsNothingGiven(Stage):
        name = "bogus"
        reads = (S.STATUS, "no_such_column")

    class ReadsTheDroppedImage(Stage):
        name = "late"
        reads = (S.STATUS, S.IMAGE)  # the score stage drops the decoded images

    with pytest.raises(ValueError, match=r"stage bogus reads \['no_such_column'\]"):
        check_chain([*specs[:2], replace(specs[2], name="bogus", cls=ReadsNothingGiven), *specs[3:]])
    with pytest.raises(ValueError, match=r"stage late reads \['image'\]"):
        check_chain([*specs, replace(specs[-1], name="late", cls=ReadsTheDroppedImage)])


def test_cpu_operators_take_each_block_and_gpu_operators_gather_their_batch():
    """Issue 31: on CPUs an operator takes each block (cut to the plan's smallest batch) as it
    comes, so the first samples are not held back until a larger batch fills; on a GPU the
    operator gathers its own batch size (Ray Data requires one with GPUs)."""
    cpu = operators(list(specs_for(load_config(REPO / "pipelines" / "tiny_cpu.yaml"),
                                   ClusterResources(cpus=2, gpus=0)).values()))
    assert [op.name for op in cpu] == ["language+decode+detect+mask", "score"]
    assert all(op.ray_args()["batch_size"] is None for op in cpu)
    cpu[0].blocks_cut = False  # a Ray Data that could not cut the read's blocks: batches as configured
    assert cpu[0].ray_args()["batch_size"] == 8
    gpu = operators(list(specs_for(PipelineConfig(), ClusterResources(cpus=32, gpus=2)).values()))
    sizes = {op.name: op.ray_args()["batch_size"] for op in gpu}
    assert sizes["score"] == PipelineConfig().score.batch_size and sizes["detect"] == PipelineConfig().detect.batch_size
    assert sizes["decode"] is None  # a CPU task between GPU operators takes each block
