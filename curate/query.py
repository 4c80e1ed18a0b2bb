"""DuckDB over the score index: a read-only, locked-down ``scores`` view and ``curate query``.

``connect(index)`` opens an in-memory DuckDB database with a view ``scores`` over every index
file of a folder (``read_parquet(..., union_by_name=true)``), so a query never copies the index.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

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
