"""The score plan: declared stages, sized to the cluster, turned into one Ray Data pipeline.

::

    from_items(shard_items(URLs))                 one row per shard (the first shard: two ranges)
      .map_batches(read_shard_batches) tasks      one record per sample (bytes, caption, uid),
      .repartition(rows)                          cut to the smallest batch (fused with the read)
      for each StageSpec (one loop):
        .map_batches(stage)           tasks       language, decode, mask (fused by Ray Data)
                                      actors      detect, score (autoscaling pools, GPUs if any)
      (the last stage's workers)                  part files of each shard, where the rows are

The stages declare their columns, default resources and batch size (``curate.stages.base``);
``stage_specs`` binds them to a config, ``fit_to_cluster`` fills in every resource left to
``auto``, and ``check_resources`` derives what the plan needs from the same specs. Ray Data
streams blocks through the operators with back-pressure, so CPU decoding overlaps model work.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from curate.models import ResolvedWeights
from curate.runtime import ClusterResources, require_resources
from curate.scoring.config import ActorPoolConfig, PipelineConfig, draft_sizes
from curate.stages.base import Resources, Stage
from curate.stages.common import batch_len

log = logging.getLogger("curate")

BUSY_PREFIX = "_busy_"  # per-row share of the seconds a stage spent on the row's batch
DONE_AT = "_done_at"  # wall-clock time (Unix seconds) the row's last stage so far finished its batch

# Share of a GPU per detect / score actor when GPUs are found: one of each per GPU.
GPU_SHARE = 0.5
# CPUs per GPU actor at most (it feeds the GPU; decoding runs in separate tasks).
GPU_ACTOR_CPUS = 2.0


@dataclass
class StageSpec:
    """One stage of the plan, bound to its settings and resources.

    Attributes:
        name: the stage's name (``Stage.name``).
        cls: the ``Stage`` subclass; ``cls(**kwargs)`` builds it inside the worker.
        kwargs: constructor arguments (picklable: sent to every worker).
        resources: what one worker reserves (``Resources``).
        batch_size: samples per batch.
        min_actors, max_actors: actor pool bounds (``ActorPoolStrategy(min_size, max_size)``;
            equal for a fixed pool; ``max_actors`` ``None`` means no cap, for a cluster that
            autoscales). Ignored for task stages.
    """

    name: str
    cls: type[Stage]
    kwargs: dict[str, Any] = field(default_factory=dict)
    resources: Resources = Resources()
    batch_size: int = 32
    min_actors: int = 1
    max_actors: int | None = 1

    def build(self) -> Stage:
        """The stage object (loads its model)."""
        return self.cls(**self.kwargs)

    def describe(self) -> dict[str, Any]:
        """Where and how the stage runs, for the summary: ``name``, ``runs_on`` (text),
        ``cpus``, ``gpus``, ``batch_size``, ``min_actors``, ``max_actors``."""
        r = self.resources
        where = f"{r.cpus:g} CPU" + (f" + {r.gpus:g} GPU" if r.gpus else "")
        if r.actor:
            pool = (f"{self.min_actors}" if self.min_actors == self.max_actors
                    else f"{self.min_actors}..{self.max_actors if self.max_actors is not None else 'auto'}")
            runs_on = f"{pool} actor{'' if pool == '1' else 's'} x {where}"
        else:
            runs_on = f"tasks x {where}"
        return {"name": self.name, "runs_on": runs_on, "cpus": r.cpus, "gpus": r.gpus, "actor": r.actor,
                "batch_size": self.batch_size, "min_actors": self.min_actors if r.actor else None,
                "max_actors": self.max_actors if r.actor else None}


def run_stage(stage: Stage, spec: StageSpec, batch: dict[str, np.ndarray], guard: GuardSettings | None = None
              ) -> dict[str, np.ndarray]:
    """Run one stage on a batch (with its per-row fault isolation), drop the columns it declares
    dropped, and add ``_busy_<name>`` (float64 seconds: the batch's time shared equally by its
    rows) so the writer can sum each stage's busy time, and ``_done_at`` (when the batch left
    the stage) so the driver learns when the first samples came through the whole plan.

    With ``guard``, the call runs under ``curate.guard.StageGuard`` (the worker ends past
    the time or memory limit) after the injected faults of this stage, if any, fire.
    """
    t0 = time.perf_counter()
    if guard is None:
        out = stage(batch)
    else:
        from curate.guard import StageGuard, inject

        with StageGuard(f"{spec.name} on {batch_len(batch)} sample(s)", guard.timeout_s, guard.memory_mb):
            inject(guard.faults, spec.name, batch)
            out = stage(batch)
    for name in stage.drops:
        out.pop(name, None)
    n = batch_len(out)
    out[BUSY_PREFIX + spec.name] = np.full(n, (time.perf_counter() - t0) / max(n, 1), dtype=np.float64)
    out[DONE_AT] = np.full(n, time.time(), dtype=np.float64)
    return out


@dataclass(frozen=True)
class GuardSettings:
    """What guards each stage call in the workers (``curate.guard``).

    Attributes:
        timeout_s: seconds one call may run (``limits.batch_timeout_s``; 0: no limit).
        memory_mb: MB of resident-memory growth one call may cause (``limits.worker_memory_mb``).
        faults: injected faults (``CURATE_FAULTS``, read by the driver).
    """

    timeout_s: float = 0.0
    memory_mb: int = 0
    faults: tuple = ()

    @classmethod
    def of(cls, limits, faults: tuple = ()) -> GuardSettings:
        """From a ``curate.limits.Limits`` and the faults."""
        return cls(float(limits.batch_timeout_s), int(limits.worker_memory_mb), tuple(faults))


@dataclass
class Operator:
    """One Ray Data operator of the plan: stage specs run back to back in the same worker.

    Attributes:
        specs: the stages, in order; at most one holds a model (``resources.actor``), and its
            resources and batch size are the operator's.
        write_to: the score-index folder when this is the plan's last operator: its workers
            write their rows as part files and hand on part records (``curate.scoring.writer``),
            so no further operator (and no copy of the rows) is needed.
        guard: time and memory limits of each stage call, and injected faults (``None``: none).
        retries: how many more times Ray runs a batch whose worker died (``limits.worker_retries``:
            Ray's ``max_retries`` for tasks, ``max_task_retries`` for actors, whose restarts
            are then unbounded since each is paid by a bounded retry).
        blocks_cut: the plan's blocks are cut to its smallest batch (``build_dataset``), so a
            CPU operator may take each block as its batch (``ray_args``).
    """

    specs: list[StageSpec]
    write_to: str | None = None
    guard: GuardSettings | None = None
    retries: int = 1
    blocks_cut: bool = True

    @property
    def head(self) -> StageSpec:
        """The spec whose resources the operator takes: its actor stage, else its first."""
        return next((s for s in self.specs if s.resources.actor), self.specs[0])

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.specs)

    def ray_args(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.data.Dataset.map_batches`` for this operator."""
        import ray

        head = self.head
        # An operator on CPUs takes each block as it comes (the read's blocks are cut to the
        # plan's smallest batch, ``build_dataset``): bundling blocks up to a larger batch would
        # hold the first samples back until the stage before had run that many (the demo's
        # score waited for a second detect batch), and a CPU model's per-sample cost does not
        # depend on the batch size (``benchmarks/startup_bench.py``). A GPU operator gathers
        # its full batch (Ray Data requires a batch size with GPUs, and a GPU wants full ones).
        batch = head.batch_size if head.resources.gpus or not self.blocks_cut else None
        args: dict[str, Any] = {"batch_size": batch, "batch_format": "numpy", "num_cpus": head.resources.cpus}
        # Bounded retries (Ray Data's defaults retry a worker death forever, and a sample that
        # kills its worker kills every retry): see docs/architecture.md, "Worker deaths".
        if head.resources.actor:
            args.update(max_restarts=-1, max_task_retries=self.retries)
        else:
            args.update(max_retries=self.retries)
        if head.resources.gpus:
            args["num_gpus"] = head.resources.gpus
        if head.resources.actor:
            pool = (ray.data.ActorPoolStrategy(size=head.min_actors) if head.min_actors == head.max_actors
                    else ray.data.ActorPoolStrategy(min_size=head.min_actors, max_size=head.max_actors))
            args.update(fn=StageActor, fn_constructor_kwargs={"op": self}, compute=pool)
        else:
            args.update(fn=run_task_stage, fn_kwargs={"op": self})
        return args

    def describe(self) -> list[dict[str, Any]]:
        """``StageSpec.describe()`` of each stage, as placed: a stage taken into an actor runs on
        that actor (``runs_on`` says so; its resources are the actor's)."""
        head = self.head.describe()
        out = []
        for spec in self.specs:
            d = spec.describe()
            if spec is not self.head:
                d.update(runs_on=f"in {self.head.name}'s workers", cpus=head["cpus"], gpus=head["gpus"],
                         actor=head["actor"], min_actors=head["min_actors"], max_actors=head["max_actors"])
            out.append(d)
        return out

    def run(self, stages: list[Stage], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the operator's stages (built from ``specs``) on a batch; write parts if last."""
        for spec, stage in zip(self.specs, stages):
            batch = run_stage(stage, spec, batch, self.guard)
        if self.write_to is not None:
            from curate.scoring.writer import write_parts

            return write_parts(batch, self.write_to)
        return batch


def operators(specs: list[StageSpec]) -> list[Operator]:
    """Group the specs into Ray Data operators (the plan's one loop runs over these).

    Rule: an actor stage on CPUs only takes in the stateless task stages next to it (those
    before it back to the previous actor, those after it up to the next actor), so that decoded
    and masked images do not cross between processes (each crossing converts them to Arrow and
    back: measured about 30% of the CPU of a 2-core run, ``benchmarks/scale_bench.py``); its
    actors then scale them with it. An actor on a GPU takes in none: the CPU stages keep running
    in parallel tasks, so that the GPU never waits for decoding or masking.
    """
    ops: list[list[StageSpec]] = []
    pending: list[StageSpec] = []  # task stages not yet placed
    for spec in specs:
        if not spec.resources.actor:
            if ops and _absorbs(ops[-1]) and not pending:
                ops[-1].append(spec)  # after a CPU actor, up to the next actor
            else:
                pending.append(spec)
            continue
        if spec.resources.gpus == 0:
            ops.append(pending + [spec])
        else:
            ops.extend([[t] for t in pending])
            ops.append([spec])
        pending = []
    ops.extend([[t] for t in pending])
    return [Operator(group) for group in ops]


def _absorbs(group: list[StageSpec]) -> bool:
    return any(s.resources.actor and s.resources.gpus == 0 for s in group)


_TASK_STAGES: dict[int, list[Stage]] = {}


def run_task_stage(batch: dict[str, np.ndarray], op: Operator) -> dict[str, np.ndarray]:
    """Ray Data function of a task operator: its stages are built once per worker process."""
    key = hash(tuple((s.name, repr(sorted(s.kwargs.items()))) for s in op.specs))
    stages = _TASK_STAGES.get(key)
    if stages is None:
        stages = _TASK_STAGES[key] = [spec.build() for spec in op.specs]
    return op.run(stages, batch)


class StageActor:
    """Ray Data callable class of an actor operator: builds its stages (loads the model) once."""

    def __init__(self, op: Operator):
        self.op = op
        self.stages = [spec.build() for spec in op.specs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.op.run(self.stages, batch)


# --------------------------------------------------------------------------- sizing


def dbnet_has_gpu_provider() -> bool:
    """True when onnxruntime here has the CUDA execution provider (``onnxruntime-gpu``); DBNet on
    a GPU actor without it would run on the CPU while holding the GPU."""
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:
        return False


def fit_to_cluster(cfg: PipelineConfig, cluster: ClusterResources) -> PipelineConfig:
    """A copy of ``cfg`` with every resource left to ``auto`` (``None``) sized to ``cluster``.

    Rules (a value set in the config or by a flag is kept as it is):

    - GPUs found: detect and score actors take ``GPU_SHARE`` (0.5) of a GPU each, so one of each
      shares every GPU, with up to ``GPU_ACTOR_CPUS`` CPUs each from what the tasks leave; each
      pool may grow to one actor per GPU. Precision ``auto`` is bf16 autocast on CUDA
      (``curate.stages.score``). DBNet stays on CPUs when onnxruntime has no CUDA provider
      (install ``onnxruntime-gpu``), with a warning.
    - No GPUs: the CPUs left after one read/decode/mask task are split evenly between the pools,
      at most one CPU per actor; each pool may grow to its half of them.
    - ``detect.detector: none``: no detect actors (no model); its stage runs as a task.
    - A joined cluster (``cluster.fixed`` false) may autoscale: pools have no upper bound
      unless ``max_actors`` is set; Ray Data grows them as nodes arrive.

    Raises nothing; ``check_resources`` refuses a plan that cannot start.
    """
    cfg = copy.deepcopy(cfg)
    task_cpus = max(cfg.read.num_cpus, cfg.decode.num_cpus, cfg.mask.num_cpus)
    pools: list[ActorPoolConfig] = [cfg.score] if cfg.detect.detector == "none" else [cfg.detect, cfg.score]
    if cfg.detect.detector == "none":
        cfg.detect.num_gpus, cfg.detect.num_cpus = 0.0, cfg.decode.num_cpus
        cfg.detect.num_actors, cfg.detect.max_actors = None, None
    on_gpu = []
    for pool in pools:
        if pool.num_gpus is None:
            wants = cluster.gpus > 0
            if wants and pool is cfg.detect and cfg.detect.detector == "dbnet" and not dbnet_has_gpu_provider():
                log.warning("detect: DBNet stays on CPUs: onnxruntime here has no CUDAExecutionProvider "
                            "(pip install onnxruntime-gpu for GPU detection)")
                wants = False
            pool.num_gpus = GPU_SHARE if wants else 0.0
        if pool.num_gpus > 0:
            on_gpu.append(pool)
    cpu_pools = [p for p in pools if p.num_gpus == 0]
    free = max(cluster.cpus - task_cpus, 0.0)
    # GPU pools: one actor per 1/num_gpus GPUs of the pool's share of the cluster's GPUs.
    for pool in on_gpu:
        share = cluster.gpus / len(on_gpu)
        fits = max(1, int(math.floor(share / pool.num_gpus + 1e-9)))
        _set_bounds(pool, fits, cluster.fixed)
    gpu_actor_cap = sum(_cap(p) for p in on_gpu)
    for pool in on_gpu:
        if pool.num_cpus is None:
            cpus = free / max(gpu_actor_cap + len(cpu_pools), 1) if free else 0.25
            pool.num_cpus = round(max(min(GPU_ACTOR_CPUS, cpus), 0.1), 3)
    left = free - sum(p.num_cpus * _cap(p) for p in on_gpu)
    for pool in cpu_pools:
        part = max(left, 0.0) / len(cpu_pools)
        if pool.num_cpus is None:
            pool.num_cpus = round(max(min(1.0, part), 0.1), 3)
        _set_bounds(pool, max(1, int(math.floor(part / pool.num_cpus + 1e-9))), cluster.fixed)
    return cfg


def _cap(pool: ActorPoolConfig) -> int:
    """The pool's largest size as planned (min_actors when it has no cap)."""
    if pool.num_actors is not None:
        return pool.num_actors
    return pool.max_actors if pool.max_actors is not None else pool.min_actors


def _set_bounds(pool: ActorPoolConfig, fits: int, fixed: bool) -> None:
    if pool.num_actors is not None:
        return
    if pool.max_actors is None and fixed:
        pool.max_actors = max(pool.min_actors, fits)


# --------------------------------------------------------------------------- specs


def stage_specs(cfg: PipelineConfig, weights: ResolvedWeights) -> list[StageSpec]:
    """The declared stages of ``curate score`` bound to ``cfg`` (already ``fit_to_cluster``-ed,
    or with every resource set), in plan order: language, decode, detect, mask, score.

    Raises:
        ValueError: a resource is still ``auto`` (call ``fit_to_cluster`` first).
    """
    from curate.models import clip_input_size
    from curate.stages.decode import Decode
    from curate.stages.detect import Detect
    from curate.stages.language import CaptionLanguage
    from curate.stages.mask import Mask
    from curate.stages.score import Score

    for section in ("detect", "score"):
        pool = getattr(cfg, section)
        if pool.num_cpus is None or pool.num_gpus is None:
            raise ValueError(f"{section}: resources not sized; call fit_to_cluster(cfg, cluster) first")

    def pool_spec(name, cls, kwargs, pool: ActorPoolConfig) -> StageSpec:
        lo = pool.num_actors if pool.num_actors is not None else pool.min_actors
        hi = pool.num_actors if pool.num_actors is not None else pool.max_actors
        return StageSpec(name, cls, kwargs, replace(cls.resources, cpus=pool.num_cpus, gpus=pool.num_gpus),
                         pool.batch_size, lo, hi)

    task = Resources(cpus=cfg.decode.num_cpus)
    specs = [
        StageSpec("language", CaptionLanguage, {}, task, cfg.decode.batch_size),
        StageSpec("decode", Decode, {"max_pixels": cfg.decode.max_pixels, "background": tuple(cfg.decode.background),
                                     "hashes": cfg.score.embeddings, **draft_sizes(cfg),
                                     # the resizes that follow decode: CLIP's shortest side, the detector's long side
                                     "limits": cfg.limits, "resize_short": clip_input_size(cfg.score.clip_model),
                                     "resize_long": None if cfg.detect.detector == "none" else cfg.detect.long_side},
                  task, cfg.decode.batch_size),
    ]
    if cfg.detect.detector == "none":  # no model: a task, no actor to hold
        specs.append(StageSpec("detect", Detect, {"detector": "none"}, task, cfg.detect.batch_size))
    else:
        specs.append(pool_spec("detect", Detect, cfg.detect.stage_kwargs(), cfg.detect))
    specs.append(StageSpec("mask", Mask, {"method": cfg.mask.method, "ring_px": cfg.mask.ring_px,
                                          "inpaint_radius": cfg.mask.inpaint_radius},
                           Resources(cpus=cfg.mask.num_cpus), cfg.detect.batch_size))
    specs.append(pool_spec("score", Score, {"weights": weights, **cfg.score.stage_kwargs(), "limits": cfg.limits},
                           cfg.score))
    check_chain(specs)
    return specs


def check_chain(specs: list[StageSpec]) -> None:
    """Check the plan against the stages' declarations (``Stage.reads`` / ``writes`` / ``drops``):
    every column a stage reads is a record column (``curate.io.samples.RECORD_COLUMNS``) or one an
    earlier stage writes and no stage in between drops.

    Raises:
        ValueError: naming the stage and the columns nothing gives it.
    """
    from curate.io.samples import RECORD_COLUMNS

    have = set(RECORD_COLUMNS)
    for spec in specs:
        missing = [c for c in spec.cls.reads if c not in have]
        if missing:
            raise ValueError(f"stage {spec.name} reads {missing}, which neither the records nor an earlier stage give")
        have = (have | set(spec.cls.writes)) - set(spec.cls.drops)


def check_resources(specs: list[StageSpec], task_cpus: float, cluster: ClusterResources) -> None:
    """Refuse a plan the cluster can never start (Ray would wait forever), derived from the specs:
    every actor pool at its smallest size plus one task of ``task_cpus``.

    Raises:
        ValueError: a fixed cluster has fewer CPUs or GPUs than that (a joined cluster that may
            autoscale only gets a warning).
    """
    actors = [s for s in specs if s.resources.actor]
    need_cpu = sum(s.min_actors * s.resources.cpus for s in actors) + max(
        [task_cpus] + [s.resources.cpus for s in specs if not s.resources.actor])
    need_gpu = sum(s.min_actors * s.resources.gpus for s in actors)
    require_resources(
        "the pipeline", need_cpu, need_gpu, cluster.fixed,
        cpu_what=", ".join(f"{s.name} {s.min_actors} x {s.resources.cpus:g}" for s in actors) + " plus one task",
        cpu_fix="lower *.num_cpus / *.min_actors / *.num_actors in the config (or leave them auto) or raise --num-cpus",
        gpu_fix="set detect.num_gpus and score.num_gpus to 0 (or auto) in the config to run on CPUs",
        have=cluster,
    )


def read_kwargs(limits) -> dict[str, int]:
    """The limits the shard read takes (``read_shard_records``' keyword arguments)."""
    return {"max_member_bytes": int(limits.max_member_bytes), "max_caption_chars": int(limits.max_caption_chars)}


def build_dataset(urls: list[str], specs: list[StageSpec], read_cpus: float, out_dir: str | None = None,
                  block_bytes: int | None = None, limits=None, faults: tuple = ()):
    """The lazy Ray Data plan over ``urls`` (see the module docstring).

    Args:
        urls: shard URLs.
        specs: ``stage_specs``.
        read_cpus: CPUs per read task (and per write task).
        out_dir: the score-index folder: the last stage's workers write their rows as part files
            (``write_parts``) and the plan's rows are part records (``curate.scoring.writer``).
            ``None``: the plan ends after the last stage and its rows are the scored records
            (tests, debugging).
        block_bytes: Ray Data's target block size for this plan (``DataContext
            .target_max_block_size``; ``None``: Ray's default, 128 MiB).
        limits: ``curate.limits.Limits`` (``None``: the defaults): the retries, the guards of
            every stage call, the member size limit of the read.
        faults: injected faults (``curate.guard``; tests and benchmarks).

    A worker that dies (or is ended by its guard) fails its task; Ray runs it again
    ``limits.worker_retries`` times, then the plan goes on without it
    (``DataContext.max_errored_blocks = -1``): its samples are missing from the part records,
    and ``curate.scoring.isolate`` runs them alone afterwards. So that a task holds about one
    batch (what a death costs), the read's blocks are cut to the plan's smallest batch size
    (``repartition(target_num_rows_per_block=...)``, a streaming split, which Ray Data fuses
    with the read: ``read_dataset``). The first shard's first sample is a block of its own
    (``shard_items``), so that, arriving first, it passes every stage as soon as the actors are
    ready.

    Returns:
        ``ray.data.Dataset``.
    """
    from curate.limits import DEFAULT_LIMITS

    limits = limits or DEFAULT_LIMITS
    retries = int(limits.worker_retries)
    ds, blocks_cut = read_dataset(urls, read_cpus, min(s.batch_size for s in specs), limits)
    if block_bytes is not None:
        ds.context.target_max_block_size = int(block_bytes)
    ds.context.max_errored_blocks = -1
    ops = operators(specs)
    if out_dir is not None:
        ops[-1].write_to = str(out_dir)
    with _retry_args_allowed():
        for op in ops:
            op.guard, op.retries, op.blocks_cut = GuardSettings.of(limits, faults), retries, blocks_cut
            ds = ds.map_batches(**op.ray_args())
    return ds


@contextlib.contextmanager
def _retry_args_allowed():
    """Ray 2.60 calls max_retries / max_restarts / max_task_retries "ray_remote_args" of a map and
    warns that they go in 2.64; they are still the only way to bound a map's retries."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        yield


def read_dataset(urls: list[str], read_cpus: float, rows: int, limits=None):
    """The read of the score plan: the shards' records in blocks of ``rows`` records.

    ``from_items(shard_items(urls))``, read by ``read_shard_batches`` and cut into blocks of
    ``rows`` (``repartition(target_num_rows_per_block=rows)``, a streaming split that Ray Data
    fuses into the read's tasks since it takes the same remote arguments). The first shard's
    first sample is a work item of its own, so it travels in a block of its own.

    Args:
        urls: shard URLs.
        read_cpus: CPUs per read task.
        rows: records per block (the plan's smallest batch size).
        limits: ``curate.limits.Limits`` (``None``: the defaults): the member and caption limits,
            the retries.

    Returns:
        ``(ray.data.Dataset, blocks_cut)``; ``blocks_cut`` is false when this Ray Data could not
        cut the blocks (then they are the read's).
    """
    import ray

    from curate.limits import DEFAULT_LIMITS
    from curate.scoring.records import read_shard_batches, shard_items

    limits = limits or DEFAULT_LIMITS
    retries = int(limits.worker_retries)
    items = shard_items(urls)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    with _retry_args_allowed():
        ds = ds.map_batches(read_shard_batches, batch_size=1, batch_format="numpy",
                            fn_kwargs={"rows_per_batch": rows, **read_kwargs(limits)}, num_cpus=read_cpus,
                            max_retries=retries)
    cut = ds.repartition(target_num_rows_per_block=rows)
    try:
        # The read's own remote arguments: its tasks take a read task's CPUs, not Ray's default
        # 1 (a 2-CPU plan could never place one), and with the same arguments Ray Data fuses the
        # cut into the read's tasks (``are_op_remote_args_compatible``).
        cut._logical_plan.dag.ray_remote_args.update(num_cpus=read_cpus, max_retries=retries)  # the op's own dict
        return cut, True
    except (AttributeError, TypeError):  # a Ray Data without this field: keep the read's blocks
        return ds, False


class StageChain:
    """The score path in one process, without Ray: the same stage specs the Ray plan runs, back
    to back (for tests, the fuzz harness and debugging one shard).

    Args:
        cfg: pipeline config (resources left to auto are sized for one local CPU).
        weights: resolved CLIP weights (``curate.models.resolve_pretrained``).

    Calling it on a batch (``curate.scoring.records.records_to_batch``) returns the scored batch,
    one row per input row, with the index columns and without the image columns.
    """

    def __init__(self, cfg: PipelineConfig, weights: ResolvedWeights):
        cfg = fit_to_cluster(cfg, ClusterResources(cpus=2.0, gpus=0.0))
        self.specs = stage_specs(cfg, weights)
        self.stages = [spec.build() for spec in self.specs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec, stage in zip(self.specs, self.stages):
            batch = run_stage(stage, spec, batch)
        return batch
