"""``curate.query``: read-only SQL over an index, whole or streamed to a file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.cli import main
from curate.query import QueryError, check_read_only, query
from tests.conftest import EDGE
from tests.filters.test_filters import make_index


@pytest.fixture
def index(tmp_path):
    return make_index(tmp_path / "index")


def test_query_cannot_touch_files(hostile_index, tmp_path, capsys):
    from curate.query import QueryError, query

    _, out, _ = hostile_index
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM '{EDGE}'",
                "SELECT * FROM read_parquet('/tmp/*.parquet')", "SELECT current_setting('enable_external_access') AND "
                "(SELECT count(*) FROM glob('/etc/*')) > 0"):
        with pytest.raises(QueryError):
            query(sql, out)
    assert main(["query", f"COPY (SELECT 1) TO '{tmp_path / 'y.csv'}'", "--index", str(out)]) == 2
    assert not (tmp_path / "y.csv").exists()
    capsys.readouterr()


def test_query_is_read_only(index):
    t = query("SELECT status, count(*) AS n FROM scores GROUP BY status ORDER BY status", index)
    assert dict(zip(t.column("status").to_pylist(), t.column("n").to_pylist())) == {
        "decode_error": 1, "missing_caption": 1, "ok": 8}
    for sql in ["COPY scores TO '/tmp/x.csv'", "CREATE TABLE t AS SELECT 1", "SELECT 1; SELECT 2",
                "ATTACH '/tmp/x.db'", "INSERT INTO scores VALUES (1)", "SET threads = 1"]:
        with pytest.raises(QueryError):
            query(sql, index)


def test_query_output_is_streamed_in_batches(index, tmp_path, monkeypatch):
    """``curate query --output`` written two rows a batch holds what ``query`` returns whole:
    Parquet equal, CSV with the box lists as JSON text, JSON lines with NaN as null."""
    import json

    import pyarrow.csv as pacsv

    import curate.query as Q

    sql = "SELECT key, clip_score, text_boxes FROM scores ORDER BY key"
    whole = query(sql, index)
    monkeypatch.setattr(Q, "BATCH_ROWS", 2)
    for ext in ("parquet", "csv", "jsonl"):
        dest = tmp_path / f"r.{ext}"
        assert Q.query_to_file(sql, index, dest, memory_limit="64MiB") == whole.num_rows
        assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.duckdb-tmp"))
        if ext == "parquet":
            assert pq.read_table(dest).equals(whole)
        elif ext == "csv":
            got = pacsv.read_csv(dest, convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.string()}, strings_can_be_null=True))
            assert got.column("key").to_pylist() == whole.column("key").to_pylist()
            boxes = [None if v is None else json.loads(v) for v in got.column("text_boxes").to_pylist()]
            assert boxes == whole.column("text_boxes").to_pylist()
        else:
            lines = [json.loads(line) for line in dest.read_text().splitlines()]
            assert [r["key"] for r in lines] == whole.column("key").to_pylist()
            assert [r["clip_score"] is None for r in lines] == [
                k in {"08", "09"} for k in whole.column("key").to_pylist()]
    with pytest.raises(QueryError):
        Q.query_to_file("DELETE FROM scores", index, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_check_read_only_accepts_one_select_and_nothing_else():
    for sql in ("SELECT 1", "WITH t AS (SELECT 1 AS x) SELECT x FROM t", "VALUES (1), (2)", "EXPLAIN SELECT 1",
                "  select 1 ;  "):
        check_read_only(sql)
    for sql, message in [("SELECT 1; SELECT 2", "exactly one statement, got 2"), ("", "exactly one statement, got 0"),
                         ("DELETE FROM scores", "DELETE statements are refused"),
                         ("PRAGMA enable_external_access", "refused"), ("LOAD httpfs", "refused"),
                         ("SELEC 1", "cannot parse query")]:
        with pytest.raises(QueryError, match=message):
            check_read_only(sql)


def test_the_connection_is_locked_down_whatever_the_select(index):
    """What ``check_read_only`` lets through (one SELECT) still cannot read files, change
    settings or reach the network: ``connect`` turns external access off and locks it."""
    for sql in (f"SELECT * FROM read_csv('{EDGE}')", "SELECT * FROM glob('/etc/*')",
                "SELECT * FROM read_parquet('https://example.com/x.parquet')"):
        with pytest.raises(QueryError):
            query(sql, index)
    assert query("SELECT current_setting('enable_external_access') AS on_", index).column("on_").to_pylist() == [False]
