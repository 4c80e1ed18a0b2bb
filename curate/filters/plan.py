"""The filter plan (``plan_filter``): a rule and ``--where`` resolved against a pool into the SQL
that the scan runs (``FilterPlan``), and the check that ``--where`` binds as a ``WHERE`` clause
(``check_where_binds``)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from curate import schema as S
from curate.filters.rules import OK, Leaf, Pool, leaves, parse_rule, resolve, rule_sql
from curate.query import VIEW


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
