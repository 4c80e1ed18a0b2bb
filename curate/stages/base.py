"""The stage contract, in code: what a stage reads and writes, what it costs, how it fails.

A stage is a plain class with no Ray inside (NeMo Curator's ``ProcessingStage`` + ``Resources``
and DataTrove's ``PipelineStep`` are the models): ``__init__`` loads its model once and
``process(batch, rows)`` transforms one batch given as ``dict[str, np.ndarray]`` (Ray Data's
``batch_format="numpy"``). Its class attributes declare the rest:

- ``name``: the stage's name in messages, in the plan and in the summary;
- ``reads`` / ``writes`` / ``drops``: the columns it needs, adds and removes;
- ``resources``: its ``Resources`` (an actor pool or Ray tasks, and default CPUs and GPUs).

Batch and pool sizes are settings, not declarations (``curate.scoring.config``). The score plan
(``curate.scoring.plan``) binds each declared stage to its settings, and the cluster check is
derived from the same specs; the per-row fault isolation (``run_isolated``) is shared by every
stage. The contract in prose is ``docs/architecture.md``, "The stage contract".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate import schema as S
from curate.stages.common import batch_len, concat_batches, copy_batch, ok_rows, set_error, take_rows


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage reserves from Ray.

    Attributes:
        cpus: CPUs per worker (fractions allowed; Ray's ``num_cpus``).
        gpus: GPUs per worker (0: CPU only; 0.5 lets two workers share a GPU; Ray's ``num_gpus``).
        actor: ``True``: the stage holds a model and runs in a pool of Ray actors (loaded once per
            actor); ``False``: stateless, it runs as Ray tasks, which Ray Data fuses with
            neighbouring task stages.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    actor: bool = False


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
        name: the stage's name in messages, the plan and the summary (``decode``, ``detect``, ...).
        error_status: the index status of a row this stage fails on (``curate.schema``).
        reads: columns the stage needs in its input batch.
        writes: columns it adds (every row gets a value; "no value" for rows it does not compute).
        drops: columns it removes (e.g. ``image_bytes`` once decoded).
        resources: ``Resources`` of one worker: whether the stage runs in an actor pool
            (``actor``) and its CPUs and GPUs when the settings leave them to the stage. Batch
            sizes, pool sizes, CPUs and GPUs are settings (``curate.scoring.config``, one field
            each); ``curate.scoring.plan.stage_specs`` binds a stage to them.
    """

    name = "stage"
    error_status = S.STATUS_INVALID_SAMPLE
    reads: tuple[str, ...] = (S.STATUS,)
    writes: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()
    resources = Resources(cpus=0.25)

    def rows_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Indices of the rows this stage computes, ``(K,) int64``; by default the ``ok`` rows."""
        return ok_rows(batch)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Compute this stage's outputs for ``rows`` (see the class docstring)."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_isolated(self, batch)


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
            row[S.ERROR][0] = S.cap_error((f"{row[S.ERROR][0]}; " if row[S.ERROR][0] else "") + message)
        return [_defaults(stage, row)]


def _defaults(stage: Stage, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stage's outputs with no row computed; if even that raises (a broken stage), the batch
    as it came, so the row still reaches the index with its status and message."""
    try:
        return stage.process(batch, np.empty(0, dtype=np.int64))
    except Exception:
        return batch
