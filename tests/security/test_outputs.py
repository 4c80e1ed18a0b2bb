"""Issue 28: no command deletes or overwrites a file it did not write.

Each test puts a user's file (or an input) where a command could replace or remove it, runs the
command, and checks that the file is still there byte for byte: the command either leaves it
alone or refuses with a usage error (``curate.io.atomic.ForeignOutput``, exit 2) before any
change. No test here starts Ray: every refusal comes before any worker.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.cli import main
from curate.io.atomic import ForeignOutput, atomic_folder, make_work_folder, remove_work_folder
from curate.io.samples import sample_to_record
from curate.io.shards import read_shard
from curate.io.subset import uids_to_datacomp
from tests.conftest import REPO, SHARD_SPEC, SHARDS
from tests.filters.test_filters import make_index

USER = b"the user's own file: not curate's to replace\n"


def plant(path, data: bytes = USER):
    """Write ``data`` to ``path`` (folders created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_parquet(path):
    """A Parquet file without curate's metadata (a user's table) at ``path``; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"mine": [1, 2, 3]}), path)
    return path.read_bytes()


# --------------------------------------------------------------------------- reshard


def _datacomp_pool(folder):
    """Two real sample shards copied under DataComp's shard names (``00000000.tar``, ...), and a
    subset of one uid from each."""
    folder.mkdir(parents=True)
    uids = []
    for n, shard in enumerate(SHARDS[:2]):
        shutil.copy(shard, folder / f"{n:08d}.tar")
        uids.append(sample_to_record(read_shard(str(shard)).samples[0])["uid"])
    subset = folder.parent / "subset.npy"
    np.save(subset, uids_to_datacomp(uids))
    return subset


def test_reshard_refuses_an_out_that_holds_its_input_shards(tmp_path, capsys):
    """The issue's case: ``--out`` equal to the pool folder removed every input shard named as
    DataComp names shards (2 input shards became 1 output shard, exit 0). Now: exit 2 with the
    reason, and the pool as it was; also through a path that only resolves to the pool."""
    pool = tmp_path / "pool"
    subset = _datacomp_pool(pool)
    before = snapshot(pool)
    assert main(["reshard", str(pool / "*.tar"), "--subset", str(subset), "--out", str(pool)]) == 2
    assert "holds the input shard" in capsys.readouterr().err
    assert snapshot(pool) == before
    (tmp_path / "link").symlink_to(pool)
    assert main(["reshard", str(pool / "*.tar"), "--subset", str(subset), "--out", str(tmp_path / "link")]) == 2
    assert main(["reshard", str(pool / "*.tar"), "--subset", str(subset), "--out", str(pool / "sub" / "..")]) == 2
    assert snapshot(pool) == before


def test_reshard_replaces_only_the_files_its_previous_summary_lists(tmp_path):
    """A rerun removes the previous run's shards beyond the new count (listed in its summary);
    a user's file of a shard's name, a stray ``{:08d}.tar`` and a user's ``.reshard-work``
    folder are never removed or replaced."""
    from curate.io.reshard import reshard

    uids = sorted({sample_to_record(s)["uid"] for s in read_shard(str(SHARDS[0])).samples})
    many, few = tmp_path / "many.npy", tmp_path / "few.npy"
    np.save(many, uids_to_datacomp(uids[:4]))
    np.save(few, uids_to_datacomp(uids[:1]))
    out = tmp_path / "out"
    # A user's file where the first output shard goes, in a folder no reshard wrote: refused.
    plant(out / "00000000.tar")
    with pytest.raises(ForeignOutput):
        reshard(many, SHARD_SPEC, out, shard_size=2)
    assert (out / "00000000.tar").read_bytes() == USER and sorted(p.name for p in out.iterdir()) == ["00000000.tar"]
    (out / "00000000.tar").unlink()
    assert reshard(many, SHARD_SPEC, out, shard_size=2).output_shards == ["00000000.tar", "00000001.tar"]
    plant(out / "00000007.tar")  # DataComp's name, not written by curate
    plant(out / "notes.txt")
    assert reshard(few, SHARD_SPEC, out, shard_size=2).output_shards == ["00000000.tar"]
    assert sorted(p.name for p in out.iterdir()) == ["00000000.tar", "00000000_stats.json", "00000007.tar",
                                                      "notes.txt", "reshard_summary.json"]
    assert (out / "00000007.tar").read_bytes() == USER and (out / "notes.txt").read_bytes() == USER
    # A folder of the user's with the work folder's name is not emptied.
    plant(out / ".reshard-work" / "keep.txt")
    with pytest.raises(ForeignOutput):
        reshard(few, SHARD_SPEC, out, shard_size=2)
    assert (out / ".reshard-work" / "keep.txt").read_bytes() == USER


# --------------------------------------------------------------------------- score


def test_score_refuses_to_replace_files_it_did_not_write(tmp_path, capsys):
    """A Parquet file of the user's where a shard's index file (or embedding file) goes, a
    ``_summary.json`` of the user's, or a folder of the user's where the shard's parts go: exit 2
    before any shard is read (no Ray), with ``--overwrite`` too; each byte for byte."""
    args = ["score", str(SHARDS[0]), "--config", str(REPO / "pipelines" / "tiny_cpu.yaml"), "--no-progress"]
    cases = {"index file": "sample-000000.parquet", "embedding file": "_embeddings/sample-000000.parquet"}
    for n, (what, name) in enumerate(cases.items()):
        out = tmp_path / f"o{n}"
        data = foreign_parquet(out / name)
        for extra in ([], ["--overwrite"]):
            assert main(args + ["--out", str(out)] + extra) == 2, what
            assert "was not written by curate" in capsys.readouterr().err
            assert (out / name).read_bytes() == data, what
    for name in ("_summary.json", "_parts/sample-000000.parquet/mine.txt"):
        out = tmp_path / name.replace("/", "-")
        plant(out / name)
        assert main(args + ["--out", str(out)]) == 2, name
        assert (out / name).read_bytes() == USER


def test_score_removes_only_its_own_temporaries():
    """A killed writer's temporary (``.<name>.tmp-<8 hex>``) is removed; a user's file that
    merely starts like one is not."""
    import tempfile
    from pathlib import Path

    from curate.io.index import remove_stale_temporaries

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        stale = plant(d / ".sample-000000.parquet.tmp-deadbeef")
        mine = plant(d / ".sample-000000.parquet.tmp-my-notes.txt")
        assert remove_stale_temporaries(d / "sample-000000.parquet") == 1
        assert not stale.exists() and mine.read_bytes() == USER


# --------------------------------------------------------------------------- filter and query


def test_filter_refuses_user_files_the_index_folder_and_a_user_work_folder(tmp_path, capsys):
    """``curate filter`` replaces ``subset.parquet``, ``subset.npy``, ``filter_summary.json`` and
    the rules' files only when a previous filter run's summary lists them; it never writes into
    the index's own folder, and never empties a user's folder named as its work or spill folder."""
    index = make_index(tmp_path / "index")
    rule = ["--rule", "basic()"]
    for name in ("subset.npy", "subset.parquet", "filter_summary.json", ".filter-work/mine.txt",
                 ".duckdb-tmp/mine.txt"):
        out = tmp_path / ("o-" + name.replace("/", "-"))
        plant(out / name)
        assert main(["filter", "--index", str(index), "--out", str(out)] + rule) == 2, name
        assert "was not written by curate" in capsys.readouterr().err
        assert (out / name).read_bytes() == USER, name
    before = snapshot(index)
    assert main(["filter", "--index", str(index), "--out", str(index)] + rule) == 2
    assert "score index's folder" in capsys.readouterr().err
    assert snapshot(index) == before
    # curate's own outputs are replaced as before, and a user's other file beside them stays.
    out = tmp_path / "own"
    assert main(["filter", "--index", str(index), "--out", str(out)] + rule) == 0
    plant(out / "notes.txt")
    assert main(["filter", "--index", str(index), "--out", str(out), "--rule", "tmars(fraction=0.5)"]) == 0
    assert json.loads((out / "filter_summary.json").read_text())["rule"] == "tmars(fraction=0.5)"
    assert sorted(p.name for p in out.iterdir()) == ["filter_summary.json", "notes.txt", "subset.npy",
                                                      "subset.parquet"]
    assert (out / "notes.txt").read_bytes() == USER


def test_query_output_never_replaces_an_index_file_or_a_user_folder(tmp_path, capsys):
    """``curate query --output`` naming an index file, or a ``.parquet`` in the index folder
    (it would join the index), is refused; so is a user's folder named as its spill folder."""
    index = make_index(tmp_path / "index")
    before = snapshot(index)
    sql = "SELECT uid FROM scores"
    for output in (index / "pool-000000.parquet", index / "result.parquet"):
        assert main(["query", sql, "--index", str(index), "--output", str(output)]) == 2
        assert "score index" in capsys.readouterr().err
    assert snapshot(index) == before
    plant(tmp_path / "result.csv.duckdb-tmp" / "mine.txt")
    assert main(["query", sql, "--index", str(index), "--output", str(tmp_path / "result.csv")]) == 2
    assert (tmp_path / "result.csv.duckdb-tmp" / "mine.txt").read_bytes() == USER
    assert main(["query", sql, "--index", str(index), "--output", str(index / "result.csv")]) == 0
    assert snapshot(index).items() >= before.items()


# --------------------------------------------------------------------------- train and evaluate


def test_train_refuses_an_out_with_files_of_its_names_it_did_not_write(tmp_path, capsys):
    """``train_config.json`` and ``train_summary.json`` are replaced, and ``train_log.jsonl``
    appended to, only when curate wrote them: exit 2 before any worker otherwise."""
    for name in ("train_config.json", "train_summary.json", "train_log.jsonl"):
        out = tmp_path / name
        plant(out / name)
        assert main(["train", SHARD_SPEC, "--out", str(out), "--local", "--no-progress"]) == 2, name
        assert "was not written by curate" in capsys.readouterr().err
        assert snapshot(out) == {name: USER}, name


def test_evaluate_refuses_a_results_log_or_summary_it_did_not_write(tmp_path, capsys):
    """``eval_results.jsonl`` is appended to (and a last line without its newline dropped) only
    when it holds curate's result lines; ``eval_summary.json`` is replaced only when curate's."""
    data = tmp_path / "data"
    data.mkdir()
    for name, text in (("eval_results.jsonl", b"my notes, no newline at the end"),
                       ("eval_results.jsonl", b'{"a": 1}\n'), ("eval_summary.json", USER)):
        out = tmp_path / f"o-{len(text)}"
        plant(out / name, text)
        assert main(["evaluate", "--model", "tiny", "--tasks", "cifar10", "--data-dir", str(data),
                     "--out", str(out)]) == 2, text
        assert "was not written by curate" in capsys.readouterr().err
        assert snapshot(out) == {name: text}


def test_make_evalset_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    """``OUT/wds_NAME_test`` that is a user's folder (here the class-folder tree being read) is
    refused, not replaced by the new test set; ``atomic_folder`` removes no non-empty folder."""
    tree = tmp_path / "data" / "wds_toy_test"
    for cls in ("cat", "dog"):
        (tree / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tree / cls / "0.png")
    before = snapshot(tree)
    assert main(["make-evalset", "--imagefolder", str(tree), "--name", "toy", "--out", str(tmp_path / "data")]) == 2
    assert "was not written by curate" in capsys.readouterr().err
    assert snapshot(tree) == before
    folder = tmp_path / "x"
    plant(folder / "keep.txt")
    with pytest.raises(ForeignOutput):
        with atomic_folder(folder) as tmp:
            tmp.mkdir()
    assert snapshot(folder) == {"keep.txt": USER} and not list(tmp_path.glob(".x.tmp-*"))


def test_work_folders_are_removed_only_when_curate_made_them(tmp_path):
    mine = plant(tmp_path / "work" / "mine.txt")
    assert not remove_work_folder(tmp_path / "work")
    with pytest.raises(ForeignOutput):
        make_work_folder(tmp_path / "work")
    assert mine.read_bytes() == USER
    work = make_work_folder(tmp_path / "w2")
    (work / "part").write_bytes(b"x")
    assert make_work_folder(tmp_path / "w2") == work and sorted(p.name for p in work.iterdir()) == [".curate-work"]
    assert remove_work_folder(work) and not work.exists()


# --------------------------------------------------------------------------- report and search


def test_report_refuses_a_page_or_images_it_did_not_write(tmp_path, capsys):
    """A user's ``index.html`` in ``--out``, or a user's file of a plot's name in ``images/``
    without a curate page beside it: exit 2, both byte for byte. A rerun over curate's own
    report replaces it."""
    index = make_index(tmp_path / "index")
    for name in ("index.html", "images/hist_scores.png"):
        out = tmp_path / ("o-" + name.replace("/", "-"))
        plant(out / name)
        assert main(["report", "--index", str(index), "--out", str(out)]) == 2, name
        assert "was not written by curate" in capsys.readouterr().err
        assert snapshot(out) == {name: USER}
    out = tmp_path / "own"
    assert main(["report", "--index", str(index), "--out", str(out)]) == 0
    assert main(["report", "--index", str(index), "--out", str(out)]) == 0  # curate's own page: replaced


def test_search_html_refuses_a_file_it_did_not_write(tmp_path):
    """``curate search --html PAGE``: a user's file at PAGE is refused (the page is written by
    ``render_search`` after the search; called directly here, without a CLIP model)."""
    from curate.io.index import read_index
    from curate.report.render import render_search
    from curate.report.search import SearchResult

    rows = read_index(make_index(tmp_path / "index")).to_pylist()[:2]
    result = SearchResult("a dog", rows, np.asarray([0.9, 0.8], dtype=np.float32))
    page = plant(tmp_path / "site" / "hits.html")
    with pytest.raises(ForeignOutput):
        render_search(result, page)
    assert snapshot(tmp_path / "site") == {"hits.html": USER}
    page.unlink()
    assert render_search(result, page) == page  # then curate's own page is replaced on a rerun
    assert render_search(result, page) == page
