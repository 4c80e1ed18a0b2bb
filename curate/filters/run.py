"""``curate filter``: evaluate a rule over the score index and write the subset (``run_filter``).

The rule is turned into SQL by ``curate.filters.rules`` and resolved against the pool
(``curate.filters.pool``; pool-wide thresholds from ``curate.filters.thresholds``) into a plan
(``curate.filters.plan``), run in the locked-down DuckDB connection of ``curate.query`` in one
streaming scan whose kept rows are sorted one uid range at a time (``curate.filters.scan``);
the subset files are written by ``curate.io.subset``, the summary by
``curate.filters.summary``. The names of those modules that callers import from here are
re-exported.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from curate import schema as S
from curate.filters.plan import FilterPlan, check_where_binds, plan_filter
from curate.filters.pool import IndexPool
from curate.filters.rules import RuleError, check_predicate
from curate.filters.scan import KeptRuns, select_pool, shared_uids, uid_bounds, uid_sort_keys
from curate.filters.summary import FilterSummary, check_filter_out, kept_text, write_summary
from curate.filters.thresholds import pool_threshold, search_threshold
from curate.io.atomic import make_work_folder, remove_work_folder
from curate.io.subset import write_array, write_datacomp_subset, write_npy_from_raw, write_unshared
from curate.query import VIEW, connect, pool_files

__all__ = [
    "FilterPlan", "FilterSummary", "IndexPool", "KeptRuns", "check_filter_out", "check_where_binds", "kept_text",
    "plan_filter", "pool_threshold", "run_filter", "search_threshold", "select_pool", "shared_uids", "uid_bounds",
    "uid_sort_keys", "write_array", "write_datacomp_subset", "write_npy_from_raw", "write_summary", "write_unshared",
]


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
