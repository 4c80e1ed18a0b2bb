"""Helpers shared by the stages: the ``ok`` row mask and object-array construction."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from curate import schema as S

EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
BOX_DIMS = 8  # a text polygon is a quadrilateral: x1, y1, ..., x4, y4
EMPTY_BOXES = np.zeros((0, BOX_DIMS), dtype=np.float32)


def ok_rows(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the rows whose status is ``ok``, shape ``(K,)`` int64.

    Also makes the ``status`` and ``error`` columns writable ``object`` arrays (Ray may hand
    them over as fixed-width ``<U`` arrays, which would truncate a longer status).
    """
    batch[S.STATUS] = np.array(batch[S.STATUS], dtype=object)
    batch[S.ERROR] = np.array(batch[S.ERROR], dtype=object) if S.ERROR in batch else np.full(len(batch[S.STATUS]), "", dtype=object)
    return np.flatnonzero(batch[S.STATUS] == S.STATUS_OK)


def object_array(values: Sequence[Any]) -> np.ndarray:
    """A 1-D ``object`` array holding ``values`` as they are (no broadcasting of arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def batch_len(batch: dict[str, np.ndarray]) -> int:
    """Number of rows of a batch (length of its ``status`` column)."""
    return len(batch[S.STATUS])


def set_error(batch: dict[str, np.ndarray], i: int, status: str, message: str) -> None:
    """Mark row ``i`` as failed with ``status`` and ``message`` (in place)."""
    batch[S.STATUS][i] = status
    batch[S.ERROR][i] = message[:1000]


def image_at(images, i: int) -> np.ndarray:
    """Row ``i`` of an image column as ``(H, W, 3) uint8`` (Ray hands equal-shaped images over as
    one ``(B, H, W, 3)`` array and ragged ones as an object array; both work)."""
    img = images[i]
    if img.dtype != np.uint8:
        img = np.asarray(img, dtype=np.uint8)
    return img
