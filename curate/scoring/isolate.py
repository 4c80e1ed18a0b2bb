"""The isolation pass of ``curate score``: the samples whose worker died, run alone.

The plan (``curate.scoring.plan.build_dataset``) gives a task whose worker dies a bounded number of
retries (``limits.worker_retries``), then goes on without it. Its samples are then missing from
the driver's books (``ShardTracker``: positions of a shard that never arrived). This pass finds
them, reads them again (one Ray task per shard, with the same retries), and runs each sample
alone through the whole score chain in an ``IsolatedChain`` actor (no restarts, no retries: the
driver decides):

- the sample comes back scored: its row is written as the plan would have written it;
- the actor dies (a native crash, an abort, an out-of-memory kill, the memory guard of
  ``curate.guard``): the sample runs again in a new actor, up to ``limits.worker_retries``
  more times, then its row gets status ``worker_died`` and an error naming the cause;
- it runs past ``limits.sample_timeout_s``: the actor is killed, and the row gets ``timeout``.

So one poison sample costs its batch ``1 + worker_retries`` deaths in the plan and
``1 + worker_retries`` alone, and never takes a neighbour with it: every other sample of its
batch is scored alone, with the same stages and models, to the same values.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curate import schema as S
from curate.scoring.plan import GuardSettings, StageSpec, read_kwargs, run_stage
from curate.scoring.records import SEQ, records_to_batch

log = logging.getLogger("curate")
# An isolation actor that cannot load its models, or a shard that cannot be read again, in this
# long is given up.
READY_TIMEOUT_S = 900.0


class IsolatedChain:
    """Ray actor: the whole score chain (every stage of the plan, in order) in one process, run on
    one sample at a time, writing its row as a part file like the plan's last operator.

    Args:
        specs: the plan's ``StageSpec``s (``curate.scoring.plan.stage_specs``).
        guard: limits of each stage call (its memory guard ends this process on a breach).
        out_dir: the score-index folder.
    """

    def __init__(self, specs: list[StageSpec], guard: GuardSettings, out_dir: str):
        self.specs, self.guard, self.out_dir = specs, guard, out_dir
        self.stages = [spec.build() for spec in specs]

    def ready(self) -> dict[str, Any]:
        """``{"pid": int, "embedding_dim": int | None}`` once the models are loaded."""
        dim = next((getattr(s, "embedding_dim", None) for s in self.stages if getattr(s, "embeddings", False)), None)
        return {"pid": os.getpid(), "embedding_dim": dim}

    def run(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Score a batch (of one sample) and write it; returns its part records and the rows'
        statuses."""
        from curate.scoring.writer import write_parts

        for spec, stage in zip(self.specs, self.stages):
            batch = run_stage(stage, spec, batch, self.guard)
        return write_parts(batch, self.out_dir), [str(s) for s in batch[S.STATUS]]


@dataclass
class IsolationResult:
    """What the isolation pass did.

    Attributes:
        samples: samples run alone.
        statuses: how those ended (``ok``, ``worker_died``, ``timeout``, ...: the row's status).
        deaths: isolation actors that died or were killed.
        shard_errors: shards that could not be read again, with why.
        seconds: wall time of the pass.
    """

    samples: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    deaths: int = 0
    shard_errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def missing_positions(tracker, urls: list[str]) -> dict[str, np.ndarray | None]:
    """Per shard not finished by the plan, the positions that never arrived (``None``: no row of
    the shard arrived, so its size is not known)."""
    out: dict[str, np.ndarray | None] = {}
    for url in urls:
        if url in tracker.started or url in tracker.results:
            continue
        seen = tracker.seen.get(url)
        out[url] = None if seen is None else np.flatnonzero(~seen)
    return out


def read_records(url: str, positions: list[int] | None, read_kwargs: dict[str, int]) -> list[dict[str, Any]]:
    """Ray task: the records of a shard (``read_shard_records``) at ``positions`` (all for ``None``;
    a shard record always comes along)."""
    from curate.scoring.records import SHARD_RECORD, read_shard_records

    wanted = None if positions is None else set(positions)
    return [r for r in read_shard_records({"url": url}, **read_kwargs)
            if wanted is None or r[SEQ] in wanted or r[S.STATUS] == SHARD_RECORD]


def isolate_missing(tracker, urls: list[str], specs: list[StageSpec], limits, faults: tuple, out_dir: str,
                    resources: dict[str, float], parallel: int = 1) -> IsolationResult:
    """Run alone every sample the plan lost to a worker death, and hand its row to ``tracker``.

    Args:
        tracker: the run's ``curate.scoring.writer.ShardTracker``.
        urls: the shards of this run.
        specs: the plan's stage specs.
        limits: ``curate.limits.Limits`` (``sample_timeout_s``, ``worker_retries``, the guards).
        faults: injected faults (``curate.guard``).
        out_dir: the score-index folder.
        resources: ``{"num_cpus": ..., "num_gpus": ...}`` of one isolation actor.
        parallel: isolation actors at once.

    Returns:
        ``IsolationResult``. A shard whose reading kills its worker every time fails by name
        (``tracker``); every other missing sample gets a row.
    """
    import ray

    t0 = time.perf_counter()
    result = IsolationResult()
    todo = missing_positions(tracker, urls)
    if not todo:
        return result
    retries = int(limits.worker_retries)
    log.warning("curate score: %d shard(s) lost samples to worker deaths; running those samples alone",
                len(todo))
    # 0 CPUs: the re-reads must not wait behind the isolation actors, which may hold every CPU.
    # At least one retry: a re-read lost with its node must not fail a whole shard.
    reader = ray.remote(read_records).options(num_cpus=0, max_retries=max(1, retries))
    reads = {url: reader.remote(url, None if positions is None else positions.tolist(), read_kwargs(limits))
             for url, positions in todo.items()}
    statuses: collections.Counter = collections.Counter()
    pool = _IsolationPool(specs, GuardSettings.of(limits, faults), out_dir, resources, max(1, parallel))
    # First in chunks of the plan's smallest batch: a poison sample then costs one more death
    # for its chunk, and its neighbours run at nearly the plan's speed.
    chunk = min(s.batch_size for s in specs)
    def shards():
        for url, ref in reads.items():
            try:
                records = ray.get(ref, timeout=READY_TIMEOUT_S)
            except Exception as e:  # its worker died every try, or it hung
                ray.cancel(ref, force=True)
                result.shard_errors[url] = (
                    f"reading the shard again for the samples its workers lost failed: {_cause(e)}")
                tracker.fail(url, result.shard_errors[url])
                continue
            yield records

    try:
        # One queue over every shard, so that each actor has work while another one restarts.
        for _rec, status in pool.run_all(shards(), tracker, limits, retries, chunk=chunk):
            result.samples += 1
            statuses[status] += 1
    finally:
        result.deaths = pool.deaths
        pool.close()
    result.statuses = dict(statuses)
    result.seconds = time.perf_counter() - t0
    return result


class _IsolationPool:
    """Up to ``parallel`` ``IsolatedChain`` actors, each running one sample at a time, replaced
    when they die; the driver enforces the per-sample time limit. Actors start without blocking
    the driver (they wait for the plan's own actors to give back their resources)."""

    MAX_START_FAILURES = 3  # consecutive actors that die loading their models: the pass gives up

    def __init__(self, specs, guard: GuardSettings, out_dir: str, resources: dict[str, float], parallel: int):
        import ray

        self.cls = ray.remote(IsolatedChain).options(max_restarts=0, max_task_retries=0, **resources)
        self.specs, self.guard, self.out_dir, self.parallel = specs, guard, out_dir, parallel
        self.idle: list[Any] = []
        self.starting: dict[Any, tuple[Any, float]] = {}  # ready() ref -> actor, deadline
        self.start_failures = 0
        self.deaths = 0
        self.embedding_dim: int | None = None

    def close(self) -> None:
        import ray

        for actor in self.idle + [a for a, _ in self.starting.values()]:
            ray.kill(actor)
        self.idle, self.starting = [], {}

    def run_all(self, shards: Iterable[list[dict[str, Any]]], tracker, limits, retries: int, chunk: int = 1):
        """Run the records of each shard in ``shards`` in chunks of ``chunk``, and the rows of a
        chunk whose worker died or hung each alone; yield ``(record, status)`` as each row is
        handed to ``tracker``. Shards are taken from the iterator only as the queue runs short
        (about two chunks per actor), so the pass holds a few shards' lost samples at a time.

        Raises:
            RuntimeError: ``MAX_START_FAILURES`` actors in a row could not load the models.
        """
        import ray

        from curate.scoring.records import SHARD_RECORD
        from curate.scoring.writer import write_parts

        queue: collections.deque = collections.deque()  # (records, tries); one record: alone
        source = iter(shards)

        def refill() -> bool:
            """Queue the next shard's chunks; False when there is none."""
            records = next(source, None)
            if records is None:
                return False
            samples = []
            for rec in records:
                if rec[S.STATUS] == SHARD_RECORD:  # an empty or unreadable shard: its fate, no sample
                    tracker.add(write_parts(records_to_batch([rec]), self.out_dir))
                else:
                    samples.append(rec)
            for start in range(0, len(samples), max(1, chunk)):
                queue.append((samples[start : start + max(1, chunk)], 0))
            return True

        more = True
        running: dict[Any, tuple[Any, list, int, float]] = {}  # ref -> actor, records, tries, deadline
        stages = " > ".join(s.name for s in self.specs)
        while more or queue or running:
            while more and len(queue) < 2 * self.parallel:
                more = refill()
            if not (queue or running):
                continue
            while queue and self.idle:
                recs, tries = queue.popleft()
                actor = self.idle.pop()
                ref = actor.run.remote(records_to_batch(recs))
                running[ref] = (actor, recs, tries, time.monotonic() + float(limits.sample_timeout_s))
            while queue and len(running) + len(self.starting) + len(self.idle) < self.parallel:
                actor = self.cls.remote(self.specs, self.guard, self.out_dir)
                self.starting[actor.ready.remote()] = (actor, time.monotonic() + READY_TIMEOUT_S)
            ready, _ = ray.wait(list(running) + list(self.starting), num_returns=1, timeout=0.2)
            now = time.monotonic()
            for ref in list(self.starting):
                actor, deadline = self.starting[ref]
                if ref not in ready and now < deadline:
                    continue
                del self.starting[ref]
                try:
                    self.embedding_dim = ray.get(ref, timeout=0)["embedding_dim"]
                    self.idle.append(actor)
                    self.start_failures = 0
                except Exception as e:
                    ray.kill(actor)
                    self.start_failures += 1
                    if self.start_failures >= self.MAX_START_FAILURES:
                        raise RuntimeError(f"{self.start_failures} isolation workers in a row could not load the "
                                           f"models: {_cause(e)}") from None
            for ref in list(running):
                actor, recs, tries, deadline = running[ref]
                if ref not in ready and now < deadline:
                    continue
                del running[ref]
                if ref not in ready:  # past its time: stop the worker
                    ray.kill(actor)
                    self.deaths += 1
                    if len(recs) > 1:  # which one hung is not known: each alone
                        queue.extend(([r], 0) for r in recs)
                        continue
                    tracker.add(self._failed_row(
                        recs[0], S.STATUS_TIMEOUT, f"timeout: alone, the sample ran past limits.sample_timeout_s "
                                                   f"({limits.sample_timeout_s:g} s) in the score chain ({stages})"))
                    yield recs[0], S.STATUS_TIMEOUT
                    continue
                try:
                    parts, row_statuses = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # an exception out of our own code: not the sample's
                    self.idle.append(actor)
                    if len(recs) > 1:
                        queue.extend(([r], 0) for r in recs)
                        continue
                    tracker.add(self._failed_row(recs[0], S.STATUS_INVALID_SAMPLE, f"internal error: {_cause(e)}"))
                    yield recs[0], S.STATUS_INVALID_SAMPLE
                    continue
                except Exception as e:  # the actor died: a crash, an abort, an out-of-memory kill
                    self.deaths += 1
                    if len(recs) > 1:
                        queue.extend(([r], 0) for r in recs)
                    elif tries < retries:
                        queue.appendleft((recs, tries + 1))
                    else:
                        tracker.add(self._failed_row(
                            recs[0], S.STATUS_WORKER_DIED, f"worker_died: alone, the sample ended its worker process "
                                                           f"{tries + 1} time(s): {_cause(e)}"))
                        yield recs[0], S.STATUS_WORKER_DIED
                    continue
                self.idle.append(actor)
                tracker.add(parts)
                yield from zip(recs, row_statuses)

    def _failed_row(self, rec: dict[str, Any], status: str, error: str) -> dict[str, np.ndarray]:
        """The part records of a sample's row with ``status`` and ``error`` and no measurement."""
        from curate.scoring.writer import write_parts

        batch = records_to_batch([{**rec, S.STATUS: status, S.ERROR: S.cap_error(error)}])
        batch.pop(S.IMAGE_BYTES, None)
        if self.embedding_dim:
            from curate.stages.common import object_array

            for c in S.EMBEDDING_COLUMNS:
                batch[c] = np.full((1, self.embedding_dim), np.nan, dtype=np.float16)
            batch[S.IMAGE_HASH] = object_array([b""])
            batch[S.IMAGE_PHASH] = np.zeros(1, dtype=np.int64)
        return write_parts(batch, self.out_dir)


def _cause(e: BaseException) -> str:
    """One line on why a worker died or a call failed: what curate's guard or an injected fault
    printed in the worker's log, when this node has it (``curate: ...``), else Ray's message."""
    import re

    from curate.runtime import root_cause

    text = str(e)
    pid = re.search(r"\bpid: (\d+)", text)
    said = _worker_said(int(pid.group(1))) if pid else None
    detail = re.search(r"Worker exit detail: ([^.]*\.)", text)
    first = " ".join(str(root_cause(e)).split())
    out = first + (f" ({detail.group(1)})" if detail else "") + (f"; the worker said: {said}" if said else "")
    return S.cap_error(out, 600)


def _worker_said(pid: int) -> str | None:
    """The last ``curate:`` line a worker process wrote to its stderr log (a local Ray session's
    ``logs/worker-*-<pid>.err``), or ``None``."""
    import glob

    try:
        import ray

        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:
        return None
    for path in glob.glob(os.path.join(glob.escape(logs), f"worker-*-{pid}.err")):
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 65536))
                lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.startswith("curate: ")]
        except OSError:
            continue
        if lines:
            return S.cap_error(lines[-1][len("curate: "):], 300)
    return None
