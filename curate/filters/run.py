"""``curate filter``: evaluate a rule over the score index and write the subset.

Thresholds for pool-wide fractions come from ``pool_threshold``; the rule is turned into SQL by
``curate.filters.rules`` and run in the locked-down DuckDB connection of ``curate.query``, in
one streaming scan whose kept rows are sorted one uid range at a time (``run_filter``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters.rules import OK, Leaf, Pool, RuleError, check_predicate, leaves, parse_rule, resolve, rule_sql
from curate.io.atomic import (
    ForeignOutput,
    atomic_path,
    make_work_folder,
    read_own_json,
    refuse_foreign,
    remove_work_folder,
    write_json_atomically,
)
from curate.io.datacomp import SCORE_COLUMNS as DATACOMP_SCORES
from curate.io.subset import uids_to_datacomp
from curate.query import VIEW, connect, pool_files, score_index_of


class IndexPool(Pool):
    """The pool of ``curate filter``: thresholds from the locked DuckDB connection, row sets
    registered in it as in-memory Arrow tables, the index folder for rules that read embedding
    files, and the output folder for what they write for inspection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, index, out: str | Path,
                 work: str | Path | None = None, owned: set[str] = frozenset()):
        super().__init__(lambda column, fraction: pool_threshold(
            con, column, fraction, "TRUE" if column in DATACOMP_SCORES else OK))
        # The score index as given (its embedding files and settings), else the metadata folder.
        self.con, self.index, self.out = con, Path(score_index_of(index)), Path(out)
        self.work = Path(work) if work else None
        self.owned = owned  # names in out that a previous run wrote (``check_filter_out``)
        self.staged: list[tuple[Path, Path]] = []  # (written in work, its place in out)
        self._sets = 0
        self._udfs = 0

    def has_values(self, column: str) -> bool:
        """Whether some ``ok`` row has a value in ``column`` (stops at the first)."""
        if column not in {row[0] for row in self.con.execute(f"DESCRIBE {VIEW}").fetchall()}:
            return False  # an index written before the column existed
        return self.con.execute(f"SELECT 1 FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL LIMIT 1").fetchall() != []

    def need_whole_pool(self, leaf: Leaf, what: str) -> None:
        """This pool holds the whole index: every rule may read it."""

    def artifact(self, name: str) -> Path:
        """``out/<name>``, for what a rule writes for inspection (the folder is created).

        Raises:
            ForeignOutput: ``out/<name>`` exists and no previous filter run wrote it.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        refuse_foreign([self.out / name], lambda path: path.name in self.owned)
        return self.out / name

    def write_artifact(self, path: Path, table: pa.Table) -> None:
        """Write ``table`` to ``path`` (from ``artifact``): into ``work`` when the pool has one,
        moved into place with the subset files by ``publish`` (so a failed run leaves the
        previous run's files as they were), else directly (atomically)."""
        if self.work is None:
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
            return
        staged = self.work / f"artifact-{len(self.staged)}.parquet"
        pq.write_table(table, staged)
        self.staged.append((staged, path))

    def publish(self) -> None:
        """Move the staged artifacts into place."""
        for staged, path in self.staged:
            staged.replace(path)
        self.staged.clear()

    def udf(self, leaf: Leaf, fn: Callable, types: tuple[str, ...] = ("VARCHAR",)) -> str:
        """Register ``fn`` in the connection as ``_udf_<n>`` (``types -> BOOLEAN``, default one
        ``VARCHAR``; Arrow batches, nulls passed in: ``fn`` maps them to False)."""
        name = f"_udf_{self._udfs}"  # our own identifier: nothing of the user's reaches the SQL
        self._udfs += 1
        self.con.create_function(name, fn, list(types), "BOOLEAN", type="arrow", null_handling="special",
                                 side_effects=False)
        return name

    def keep_rows(self, leaf: Leaf, rows: pa.Table) -> str:
        name = f"_keep_{self._sets}"  # our own identifier: nothing of the user's reaches the SQL
        self._sets += 1
        self.con.register(name, rows.select([S.SHARD, S.KEY]))
        return f"(({S.SHARD}, {S.KEY}) IN (SELECT {S.SHARD}, {S.KEY} FROM {name}))"


EXACT_ROWS = 1 << 22  # at most this many values are fetched to find an order statistic exactly
BUCKETS = 4096  # histogram buckets a narrowing pass
FIRST_RANGE = (-1.0, 1.0)  # the first pass's range: that of a cosine similarity (CLIP scores)


def pool_threshold(con: duckdb.DuckDBPyConnection, column: str, fraction: float, population: str = OK) -> float:
    """Pool-wide threshold for keeping the top ``fraction`` by ``column`` (DataComp
    ``baselines.get_threshold``, ``-np.sort(-scores)[int(N * fraction)]``): the value at index
    ``int(N * fraction)`` of the descending sort over the ``N`` rows with a value (NaN sorting
    after every number, as ``-np.sort(-x)`` puts it: NaN there means nothing is kept); ``-inf``
    (keep all) when that index is past the end. The rows are the ok rows, or every row of the
    pool for a DataComp metadata column (``population``: DataComp ranks the whole metadata
    pool, downloaded or not). Computed by ``search_threshold`` on the one connection ``con``."""
    return search_threshold(lambda sql, params: [con.execute(sql, params).fetchall()],
                            lambda sql, params: con.execute(sql, params).fetchnumpy()["v"], column, fraction,
                            population)


def search_threshold(rows_of: Callable[[str, dict], list[list[tuple]]], values_of: Callable[[str, dict], np.ndarray],
                     column: str, fraction: float, population: str = OK) -> float:
    """``pool_threshold``, over a pool in one or many parts.

    Found exactly in bounded memory, without sorting or fetching the column. Each pass counts
    the values of a range ``[lo, hi]`` into ``BUCKETS`` equal-width buckets, with each bucket's
    exact min and max (values below ``lo`` counted in the first bucket, above ``hi`` in the last,
    NaN apart), and the range narrows to the bucket that holds the wanted rank; once that bucket
    holds at most ``EXACT_ROWS`` values they are fetched and the order statistic taken with
    ``numpy.partition``. The first pass also counts the pool (the rows and NaNs that fix the
    rank), over ``FIRST_RANGE``, where CLIP scores live; a column outside it costs one pass more,
    as every later range is the exact min and max of a bucket. Buckets are monotone in the value
    (a subtraction and a multiplication by a positive constant, then ``floor``, clamped at the
    ends), so their value ranges never overlap; ties end the search as soon as a range holds one
    value. A pool of ``N`` rows takes about ``1 + log(N / EXACT_ROWS) / log(BUCKETS)`` passes
    and the fetch: at 160M rows one pass and the fetch.

    Args:
        rows_of: runs one SQL query (named parameters ``params``) over the view ``scores`` of
            every part of the pool; returns each part's rows. Counts, minima and maxima are
            merged here, so a part can be one file or one node.
        values_of: runs a query selecting one column ``v`` over every part; returns the values
            of all parts as one array.
        population: the SQL predicate of the rows ranked (default: the ok rows).
    """
    value = f"CAST({column} AS DOUBLE)"
    base = f"FROM {VIEW} WHERE ({population}) AND {column} IS NOT NULL"
    numbers = f"{base} AND NOT isnan({value}) AND {value} BETWEEN $lo AND $hi"
    bucket = (f"CASE WHEN isnan({value}) THEN -1 WHEN {value} <= $lo THEN 0 WHEN {value} >= $hi THEN {BUCKETS - 1} "
              f"WHEN $scale = 0 THEN {BUCKETS // 2} "
              f"ELSE least(CAST(floor(({value} - $lo) * $scale) AS BIGINT), {BUCKETS - 1}) END")
    lo, hi = FIRST_RANGE
    rank = left = None
    while True:
        span = hi - lo
        scale = BUCKETS / span if math.isfinite(span) and span > 0 and math.isfinite(BUCKETS / span) else 0.0
        where = base if rank is None else numbers
        merged: dict[int, list] = {}
        for part in rows_of(f"SELECT {bucket} AS b, count(*), min({value}), max({value}) {where} GROUP BY b",
                            {"lo": lo, "hi": hi, "scale": scale}):
            for b, count, b_lo, b_hi in part:
                m = merged.setdefault(b, [0, b_lo, b_hi])
                m[0], m[1], m[2] = m[0] + count, min(m[1], b_lo), max(m[2], b_hi)
        if rank is None:  # the first pass: the pool's size fixes the rank
            nans = merged.pop(-1, [0])[0]
            n = nans + sum(m[0] for m in merged.values())
            k = int(n * fraction)
            if k >= n:
                return -math.inf
            if k >= n - nans:  # NaNs come last in -np.sort(-x): the threshold is NaN, nothing passes
                return math.nan
            rank = k  # descending rank among the numbers
        for b in sorted(merged, reverse=True):
            count, b_lo, b_hi = merged[b]
            if rank < count:
                lo, hi, left = b_lo, b_hi, count
                break
            rank -= count
        if lo == hi:
            return float(lo)
        if left <= EXACT_ROWS:
            break
    values = np.asarray(values_of(f"SELECT {value} AS v {numbers}", {"lo": lo, "hi": hi}))
    # Descending rank r is ascending index len - 1 - r.
    return float(np.partition(values, len(values) - 1 - rank)[len(values) - 1 - rank])


def kept_text(kept: int, pool_rows: int, pool_ok: int) -> str:
    """The one way curate states a subset's size (filter summary, report):
    ``15 of 41 samples (36.59% of the pool; 38.46% of its 39 ok samples)``. The pool is every
    row, as DataComp states subset sizes; the ok share is the base of curate's ``fraction=``."""
    of_pool = kept / pool_rows if pool_rows else 0.0
    of_ok = kept / pool_ok if pool_ok else 0.0
    return f"{kept} of {pool_rows} samples ({of_pool:.2%} of the pool; {of_ok:.2%} of its {pool_ok} ok samples)"


@dataclass
class FilterSummary:
    """What ``run_filter`` did; ``format()`` is the printed summary."""

    rule: str
    where: str | None
    pool_rows: int
    pool_ok: int
    kept: int
    removed_by: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    shared_uid_rows: int = 0
    details: dict[str, dict] = field(default_factory=dict)
    bad_uid_rows: int = 0
    not_scored: int = 0  # rows of DataComp metadata joined with a score index that the index lacks

    def format(self) -> str:
        lines = [
            "curate filter: summary",
            f"  rule          {self.rule or '-'}" + (f"  WHERE {self.where}" if self.where else ""),
            f"  pool          {self.pool_rows} rows, {self.pool_ok} ok "
            f"({self.pool_rows - self.pool_ok} not ok, never kept)",
            f"  kept          {kept_text(self.kept, self.pool_rows, self.pool_ok)}",
        ]
        if self.not_scored:
            lines.append(f"  not scored    {self.not_scored} row(s) of the DataComp metadata have no row in the score "
                         "index (images that failed to download, or shards not scored): never kept")
        for part, n in self.removed_by.items():
            lines.append(f"  removed by    {part}: {n} ok rows fail it")
        if self.shared_uid_rows:
            lines.append(f"  shared uid    {self.shared_uid_rows} row(s) pass the rule but share their uid with "
                         "another row of the pool: not kept (a uid must name one sample)")
        if self.bad_uid_rows:
            lines.append(f"  bad uid       {self.bad_uid_rows} row(s) pass the rule but their uid is not a uid (32 "
                         "lower-case hex characters; an old or edited index): not kept")
        for name, thr in self.thresholds.items():
            lines.append(f"  threshold     {name} >= {thr:.6g}")
        for name, found in self.details.items():
            shown = {k: v for k, v in found.items() if k != "warning"}
            if shown:
                lines.append(f"  found         {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
            if found.get("warning"):
                lines.append(f"  WARNING       {name}: {found['warning']}")
        for path in self.outputs.values():
            lines.append(f"  wrote         {path}")
        return "\n".join(lines)


def run_filter(index, rule: str | None, out: str | Path, where: str | None = None,
               memory_limit: str | None = "2GiB") -> FilterSummary:
    """Select a subset of the pool with a rule expression and/or a SQL predicate.

    Writes ``out/subset.parquet`` (uid, shard, key and the columns the rule reads, sorted by uid)
    and ``out/subset.npy`` (DataComp format, see ``uids_to_datacomp``). Only ``ok`` rows are
    kept, whatever ``where`` says; a row whose uid is carried by a row of another sample (another
    caption or size, or a row that is not ok; in one shard or in two) is never kept, since a
    subset of uids could not tell them apart; they are counted in ``shared_uid_rows``. Rows that
    are copies of one sample (all ok, with the same caption, width, height, number of text boxes
    and CLIP score to 3 decimals) are each kept, so the subset lists the uid once per copy
    (DataComp's upweighting). A row whose uid is not a uid (``curate.schema.is_uid``: an index
    written by an old version or edited by hand) is one bad row: never kept, counted in
    ``bad_uid_rows``, and the rest of the pool is filtered as usual.

    Memory is bounded by construction, whatever the pool size (``select_pool``, ``KeptRuns``):
    thresholds come from ``pool_threshold`` (histogram passes, no column fetched); then one scan
    evaluates each part of the rule once a row, counts what each part removes, and spills the
    kept rows to disjoint uid ranges and every row's uid hash to hash buckets under
    ``out/.filter-work``; repeated uids are found one bucket at a time and checked exactly
    (``shared_uids``); the ranges are sorted one at a time and appended to ``subset.parquet``
    and ``subset.npy``. Each step holds a fixed number of rows (``PART_POOL_ROWS``,
    ``RANGE_ROWS``, ``PENDING_ROWS``, ``HASH_BUCKET_ROWS``), so the peak does not grow with the
    pool; DuckDB holds at most ``memory_limit`` (spilling to ``out/.duckdb-tmp``); both folders
    are removed afterwards. Disk: about the kept rows' subset columns plus 8 bytes a pool row,
    until the end. Pool rules that read embedding files (``dedup`` and the like) hold their
    vectors in memory.

    Args:
        index: the pool (``curate.query.connect``): a score-index folder, a DataComp metadata
            folder, or a list of one of each (joined by uid).
        rule: e.g. ``"tmars(fraction=0.5) & basic()"`` (see ``curate.filters``), or ``None``.
        out: output folder.
        where: one extra SQL expression on the index columns, ANDed with the rule
            (``check_predicate``: nothing else can run).
        memory_limit: DuckDB's memory limit (DuckDB syntax, e.g. ``"2GiB"``); ``None``: DuckDB's
            default, 80% of RAM.

    Raises:
        RuleError: a bad rule, or ``where`` that is not exactly one expression.
        FileNotFoundError: no index files.
        ForeignOutput (a ValueError): ``out`` would replace a file that no previous filter run
            wrote there, or is the index's own folder (``check_filter_out``; before any work).
    """
    if not rule and not where:
        raise RuleError("give --rule and/or --where")
    expr = check_predicate(where) if where else None
    out = Path(out)
    owned = check_filter_out(out, index)
    spill = make_work_folder(out / ".duckdb-tmp") if memory_limit else None
    try:
        con = connect(index, memory_limit=memory_limit, temp_directory=spill)
        try:
            return _run_filter(con, index, rule, out, where, expr, owned)
        finally:
            con.close()
    finally:
        if spill is not None:
            remove_work_folder(spill)


SUMMARY_FILE = "filter_summary.json"
SUBSET_FILES = ("subset.parquet", "subset.npy")


def check_filter_out(out: Path, index: str | Path) -> set[str]:
    """The names of the files in ``out`` that a filter run may replace: those the previous
    run's ``filter_summary.json`` lists (its subset files and what its pool rules wrote) and the
    summary itself; none when ``out`` holds no summary of curate's.

    Raises:
        ForeignOutput: ``out`` is the folder of an index file (the subset would join or replace
            the index), or holds a subset file or a summary that no filter run wrote.
        FileNotFoundError: no index files.
    """
    target = out.resolve()
    index_list, meta_list = pool_files(index)
    if any(Path(f).parent == target for f in [*index_list, *meta_list]):
        raise ForeignOutput(f"--out {out} is the score index's folder (or the metadata's: --index); "
                            "write the subset to another folder")
    summary = read_own_json(out / SUMMARY_FILE, "rule", "pool_rows", "kept", "outputs")
    outputs = summary["outputs"] if summary is not None and isinstance(summary["outputs"], dict) else {}
    owned = {Path(v).name for v in outputs.values() if isinstance(v, str)} | ({SUMMARY_FILE} if summary else set())
    refuse_foreign([out / name for name in (*SUBSET_FILES, SUMMARY_FILE)], lambda path: path.name in owned)
    return owned


BATCH_ROWS = 1 << 20  # kept rows a batch (one Parquet row group)


@dataclass
class FilterPlan:
    """A rule and ``--where`` resolved against a pool (``plan_filter``).

    Attributes:
        predicate: the SQL of a kept row (with ``--where``; ``ok`` is added by the caller).
        parts: the rule's leaves.
        columns: the subset's columns: uid, shard, key, then those the rule reads.
        names: a name for each part (and ``WHERE ...``), in the order of ``counts_sql``'s counts.
        counts_sql: one aggregate over the view: pool rows, ok rows, then the ok rows each part
            removes on its own.
        passes_sql: the SQL of each of ``names`` on its own: whether a row passes it (never null).
        on_passes: the predicate (without ``ok``) over columns ``__p0``, ``__p1``, ... holding
            ``passes_sql``: each part is evaluated once a row.
    """

    predicate: str
    parts: list[Leaf]
    columns: list[str]
    names: list[str]
    counts_sql: str
    passes_sql: list[str]
    on_passes: str


def plan_filter(rule: str | None, where: str | None, expr: str | None, pool: Pool) -> FilterPlan:
    """Parse ``rule``, resolve it against ``pool`` (thresholds, pool rules) and add the checked
    ``--where`` expression ``expr``.

    Raises:
        RuleError: a bad rule.
    """
    tree = parse_rule(rule) if rule else None
    predicate = resolve(tree, pool) if tree else OK
    if expr:
        predicate = f"{predicate} AND coalesce({expr}, FALSE)"
    parts = leaves(tree) if tree else []
    columns = [S.UID, S.SHARD, S.KEY]
    for leaf in parts:
        columns += [c for c in leaf.columns if c not in columns]
    names = [str(leaf) for leaf in parts] + ([f"WHERE {where}"] if where else [])
    preds = [leaf.sql for leaf in parts] + ([expr] if expr else [])
    counts_sql = (f"SELECT count(*), count(*) FILTER (WHERE {OK})"
                  + "".join(f", count(*) FILTER (WHERE {OK} AND NOT coalesce({p}, FALSE))" for p in preds)
                  + f" FROM {VIEW}")
    position = {id(leaf): i for i, leaf in enumerate(parts)}
    on_flags = [rule_sql(tree, lambda leaf: f"__p{position[id(leaf)]}")] if tree else []
    on_flags += [f"__p{len(parts)}"] if expr else []
    return FilterPlan(predicate, parts, columns, names, counts_sql,
                      [f"coalesce(({p}), FALSE)" for p in preds], " AND ".join(on_flags) or "TRUE")


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


def _run_filter(con, index, rule, out: Path, where, expr, owned: set[str]) -> FilterSummary:
    out.mkdir(parents=True, exist_ok=True)
    work = make_work_folder(out / ".filter-work")
    try:
        try:
            if expr:
                check_where_binds(con, expr)
            pool = IndexPool(con, index, out, work, owned)
            plan = plan_filter(rule, where, expr, pool)
            pool_rows, pool_ok, removed, runs = select_pool(con, plan, work)
            shared = shared_uids(con, runs.duplicate_hashes())
        except duckdb.Error as e:
            raise RuleError(f"DuckDB rejected the filter: {e}") from None
        # Written under .filter-work and renamed when both are complete: a run that fails
        # (a full disk, say) leaves the previous subset files as they were.
        kept_rows, shared_uid_rows = runs.write_subset(work / "subset.parquet", work / "subset.npy", shared)
        (work / "subset.parquet").replace(out / "subset.parquet")
        (work / "subset.npy").replace(out / "subset.npy")
        pool.publish()
    finally:
        remove_work_folder(work)
    not_scored = 0
    if all(pool_files(index)):  # a score index joined with DataComp metadata
        (not_scored,) = con.execute(f"SELECT count(*) FROM {VIEW} WHERE {S.STATUS} = '{S.STATUS_NOT_SCORED}'"
                                    ).fetchall()[0]
    return write_summary(out, rule, where, plan.parts, pool_rows, pool_ok, kept_rows, dict(zip(plan.names, removed)),
                         shared_uid_rows, runs.bad_uid_rows, not_scored)


def check_where_binds(con: duckdb.DuckDBPyConnection, expr: str) -> None:
    """Bind the checked ``--where`` expression as the ``WHERE`` of a query over the index
    (nothing is read: ``LIMIT 0``), so it is refused here, with DuckDB's message, when it names a
    column the index lacks or holds an aggregate or a window function, as a ``WHERE`` clause
    would refuse it; in the filter's own projections it could otherwise name their internal
    columns, or make DuckDB hold the whole pool for a window.

    Raises:
        duckdb.Error: DuckDB refuses it.
    """
    con.execute(f"SELECT 1 FROM {VIEW} WHERE coalesce(({expr}), FALSE) LIMIT 0").fetchall()


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


def write_array(f, a: np.ndarray) -> None:
    """Append ``a``'s bytes to the binary file ``f``. Unlike ``ndarray.tofile``, whose error on
    a full disk has no errno ("1000000 requested and 0 written"), Python's write raises
    ``OSError`` with ``errno.ENOSPC``."""
    f.write(np.ascontiguousarray(a).view(np.uint8).data)


def _ipc_writer(path: Path, schema: pa.Schema) -> pa.ipc.RecordBatchStreamWriter:
    return pa.ipc.new_stream(path, schema, options=pa.ipc.IpcWriteOptions(compression="lz4"))


def write_npy_from_raw(raw: Path, npy_path: Path, dtype: np.dtype, n: int, sort: bool = False) -> None:
    """``npy_path``: the ``n`` records of ``dtype`` in the raw file ``raw`` behind a ``.npy``
    header (``numpy.lib.format``), copied in blocks; sorted in place (memory-mapped) if
    ``sort``. ``raw`` is removed."""
    with open(npy_path, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out, 1 << 24)
    raw.unlink()
    if sort and n:
        arr = np.load(npy_path, mmap_mode="r+", allow_pickle=False)  # the file just written above
        arr.sort()
        arr.flush()
        del arr


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


def write_unshared(reader: pa.RecordBatchReader, path: str | Path) -> tuple[int, int]:
    """Stream ``reader``'s rows to the Parquet file ``path`` (a row group a batch), leaving out
    the rows whose boolean column ``_shared`` is true, and the column itself.

    Returns:
        ``(rows written, rows left out)``.
    """
    schema = reader.schema.remove(reader.schema.get_field_index("_shared"))
    kept = shared = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in reader:
            mask = batch.column("_shared").to_numpy(zero_copy_only=False).astype(bool)
            shared += int(mask.sum())
            table = pa.Table.from_batches([batch]).drop_columns(["_shared"]).filter(pa.array(~mask))
            writer.write_table(table)
            kept += table.num_rows
    return kept, shared


def write_summary(out: Path, rule: str | None, where: str | None, parts: list[Leaf], pool_rows: int, pool_ok: int,
                  kept: int, removed: dict[str, int], shared_uid_rows: int, bad_uid_rows: int = 0,
                  not_scored: int = 0) -> FilterSummary:
    """The ``FilterSummary`` of a filter run, also written to ``out/filter_summary.json`` (strict
    JSON: a "keep all" threshold is the string ``"-inf"``)."""
    thresholds = {f"{leaf} on {col}": thr for leaf in parts for col, thr in leaf.thresholds.items()}
    summary = FilterSummary(rule or "", where, pool_rows, pool_ok, kept, removed, thresholds,
                            {"parquet": str(out / "subset.parquet"), "npy": str(out / "subset.npy")},
                            shared_uid_rows, {str(leaf): leaf.details for leaf in parts if leaf.details},
                            bad_uid_rows, not_scored)
    for leaf in parts:
        summary.outputs.update({f"{leaf.name} {k}": str(v) for k, v in leaf.details.pop("files", {}).items()})
    record = dict(summary.__dict__, thresholds={k: v if math.isfinite(v) else str(v) for k, v in thresholds.items()})
    write_json_atomically(out / SUMMARY_FILE, record, indent=2, default=str, allow_nan=False)
    return summary


def write_datacomp_subset(parquet_path: str | Path, npy_path: str | Path) -> int:
    """Write the DataComp subset array (``uids_to_datacomp``: sorted structured ``u8,u8``) of
    the ``uid`` column of ``parquet_path`` to ``npy_path``, ``BATCH_ROWS`` uids at a time into a
    memory-mapped ``.npy``: 16 bytes a uid on disk, one batch in memory. Batches are sorted
    each; if the file is not sorted by uid as well, the array is sorted in place at the end.

    Returns:
        Uids written.

    Raises:
        ValueError: a value that is not a uid (``curate.schema.is_uid``).
    """
    pf = pq.ParquetFile(parquet_path)
    n = pf.metadata.num_rows
    arr = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.dtype("u8,u8"), shape=(n,))
    with open(npy_path, "r+b") as f:  # reserve the blocks: a full disk is ENOSPC here, not SIGBUS on a page
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    at, in_order = 0, True
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[S.UID]):
        part = uids_to_datacomp(batch.column(0))
        if at and len(part) and part[0].item() < arr[at - 1].item():
            in_order = False
        arr[at : at + len(part)] = part
        at += len(part)
    if not in_order:
        arr.sort()
    arr.flush()
    del arr
    return n
