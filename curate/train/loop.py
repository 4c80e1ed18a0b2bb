"""The contrastive training loop that runs in every Ray Train worker.

The loop follows ``open_clip_train``: an open_clip model built from its config (random init,
seeded), ``open_clip.loss.ClipLoss`` with ``local_loss`` and ``gather_with_grad`` under data
parallelism, AdamW without weight decay on gains, biases and ``logit_scale``, the cosine schedule
with linear warm-up of ``open_clip_train.scheduler.cosine_lr``, the learnable logit scale clamped
to ``[0, ln 100]`` after each step (CLIP, Radford et al. 2021, section 2.5), and bf16 autocast on
GPU.

Checkpoints are open_clip's format (``{"state_dict": ..., "optimizer": ..., ...}``, what
``open_clip_train`` writes), so ``open_clip.create_model_and_transforms(model, pretrained=PATH)``
and ``curate score --pretrained PATH`` load them; the extra ``curate`` entry holds the step,
samples seen, the data streams' cursors, the samples that killed a data worker (``skip``, never
decoded again) and the config needed to resume.

The batches come through ``curate.train.data.GuardedLoader``: a sample that kills or wedges a
DataLoader worker is skipped and counted (``worker_died``, ``timeout``), the DataLoader starts
again where the loop left it, and the run goes on (at most ``max_worker_deaths`` times).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from curate.io.atomic import write_json_atomically
from curate.train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from curate.train.config import TrainConfig

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu"):
    """open_clip model (random init, seeded with ``cfg.seed``), train transform and tokenizer.

    Returns:
        ``(model, preprocess_train, tokenizer)``; ``preprocess_train`` maps a PIL image to
        ``(3, S, S) float32``, ``tokenizer`` (``curate.models.BoundedTokenizer``, with
        ``DEFAULT_LIMITS``) a list of str to ``(B, L) int64``.
    """
    import open_clip

    from curate.models import get_tokenizer, register_configs

    register_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model, preprocess_train, _ = open_clip.create_model_and_transforms(cfg.model, pretrained=None, device=device,
                                                                            output_dict=True)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, preprocess_train, get_tokenizer(cfg.model)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; parameters with fewer than 2 dims, biases, norms and ``logit_scale`` get no weight
    decay (the grouping ``open_clip_train.main`` uses)."""
    def no_decay(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def autocast_for(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on GPU (``precision: auto`` or ``bf16``) or when asked for on CPU; else none."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return getattr(model, "module", model)


def train_step(model, loss_fn, optimizer, images: torch.Tensor, texts: torch.Tensor, cfg: TrainConfig,
               autocast=None) -> float:
    """One optimizer step on one batch.

    Args:
        model: open_clip CLIP (possibly DDP-wrapped), in train mode.
        loss_fn: ``open_clip.loss.ClipLoss``.
        images: ``(B, 3, S, S) float32``; texts: ``(B, L) int64``; both on the model's device.

    Returns:
        The loss (float, this worker's).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast or nullcontext():
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    if cfg.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
    optimizer.step()
    with torch.no_grad():
        unwrap(model).logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


# -- the Ray Train worker ---------------------------------------------------------------------
def _all_gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _make_log_writer(out: Path):
    """TensorBoard writer when a TensorBoard writer package is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(str(out / "tensorboard"))


class RayTrainContext:
    """What the loop asks of its launcher, from Ray Train (``ray.train.get_context()`` and
    ``ray.train.torch``): rank, world size, device, DDP wrapping and progress reports."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if self.world_size > 1 else None)

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


class LocalContext:
    """The loop in the calling process (``curate train --local``): one worker, rank 0, the first
    GPU when ``use_gpu`` else the CPU; no DDP, no Ray Train reports."""

    def __init__(self, use_gpu: bool = False):
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cuda:0" if use_gpu else "cpu")

    def prepare_model(self, model):
        return model.to(self.device)

    def report(self, metrics: dict[str, Any]) -> None:
        pass


def worker_loop(config: dict[str, Any], context: RayTrainContext | LocalContext | None = None) -> None:
    """The function every Ray Train worker runs (``TorchTrainer(train_loop_per_worker=...)``),
    or the calling process runs with ``context=LocalContext()`` (``curate train --local``).

    Args:
        config: ``{"train": TrainConfig fields, "shards": [url], "subset": path | None,
            "out": folder, "run_id": str, "resume": checkpoint path | None}``.
        context: where the loop runs; ``None``: inside a Ray Train worker.

    Writes (rank 0): checkpoints, ``train_log.jsonl`` (one JSON object per ``log_every`` steps:
    step, samples_seen, loss, lr, logit_scale, samples_per_s, epoch, skipped), TensorBoard events
    when available, and ``train_summary.json`` at the end (its ``worker_deaths`` lists each data
    worker death, ``GuardedLoader.deaths``).

    Raises:
        curate.train.data.NoTrainingData: a stream found no sample of the subset.
        curate.train.data.DataWorkerError: data workers died twice at one place, or more than
            ``max_worker_deaths`` times.
    """
    import open_clip

    from curate.io.subset import load_subset_counts
    from curate.limits import DEFAULT_LIMITS
    from curate.models import clip_input_size
    from curate.train.data import GuardedLoader, SubsetStream

    cfg = TrainConfig(**config["train"])
    out = Path(config["out"])
    ctx = context if context is not None else RayTrainContext()
    rank, world_size = ctx.rank, ctx.world_size
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    device = ctx.device
    num_streams = max(1, cfg.data_workers)

    model, preprocess, tokenizer = build_model(cfg, device="cpu")
    resume = config.get("resume")
    state = load_checkpoint(resume) if resume else None
    # A restarted attempt of this very run (Ray Train's FailureConfig) resumes from its own checkpoint.
    own = latest_checkpoint(out)
    if own is not None and (state is None or str(own) != str(resume)):
        mine = load_checkpoint(own)
        if mine["curate"].get("run_id") == config["run_id"]:
            state = mine
    start_step, cursors, skip = 0, None, None
    if state is not None:
        unwrap(model).load_state_dict(state["state_dict"])
        start_step = int(state["curate"]["step"])
        cursors = state["curate"]["cursors"][rank]
        skip = SubsetStream.skip_from_list(state["curate"].get("skip"))  # absent before worker-death skipping
    model = ctx.prepare_model(model)
    model.train()
    optimizer = build_optimizer(unwrap(model), cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        del state
    from open_clip_train.scheduler import cosine_lr

    schedule = cosine_lr(optimizer, cfg.lr, cfg.warmup, cfg.steps)
    loss_fn = open_clip.loss.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                      rank=rank, world_size=world_size)
    autocast = autocast_for(cfg, device)

    stream = SubsetStream(config["shards"], load_subset_counts(config["subset"]), preprocess, tokenizer,
                          cfg.local_batch_size, rank=rank, world_size=world_size, num_streams=num_streams,
                          seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, start_step=start_step,
                          start_cursors=cursors,
                          decode_min_side=2 * clip_input_size(cfg.model) if cfg.draft_decode else None,
                          input_size=clip_input_size(cfg.model), skip=skip)
    torch.manual_seed(cfg.seed + 7919 * rank)
    batches = GuardedLoader(stream, cfg.data_workers, prefetch_factor=4, max_deaths=cfg.max_worker_deaths,
                            sample_timeout_s=DEFAULT_LIMITS.sample_timeout_s, memory_mb=DEFAULT_LIMITS.worker_memory_mb,
                            seed=cfg.seed + 7919 * rank)
    cursors = list(cursors or [0] * num_streams)
    skipped: dict[str, int] = {}
    problems: list[str] = []
    epoch = 0
    writer = None
    log_file = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / LOG_FILE, "a")
        writer = _make_log_writer(out)
    step = start_step
    t_last, step_last, t_start = time.perf_counter(), step, time.perf_counter()
    loss_value = float("nan")
    trained = 0  # samples this worker actually trained on in this attempt
    try:
        while step < cfg.steps:
            batch = next(batches)
            cursors[batch["stream"]] = batch["cursor"]
            epoch = max(epoch, batch["epoch"])
            for k, v in batch["skipped"].items():
                skipped[k] = skipped.get(k, 0) + v
            problems.extend(p for p in batch["problems"] if p not in problems)
            schedule(step)
            images = batch["images"].to(device, non_blocking=True)
            texts = batch["texts"].to(device, non_blocking=True)
            loss_value = train_step(model, loss_fn, optimizer, images, texts, cfg, autocast)
            trained += images.shape[0]
            step += 1
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last:
                losses = _all_gather((loss_value, skipped, problems), world_size)
                if rank == 0:
                    now = time.perf_counter()
                    all_skipped: dict[str, int] = {}
                    for _, sk, _ in losses:
                        for k, v in sk.items():
                            all_skipped[k] = all_skipped.get(k, 0) + v
                    record = {
                        "step": step,
                        "samples_seen": step * cfg.batch_size,
                        "loss": sum(x[0] for x in losses) / len(losses),
                        "lr": optimizer.param_groups[0]["lr"],
                        "logit_scale": float(unwrap(model).logit_scale.detach().exp()),
                        "samples_per_s": (step - step_last) * cfg.batch_size / max(now - t_last, 1e-9),
                        "epoch": epoch,
                        "skipped": all_skipped,
                        "shard_problems": sorted({p for _, _, ps in losses for p in ps}),
                        "time": time.time(),
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    if writer is not None:
                        for key in ("loss", "lr", "logit_scale", "samples_per_s"):
                            writer.add_scalar(f"train/{key}", record[key], step)
                    t_last, step_last = now, step
            if step % cfg.save_every == 0 or last:
                all_cursors, all_skips = zip(*_all_gather((list(cursors), stream.skip_list()), world_size))
                if rank == 0:
                    # A sample that killed a data worker of any rank is skipped by every rank after a resume.
                    skip_union = SubsetStream.skip_from_list([item for items in all_skips for item in items])
                    state = {
                        "epoch": epoch,
                        "name": config["run_id"],
                        "state_dict": unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "curate": {"step": step, "samples_seen": step * cfg.batch_size, "cursors": list(all_cursors),
                                   "skip": [[i, j, status] for (i, j), status in sorted(skip_union.items())],
                                   "run_id": config["run_id"], "config": cfg.to_dict(), "model": cfg.model,
                                   "data": config.get("data")},
                    }
                    save_checkpoint(out, state, cfg.keep_checkpoints)
                ctx.report({"step": step, "samples_seen": step * cfg.batch_size})
    finally:
        batches.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    final = _all_gather((skipped, problems, trained, batches.deaths), world_size)
    if rank == 0:
        all_skipped = {}
        for sk, _, _, _ in final:
            for k, v in sk.items():
                all_skipped[k] = all_skipped.get(k, 0) + v
        summary = {
            "run_id": config["run_id"],
            "model": cfg.model,
            "steps": step,
            "start_step": start_step,
            "samples_seen": step * cfg.batch_size,
            "batch_size": cfg.batch_size,
            "num_workers": world_size,
            "final_loss": loss_value,
            "skipped": all_skipped,
            "samples_trained": sum(n for _, _, n, _ in final),
            "shard_problems": sorted({p for _, ps, _, _ in final for p in ps}),
            "worker_deaths": [d for _, _, _, ds in final for d in ds],
            "checkpoint": str(latest_checkpoint(out)),
            "seconds": time.perf_counter() - t_start,
        }
        write_json_atomically(out / SUMMARY_FILE, summary, indent=2)
