"""The streaming scan of ``curate filter`` and its external sort, in bounded memory.

``select_pool`` evaluates the plan (``curate.filters.plan``) on every row in one scan and
spills the kept rows to uid ranges and every row's uid hash to hash buckets (``KeptRuns``);
``shared_uids`` finds the uids that name no single sample; ``KeptRuns.write_subset`` sorts one
range at a time and appends it to the subset files (written by ``curate.io.subset``).
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters.plan import FilterPlan
from curate.filters.rules import OK
from curate.io.subset import BATCH_ROWS, uids_to_datacomp, write_array, write_npy_from_raw
from curate.query import VIEW

PART_POOL_ROWS = 1 << 19  # pool rows a uid range of the kept rows covers (about, for hex uids)
RANGE_ROWS = 1 << 18  # kept rows a range is split into when it holds more than twice this
PENDING_ROWS = 1 << 18  # kept rows that wait before they are routed to their ranges
SPLIT_SAMPLE = 1 << 16  # uids sampled to split a range
HASH_BUCKET_ROWS = 1 << 23  # uid hashes a bucket of the duplicate search holds (about)
MAX_FILES = 512  # at most this many uid ranges and hash buckets (open files) in a run
UID_HASH = f"hash({S.UID})"  # DuckDB's 64-bit hash: equal uids, equal hashes
_HASH, _OK, _KEPT, _ROW = "__h", "__ok", "__kept", "__row"  # select_pool's own columns
# What makes rows of one uid copies of one sample (DataComp's upweighted duplicates).
SAMPLE_FIELDS = f"{S.TEXT}, {S.WIDTH}, {S.HEIGHT}, {S.NUM_TEXT_BOXES}, round({S.CLIP_SCORE}, 3)"
SAME_SAMPLE = f"count(DISTINCT ({SAMPLE_FIELDS})) = 1"


def select_pool(con: duckdb.DuckDBPyConnection, plan: FilterPlan, work: Path) -> tuple[int, int, list[int], KeptRuns]:
    """One scan of the pool: evaluate the rule on every row, count what each part removes, and
    spill the kept rows to uid ranges and every row's uid hash to hash buckets (``KeptRuns``).

    Returns:
        ``(pool rows, ok rows, ok rows each part of plan.names removes, the spilled runs)``.
    """
    (pool_rows,) = con.execute(f"SELECT count(*) FROM {VIEW}").fetchall()[0]
    n = len(plan.passes_sql)
    passes = "".join(f", {p} AS __p{i}" for i, p in enumerate(plan.passes_sql))
    # Each part is evaluated once a row (columns __p<i>); the kept rows' columns travel as one
    # struct, null on the other rows (a CASE a column costs more). No "SELECT *" over the
    # index: its columns never shadow these internal names, and --where was checked against
    # the index's own columns (check_where_binds), so it cannot name them either.
    cols = ", ".join(plan.columns)
    row = ", ".join(f"{c} := {c}" for c in plan.columns)
    reader = con.sql(
        f"SELECT {_HASH}, {_OK}, {_KEPT}{''.join(f', NOT __p{i} AS __f{i}' for i in range(n))}, "
        f"CASE WHEN {_KEPT} THEN struct_pack({row}) END AS {_ROW} FROM ("
        f"SELECT *, {_OK} AND ({plan.on_passes}) AS {_KEPT} FROM ("
        f"SELECT {cols}, {UID_HASH} AS {_HASH}, coalesce({OK}, FALSE) AS {_OK}{passes} FROM {VIEW}))"
    ).to_arrow_reader(BATCH_ROWS)
    runs = KeptRuns(work, reader.schema, pool_rows)
    pool_ok, removed = 0, [0] * n
    with runs:
        for batch in reader:
            ok = batch.column(_OK).to_numpy(zero_copy_only=False)
            pool_ok += int(ok.sum())
            for i in range(len(removed)):
                removed[i] += int((batch.column(f"__f{i}").to_numpy(zero_copy_only=False) & ok).sum())
            runs.add(batch.column(_HASH).to_numpy(), batch.column(_KEPT).to_numpy(zero_copy_only=False), batch)
    return int(pool_rows), pool_ok, removed, runs


KEY_BYTES = 32  # uid bytes that route a row to its uid range (a DataComp uid is 32 hex characters)


def uid_sort_keys(uids: pa.Array) -> np.ndarray:
    """Each uid's first ``KEY_BYTES`` bytes, zero-padded: ``(N,) "S32"``. NumPy compares them
    bytewise, so the map is monotone (never decreasing) in DuckDB's and Arrow's string order;
    a null uid is ``b"\xff" * 32``, at the end (``ORDER BY`` puts nulls last)."""
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if n and (lengths == KEY_BYTES).all():  # the usual case: one reshape
        mat = data[offsets[0]:offsets[-1]].reshape(n, KEY_BYTES).copy()
    else:
        mat = np.zeros((n, KEY_BYTES), dtype=np.uint8)
        for j in range(KEY_BYTES):
            has = lengths > j
            mat[has, j] = data[starts[has] + j]
    if arr.null_count:
        mat[~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)] = 255
    return mat.view(f"S{KEY_BYTES}").reshape(n)


def uid_bounds(ranges: int) -> list[str]:
    """The ``ranges - 1`` lower bounds (after the first) of uid ranges that split uniformly
    spread hex uids (DataComp's, or md5 ones) evenly: 4-hex-digit prefixes. String comparison
    puts any uid, hex or not, in exactly one range; the streaming filter splits a range that
    receives too many rows (``KeptRuns``), the distributed one shuffles by them."""
    return [f"{j * 16**4 // ranges:04x}" for j in range(1, ranges)]


class KeptRuns:
    """What ``select_pool`` spills, in bounded memory whatever the pool size.

    - The kept rows (the subset's columns and the uid hash ``_h``), split into disjoint uid
      ranges in order, one LZ4 Arrow IPC stream a range (``uid_bounds``: about
      ``PART_POOL_ROWS`` pool rows a range for hex uids). Rows wait in one pending table of at
      most ``PENDING_ROWS`` rows before they are routed, so writes stay large.
    - Every row's 64-bit uid hash (``UID_HASH``), split by its top bits into buckets of about
      ``HASH_BUCKET_ROWS`` hashes (raw ``uint64`` files), where ``duplicate_hashes`` looks for
      uids carried by several rows.

    ``write_subset`` then sorts one range at a time; a range of more than ``2 * RANGE_ROWS``
    rows (uids that are not spread hex, or a rule that keeps one uid range) is first split into
    pieces of about ``RANGE_ROWS`` rows at quantiles of a strided sample of its uids. So at most
    ``2 * RANGE_ROWS`` rows are sorted in memory, unless more rows than that share their first
    ``KEY_BYTES`` uid bytes. ``MAX_FILES`` caps the open files (above ``MAX_FILES *
    PART_POOL_ROWS`` pool rows the ranges grow, and are split).
    """

    def __init__(self, work: Path, schema: pa.Schema, pool_rows: int):
        self.work = work
        self.schema = pa.schema(list(schema.field(_ROW).type) + [schema.field(_HASH)])
        ranges = int(min(MAX_FILES, max(1, -(-pool_rows // PART_POOL_ROWS))))
        self.bounds = np.asarray([b.encode() for b in uid_bounds(ranges)], dtype=f"S{KEY_BYTES}")
        self.counts = np.zeros(ranges, dtype=np.int64)
        bits = int(min(int(math.log2(MAX_FILES)), max(0, math.ceil(math.log2(max(1, pool_rows / HASH_BUCKET_ROWS))))))
        self.buckets = 1 << bits
        self.bucket_starts = (np.arange(1, self.buckets, dtype=np.uint64) << np.uint64(64 - bits)) if bits else \
            np.zeros(0, np.uint64)
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._hash_files: list = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._pieces = 0
        self.bad_uid_rows = 0  # kept rows left out: their uid is not a uid (curate.schema.uid_mask)

    def _range_path(self, j: int) -> Path:
        return self.work / f"kept-{j:04d}.arrow"

    def _bucket_path(self, j: int) -> Path:
        return self.work / f"hashes-{j:04d}.u64"

    def __enter__(self):
        self._hash_files = [open(self._bucket_path(j), "wb") for j in range(self.buckets)]
        return self

    def __exit__(self, *exc):
        self._flush()
        for f in self._hash_files:
            f.close()
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def add(self, hashes: np.ndarray, kept: np.ndarray, batch: pa.RecordBatch) -> None:
        """Spill one scanned batch: ``hashes`` ``(N,) uint64`` of every row, ``kept`` ``(N,)
        bool``, and the batch (its struct column ``_row`` holds a kept row's columns). A kept row
        whose uid is not a uid is left out and counted (``bad_uid_rows``)."""
        hashes = np.sort(hashes)
        for f, part in zip(self._hash_files, np.split(hashes, np.searchsorted(hashes, self.bucket_starts))):
            write_array(f, part)
        if not kept.any():
            return
        picked = batch.select([_ROW, _HASH]).filter(pa.array(kept))
        rows = pa.Table.from_arrays(picked.column(0).flatten() + [picked.column(1)], schema=self.schema)
        good = S.uid_mask(rows.column(S.UID))
        if not good.all():
            self.bad_uid_rows += int((~good).sum())
            rows = rows.filter(pa.array(good))
        self._pending.append(rows)
        self._pending_rows += rows.num_rows
        if self._pending_rows >= PENDING_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        which = np.searchsorted(self.bounds, uid_sort_keys(rows.column(S.UID)), side="right")
        if (np.diff(which) < 0).any():  # else already in range order (e.g. all in one range)
            order = np.argsort(which, kind="stable")
            rows, which = rows.take(pa.array(order)), which[order]
        cuts = np.searchsorted(which, np.arange(len(self.counts) + 1))
        for j in np.flatnonzero(np.diff(cuts)):
            if j not in self._writers:
                self._writers[j] = _ipc_writer(self._range_path(j), self.schema)
            self._writers[j].write_table(rows.slice(cuts[j], cuts[j + 1] - cuts[j]))
            self.counts[j] += cuts[j + 1] - cuts[j]

    def duplicate_hashes(self) -> np.ndarray:
        """The uid hashes that occur on more than one row of the pool: ``(D,) uint64``, sorted.
        One bucket in memory at a time (``numpy.sort``)."""
        found = [np.zeros(0, np.uint64)]
        for j in range(self.buckets):
            h = np.fromfile(self._bucket_path(j), dtype=np.uint64)
            h.sort()
            found.append(np.unique(h[1:][h[1:] == h[:-1]]))
            self._bucket_path(j).unlink()
        return np.concatenate(found)

    def sorted_ranges(self):
        """The kept rows, one sorted ``pyarrow.Table`` a uid range, in uid order (uid, shard,
        key; nulls last, as DuckDB's ``ORDER BY``); each range's file is removed once read."""
        for j in range(len(self.counts)):
            if self.counts[j]:
                yield from self._sorted(self._range_path(j), int(self.counts[j]))

    def _sorted(self, path: Path, rows: int):
        if rows > 2 * RANGE_ROWS:
            pieces = self._split(path, rows)
            if pieces is not None:
                for piece, n in pieces:
                    if n:
                        yield from self._sorted(piece, n)
                return
        with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
            table = reader.read_all()
        path.unlink()
        yield table.sort_by([(S.UID, "ascending"), (S.SHARD, "ascending"), (S.KEY, "ascending")])

    def _split(self, path: Path, rows: int) -> list[tuple[Path, int]] | None:
        """Split one range file into pieces of about ``RANGE_ROWS`` rows at the quantiles of a
        strided sample of its uids (two reads of the file, one batch in memory); ``None`` when
        its uids cannot be told apart by their first ``KEY_BYTES`` bytes."""
        stride = max(1, rows // SPLIT_SAMPLE)
        sample = []
        with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
            for batch in reader:
                sample.append(uid_sort_keys(batch.column(S.UID))[::stride].copy())  # not a view of the batch's keys
        sample = np.sort(np.concatenate(sample))
        n_pieces = -(-rows // RANGE_ROWS)
        bounds = np.unique(sample[(np.arange(1, n_pieces) * len(sample)) // n_pieces])
        bounds = bounds[bounds > sample[0]]  # an empty first piece would split nothing
        if not len(bounds):
            return None
        self._pieces += 1
        paths = [self.work / f"piece-{self._pieces:04d}-{i:04d}.arrow" for i in range(len(bounds) + 1)]
        counts = [0] * len(paths)
        writers = [_ipc_writer(p, self.schema) for p in paths]
        try:
            with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
                for batch in reader:
                    which = np.searchsorted(bounds, uid_sort_keys(batch.column(S.UID)), side="right")
                    order = np.argsort(which, kind="stable")
                    batch, which = batch.take(pa.array(order)), which[order]
                    cuts = np.searchsorted(which, np.arange(len(paths) + 1))
                    for i in np.flatnonzero(np.diff(cuts)):
                        writers[i].write_batch(batch.slice(cuts[i], cuts[i + 1] - cuts[i]))
                        counts[i] += int(cuts[i + 1] - cuts[i])
        finally:
            for w in writers:
                w.close()
        path.unlink()
        return list(zip(paths, counts))

    def write_subset(self, parquet_path: Path, npy_path: Path, shared: pa.Array) -> tuple[int, int]:
        """Append the sorted ranges in order to ``parquet_path`` (the subset's columns) and
        ``npy_path`` (``uids_to_datacomp``), leaving out the rows whose uid is in ``shared``.

        Returns:
            ``(rows written, rows left out as shared)``.
        """
        from concurrent.futures import ThreadPoolExecutor

        written = left_out = 0
        uids = self.work / "uids.u8u8"
        schema = self.schema.remove(self.schema.get_field_index(_HASH))
        last: list = [None, True]  # the last uid pair written, whether all came in order

        def write(rows: pa.Table) -> None:
            for start in range(0, rows.num_rows, BATCH_ROWS):
                chunk = rows.slice(start, BATCH_ROWS)
                writer.write_table(chunk)
                pairs = uids_to_datacomp(chunk.column(S.UID))
                if len(pairs):
                    if last[0] is not None and pairs[0].item() < last[0]:
                        last[1] = False
                    last[0] = pairs[-1].item()
                write_array(raw, pairs)

        # One thread writes a range (Parquet encoding, uid decoding) while this one sorts the next.
        with pq.ParquetWriter(parquet_path, schema) as writer, open(uids, "wb") as raw, \
                ThreadPoolExecutor(1) as pool:
            pending = None
            for rows in self.sorted_ranges():
                rows = rows.drop_columns([_HASH])
                if len(shared):
                    drop = pc.fill_null(pc.is_in(rows.column(S.UID), value_set=shared), False)
                    left_out += int(pc.sum(drop).as_py() or 0)
                    rows = rows.filter(pc.invert(drop))
                written += rows.num_rows
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, rows)
            if pending is not None:
                pending.result()
        in_order = last[1]
        write_npy_from_raw(uids, npy_path, np.dtype("u8,u8"), written, sort=not in_order)
        return written, left_out


def _ipc_writer(path: Path, schema: pa.Schema) -> pa.ipc.RecordBatchStreamWriter:
    return pa.ipc.new_stream(path, schema, options=pa.ipc.IpcWriteOptions(compression="lz4"))


def shared_uids(con: duckdb.DuckDBPyConnection, duplicate_hashes: np.ndarray) -> pa.Array:
    """The uids that name no single sample: carried by several rows of which one is not ok, or
    which differ in caption, size, number of text boxes or CLIP score to 3 decimals. Only the
    rows whose uid hash is in ``duplicate_hashes`` (usually none) are read.

    Returns:
        A string array (empty when no hash repeats).
    """
    if not len(duplicate_hashes):
        return pa.array([], pa.string())
    con.register("_repeated_hashes", pa.table({"h": pa.array(duplicate_hashes, pa.uint64())}))
    try:
        return con.sql(
            f"SELECT {S.UID} FROM {VIEW} WHERE {UID_HASH} IN (SELECT h FROM _repeated_hashes) GROUP BY {S.UID} "
            f"HAVING count(*) > 1 AND NOT (bool_and({OK}) AND {SAME_SAMPLE})"
        ).to_arrow_table().column(0).combine_chunks()
    finally:
        con.unregister("_repeated_hashes")
