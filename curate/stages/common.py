"""Helpers shared by the stages: the ``ok`` row mask, object arrays, batch slicing and concatenation.

The stage contract itself (``Stage``, ``Resources``, the per-row fault isolation) is in
``curate.stages.base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    batch[S.ERROR] = (
        np.array(batch[S.ERROR], dtype=object) if S.ERROR in batch
        else np.full(len(batch[S.STATUS]), "", dtype=object)
    )
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
    """Mark row ``i`` as failed with ``status`` and ``message`` (in place; the message capped,
    ``curate.schema.cap_error``)."""
    batch[S.STATUS][i] = status
    batch[S.ERROR][i] = S.cap_error(message)


def image_at(images, i: int) -> np.ndarray:
    """Row ``i`` of an image column as ``(H, W, 3) uint8`` (Ray hands equal-shaped images over as
    one ``(B, H, W, 3)`` array and ragged ones as an object array; both work)."""
    img = images[i]
    if img.dtype != np.uint8:
        img = np.asarray(img, dtype=np.uint8)
    return img


def copy_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A shallow copy of a batch whose ``status`` and ``error`` columns are fresh ``object``
    arrays (the columns a stage changes in place); other columns are shared, not copied."""
    out = dict(batch)
    out[S.STATUS] = np.array(batch[S.STATUS], dtype=object)
    if S.ERROR in batch:
        out[S.ERROR] = np.array(batch[S.ERROR], dtype=object)
    return out


def concat_batches(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate batches, row order kept (a column missing from a part is ``None`` there).

    A column that is 1-D and of one non-object dtype kind in every part is concatenated with
    ``np.concatenate``; any other (images of different shapes, object columns) becomes a 1-D
    ``object`` array of its rows.
    """
    out: dict[str, np.ndarray] = {}
    names = list(dict.fromkeys(name for p in parts for name in p))
    for name in names:
        # A column a part lacks (a stage that could not even fill its defaults) is None there.
        cols = [(np.asarray(p[name]) if not isinstance(p[name], np.ndarray) else p[name]) if name in p
                else object_array([None] * batch_len(p)) for p in parts]
        simple = all(c.ndim == 1 and c.dtype != object for c in cols) and len({c.dtype.kind for c in cols}) == 1
        if simple:
            out[name] = np.concatenate(cols)
        else:
            out[name] = object_array([row for c in cols for row in c])
    return out


def take_rows(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of a batch (each column sliced)."""
    return {k: v[start:stop] for k, v in batch.items()}
