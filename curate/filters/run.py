"""``curate filter``: evaluate a rule over the score index and write the subset.

Thresholds for pool-wide fractions come from ``pool_threshold``; the rule is turned into SQL by
``curate.filters.rules`` and run in the locked-down DuckDB connection of ``curate.query``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters.rules import OK, Leaf, Pool, RuleError, check_predicate, leaves, parse_rule, resolve
from curate.io.subset import uids_to_datacomp
from curate.query import VIEW, connect


class IndexPool(Pool):
    """The pool of ``curate filter``: thresholds from the locked DuckDB connection, row sets
    registered in it as in-memory Arrow tables, the index folder for rules that read embedding
    files, and the output folder for what they write for inspection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, index: str | Path, out: str | Path):
        super().__init__(lambda column, fraction: pool_threshold(con, column, fraction))
        self.con, self.index, self.out = con, Path(index), Path(out)
        self._sets = 0

    def has_values(self, column: str) -> bool:
        """Whether some ``ok`` row has a value in ``column`` (stops at the first)."""
        if column not in {row[0] for row in self.con.execute(f"DESCRIBE {VIEW}").fetchall()}:
            return False  # an index written before the column existed
        return self.con.execute(f"SELECT 1 FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL LIMIT 1").fetchall() != []

    def need_whole_pool(self, leaf: Leaf, what: str) -> None:
        """This pool holds the whole index: every rule may read it."""

    def artifact(self, name: str) -> Path:
        """``out/<name>``, for what a rule writes for inspection (the folder is created)."""
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / name

    def keep_rows(self, leaf: Leaf, rows: pa.Table) -> str:
        name = f"_keep_{self._sets}"  # our own identifier: nothing of the user's reaches the SQL
        self._sets += 1
        self.con.register(name, rows.select([S.SHARD, S.KEY]))
        return f"(({S.SHARD}, {S.KEY}) IN (SELECT {S.SHARD}, {S.KEY} FROM {name}))"


EXACT_ROWS = 1 << 22  # at most this many values are fetched to find an order statistic exactly
BUCKETS = 4096  # histogram buckets a narrowing pass


def pool_threshold(con: duckdb.DuckDBPyConnection, column: str, fraction: float) -> float:
    """Pool-wide threshold for keeping the top ``fraction`` by ``column`` (DataComp
    ``baselines.get_threshold``): the value at index ``int(N * fraction)`` of the descending
    sort over the ``N`` ok rows with a value (NaN sorting above every number, as in NumPy);
    ``-inf`` (keep all) when that index is past the end. Computed by ``search_threshold`` on
    the one connection ``con``."""
    return search_threshold(lambda sql, params: [con.execute(sql, params).fetchall()],
                            lambda sql, params: con.execute(sql, params).fetchnumpy()["v"], column, fraction)


def search_threshold(rows_of: Callable[[str, dict], list[list[tuple]]], values_of: Callable[[str, dict], np.ndarray],
                     column: str, fraction: float) -> float:
    """``pool_threshold``, over a pool in one or many parts.

    Found exactly in bounded memory, without sorting or fetching the column: while more than
    ``EXACT_ROWS`` values remain in the range that holds the answer, one pass counts them into
    ``BUCKETS`` equal-width buckets (with each bucket's min and max) and the range narrows to the
    bucket holding the wanted rank; the last few values are fetched and the order statistic taken
    with ``numpy.partition``. Buckets are monotone in the value (a subtraction and a
    multiplication by a positive constant, then ``floor``), so their value ranges never overlap;
    ties end the search as soon as a range holds one value. A pool of ``N`` rows takes about
    ``log(N / EXACT_ROWS) / log(BUCKETS)`` passes, usually none or one.

    Args:
        rows_of: runs one SQL query (named parameters ``params``) over the view ``scores`` of
            every part of the pool; returns each part's rows. Counts, minima and maxima are
            merged here, so a part can be one file or one node.
        values_of: runs a query selecting one column ``v`` over every part; returns the values
            of all parts as one array.
    """
    base = f"FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL"
    value = f"CAST({column} AS DOUBLE)"
    stats = [part[0] for part in rows_of(
        f"SELECT count(*), count(*) FILTER (WHERE isnan({value})), min({value}) FILTER (WHERE NOT isnan({value})), "
        f"max({value}) FILTER (WHERE NOT isnan({value})) {base}", {})]
    n, nans = sum(s[0] for s in stats), sum(s[1] for s in stats)
    k = int(n * fraction)
    if k >= n:
        return -math.inf
    if k < nans:
        return math.nan
    lo = min(s[2] for s in stats if s[2] is not None)
    hi = max(s[3] for s in stats if s[3] is not None)
    rank, left = k - nans, n - nans  # descending rank among the numbers in [lo, hi]
    numbers = f"{base} AND NOT isnan({value}) AND {value} BETWEEN $lo AND $hi"
    while lo != hi and left > EXACT_ROWS:
        bucket = f"least(CAST(floor(({value} - $lo) * $scale) AS BIGINT), {BUCKETS - 1})"
        merged: dict[int, list] = {}
        for part in rows_of(f"SELECT {bucket} AS b, count(*), min({value}), max({value}) {numbers} GROUP BY b",
                            {"lo": lo, "hi": hi, "scale": BUCKETS / (hi - lo)}):
            for b, count, b_lo, b_hi in part:
                m = merged.setdefault(b, [0, b_lo, b_hi])
                m[0], m[1], m[2] = m[0] + count, min(m[1], b_lo), max(m[2], b_hi)
        for b in sorted(merged, reverse=True):
            count, b_lo, b_hi = merged[b]
            if rank < count:
                lo, hi, left = b_lo, b_hi, count
                break
            rank -= count
    if lo == hi:
        return float(lo)
    values = np.asarray(values_of(f"SELECT {value} AS v {numbers}", {"lo": lo, "hi": hi}))
    # Descending rank r is ascending index len - 1 - r.
    return float(np.partition(values, len(values) - 1 - rank)[len(values) - 1 - rank])


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

    def format(self) -> str:
        frac = self.kept / self.pool_ok if self.pool_ok else 0.0
        lines = [
            "curate filter: summary",
            f"  rule          {self.rule or '-'}" + (f"  WHERE {self.where}" if self.where else ""),
            f"  pool          {self.pool_rows} rows, {self.pool_ok} ok ({self.pool_rows - self.pool_ok} not ok, never kept)",
            f"  kept          {self.kept} ({frac:.2%} of ok rows)",
        ]
        for part, n in self.removed_by.items():
            lines.append(f"  removed by    {part}: {n} ok rows fail it")
        if self.shared_uid_rows:
            lines.append(f"  shared uid    {self.shared_uid_rows} row(s) pass the rule but share their uid with another "
                         "row of the pool: not kept (a uid must name one sample)")
        for name, thr in self.thresholds.items():
            lines.append(f"  threshold     {name} >= {thr:.6g}")
        for name, found in self.details.items():
            lines.append(f"  found         {name}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
        for kind, path in self.outputs.items():
            lines.append(f"  wrote         {path}")
        return "\n".join(lines)


def run_filter(index: str | Path, rule: str | None, out: str | Path, where: str | None = None,
               memory_limit: str | None = "2GiB") -> FilterSummary:
    """Select a subset of the pool with a rule expression and/or a SQL predicate.

    Writes ``out/subset.parquet`` (uid, shard, key and the columns the rule reads, sorted by uid)
    and ``out/subset.npy`` (DataComp format, see ``uids_to_datacomp``). Only ``ok`` rows are
    kept, whatever ``where`` says; a row whose uid is carried by a row of another sample (another
    caption or size, or a row that is not ok; in one shard or in two) is never kept, since a
    subset of uids could not tell them apart; they are counted in ``shared_uid_rows``. Rows that
    are copies of one sample (all ok, with the same caption, width, height, number of text boxes
    and CLIP score to 3 decimals) are each kept, so the subset lists the uid once per copy
    (DataComp's upweighting).

    Memory is bounded whatever the pool size: DuckDB holds at most ``memory_limit`` and sorts
    and joins out of core beyond it (spilling to ``out/.duckdb-tmp``, removed afterwards);
    thresholds come from ``pool_threshold`` (histogram passes, no column fetched); the kept rows
    are streamed to ``subset.parquet`` (``BATCH_ROWS`` a row group) and from there to
    ``subset.npy``, which is written in place (``numpy.lib.format.open_memmap``). Pool rules that
    read embedding files (``dedup`` and the like) hold their vectors in memory.

    Args:
        index: score-index folder.
        rule: e.g. ``"tmars(fraction=0.5) & basic()"`` (see ``curate.filters``), or ``None``.
        out: output folder.
        where: one extra SQL expression on the index columns, ANDed with the rule
            (``check_predicate``: nothing else can run).
        memory_limit: DuckDB's memory limit (DuckDB syntax, e.g. ``"2GiB"``); ``None``: DuckDB's
            default, 80% of RAM.

    Raises:
        RuleError: a bad rule, or ``where`` that is not exactly one expression.
        FileNotFoundError: no index files.
    """
    if not rule and not where:
        raise RuleError("give --rule and/or --where")
    expr = check_predicate(where) if where else None
    out = Path(out)
    spill = out / ".duckdb-tmp"
    con = connect(index, memory_limit=memory_limit, temp_directory=spill if memory_limit else None)
    try:
        return _run_filter(con, index, rule, out, where, expr)
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


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
    """

    predicate: str
    parts: list[Leaf]
    columns: list[str]
    names: list[str]
    counts_sql: str


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
    return FilterPlan(predicate, parts, columns, names, counts_sql)


def _run_filter(con, index, rule, out: Path, where, expr) -> FilterSummary:
    plan = plan_filter(rule, where, expr, IndexPool(con, index, out))
    predicate, parts = plan.predicate, plan.parts
    cols = ", ".join(plan.columns)
    out.mkdir(parents=True, exist_ok=True)
    parquet_path, npy_path = out / "subset.parquet", out / "subset.npy"
    try:
        # A uid carried by rows of different samples names no single sample: such rows are never
        # kept (counted below). Rows that are copies of one sample (all ok, same caption, size,
        # text boxes and CLIP score to 3 decimals: upweighted copies) are kept, each. Only the
        # kept uids on several rows (usually none) are compared closely; DuckDB spills the joins
        # and aggregations beyond the memory limit.
        reader = con.sql(
            f"WITH kept AS (SELECT {cols} FROM {VIEW} WHERE {OK} AND ({predicate})), "
            f"repeated AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM kept) "
            f"GROUP BY {S.UID} HAVING count(*) > 1), "
            f"shared AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM repeated) "
            f"GROUP BY {S.UID} HAVING NOT (bool_and({OK}) AND "
            f"count(DISTINCT ({S.TEXT}, {S.WIDTH}, {S.HEIGHT}, {S.NUM_TEXT_BOXES}, "
            f"round({S.CLIP_SCORE}, 3))) = 1)) "
            f"SELECT {cols}, {S.UID} IN (SELECT {S.UID} FROM shared) AS _shared FROM kept "
            f"ORDER BY {S.UID}, {S.SHARD}, {S.KEY}"
        ).to_arrow_reader(BATCH_ROWS)
        kept_rows, shared_uid_rows = write_unshared(reader, parquet_path)
        # One scan for the pool size and for the rows each part of the rule removes on its own.
        row = con.execute(plan.counts_sql).fetchall()[0]
        pool_rows, pool_ok = row[0], row[1]
        removed = dict(zip(plan.names, row[2:]))
    except duckdb.Error as e:
        raise RuleError(f"DuckDB rejected the filter: {e}") from None
    write_datacomp_subset(parquet_path, npy_path)
    return write_summary(out, rule, where, parts, pool_rows, pool_ok, kept_rows, removed, shared_uid_rows)


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
                  kept: int, removed: dict[str, int], shared_uid_rows: int) -> FilterSummary:
    """The ``FilterSummary`` of a filter run, also written to ``out/filter_summary.json`` (strict
    JSON: a "keep all" threshold is the string ``"-inf"``)."""
    thresholds = {f"{leaf} on {col}": thr for leaf in parts for col, thr in leaf.thresholds.items()}
    summary = FilterSummary(rule or "", where, pool_rows, pool_ok, kept, removed, thresholds,
                            {"parquet": str(out / "subset.parquet"), "npy": str(out / "subset.npy")},
                            shared_uid_rows, {str(leaf): leaf.details for leaf in parts if leaf.details})
    for leaf in parts:
        summary.outputs.update({f"{leaf.name} {k}": str(v) for k, v in leaf.details.pop("files", {}).items()})
    record = dict(summary.__dict__, thresholds={k: v if math.isfinite(v) else str(v) for k, v in thresholds.items()})
    (out / "filter_summary.json").write_text(json.dumps(record, indent=2, default=str, allow_nan=False))
    return summary


def write_datacomp_subset(parquet_path: str | Path, npy_path: str | Path) -> int:
    """Write the DataComp subset array (``uids_to_datacomp``: sorted structured ``u8,u8``) of
    the ``uid`` column of ``parquet_path`` to ``npy_path``, ``BATCH_ROWS`` uids at a time into a
    memory-mapped ``.npy``: 16 bytes a uid on disk, one batch in memory. Batches are sorted
    each; if the file's uids are not in hex order as well (mixed-case hex), the array is sorted
    in place at the end.

    Returns:
        Uids written.

    Raises:
        ValueError: a uid that is not 32 hex characters.
    """
    pf = pq.ParquetFile(parquet_path)
    n = pf.metadata.num_rows
    arr = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.dtype("u8,u8"), shape=(n,))
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
