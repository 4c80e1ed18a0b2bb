"""Index files written where the rows are; the driver only keeps the books.

The rows of one shard flow through the plan in several blocks, on any node. The last operator
of the plan, ``write_parts`` (Ray tasks), writes the rows of each block as *part files*
(``<out>/_parts/<index file name>/<random>.parquet``, atomically) and returns one small *part
record* per shard of the block: the part's path and the positions (``_seq``) of its rows in the
shard. The driver (``ShardTracker``) receives only these records: no scored row goes through
it. When every position of a shard has arrived, it starts ``finalize_shard`` as a Ray task,
which merges the parts into the shard's index file (atomically, ``write_index_file``) and
removes them.

Exactly once per sample: a row is identified by ``(shard, _seq)``. When Ray re-executes a task
(node loss, lineage reconstruction) and a part arrives a second time, the tracker counts the
repeated positions as duplicates, and ``finalize_shard`` keeps the first copy of each
position; rows that arrive after their shard's file is written are dropped the same way.

The score-index folder must be visible at the same path from every node (a shared filesystem:
NFS, a Kubernetes volume, a FUSE-mounted bucket), as it is for DataComp's and img2dataset's
workers.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate.io.atomic import atomic_path
from curate.io.index import index_path, parts_dir, records_to_table, write_index_file
from curate.io.shards import SHARD_COMPLETE, SHARD_UNREADABLE
from curate.scoring.plan import BUSY_PREFIX, DONE_AT
from curate.scoring.records import DIGEST, FIXES, IGNORED, SEQ, SHARD_ERROR, SHARD_N, SHARD_RECORD, SHARD_STATUS
from curate.scoring.summary import SHARD_FAILED, ShardResult
from curate.stages.common import object_array

log = logging.getLogger("curate")

# Columns of a part record (one row per shard of a written block).
P_SHARD, P_PATH, P_SEQS, P_N = "shard", "part", "seqs", "shard_n"
P_STATUS, P_ERROR, P_IGNORED, P_WRITE_ERROR = "shard_status", "shard_error", "ignored", "write_error"


def write_parts(batch: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    """Ray Data function: write the scored rows of a block as one part file per shard and return
    one part record per shard (never raises for one shard: a part that cannot be written comes
    back with ``write_error`` set, and only that shard fails).

    Args:
        batch: scored rows (index columns, ``_seq`` / ``_shard_*`` bookkeeping, ``_busy_*``).
        out_dir: the score-index folder (shared by every node).

    Returns:
        Columns ``shard`` (str), ``part`` (path, ``""`` for a shard record), ``seqs`` (bytes:
        ``int64`` positions of the rows in their shard), ``shard_n``, ``shard_status``,
        ``shard_error``, ``ignored``, ``write_error``, ``_busy_<stage>`` (float64 seconds) and
        ``_done_at`` (the earliest time a row of the part left the last stage).
    """
    shards = np.asarray(batch[S.SHARD], dtype=object)
    busy_cols = [c for c in batch if c.startswith(BUSY_PREFIX)]
    out: dict[str, list] = collections.defaultdict(list)
    for url in dict.fromkeys(shards.tolist()):
        sel = np.flatnonzero(shards == url)
        first = int(sel[0])
        part, seqs, error = "", np.zeros(0, dtype=np.int64), ""
        if batch[S.STATUS][first] != SHARD_RECORD:
            seqs = np.asarray(batch[SEQ], dtype=np.int64)[sel]
            try:
                part = _write_part(out_dir, url, {k: v[sel] for k, v in batch.items()}, seqs)
            except Exception as e:  # this shard fails by name; the block's other shards go on
                error = S.cap_error(f"{type(e).__name__}: {e}")
        out[P_SHARD].append(url)
        out[P_PATH].append(part)
        out[P_SEQS].append(seqs.tobytes())
        out[P_N].append(int(batch[SHARD_N][first]))
        out[P_STATUS].append(str(batch[SHARD_STATUS][first]))
        out[P_ERROR].append(S.cap_error(str(batch[SHARD_ERROR][first] or "")))
        out[P_IGNORED].append(int(batch[IGNORED][first]))
        out[P_WRITE_ERROR].append(error)
        for c in busy_cols:
            out[c].append(float(np.asarray(batch[c], dtype=np.float64)[sel].sum()))
        if DONE_AT in batch:
            out[DONE_AT].append(float(np.asarray(batch[DONE_AT], dtype=np.float64)[sel].min()))
    result = {k: (object_array(v) if k in (P_SHARD, P_PATH, P_SEQS, P_STATUS, P_ERROR, P_WRITE_ERROR)
                  else np.asarray(v)) for k, v in out.items()}
    return result


def _write_part(out_dir: str, url: str, cols: dict[str, np.ndarray], seqs: np.ndarray) -> str:
    from curate.io.embeddings import as_matrix, vectors_to_arrow

    table = records_to_table(cols)
    n = len(seqs)
    if S.IMAGE_EMBEDDING in cols:  # --embeddings: the vectors and hashes ride in the part too
        for c in S.EMBEDDING_COLUMNS:
            table = table.append_column(c, vectors_to_arrow(as_matrix(cols[c]), np.ones(n, dtype=bool)))
        table = (table.append_column(S.IMAGE_HASH, pa.array([bytes(h or b"") for h in cols[S.IMAGE_HASH]], pa.binary()))
                 .append_column(S.IMAGE_PHASH, pa.array(np.asarray(cols[S.IMAGE_PHASH], dtype=np.int64))))
    fixes = np.asarray([bool(f) for f in cols.get(FIXES, np.zeros(n, dtype=object))])
    digests = [bytes(d) for d in cols.get(DIGEST, [b""] * n)]
    table = (table.append_column(SEQ, pa.array(seqs, pa.int64())).append_column(FIXES, pa.array(fixes, pa.bool_()))
             .append_column(DIGEST, pa.array(digests, pa.binary())))
    folder = parts_dir(out_dir, url)
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    path = folder / f"{name}.parquet"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    return str(path)


def finalize_shard(url: str, parts: list[str], shard_n: int, shard_status: str, shard_error: str, ignored: int,
                   out_dir: str, metadata: dict[str, str]) -> ShardResult:
    """Merge a shard's part files into its index file (atomically) and remove the parts.

    Idempotent, so Ray may retry it: when the parts are gone but the shard's complete index file
    is there, the file's own counts are returned.

    Args:
        url: the shard.
        parts: part files of the shard, in arrival order (copies of a position: the first wins).
        shard_n: samples read from the shard (0: an empty or unreadable shard).
        shard_status, shard_error, ignored: how the shard was read (``curate.io.shards``).
        out_dir: the score-index folder.
        metadata: index metadata common to the run (``index_metadata``).

    Returns:
        The shard's ``ShardResult``.

    Raises:
        RuntimeError: the parts do not hold positions ``0 .. shard_n - 1``.
    """
    path = index_path(out_dir, url)
    if shard_status == SHARD_UNREADABLE:
        return ShardResult(url, SHARD_UNREADABLE, shard_error or None)
    if parts and not all(os.path.exists(p) for p in parts) and path.exists():
        from curate.io.index import complete_index_metadata

        md = complete_index_metadata(path) or {}
        if md.get(S.META_SHARD) == url:  # a retry after the file was written and the parts removed
            return _result_of(url, path, pq.read_table(path), shard_status, shard_error, ignored,
                              int(md.get(S.META_CAPTIONS_REPAIRED, 0)))
    if shard_n == 0:
        table = records_to_table({S.STATUS: []})
        repaired = 0
    else:
        merged = pa.concat_tables([pq.read_table(p) for p in parts])
        seqs = merged.column(SEQ).to_numpy()
        unique, first = np.unique(seqs, return_index=True)  # sorted positions, first copy of each
        if len(unique) != shard_n or not np.array_equal(unique, np.arange(shard_n)):
            raise RuntimeError(f"internal error: rows of {url} do not add up ({len(unique)} of {shard_n})")
        merged = merged.take(pa.array(first))
        repaired = int(pc.sum(merged.column(FIXES)).as_py() or 0)
        merged = mark_duplicate_uids_in_table(merged)
        table = merged.select(S.COLUMNS)
        if S.IMAGE_EMBEDDING in merged.column_names:  # written first: a complete index file has its embeddings
            _write_embeddings(path, merged, metadata)
    md = dict(metadata)
    md.update({S.META_SHARD: url, S.META_SHARD_STATUS: shard_status, S.META_NUM_SAMPLES: str(table.num_rows),
               S.META_IGNORED_MEMBERS: str(ignored), S.META_CAPTIONS_REPAIRED: str(repaired)})
    if shard_error:
        md[S.META_SHARD_ERROR] = S.cap_error(str(shard_error))
    write_index_file(path, table, md)
    shutil.rmtree(parts_dir(out_dir, url), ignore_errors=True)
    return _result_of(url, path, table, shard_status, shard_error, ignored, repaired)


def _write_embeddings(path: Path, merged: pa.Table, metadata: dict[str, str]) -> None:
    """The embedding file of the index file ``path`` from a shard's merged rows (nulls where the
    row is not ``ok``, e.g. after duplicate-uid marking)."""
    from curate.io.embeddings import write_embeddings_file

    valid = np.asarray(merged.column(S.STATUS).to_pylist()) == S.STATUS_OK
    cols = {c: merged.column(c).to_numpy(zero_copy_only=False) for c in (S.UID, S.KEY, S.IMAGE_PHASH)}
    cols[S.IMAGE_HASH] = merged.column(S.IMAGE_HASH).to_pylist()
    for c in S.EMBEDDING_COLUMNS:
        arr = merged.column(c).combine_chunks()
        cols[c] = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
    identity = {k: v for k, v in metadata.items() if k in (S.META_CLIP_MODEL, S.META_CLIP_PRETRAINED, S.META_CONFIG)}
    write_embeddings_file(path, cols, valid, identity)


def mark_duplicate_uids_in_table(table: pa.Table) -> pa.Table:
    """``curate.io.samples.mark_duplicate_uids`` over a shard's merged rows, for a shard that was
    streamed (its records were not all in memory at once): rows whose uid is carried by a row of
    another sample (another ``_digest``) get status ``duplicate_uid`` and lose their measurements.
    Rows already ``duplicate_uid`` (a shard read whole was marked when read) are left as they are.

    Args:
        table: index columns plus ``_digest`` (16-byte ``binary``; empty for rows marked already).
    """
    from curate.io.samples import mark_duplicate_uids

    uids = table.column(S.UID).to_pylist()
    if len(set(uids)) == len(uids):
        return table
    status = table.column(S.STATUS).to_pylist()
    error = table.column(S.ERROR).to_pylist()
    light = [{S.UID: u, S.KEY: k, S.STATUS: st, S.ERROR: er, DIGEST: d, "row": i}
             for i, (u, k, st, er, d) in enumerate(zip(uids, table.column(S.KEY).to_pylist(), status, error,
                                                      table.column(DIGEST).to_pylist()))
             if st != S.STATUS_DUPLICATE_UID]
    if not mark_duplicate_uids(light, same=lambda a, b: a[DIGEST] == b[DIGEST]):
        return table
    marked = np.zeros(table.num_rows, dtype=bool)
    for rec in light:
        if rec[S.STATUS] == S.STATUS_DUPLICATE_UID:
            status[rec["row"]], error[rec["row"]] = rec[S.STATUS], rec[S.ERROR]
            marked[rec["row"]] = True
    keep = pa.array(~marked)

    def put(t: pa.Table, name: str, values) -> pa.Table:  # the field itself is kept (its nullability)
        i = t.schema.get_field_index(name)
        return t.set_column(i, t.schema.field(i), values)

    for name in (S.WIDTH, S.HEIGHT, S.TEXT_BOXES, S.NUM_TEXT_BOXES, S.TEXT_AREA_FRAC, S.CLIP_SCORE,
                 S.MASKED_CLIP_SCORE):
        col = table.column(name)
        table = put(table, name, pc.if_else(keep, col, pa.nulls(table.num_rows, col.type)))
    table = put(table, S.STATUS, pa.array(status, pa.string()))
    return put(table, S.ERROR, pa.array(error, pa.string()))


def _result_of(url, path, table, shard_status, shard_error, ignored, repaired) -> ShardResult:
    statuses = collections.Counter(table.column(S.STATUS).to_pylist())
    return ShardResult(url, shard_status, shard_error or None, table.num_rows, dict(statuses), str(path),
                       int(ignored), int(repaired))


class ShardTracker:
    """The driver's books: which positions of each shard have arrived, and which shards are done.

    Per part record the work is a few numpy operations on the positions (no per-row Python), so
    the driver's ceiling is set by the number of part records, not of rows
    (``benchmarks/scale_bench.py`` measures it).

    Args:
        out_dir: the score-index folder.
        metadata: index metadata common to the run.
        on_shard_done: called with each shard's ``ShardResult`` as it is written (or fails).
        finalize: ``"ray"`` runs ``finalize_shard`` as Ray tasks (the default); ``"local"`` runs it
            in this process (no Ray: tests).
    """

    def __init__(self, out_dir: str | Path, metadata: dict[str, str], on_shard_done: Callable[[ShardResult], None],
                 finalize: str = "ray"):
        self.out_dir = str(out_dir)
        self.metadata = metadata
        self.on_shard_done = on_shard_done
        self.finalize = finalize
        self.seen: dict[str, np.ndarray] = {}
        self.parts: dict[str, list[str]] = collections.defaultdict(list)
        self.results: dict[str, ShardResult] = {}
        self.pending: dict[Any, str] = {}  # ObjectRef -> url
        self.started: set[str] = set()
        self.duplicates = 0
        self.busy: dict[str, float] = collections.defaultdict(float)
        self.samples: dict[str, int] = collections.defaultdict(int)
        self.shard_sizes: dict[str, int] = {}
        self.ending: dict[str, tuple[str, str, int]] = {}  # how each shard's reading ended (its worst news)
        self.first_done_at = float("inf")  # wall-clock time the first rows left the last stage
        self.first_rows = 0  # rows that left it then (the first batch)
        self.last_done_at = float("-inf")  # ... and the last rows
        self.rows_done = 0  # rows that left it so far (re-deliveries included)
        self._remote = None

    def _note_done(self, done_at: float, rows: int) -> None:
        """Book ``rows`` rows that left the last stage at ``done_at`` (for ``steady_rate``)."""
        self.rows_done += rows
        if done_at < self.first_done_at:
            self.first_done_at, self.first_rows = done_at, rows
        elif done_at == self.first_done_at:
            self.first_rows += rows
        self.last_done_at = max(self.last_done_at, done_at)

    @property
    def steady_rate(self) -> float | None:
        """Samples/s through the whole plan after the first batch left it: the rows that left
        the last stage after the first ones, over the seconds from the first to the last
        (``None`` before two batches have)."""
        span = self.last_done_at - self.first_done_at
        rows = self.rows_done - self.first_rows
        return rows / span if span > 0 and rows > 0 else None

    def add(self, records: dict[str, np.ndarray]) -> int:
        """Take a batch of part records; start the finalize of every shard now complete. A shard
        whose part could not be written fails by name. Returns the rows new to the books."""
        fresh_rows = 0
        busy_cols = [c for c in records if c.startswith(BUSY_PREFIX)]
        done_at = records.get(DONE_AT)
        for i in range(len(records[P_SHARD])):
            url = str(records[P_SHARD][i])
            seqs = np.frombuffer(records[P_SEQS][i], dtype=np.int64)
            if done_at is not None and len(seqs):  # a shard record (empty, unreadable shard) is no sample
                self._note_done(float(done_at[i]), len(seqs))
            for c in busy_cols:
                self.busy[c[len(BUSY_PREFIX):]] += float(records[c][i])
                self.samples[c[len(BUSY_PREFIX):]] += len(seqs)
            if url in self.started:
                self.duplicates += len(seqs)
                continue
            n = int(records[P_N][i])
            self.shard_sizes[url] = n
            status, error, ignored = str(records[P_STATUS][i]), str(records[P_ERROR][i]), int(records[P_IGNORED][i])
            # A streamed shard's records say "complete" until its last one, which says how it ended.
            before = self.ending.get(url, (SHARD_COMPLETE, "", 0))
            if status != SHARD_COMPLETE:
                before = (status, error, before[2])
            self.ending[url] = (before[0], before[1], max(before[2], ignored))
            if records[P_WRITE_ERROR][i]:
                self._fail(url, f"a part of its index file could not be written: {records[P_WRITE_ERROR][i]}")
                continue
            seen = self.seen.get(url)
            if seen is None:
                seen = self.seen[url] = np.zeros(n, dtype=bool)
            if len(seqs):
                if seqs.max(initial=-1) >= n or seqs.min(initial=0) < 0:
                    self._fail(url, f"internal error: a position outside 0..{n - 1}")
                    continue
                new = ~seen[seqs]
                new &= _first_occurrence(seqs)
                self.duplicates += int(len(seqs) - new.sum())
                fresh_rows += int(new.sum())
                if new.any():
                    seen[seqs[new]] = True
                    self.parts[url].append(str(records[P_PATH][i]))
            if n == 0 or seen.all():
                self._start(url, *self.ending.pop(url), n)
        return fresh_rows

    def _start(self, url: str, status: str, error: str, ignored: int, n: int) -> None:
        self.started.add(url)
        self.seen.pop(url, None)
        args = (url, self.parts.pop(url, []), n, status, error, ignored, self.out_dir, self.metadata)
        if self.finalize == "local":
            try:
                self._done(url, finalize_shard(*args))
            except Exception as e:
                self._fail(url, f"its index file could not be written: {type(e).__name__}: {e}", started=True)
            return
        import ray

        if self._remote is None:
            # 0 CPUs: a merge never waits behind the pipeline's own tasks (it is short and I/O bound).
            self._remote = ray.remote(num_cpus=0, max_retries=3)(finalize_shard)
        self.pending[self._remote.remote(*args)] = url

    def poll(self, timeout: float = 0.0) -> None:
        """Collect the finalize tasks that have finished (wait up to ``timeout`` seconds)."""
        if not self.pending:
            return
        import ray

        from curate.runtime import root_cause

        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        for ref in ready:
            url = self.pending.pop(ref)
            try:
                self._done(url, ray.get(ref))
            except Exception as e:
                self._fail(url, f"its index file could not be written: {root_cause(e)}", started=True)

    def drain(self) -> None:
        """Wait for every finalize task started."""
        while self.pending:
            self.poll(timeout=1.0)

    def _done(self, url: str, result: ShardResult) -> None:
        self.results[url] = result
        self.on_shard_done(result)

    def fail(self, url: str, message: str) -> None:
        """Record the shard ``url`` as failed with ``message`` (its parts are removed)."""
        self._fail(url, message)

    def _fail(self, url: str, message: str, started: bool = False) -> None:
        message = S.cap_error(message)
        log.error("curate score: %s: %s", url, message)
        self.started.add(url)
        self.seen.pop(url, None)
        self.parts.pop(url, None)
        self.ending.pop(url, None)
        shutil.rmtree(parts_dir(self.out_dir, url), ignore_errors=True)
        self._done(url, ShardResult(url, SHARD_FAILED, message))

    def cleanup(self) -> None:
        """Remove the part folders of finished shards left by late re-deliveries, and ``_parts``
        itself when it is empty."""
        for url in self.results:
            shutil.rmtree(parts_dir(self.out_dir, url), ignore_errors=True)
        root = Path(self.out_dir) / "_parts"
        try:
            root.rmdir()
        except OSError:
            pass


def _first_occurrence(seqs: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each value of ``seqs`` (a position repeated in one part)."""
    mask = np.zeros(len(seqs), dtype=bool)
    mask[np.unique(seqs, return_index=True)[1]] = True
    return mask
