"""Training recipes: DataComp's scales, a CPU ``tiny`` scale, YAML files and command-line overrides.

``TrainConfig`` holds every knob of ``curate train``. ``train_config(scale, path, overrides)``
starts from a scale in ``SCALES``, applies a YAML file (``pipelines/train_*.yaml``, flat keys
named as the fields below) and then command-line overrides, checking names and types.

Sources of the DataComp numbers (model, global batch size, learning rate, warm-up, samples seen):
DataComp (Gadre et al., 2023), Table 1 ("compute scales") and Appendix "Training details", as
encoded in the DataComp repository's ``training/scale_configs.py``. AdamW with weight decay 0.2,
beta1 0.9, beta2 0.98, eps 1e-6 and a cosine schedule with linear warm-up are the same appendix
(open_clip's defaults for ViTs, ``open_clip_train.params.get_default_params``); DataComp's
``xlarge`` uses beta2 0.95 (``scale_configs.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import check_dataclass, check_type, read_yaml_mapping
from curate.models import PRECISIONS


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        model: open_clip model name (``open_clip.list_models()``, or ``tiny``).
        batch_size: global batch size (all workers together); split evenly across workers.
        lr: peak learning rate (AdamW), reached after ``warmup`` steps, then cosine to 0.
        warmup: linear warm-up length in steps.
        samples_seen: total training samples (DataComp's ``train_num_samples``); the run takes
            ``samples_seen // batch_size`` steps.
        weight_decay, beta1, beta2, eps: AdamW. Gains, biases and ``logit_scale`` get no weight
            decay (as ``open_clip_train.main`` does).
        precision: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``.
        grad_checkpointing: activation checkpointing (``model.set_grad_checkpointing``).
        grad_clip_norm: clip the gradient norm to this value (0: no clipping).
        seed: seeds model init, shard order, shuffle buffer and augmentation.
        shuffle_buffer: samples held per data stream for shuffling (webdataset's ``shuffle(n)``).
        data_workers: DataLoader worker processes per training worker. A sample that kills or
            wedges one is skipped and counted (worker_died, timeout); 0 loads in the training
            worker itself, for debugging, where such a sample ends the run.
        draft_decode: decode JPEGs larger than twice the model input at a reduced scale (Pillow
            ``Image.draft``, DCT scaling); ``false`` decodes every image in full, as open_clip does.
        num_workers: Ray Train workers (data-parallel processes).
        use_gpu: one GPU per worker, NCCL; otherwise CPU and gloo.
        cpus_per_worker: CPUs reserved per Ray Train worker.
        torch_threads: intra-op threads per worker (0: one per reserved CPU).
        save_every: checkpoint every N steps (the last step is always saved).
        keep_checkpoints: newest checkpoints kept on disk (0: keep all).
        log_every: steps between JSONL log lines.
        max_failures: Ray Train restarts after a worker failure (each resumes from the last
            checkpoint of this run).
        max_worker_deaths: DataLoader worker deaths a training worker survives in one run (each
            skips the sample that killed its worker and restarts the data loader); one more, or
            a second death at one place, fails the run (0: the first fails it).
    """

    model: str = "ViT-B-32"
    batch_size: int = 4096
    lr: float = 5e-4
    warmup: int = 500
    samples_seen: int = 12_800_000
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    grad_checkpointing: bool = False
    grad_clip_norm: float = 0.0
    seed: int = 0
    shuffle_buffer: int = 5000
    data_workers: int = 4
    draft_decode: bool = True
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    max_failures: int = 0
    max_worker_deaths: int = 16

    @property
    def steps(self) -> int:
        """Optimizer steps of the run: ``samples_seen // batch_size``."""
        return self.samples_seen // self.batch_size

    @property
    def local_batch_size(self) -> int:
        """Samples per worker per step."""
        return self.batch_size // self.num_workers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# DataComp's four scales (see the module docstring for the source) and `tiny` for CPU tests.
SCALES: dict[str, dict[str, Any]] = {
    "tiny": dict(model="tiny", batch_size=32, lr=5e-4, warmup=20, samples_seen=9_600, shuffle_buffer=256,
                 data_workers=1, save_every=100, log_every=10),
    "small": dict(model="ViT-B-32", batch_size=4096, lr=5e-4, warmup=500, samples_seen=12_800_000),
    "medium": dict(model="ViT-B-32", batch_size=4096, lr=5e-4, warmup=500, samples_seen=128_000_000),
    "large": dict(model="ViT-B-16", batch_size=8192, lr=5e-4, warmup=500, samples_seen=1_280_000_000),
    "xlarge": dict(model="ViT-L-14", batch_size=90_112, lr=1e-3, warmup=10_000, samples_seen=12_800_000_000,
                   beta2=0.95),
}


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    default = f.default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"train config key {key} must be true or false, got {value!r}")
    if isinstance(default, (int, float)) and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads 1e-3 and 1.28e9 as strings
            value = float(value)
        except ValueError:
            pass
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML reads 1.28e9 as a float
    return check_type(key, value, default, f.type)


def train_config(
    scale: str = "tiny", path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build the config of a run: scale, then YAML file, then overrides.

    Args:
        scale: a key of ``SCALES``.
        path: optional YAML file of flat ``field: value`` pairs (e.g. ``pipelines/train_tiny.yaml``).
        overrides: ``field -> value`` from the command line (``None`` values are ignored).

    Raises:
        ValueError: unknown scale or key, a value of the wrong type, or an invalid combination.
        FileNotFoundError: ``path`` does not exist.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = dict(SCALES[scale])
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml_mapping(path, "train config")))
    layers.append(("command line", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for where, layer in layers:
        unknown = sorted(set(layer) - set(fields))
        if unknown:
            raise ValueError(f"unknown train config key(s) {unknown} in {where}; known: {sorted(fields)}")
        for key, value in layer.items():
            values[key] = _coerce(key, value, fields[key])
    cfg = TrainConfig(**values)
    validate_train(cfg)
    return cfg


def validate_train(cfg: TrainConfig) -> None:
    """Check ranges and combinations. Raises ``ValueError`` naming the key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
    for key in ("batch_size", "samples_seen", "num_workers", "save_every", "log_every"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("warmup", "data_workers", "torch_threads", "keep_checkpoints", "max_failures", "shuffle_buffer",
                "weight_decay", "grad_clip_norm", "lr", "max_worker_deaths"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if not 0 < cfg.cpus_per_worker:
        raise ValueError(f"cpus_per_worker must be positive, got {cfg.cpus_per_worker}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1 and cfg.eps > 0):
        raise ValueError("beta1 and beta2 must lie in [0, 1) and eps must be positive")
    check_dataclass(cfg)
    if cfg.batch_size % cfg.num_workers:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by num_workers {cfg.num_workers}")
    if cfg.steps < 1:
        raise ValueError(f"samples_seen {cfg.samples_seen} is smaller than one batch ({cfg.batch_size})")
