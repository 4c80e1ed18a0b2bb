"""No file name is made from data (issue 28).

The attack: a score index edited by hand (or written by anything but curate) whose ``uid`` holds
``../`` segments or a leading ``/``. ``curate report`` and ``curate search --html`` named each
thumbnail ``images/<row>-<uid>.jpg``, so such a uid put a JPEG outside the report folder (and a
uid with a newline named a file the page could not load). Thumbnails are now named by their row
position alone, every write under a computed name goes through ``curate.io.atomic.inside``, and
the report passes over (and counts) a row whose uid is no uid.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from curate import schema as S
from curate.io.atomic import inside
from curate.io.index import index_path, records_to_table, write_index_file
from curate.report import build_report
from curate.report.render import render_search
from curate.report.search import SearchResult
from tests.conftest import REPO, sample_members

HOSTILE = ["../../evil", "/../../../evil", "/../../../../evil", "x\n/../../../../../evil"]
OWN_NAMES = re.compile(r"\d{7}(\.masked)?\.jpg|hist_scores\.png|scatter_scores\.png|hist_subset\.png")


def _rows(uids: list[str]) -> list[dict]:
    """Index rows of real samples of the bundled shards (their shard and key, so the images are
    read back), ``ok``, with the given uids."""
    rows = []
    for i, ((shard, key, members), uid) in enumerate(zip(sample_members(), uids)):
        rows.append({S.UID: uid, S.KEY: key, S.SHARD: shard, S.TEXT: members["txt"].decode(), S.STATUS: S.STATUS_OK,
                     S.ERROR: None, S.WIDTH: 200, S.HEIGHT: 150, S.TEXT_BOXES: np.zeros((0, 8), np.float32),
                     S.NUM_TEXT_BOXES: 0, S.TEXT_AREA_FRAC: 0.0, S.CLIP_SCORE: 0.2 + i / 100,
                     S.MASKED_CLIP_SCORE: 0.2 + i / 100, S.CAPTION_LANG: "en", S.CAPTION_LANG_SCORE: 0.9,
                     S.OCR_TEXT: None, S.OCR_CONFIDENCE: None})
    return rows


def _written_outside(root: Path, *allowed: Path) -> list[Path]:
    """Every file under ``root`` that is not under one of ``allowed``."""
    return [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def test_report_over_an_index_whose_uid_climbs_out_writes_only_inside_its_folder(tmp_path):
    """Attack: an index whose ``ok`` rows carry uids ``../../evil``, ``/../../../evil`` and the
    like, reported into a folder three levels down. Nothing is written outside the report folder,
    its ``images/`` holds only position-named thumbnails and the plots, and the page counts the
    rows whose uid is no uid (left out of the bands). Before: ``/../../../evil.jpg`` and its
    masked twin landed beside the report folder."""
    uids = [json.loads(members["json"])["uid"] for _, _, members in sample_members()[:4]] + HOSTILE
    cols = {c: [r[c] for r in _rows(uids)] for c in S.COLUMNS}
    index = tmp_path / "index"
    index.mkdir()
    write_index_file(index / "hostile-000000.parquet", records_to_table(cols), {})
    out = tmp_path / "a" / "b" / "c" / "report"
    summary = build_report(index, out, bands=1, per_band=20)
    assert _written_outside(tmp_path, index, out) == []
    names = {p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*")}
    assert names and all(OWN_NAMES.fullmatch(n) for n in names), names
    assert summary.num_examples == 4 and summary.missing == 0
    page = summary.html.read_text()
    assert "4 row(s) have a uid that is not 32 lower-case hex characters" in page


def test_search_page_names_thumbnails_by_rank_whatever_the_uid(tmp_path):
    """The page writer ``curate search --html`` shares with the report, given hits whose uids
    climb out (a search never passes over its hits' names): every thumbnail is written, named by
    the hit's rank, inside ``images/`` beside the page, and the page shows the uids as text.
    Before: the hits' thumbnails landed outside the page's folder."""
    rows = _rows(HOSTILE)
    page = tmp_path / "x" / "y" / "z" / "hits.html"
    render_search(SearchResult("a dog", rows, np.linspace(0.9, 0.5, len(rows)).astype(np.float32)), page)
    assert _written_outside(tmp_path, page.parent) == []
    names = sorted(p.name for p in (page.parent / "images").iterdir())
    assert names == sorted(f"{i:07d}{ext}" for i in range(len(rows)) for ext in (".jpg", ".masked.jpg"))
    assert "../../evil" in page.read_text()


def test_inside_refuses_every_way_out(tmp_path):
    """``inside(folder, name)``: a name with ``..`` segments, an absolute name, the folder itself
    or a link inside that points out is refused; an ordinary nested name is returned joined (not
    resolved). ``index_path`` names an index file from a shard URL through it."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "link").symlink_to(tmp_path)
    assert inside(folder, "images/0000001.jpg") == folder / "images" / "0000001.jpg"
    for name in ("../evil.jpg", "images/../../evil.jpg", "/etc/passwd", str(tmp_path / "evil"), ".", "link/evil"):
        with pytest.raises(ValueError, match="leads outside"):
            inside(folder, name)
    for url in ("s3://bucket/pool/00000001.tar", "/data/..", "file:///data/x/../y.tar.gz", "gs://b/.tar"):
        p = index_path(folder, url)
        assert p.parent == folder and os.sep not in p.name


def test_a_captions_file_never_names_an_image_outside_the_image_root(tmp_path):
    """The attack: a downloaded captions JSONL for ``make-evalset --captions`` whose ``image`` is
    an absolute path or climbs out with ``..``; the file it names (any file the user can read)
    was packed into the eval set. Now each is refused by line, before any image is read, and
    nothing is written."""
    import shutil

    from curate.evaluate.make_evalset import make_retrieval_set

    root = tmp_path / "images"
    root.mkdir()
    photo = next(p for p in sorted((REPO.parent / "shared" / "data" / "photos").iterdir()) if p.suffix == ".jpg")
    shutil.copy(photo, root / "a.jpg")
    secret = tmp_path / "secret.jpg"
    shutil.copy(photo, secret)
    ok = json.dumps({"image": "a.jpg", "captions": ["a photo"]})
    for name in [str(secret), "../secret.jpg", "sub/../../secret.jpg", "..\\secret.jpg"]:
        caps = tmp_path / "caps.jsonl"
        caps.write_text(ok + "\n" + json.dumps({"image": name, "captions": ["x"]}) + "\n")
        with pytest.raises(ValueError, match="line 2: image .* is not a path under --image-root"):
            make_retrieval_set(caps, root, "r", tmp_path / "out")
        assert not (tmp_path / "out" / "wds_r_test").exists()
    caps.write_text(ok + "\n")
    assert make_retrieval_set(caps, root, "r", tmp_path / "out").samples == 1
