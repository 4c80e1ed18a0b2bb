"""Pool-wide thresholds (``pool_threshold``, ``search_threshold``): the value that keeps the top
``fraction`` of the pool by a column, found exactly by histogram passes in bounded memory, over
one DuckDB connection or over a pool in many parts (``curate.filters.distributed``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import duckdb
import numpy as np

from curate.filters.rules import OK
from curate.query import VIEW

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
