"""``curate.io.index``: what a folder given as ``--index`` is when it is not a score index (issue 30)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.io.index import describe_not_an_index, index_files
from tests.conftest import DATA


def _subset_folder(d):
    """What ``curate filter`` leaves: subset.parquet (index columns, no curate metadata) and its summary."""
    d.mkdir()
    pq.write_table(pa.table({S.UID: ["0" * 32], S.SHARD: ["a.tar"], S.KEY: ["k"]}), d / "subset.parquet")
    (d / "filter_summary.json").write_text("{}")
    return d


@pytest.mark.parametrize("marker, says", [
    ("train_config.json", "is a `curate train` output folder, not a score index"),
    ("eval_results.jsonl", "is a `curate evaluate` output folder, not a score index"),
    ("index.html", "is a `curate report` page, not a score index"),
])
def test_other_outputs_are_named(tmp_path, marker, says):
    (tmp_path / marker).write_text("{}")
    with pytest.raises(FileNotFoundError, match=says):
        index_files(tmp_path)


def test_what_a_folder_is_when_it_is_not_an_index(tmp_path):
    subset = _subset_folder(tmp_path / "subset")
    with pytest.raises(FileNotFoundError, match="is a subset folder written by `curate filter`, not a score index"):
        index_files(subset)
    assert "no such file or folder" in describe_not_an_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "is an empty folder" in describe_not_an_index(tmp_path / "empty")
    assert "holds shards, not a score index" in describe_not_an_index(DATA / "shards")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert "no score-index files" in describe_not_an_index(tmp_path / "other")


@pytest.mark.parametrize("argv", [
    ["report", "--index", "{d}", "--out", "{t}/rep"],
    ["filter", "--index", "{d}", "--rule", "no_filter()", "--out", "{t}/f"],
    ["query", "SELECT count(*) FROM scores", "--index", "{d}"],
    ["search", "a cat", "--index", "{d}", "--html", "{t}/s.html"],
], ids=lambda a: a[0])
def test_every_command_that_reads_an_index_says_so_in_one_line(tmp_path, capsys, argv):
    """``curate report --index out/subset`` used to write a page of ``?`` and exit 0; ``filter``
    leaked DuckDB's ``Binder Error``."""
    d = _subset_folder(tmp_path / "subset")
    code = main([a.format(d=d, t=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "is a subset folder written by `curate filter`" in err, err
    assert "Binder Error" not in err
