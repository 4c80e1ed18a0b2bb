"""Checkpoints of ``curate train``: where they live, which is newest, saving, loading, resuming.

A checkpoint is open_clip's format (``{"state_dict": ..., "optimizer": ..., ...}``, what
``open_clip_train`` writes), so ``open_clip.create_model_and_transforms(model, pretrained=PATH)``
(after ``curate.register_configs()`` for curate's own ``tiny`` config) and ``curate score
--pretrained PATH`` load it; the extra ``curate`` entry holds the step, samples seen, the data
streams' cursors and the config needed to resume. ``curate evaluate --train-dir`` reads the newest
one. Files: ``OUT/checkpoints/step_{step:08d}.pt``, written atomically (temporary file, then
``os.replace``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from curate.io.atomic import atomic_path
from curate.train.config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")

# Config fields that fix the schedule and the data order: a resumed run must keep them.
RESUME_FIELDS = ("model", "batch_size", "lr", "warmup", "samples_seen", "weight_decay", "beta1", "beta2", "eps",
                 "seed", "shuffle_buffer", "data_workers", "num_workers")


def checkpoint_path(out: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes: ``out/checkpoints/step_{step:08d}.pt``."""
    return Path(out) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``out/checkpoints``, oldest first."""
    folder = Path(out) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest checkpoint of a ``curate train`` output folder, or ``None``."""
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def save_checkpoint(out: str | Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically to ``out/checkpoints/step_{step:08d}.pt`` and prune old ones.

    Args:
        state: open_clip checkpoint dict with ``state["curate"]["step"]``.
        keep: newest checkpoints to keep (0: all).
    """
    path = checkpoint_path(out, state["curate"]["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep > 0:
        for _, old in list_checkpoints(out)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a ``curate train`` checkpoint (CPU tensors).

    Raises:
        ValueError: the file is not a checkpoint written by ``curate train``.
    """
    import torch

    try:
        # weights_only even though curate writes these (save_checkpoint): --resume may name any
        # file, and a checkpoint holds only tensors and plain Python values.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a file that is not a torch checkpoint
        raise ValueError(f"{path} is not a curate train checkpoint (torch.load: {type(e).__name__})") from None
    if not isinstance(state, dict) or "curate" not in state or "state_dict" not in state:
        raise ValueError(f"{path} is not a curate train checkpoint (no 'curate' entry); to start from "
                         f"other weights, train from scratch instead of --resume")
    return state


def resume_mismatches(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Fields in ``RESUME_FIELDS`` where the checkpoint's config and ``cfg`` differ."""
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in RESUME_FIELDS if saved.get(k) != now[k]]
