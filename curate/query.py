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

from curate.errors import CurateError
from curate.io.atomic import ForeignOutput, atomic_path, make_work_folder, remove_work_folder
from curate.io.index import index_files

VIEW = "scores"


class QueryError(CurateError, ValueError):
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


def connect(index, memory_limit: str | None = None,
            temp_directory: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the view ``scores`` over the pool at ``index``.

    ``index`` is a curate score index (a folder of index files, or one file), a DataComp
    metadata folder (``curate.io.datacomp``: read in place, every row ``ok``), or a list of one
    of each, joined by uid (``curate.io.datacomp.joined_sql``: the pool is the metadata's rows,
    ``not_scored`` where the index has no row).

    ``memory_limit`` (DuckDB syntax, e.g. ``"2GiB"``) caps what DuckDB holds; sorts, joins and
    aggregations beyond it spill to ``temp_directory`` (DuckDB's out-of-core operators), which
    is created if missing. ``None``: DuckDB's defaults (80% of RAM, ``.tmp`` in the working
    folder).

    Files are listed by curate (``index_files``, ``metadata_files``) and handed to DuckDB's
    Parquet reader one by one, each as a pattern that matches only its own name
    (``_literal_glob``): a name with ``[ ] * ? { }``, spaces or quotes is read exactly once.
    Files written by an older schema version get nulls for the columns they lack
    (``union_by_name``).

    The connection is then locked down (DuckDB's "Securing DuckDB" settings): ``allowed_paths``
    is exactly the pool's files, ``enable_external_access = false`` (no other file is read or
    written, no ``ATTACH``, no extension is installed or loaded) and ``lock_configuration =
    true`` (no query can change that).

    Raises:
        FileNotFoundError: no index or metadata files.
        ValueError: a list that is not one score index and one metadata folder.
    """
    index_list, meta_list = pool_files(index)
    return connect_files(index_list, memory_limit, temp_directory, metadata=meta_list)


def pool_files(index) -> tuple[list[str], list[str]]:
    """``(score-index files, DataComp metadata files)`` of ``connect``'s ``index`` (absolute
    paths; either list may be empty, not both).

    Raises:
        FileNotFoundError: a path with neither.
        ValueError: two paths of one kind, or more than two.
    """
    from curate.io.datacomp import is_metadata_folder, metadata_files

    paths = [index] if isinstance(index, (str, Path)) else list(index)
    idx: list[str] = []
    meta: list[str] = []
    for p in paths:
        if is_metadata_folder(p):
            if meta:
                raise ValueError("give at most one DataComp metadata folder as --index")
            meta = [str(f.resolve()) for f in metadata_files(p)]
        else:
            if idx:
                raise ValueError("give at most one score index as --index (and one DataComp metadata folder)")
            idx = [str(f.resolve()) for f in index_files(p)]
    if not paths:
        raise FileNotFoundError("no --index given")
    return idx, meta


def score_index_of(index) -> str | Path:
    """The score-index path among ``connect``'s ``index`` (as given), else the DataComp
    metadata folder."""
    from curate.io.datacomp import is_metadata_folder

    paths = [index] if isinstance(index, (str, Path)) else list(index)
    return next((p for p in paths if not is_metadata_folder(p)), paths[0])


def _names(con: duckdb.DuckDBPyConnection, patterns: str) -> set[str]:
    """The column names of the Parquet files ``patterns`` (schema only)."""
    return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet([{patterns}], union_by_name = true)"
                                      ).fetchall()}


def connect_files(files: list[str], memory_limit: str | None = None,
                  temp_directory: str | Path | None = None, metadata: list[str] = ()) -> duckdb.DuckDBPyConnection:
    """``connect`` over exactly the score-index files ``files`` and DataComp metadata files
    ``metadata`` (absolute paths, at least one in all), with the same lock-down: a part of an
    index, as one task of a distributed filter reads. ``files`` alone that are DataComp
    metadata files (their columns say so) are read as such."""
    from curate import schema as S
    from curate.io.datacomp import IDENTIFYING, joined_sql, view_sql

    con = duckdb.connect(":memory:")
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {_sql_string(str(memory_limit))}")
    if temp_directory is not None:
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {_sql_string(str(Path(temp_directory).resolve()))}")
    every = [*files, *metadata]
    allowed = ", ".join(_sql_string(p) for p in sorted(set(every) | {_literal_glob(f) for f in every}))
    con.execute(f"SET allowed_paths = [{allowed}]")
    if files and not metadata:  # a part of a DataComp pool, as a task of a distributed filter reads
        names = _names(con, ", ".join(_sql_string(_literal_glob(f)) for f in files))
        if set(IDENTIFYING) <= names and S.STATUS not in names:
            files, metadata = [], files
    index_patterns = ", ".join(_sql_string(_literal_glob(f)) for f in files)
    index_sql = f"SELECT * FROM read_parquet([{index_patterns}], union_by_name = true)"
    if metadata:
        meta_patterns = ", ".join(_sql_string(_literal_glob(f)) for f in metadata)
        meta_names = _names(con, meta_patterns)
        meta_sql = view_sql(meta_patterns, meta_names)
        sql = joined_sql(meta_sql, meta_names, index_sql, _names(con, index_patterns)) if files else meta_sql
    else:
        sql = index_sql
    con.execute(f"CREATE VIEW {VIEW} AS {sql}")
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


BATCH_ROWS = 1 << 18  # rows a batch when a result is streamed to a file


def query_to_file(sql: str, index: str | Path, path: str | Path, memory_limit: str | None = "2GiB") -> int:
    """Run a read-only query and stream its result to ``path`` (``.parquet``, ``.csv``,
    ``.json``/``.jsonl``), ``BATCH_ROWS`` rows at a time from DuckDB's Arrow reader, so the
    result is never held whole: memory is bounded by ``memory_limit`` (DuckDB, spilling to
    ``<path>.duckdb-tmp``, a work folder of curate's: ``curate.io.atomic.make_work_folder``) plus
    one batch. The file is written under a temporary name and renamed when complete; it replaces
    a file already at ``path`` (the file the caller named), never an index file.

    Returns:
        Rows written.

    Raises:
        QueryError: not read-only, or DuckDB rejects it (a full disk included: its
            ``__context__`` is DuckDB's ``IOException``).
        OSError: writing ``path`` failed (``errno.ENOSPC``: the disk is full).
        ValueError: unknown extension; ``curate.io.atomic.ForeignOutput``: ``path`` is an index
            file, or a ``.parquet`` file in the index's folder (it would join the index), or a
            folder of the user's has the spill folder's name (before the query runs).
        FileNotFoundError: no index files.
    """
    check_read_only(sql)
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".parquet", ".csv", ".json", ".jsonl"):
        raise ValueError(f"--output must end in .csv, .parquet, .json or .jsonl, got {path.name}")
    target = path.resolve()
    for f in map(Path, sum(pool_files(index), [])):
        if f == target or (ext == ".parquet" and f.parent == target.parent):
            raise ForeignOutput(f"--output {path} is in the score index (or metadata) folder (an index file, "
                                f"or a .parquet file that would join them); write the result elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    spill = make_work_folder(path.with_name(path.name + ".duckdb-tmp"))
    rows = 0
    try:  # a failed run (a DuckDB error, a full disk) leaves no partial file behind
        con = connect(index, memory_limit=memory_limit, temp_directory=spill)
        try:
            with atomic_path(path) as part:
                reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
                with _BatchWriter(part, ext, reader.schema) as out:
                    for batch in reader:
                        out.write(batch)
                        rows += batch.num_rows
        except duckdb.Error as e:
            raise QueryError(str(e)) from None
        finally:
            con.close()
    finally:
        remove_work_folder(spill)
    return rows


class _BatchWriter:
    """Append Arrow record batches to one Parquet, CSV or JSON-lines file (``write_table``'s
    formats: list and struct columns as JSON text in CSV, non-finite floats as ``null`` in
    JSON)."""

    def __init__(self, path: Path, ext: str, schema: pa.Schema):
        self.path, self.ext, self.schema = path, ext, schema
        self.csv_schema = pa.schema([pa.field(f.name, pa.string()) if _nested(f.type) else f for f in schema])
        self._out = None

    def __enter__(self):
        if self.ext == ".parquet":
            self._out = pq.ParquetWriter(self.path, self.schema)
        elif self.ext == ".csv":
            import pyarrow.csv as pacsv

            self._out = pacsv.CSVWriter(self.path, self.csv_schema)
        else:
            self._out = open(self.path, "w")
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        if self.ext == ".parquet":
            self._out.write_batch(batch)
        elif self.ext == ".csv":
            self._out.write_batch(_csv_ready(batch, self.csv_schema))
        else:
            for row in batch.to_pylist():
                self._out.write(json.dumps(_json_safe(row), default=str) + "\n")

    def __exit__(self, *exc):
        self._out.close()


def _nested(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_struct(t) or pa.types.is_large_list(t)


def _csv_ready(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with its list and struct columns as JSON text (CSV has no nested values)."""
    columns = [pa.array([None if v is None else json.dumps(v) for v in c.to_pylist()], pa.string())
               if _nested(f.type) else c for f, c in zip(batch.schema, batch.columns)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _json_safe(value):
    """``value`` with non-finite floats as ``null`` (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
