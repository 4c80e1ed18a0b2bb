"""Ray start-up and cluster checks, shared by ``curate score`` and ``curate train``.

One place decides how curate meets Ray: start a local cluster or join one (``init_ray``), read
what the cluster has (``cluster_resources``), refuse a plan it can never schedule
(``require_resources``), keep Ray Data quiet (``quiet_ray_data``) and name the real error behind
Ray's wrappers (``root_cause``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from curate import schema as S

log = logging.getLogger("curate")


def init_ray(num_cpus: int | None = None, address: str | None = None, object_store_memory: int | None = None) -> None:
    """Start (or connect to) Ray quietly; a no-op when Ray is already initialised.

    Args:
        num_cpus: CPUs of a new local cluster (``None``: all cores). Ignored with ``address``.
        address: an existing cluster (``auto`` for one started with ``ray start`` on this machine,
            ``ray://host:10001``); ``None`` starts a new local one unless ``RAY_ADDRESS`` is set
            (as ``ray job submit`` does), in which case ``num_cpus`` is ignored with a warning.
        object_store_memory: object store of a new local cluster, bytes (``None``: Ray's default,
            30% of memory). Ignored with ``address``.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None:
            log.warning("--num-cpus is ignored: connecting to the existing Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new local cluster, never one found through /tmp/ray/ray_current_cluster
        # (which `ray start` leaves behind, and a killed cluster leaves stale).
        # Keep idle workers for a minute instead of Ray's 1 s: on a small machine the churn of
        # killing and restarting task workers (each imports Ray and curate again) cost more CPU
        # than the job's decoding (benchmarks/scale_bench.py).
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                 _system_config={"idle_worker_killing_time_threshold_ms": 60_000}, **kwargs)


def joins_existing_cluster(address: str | None = None) -> bool:
    """True when ``init_ray(address=address)`` joins a cluster rather than starting one (it may
    autoscale, so a plan larger than today's cluster is a warning, not an error)."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


@dataclass(frozen=True)
class ClusterResources:
    """What a Ray cluster has now.

    Attributes:
        cpus: logical CPUs (Ray's ``CPU`` resource), all nodes.
        gpus: GPUs (Ray's ``GPU`` resource), all nodes.
        nodes: alive nodes.
        fixed: ``True`` for a local cluster started by curate (its size cannot change);
            ``False`` for a joined cluster, which may autoscale.
    """

    cpus: float
    gpus: float
    nodes: int = 1
    fixed: bool = True


def cluster_resources(fixed: bool = True) -> ClusterResources:
    """The resources of the Ray cluster this process is connected to (``ray.cluster_resources``)."""
    import ray

    have = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterResources(float(have.get("CPU", 0)), float(have.get("GPU", 0)), max(1, nodes), fixed)


def require_resources(who: str, need_cpu: float, need_gpu: float, strict: bool, cpu_what: str, cpu_fix: str,
                      gpu_fix: str, have: ClusterResources | None = None) -> None:
    """Raise (or, not ``strict``, warn) when the Ray cluster has fewer CPUs or GPUs than needed.

    Args:
        have: the cluster's resources (``None``: ask Ray).

    Raises:
        ValueError: ``who needs N CPUs (cpu_what) but the cluster has M; cpu_fix`` (and the GPU
            counterpart), when ``strict``.
    """
    have = have or cluster_resources()
    problems = []
    if need_cpu > have.cpus + 1e-9:
        problems.append(f"{need_cpu:g} CPUs ({cpu_what}) but the cluster has {have.cpus:g}; {cpu_fix}")
    if need_gpu > have.gpus + 1e-9:
        problems.append(f"{need_gpu:g} GPUs but the cluster has {have.gpus:g}; {gpu_fix}")
    if problems:
        msg = f"{who} needs " + "; and ".join(problems)
        if strict:
            raise ValueError(msg)
        log.warning("%s (continuing: the cluster may autoscale)", msg)


def quiet_ray_data() -> None:
    """Turn off Ray Data's own progress bars, start-up banner and issue detectors (curate draws
    its own progress bar and summary)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        ctx.issue_detectors_config.detectors = []
    except AttributeError:
        pass
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # We draw our own bar; Ray would warn that its own bars are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def root_cause(e: BaseException) -> str:
    """``"Type: message"`` of the innermost exception behind ``e`` (Ray wraps a task's own error in
    its own exceptions, whose last line is only a retry hint), first line of the message."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the task's own error here
        inner = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)
        if inner is None:
            break
        e = inner
    lines = str(e).strip().splitlines()
    return S.cap_error(f"{type(e).__name__}: {lines[0] if lines else ''}", 500)
