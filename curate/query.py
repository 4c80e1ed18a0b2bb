"""DuckDB over the score index: a read-only ``scores`` view, SQL queries, and ``curate filter``.

``connect(index)`` opens an in-memory DuckDB database with a view ``scores`` over every index
file of a folder (``read_parquet(..., union_by_name=true)``), so a query never copies the index.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.filters import OK, RuleError, leaves, parse_rule, resolve
from curate.io.index import index_files

VIEW = "scores"


class QueryError(ValueError):
    """A query that is not a single read-only statement, or that DuckDB rejects."""


def _sql_string(text: str) -> str:
    """A SQL string literal: single quotes doubled."""
    return "'" + text.replace("'", "''") + "'"


def _literal_glob(path: str) -> str:
    """A DuckDB glob pattern that matches exactly the file ``path``: each glob character
    (``[``, ``*``, ``?``) is put in a one-character class (``[[]``, ``[*]``, ``[?]``), so
    ``shard[1].parquet`` never reads ``shard1.parquet``. Braces and quotes are not glob syntax
    in DuckDB and stay as they are."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in path)


def connect(index: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the view ``scores`` over the index at ``index``.

    Files are listed by curate (``index_files``) and handed to DuckDB's Parquet reader one by
    one, each as a pattern that matches only its own name (``_literal_glob``): a name with
    ``[ ] * ? { }``, spaces or quotes is read exactly once. Files written by an older schema
    version get nulls for the columns they lack (``union_by_name``).

    The connection is then locked down (DuckDB's "Securing DuckDB" settings): ``allowed_paths``
    is exactly the index files, ``enable_external_access = false`` (no other file is read or
    written, no ``ATTACH``, no extension is installed or loaded) and ``lock_configuration =
    true`` (no query can change that).

    Raises:
        FileNotFoundError: no index files.
    """
    files = [str(f.resolve()) for f in index_files(index)]
    con = duckdb.connect(":memory:")
    allowed = ", ".join(_sql_string(p) for p in sorted(set(files) | {_literal_glob(f) for f in files}))
    con.execute(f"SET allowed_paths = [{allowed}]")
    patterns = ", ".join(_sql_string(_literal_glob(f)) for f in files)
    con.execute(f"CREATE VIEW {VIEW} AS SELECT * FROM read_parquet([{patterns}], union_by_name = true)")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(sql: str) -> None:
    """Accept exactly one SELECT statement (``WITH ... SELECT``, ``VALUES`` and ``EXPLAIN`` too).

    Raises:
        QueryError: several statements, or one that writes, attaches, copies or sets anything.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"cannot parse query: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise QueryError(f"queries are read-only: {kind.name} statements are refused")


def _has_class(tree, classes: set[str]) -> bool:
    """True when a parse tree (``json_serialize_sql``) holds an expression of one of ``classes``
    outside a subquery."""
    if isinstance(tree, dict):
        if tree.get("class") in classes:
            return True
        return any(_has_class(v, classes) for k, v in tree.items() if k != "subquery")
    if isinstance(tree, list):
        return any(_has_class(v, classes) for v in tree)
    return False


def check_predicate(where: str) -> str:
    """Check that ``where`` is exactly one SQL expression and return it in canonical form.

    DuckDB's own parser reads ``SELECT <where>`` (``json_serialize_sql``); the text is accepted
    only when that is one plain ``SELECT`` with one unnamed expression and nothing else: every
    clause of the statement must be as in a bare ``SELECT 1`` (no second statement, ``FROM``,
    ``WHERE``, ``GROUP BY [ALL]``, ``UNION``, ``ORDER BY``, CTE or alias), and the expression
    holds no ``*``, ``COLUMNS(...)`` or ``#n``. A subquery inside it is allowed: it is read-only
    and runs in the locked connection of ``connect``.
    The expression is then printed back from the parse tree (``json_deserialize_sql``), so
    comments and stray parentheses in the text cannot reach the filter's SQL: whatever the user
    typed, it can only ever be one parenthesised operand of ``AND``.

    Returns:
        The expression as DuckDB prints it, e.g. ``(num_text_boxes = 0)``.

    Raises:
        RuleError: empty, not parseable, or more than one expression.
    """
    if not where or not where.strip():
        raise RuleError("--where is empty")
    con = duckdb.connect(":memory:")
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + where]).fetchone()[0])
    except duckdb.Error as e:
        raise RuleError(f"--where cannot be parsed: {e}") from None
    if tree.get("error"):
        raise RuleError(f"--where is not one SQL expression: {tree.get('error_message', 'parse error')}")
    statements = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    baseline = json.loads(con.execute("SELECT json_serialize_sql('SELECT 1')").fetchone()[0])["statements"][0]["node"]
    select_list = node.get("select_list", [])
    plain = (
        node.get("type") == "SELECT_NODE"
        and len(select_list) == 1
        and not select_list[0].get("alias")
        # every clause of the statement (FROM, WHERE, GROUP BY [ALL], HAVING, QUALIFY, ORDER BY,
        # LIMIT, CTEs, set operations) exactly as in the bare "SELECT 1"
        and {k: v for k, v in node.items() if k != "select_list"} == {k: v for k, v in baseline.items() if k != "select_list"}
        and not _has_class(select_list[0], {"STAR", "POSITIONAL_REFERENCE"})
    )
    if not plain:
        raise RuleError(f"--where must be exactly one SQL expression over the index columns, got {where!r}")
    try:
        text = con.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchone()[0]
    except duckdb.Error as e:
        raise RuleError(f"--where cannot be used: {e}") from None
    if not text.upper().startswith("SELECT "):
        raise RuleError(f"--where must be exactly one SQL expression, got {where!r}")
    return "(" + text[len("SELECT "):].strip().rstrip(";") + ")"


def query(sql: str, index: str | Path) -> pa.Table:
    """Run a read-only SQL query over the index (view ``scores``) and return an Arrow table.

    Example:
        ``query("SELECT status, count(*) FROM scores GROUP BY status", "out/index")``

    Raises:
        QueryError: not read-only, or DuckDB rejects it.
        FileNotFoundError: no index files.
    """
    check_read_only(sql)
    con = connect(index)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise QueryError(str(e)) from None


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a table as CSV, Parquet or JSON lines, chosen by the file extension.

    Raises:
        ValueError: unknown extension.
    """
    path = Path(path)
    ext = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".parquet":
        pq.write_table(table, path)
    elif ext == ".csv":
        import pyarrow.csv as pacsv

        # CSV has no nested values: list columns (text_boxes) are written as JSON text.
        for i, f in enumerate(table.schema):
            if pa.types.is_list(f.type) or pa.types.is_struct(f.type) or pa.types.is_large_list(f.type):
                values = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
                table = table.set_column(i, f.name, pa.array(values, pa.string()))
        pacsv.write_csv(table, path)
    elif ext in (".json", ".jsonl"):
        with open(path, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(_json_safe(row), default=str) + "\n")
    else:
        raise ValueError(f"--output must end in .csv, .parquet, .json or .jsonl, got {path.name}")


def _json_safe(value):
    """``value`` with non-finite floats as ``null`` (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def pool_threshold(con: duckdb.DuckDBPyConnection, column: str, fraction: float) -> float:
    """Pool-wide threshold for keeping the top ``fraction`` by ``column`` (DataComp
    ``baselines.get_threshold``): the value at index ``int(N * fraction)`` of the descending
    sort over the ``N`` ok rows with a value; ``-inf`` (keep all) when that index is past the end.

    The column (4 bytes a row) is fetched once and the order statistic found with
    ``numpy.partition`` in linear time, instead of sorting the pool.
    """
    values = con.sql(f"SELECT {column} FROM {VIEW} WHERE {OK} AND {column} IS NOT NULL").fetchnumpy()[column]
    values = np.asarray(values)
    n = len(values)
    k = int(n * fraction)
    if k >= n:
        return -math.inf
    # Descending index k is ascending index n - 1 - k.
    return float(np.partition(values, n - 1 - k)[n - 1 - k])


def uids_to_datacomp(uids: list[str]) -> np.ndarray:
    """32-hex uids to DataComp's subset array: structured ``np.dtype("u8,u8")`` (the two 64-bit
    halves of the uid), sorted, as DataComp's ``baselines.py`` saves and its resharder loads.

    Raises:
        ValueError: a uid that is not 32 hex characters.
    """
    bad = next((u for u in uids if len(u) != 32), None)
    if bad is not None:
        raise ValueError(f"uid {bad!r} is not 32 hex characters")
    try:
        halves = np.frombuffer(bytes.fromhex("".join(uids)), dtype=">u8").reshape(-1, 2)
    except ValueError:
        raise ValueError("a uid holds characters that are not hex") from None
    arr = np.empty(len(halves), dtype=np.dtype("u8,u8"))
    arr["f0"], arr["f1"] = halves[:, 0], halves[:, 1]
    arr.sort()
    return arr


def datacomp_to_uids(arr: np.ndarray) -> list[str]:
    """Inverse of ``uids_to_datacomp``: ``u8,u8`` pairs back to 32-hex uids."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in arr]


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
        for kind, path in self.outputs.items():
            lines.append(f"  wrote         {path}")
        return "\n".join(lines)


def run_filter(index: str | Path, rule: str | None, out: str | Path, where: str | None = None) -> FilterSummary:
    """Select a subset of the pool with a rule expression and/or a SQL predicate.

    Writes ``out/subset.parquet`` (uid, shard, key and the columns the rule reads, sorted by uid)
    and ``out/subset.npy`` (DataComp format, see ``uids_to_datacomp``). Only ``ok`` rows are
    kept, whatever ``where`` says; a row whose uid is carried by a row of another sample (another
    caption or size, or a row that is not ok; in one shard or in two) is never kept, since a
    subset of uids could not tell them apart; they are counted in ``shared_uid_rows``. Rows that
    are copies of one sample (all ok, with the same caption, width, height, number of text boxes
    and CLIP score to 3 decimals) are each kept, so the subset lists the uid once per copy
    (DataComp's upweighting).

    Args:
        index: score-index folder.
        rule: e.g. ``"tmars(fraction=0.5) & basic()"`` (see ``curate.filters``), or ``None``.
        out: output folder.
        where: one extra SQL expression on the index columns, ANDed with the rule
            (``check_predicate``: nothing else can run).

    Raises:
        RuleError: a bad rule, or ``where`` that is not exactly one expression.
        FileNotFoundError: no index files.
    """
    if not rule and not where:
        raise RuleError("give --rule and/or --where")
    expr = check_predicate(where) if where else None
    con = connect(index)
    tree = parse_rule(rule) if rule else None
    predicate = resolve(tree, lambda col, frac: pool_threshold(con, col, frac)) if tree else OK
    if expr:
        predicate = f"{predicate} AND coalesce({expr}, FALSE)"
    parts = leaves(tree) if tree else []
    columns = [S.UID, S.SHARD, S.KEY]
    for leaf in parts:
        columns += [c for c in leaf.columns if c not in columns]
    cols = ", ".join(columns)
    try:
        # A uid carried by rows of different samples names no single sample: such rows are never
        # kept (counted below). Rows that are copies of one sample (all ok, same caption, size,
        # text boxes and CLIP score to 3 decimals: upweighted copies) are kept, each.
        kept = con.sql(
            f"WITH kept AS (SELECT {cols} FROM {VIEW} WHERE {OK} AND ({predicate})), "
            f"shared AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM kept) "
            f"GROUP BY {S.UID} HAVING count(*) > 1 AND NOT (bool_and({OK}) AND "
            f"count(DISTINCT ({S.TEXT}, {S.WIDTH}, {S.HEIGHT}, {S.NUM_TEXT_BOXES}, "
            f"round({S.CLIP_SCORE}, 3))) = 1)) "
            f"SELECT {cols}, {S.UID} IN (SELECT {S.UID} FROM shared) AS _shared FROM kept "
            f"ORDER BY {S.UID}, {S.SHARD}, {S.KEY}"
        ).to_arrow_table()
        # One scan for the pool size and for the rows each part of the rule removes on its own.
        names = [str(leaf) for leaf in parts] + ([f"WHERE {where}"] if where else [])
        preds = [leaf.sql for leaf in parts] + ([expr] if expr else [])
        counts = ", ".join(f"count(*) FILTER (WHERE {OK} AND NOT coalesce({p}, FALSE))" for p in preds)
        row = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {OK}){', ' + counts if counts else ''} FROM {VIEW}"
        ).fetchall()[0]
        pool_rows, pool_ok = row[0], row[1]
        removed = dict(zip(names, row[2:]))
    except duckdb.Error as e:
        raise RuleError(f"DuckDB rejected the filter: {e}") from None
    shared = kept.column("_shared").to_numpy(zero_copy_only=False).astype(bool)
    shared_uid_rows = int(shared.sum())
    kept = kept.drop_columns(["_shared"])
    if shared_uid_rows:
        kept = kept.filter(pa.array(~shared))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(kept, out / "subset.parquet")
    np.save(out / "subset.npy", uids_to_datacomp(kept.column(S.UID).to_pylist()))
    thresholds = {f"{leaf} on {col}": thr for leaf in parts for col, thr in leaf.thresholds.items()}
    summary = FilterSummary(rule or "", where, pool_rows, pool_ok, kept.num_rows, removed, thresholds,
                            {"parquet": str(out / "subset.parquet"), "npy": str(out / "subset.npy")},
                            shared_uid_rows)
    # Strict JSON (no -Infinity): a "keep all" threshold is written as the string "-inf".
    record = dict(summary.__dict__, thresholds={k: v if math.isfinite(v) else str(v) for k, v in thresholds.items()})
    (out / "filter_summary.json").write_text(json.dumps(record, indent=2, default=str, allow_nan=False))
    return summary
