"""``curate filter --address``: the same subset as the single-node filter, computed by Ray tasks
over the index files, for pools whose index lives on storage every node reads.

No row of the pool passes through the driver; only the kept rows do, once, as the sorted parts
are joined into ``subset.parquet``. Three rounds of tasks, each over a locked DuckDB connection
(``curate.query.connect_files``) on a group of index files:

1. **Thresholds.** A fraction rule asks ``search_threshold`` for its pool-wide threshold: each
   task answers the count / histogram / value queries over its files and the driver merges the
   partial counts (one small message a task and pass).
2. **Select and partition.** Each task evaluates the rule's SQL predicate on its files, counts
   what each part of the rule removes, and writes its rows to ``PARTITIONS`` uid-range parts
   (``OUT/.filter-parts/p<j>/f<i>.parquet``): the uid, whether the row is ok, a 64-bit hash of
   what makes two rows one sample (caption, width, height, text boxes, CLIP score to 3
   decimals; DuckDB's ``hash``), whether it is kept, and the subset's columns for kept rows.
3. **Shared uids and order.** One task a uid range applies the single-node rule for uids
   carried by several rows (a uid on rows of different samples, or on a row that is not ok, is
   never kept; copies of one sample are each kept) and writes its kept rows sorted by uid.
   The ranges are disjoint and ordered, so the driver streams them one after another into
   ``subset.parquet``, then ``subset.npy`` (``write_datacomp_subset``).

Pool rules that need all the pool's embeddings or captions in one process (``dedup``,
``decontaminate``, ``image_based``, ``text_based``) are refused here: run them without
``--address``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters.plan import check_where_binds, plan_filter
from curate.filters.rules import OK, Leaf, Pool, RuleError, check_predicate
from curate.filters.scan import SAMPLE_FIELDS, uid_bounds
from curate.filters.summary import FilterSummary, check_filter_out, write_summary
from curate.filters.thresholds import search_threshold
from curate.io.atomic import make_work_folder, remove_work_folder
from curate.io.subset import BATCH_ROWS, write_datacomp_subset, write_unshared
from curate.query import VIEW, connect_files, pool_files

PARTITIONS = 16  # uid ranges of the shuffle (and tasks of the last round)
SIGNATURE = f"hash({SAMPLE_FIELDS})"


def _part_sql(bounds: list[str]) -> str:
    """SQL of a row's uid range: how many bounds its uid reaches (the bounds are curate's own
    hex strings, never the user's)."""
    return " + ".join([f"CAST({S.UID} >= '{b}' AS INTEGER)" for b in bounds]) or "0"


def _remote(fn, **options):
    import ray

    return ray.remote(**options)(fn)


def get_all(refs: list) -> list:
    """``ray.get`` of every task in ``refs``, waiting for all of them even when one fails: no
    task is still writing when the caller cleans up after the error, and every error is
    retrieved (Ray logs an "Unhandled error" for each one that is not).

    Raises:
        ray.exceptions.RayTaskError: the first failed task's error.
    """
    import ray

    if refs:
        ray.wait(refs, num_returns=len(refs))
    results, first = [], None
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as e:
            first = first or e
    if first:
        raise first
    return results


def _answer(files: list[str], sql: str, params: dict, numpy: bool, memory_limit: str | None):
    """One task of a threshold pass: ``sql`` over ``files``."""
    con = connect_files(files, memory_limit)
    try:
        result = con.execute(sql, params)
        return result.fetchnumpy()["v"] if numpy else result.fetchall()
    finally:
        con.close()


def _select(files: list[str], task: int, predicate: str, counts_sql: str, cols: list[str], bounds: list[str],
            parts_dir: str, memory_limit: str | None) -> list:
    """Round 2 on one group of files: write each uid range's rows, return the pool counts and,
    last, the rows the rule keeps whose uid is not a uid (``curate.schema.uid_mask``: an old or
    edited index), which are written as not kept."""
    con = connect_files(files, memory_limit)
    try:
        counts = list(con.execute(counts_sql).fetchall()[0])
        keep = f"({OK} AND coalesce(({predicate}), FALSE))"
        carried = ", ".join(f"CASE WHEN {keep} THEN {c} END AS {c}" for c in cols if c != S.UID)
        reader = con.sql(f"SELECT {S.UID}, {OK} AS _ok, {SIGNATURE} AS _sig, {keep} AS _kept, {carried}, "
                         f"{_part_sql(bounds)} AS _part FROM {VIEW}").to_arrow_reader(BATCH_ROWS)
        writers: dict[int, pq.ParquetWriter] = {}
        schema = reader.schema.remove(reader.schema.get_field_index("_part"))
        bad_uids = 0
        try:
            for batch in reader:
                part = batch.column("_part").to_numpy(zero_copy_only=False)
                table = pa.Table.from_batches([batch]).drop_columns(["_part"])
                kept = np.flatnonzero(table.column("_kept").to_numpy(zero_copy_only=False).astype(bool))
                bad = kept[~S.uid_mask(table.column(S.UID).take(pa.array(kept)))]
                if len(bad):  # never kept, counted
                    bad_uids += len(bad)
                    flags = table.column("_kept").to_numpy(zero_copy_only=False).astype(bool)
                    flags[bad] = False
                    i = table.schema.get_field_index("_kept")
                    table = table.set_column(i, table.schema.field(i), pa.array(flags))
                for j in np.unique(part):
                    if int(j) not in writers:
                        path = Path(parts_dir) / f"p{int(j):04d}" / f"f{task:06d}.parquet"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        writers[int(j)] = pq.ParquetWriter(path, schema)
                    writers[int(j)].write_table(table.filter(pa.array(part == j)))
        finally:
            for w in writers.values():
                w.close()
        return counts + [bad_uids]
    finally:
        con.close()


def _finish(part_dir: str, cols: list[str], out_path: str, memory_limit: str | None) -> tuple[int, int]:
    """Round 3 on one uid range: drop rows whose uid names several samples, sort, write."""
    files = sorted(str(p.resolve()) for p in Path(part_dir).glob("*.parquet"))
    if not files:
        return 0, 0
    con = connect_files(files, memory_limit)
    names = ", ".join(cols)
    try:
        reader = con.sql(
            f"WITH repeated AS (SELECT {S.UID} FROM {VIEW} GROUP BY {S.UID} HAVING count(*) > 1), "
            f"shared AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM repeated) "
            f"GROUP BY {S.UID} HAVING NOT (bool_and(_ok) AND count(DISTINCT _sig) = 1)) "
            f"SELECT {names}, {S.UID} IN (SELECT {S.UID} FROM shared) AS _shared FROM {VIEW} WHERE _kept "
            f"ORDER BY {S.UID}, {S.SHARD}, {S.KEY}").to_arrow_reader(BATCH_ROWS)
        return write_unshared(reader, out_path)
    finally:
        con.close()


class RayPool(Pool):
    """The pool of a distributed filter: thresholds merged from one task a file group; no row
    sets (the rules that need them run on one node)."""

    def __init__(self, groups: list[list[str]], memory_limit: str | None):
        answer = _remote(_answer, num_cpus=1)

        def rows_of(sql, params):
            return get_all([answer.remote(g, sql, params, False, memory_limit) for g in groups])

        def values_of(sql, params):
            return np.concatenate(get_all([answer.remote(g, sql, params, True, memory_limit) for g in groups]))

        super().__init__(lambda column, fraction: search_threshold(rows_of, values_of, column, fraction))
        self._rows_of = rows_of

    def has_values(self, column: str) -> bool:
        """Whether some ``ok`` row of any file group has a value in ``column``."""
        names = self._rows_of(f"SELECT count(*) FROM (DESCRIBE {VIEW}) WHERE column_name = '{column}'", {})
        if not any(part[0][0] for part in names):
            return False  # an index written before the column existed
        found = self._rows_of(
            f"SELECT count(*) FROM (SELECT 1 FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL LIMIT 1)", {})
        return any(part[0][0] for part in found)

    def need_whole_pool(self, leaf: Leaf, what: str) -> None:
        raise RuleError(f"{leaf.name}() reads {what} in one process: run curate filter without --address")


def run_filter_distributed(index: str | Path, rule: str | None, out: str | Path, where: str | None = None,
                           memory_limit: str | None = "2GiB", address: str | None = None,
                           files_per_task: int | None = None, partitions: int = PARTITIONS) -> FilterSummary:
    """``curate.filters.run_filter`` on a Ray cluster (see the module docstring): the same
    ``subset.parquet``, ``subset.npy`` and summary, with each task holding at most
    ``memory_limit`` in DuckDB plus one batch.

    Args:
        address: the Ray cluster (``None``: ``RAY_ADDRESS``, else a new local cluster), as
            ``curate score --address``. The index and ``out`` must be on storage every node reads.
        files_per_task: index files a task reads (``None``: enough for about 4 tasks a CPU).
        partitions: uid ranges of the shuffle.

    Raises:
        RuleError: a bad rule, a rule that needs the whole pool in one process, or a SQL error.
        FileNotFoundError: no index files.
        ForeignOutput (a ValueError): as ``run_filter`` (``check_filter_out``), before Ray starts.
    """
    import duckdb
    import ray

    from curate.runtime import init_ray

    if not rule and not where:
        raise RuleError("give --rule and/or --where")
    expr = check_predicate(where) if where else None
    index_list, meta_list = pool_files(index)
    if index_list and meta_list:
        raise RuleError("a score index joined with DataComp metadata is filtered in one process: drop --address")
    files = index_list or meta_list
    check_filter_out(Path(out), index)
    init_ray(address=address)
    per = files_per_task or max(1, math.ceil(len(files) / (4 * max(1, int(ray.cluster_resources().get("CPU", 1))))))
    groups = [files[i : i + per] for i in range(0, len(files), per)]
    out = Path(out)
    parts_dir = make_work_folder(out / ".filter-parts")
    try:
        try:
            if expr:
                con = connect_files(files, memory_limit)
                try:
                    check_where_binds(con, expr)
                finally:
                    con.close()
            plan = plan_filter(rule, where, expr, RayPool(groups, memory_limit))
            predicate, parts, cols, names, counts_sql = (plan.predicate, plan.parts, plan.columns, plan.names,
                                                         plan.counts_sql)
            bounds = uid_bounds(partitions)
            select = _remote(_select, num_cpus=1)
            counts = np.sum(get_all([
                select.remote(g, i, predicate, counts_sql, cols, bounds, str(parts_dir), memory_limit)
                for i, g in enumerate(groups)
            ]), axis=0)
            finish = _remote(_finish, num_cpus=1)
            ranges = [(parts_dir / f"p{j:04d}", parts_dir / f"kept-{j:04d}.parquet") for j in range(partitions)]
            done = get_all([finish.remote(str(d), cols, str(o), memory_limit) for d, o in ranges])
        except duckdb.Error as e:
            raise RuleError(f"DuckDB rejected the filter: {e}") from None
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
            if isinstance(cause, (duckdb.Error, RuleError)):
                raise RuleError(f"DuckDB rejected the filter: {cause}") from None
            raise
        out.mkdir(parents=True, exist_ok=True)
        # Written beside the parts and renamed together when both are complete (as run_filter).
        parquet_path, npy_path = parts_dir / "subset.parquet", parts_dir / "subset.npy"
        written = [o for (_, o), (k, _) in zip(ranges, done) if o.exists()]
        schema = pq.read_schema(written[0]) if written else None
        if schema is None:  # no file at all: an empty pool
            raise RuleError("the index has no rows")
        with pq.ParquetWriter(parquet_path, schema) as writer:
            for path in written:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                    writer.write_table(pa.Table.from_batches([batch], schema))
        write_datacomp_subset(parquet_path, npy_path)
        parquet_path.replace(out / "subset.parquet")
        npy_path.replace(out / "subset.npy")
    finally:
        remove_work_folder(parts_dir)
    return write_summary(out, rule, where, parts, int(counts[0]), int(counts[1]), sum(k for k, _ in done),
                         dict(zip(names, (int(c) for c in counts[2:-1]))), sum(s for _, s in done), int(counts[-1]))
