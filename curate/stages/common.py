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


class Stage:
    """The contract of a per-batch stage, with per-sample fault isolation.

    A stage is a plain class (no Ray inside): ``__init__`` loads its model once; ``process(batch,
    rows)`` transforms a batch given as ``dict[str, np.ndarray]`` (Ray Data's ``numpy`` batch
    format), computing its outputs for the rows ``rows`` (by default the ``ok`` rows, see
    ``rows_of``) and filling every output column with its "no value" for the others. With
    ``rows`` empty, ``process`` only fills those defaults and must not raise.

    ``__call__`` adds the fault isolation shared by every stage (the way webdataset's handlers
    keep a bad sample from killing a loader): the batch is processed whole; if that raises, it
    is processed again in halves, down to single rows (``run_isolated``), and a row that still
    raises gets status ``error_status``,
    an ``error`` message ``"<name>: <exception>"`` and the default outputs, while every other
    row goes on. No exception from one sample leaves the stage.

    Class attributes:
        name: the stage's name in messages (``decode``, ``detect``, ...).
        error_status: the index status of a row this stage fails on (``curate.schema``).
    """

    name = "stage"
    error_status = S.STATUS_INVALID_SAMPLE

    def rows_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Indices of the rows this stage computes, ``(K,) int64``; by default the ``ok`` rows."""
        return ok_rows(batch)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Compute this stage's outputs for ``rows`` (see the class docstring)."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_isolated(self, batch)


def take_rows(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of a batch (each column sliced)."""
    return {k: v[start:stop] for k, v in batch.items()}


def run_isolated(stage: Stage, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``stage`` on a batch, isolating the rows that make it raise (see ``Stage``).

    A batch that raises is split in halves, each run again, recursively (bisection): one bad row
    in a batch of ``B`` costs about ``2 log2 B`` extra calls instead of ``B``, which matters for
    a GPU stage's large batches. A single row that raises gets the stage's error status.

    Returns:
        The processed batch, one row per input row, in order.
    """
    n = batch_len(batch)
    return concat_batches(_isolate(stage, batch, 0, n)) if n else _defaults(stage, copy_batch(batch))


def _isolate(stage: Stage, batch: dict[str, np.ndarray], start: int, stop: int) -> list[dict[str, np.ndarray]]:
    part = take_rows(batch, start, stop) if (start, stop) != (0, batch_len(batch)) else batch
    try:
        work = copy_batch(part)
        return [stage.process(work, stage.rows_of(work))]
    except Exception as e:
        if stop - start > 1:
            mid = (start + stop) // 2
            return _isolate(stage, batch, start, mid) + _isolate(stage, batch, mid, stop)
        row = copy_batch(part)
        ok_rows(row)
        message = f"{stage.name}: {type(e).__name__}: {e}"
        if row[S.STATUS][0] == S.STATUS_OK:
            set_error(row, 0, stage.error_status, message)
        else:  # a row a stage computes whatever its status (caption language): keep the status
            row[S.ERROR][0] = (f"{row[S.ERROR][0]}; " if row[S.ERROR][0] else "") + message[:500]
        return [_defaults(stage, row)]


def _defaults(stage: Stage, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stage's outputs with no row computed; if even that raises (a broken stage), the batch
    as it came, so the row still reaches the index with its status and message."""
    try:
        return stage.process(batch, np.empty(0, dtype=np.int64))
    except Exception:
        return batch
