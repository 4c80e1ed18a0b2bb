"""``curate report``, ``curate search`` and ``curate reshard`` on a DataComp pool (issue 29): the
metadata folder alone (``tests/data/datacomp/sample_metadata``: DataComp metadata of the bundled
sample shards, 3 of its 44 rows in no shard), and joined by uid with a real score index of the
same shards (the session's ``scored`` and ``embedded_pool`` fixtures)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.filters import run_filter
from curate.io.datacomp import metadata_files
from curate.io.reshard import reshard
from curate.query import query
from curate.report.pool import NO_IMAGES, gather_pool_report
from tests.conftest import REPO

SAMPLE = REPO / "tests" / "data" / "datacomp" / "sample_metadata"
SHARDS = [str(p) for p in sorted((REPO / "tests" / "data" / "shards").glob("sample-00000[0-2].tar"))]
L14, B32 = "clip_l14_similarity_score", "clip_b32_similarity_score"


def page_text(page: Path) -> str:
    """The page's text, tags stripped and whitespace runs made one space."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text())).split())


def test_report_on_the_metadata_alone(tmp_path, capsys):
    """No image in the pool: counts, DataComp's score distributions, caption and image figures,
    the subset's kept and dropped, each band's captions; no thumbnail, and the page and the
    command's line say what to give for them."""
    meta = pq.read_table(metadata_files(SAMPLE)).to_pylist()
    run_filter(SAMPLE, "clip_score(arch='l14', fraction=0.3)", tmp_path / "f")
    subset = tmp_path / "f" / "subset.npy"
    assert main(["report", "--index", str(SAMPLE), "--subset", str(subset), "--out", str(tmp_path / "r"),
                 "--per-band", "2"]) == 0
    out = capsys.readouterr().out
    assert "44 samples" in out and "no thumbnails (give the score index too)" in out
    text = page_text(tmp_path / "r" / "index.html")
    assert "44 samples from 1 metadata file(s), 44 ok" in text and " ".join(NO_IMAGES.split()) in text
    kept = len(np.load(subset))
    assert f"Kept {kept} of 44 samples" in text and f"dropped {44 - kept}" in text
    images = sorted(p.name for p in (tmp_path / "r" / "images").iterdir())
    assert images == ["hist_scores.png", "hist_subset.png", "scatter_scores.png"]  # no thumbnail
    assert f"banded by {L14}" in text

    data = gather_pool_report([SAMPLE], subset=str(subset), per_band=2)
    assert data.num_samples == data.num_ok == 44 and data.by_status == [("ok", 44)] and not data.joined
    assert data.band_by == L14 and sum(b.count for b in data.bands) == 44 and len(data.bands) == 5
    stats = {s["name"]: s for s in data.score_stats}
    for c in (B32, L14):
        values = np.array([r[c] for r in meta], np.float32)
        assert stats[c]["n"] == 44 and data.hists[c].sum() == 44
        assert stats[c]["min"] == pytest.approx(values.min()) and stats[c]["max"] == pytest.approx(values.max())
        assert stats[c]["mean"] == pytest.approx(values.astype(float).mean(), rel=1e-5)
    figures = dict(data.captions + data.images)
    assert figures["missing or empty"] == str(sum(not (r["text"] or "").strip() for r in meta))
    assert figures["rows with face boxes"] == str(sum(bool(r["face_bboxes"]) for r in meta))
    # Each band's examples lie in it, highest first; the subset's dropped rows rank below its kept ones.
    for b in data.bands:
        scores = [data.examples[i][L14] for i in b.rows]
        assert len(scores) == min(2, b.count) and scores == sorted(scores, reverse=True)
        assert all(b.lo <= s <= b.hi for s in scores)
    v = data.subset
    assert (v.kept, v.dropped, v.unknown, v.repeats) == (kept, 44 - kept, 0, 0)
    assert max(data.examples[i][L14] for i in v.dropped_rows) <= min(data.examples[i][L14] for i in v.kept_rows)
    assert sum(k.sum() for k, _ in [v.hists[L14]]) == kept


def test_report_band_by_and_bad_index_are_usage_errors(tmp_path, capsys):
    assert main(["report", "--index", str(SAMPLE), "--index", str(SAMPLE), "--out", str(tmp_path / "r")]) == 2
    assert "at most one DataComp metadata folder" in capsys.readouterr().err
    # DataComp's scores band a DataComp pool; a score index alone has none
    assert main(["report", "--index", str(SAMPLE), "--band-by", B32, "--out", str(tmp_path / "r")]) == 0
    assert f"Examples by {B32} band" in page_text(tmp_path / "r" / "index.html")


def test_search_refuses_the_metadata_alone_in_one_line(capsys):
    assert main(["search", "a dog", "--index", str(SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be searched" in err and "--embeddings" in err and ".npz" in err


def test_reshard_a_subset_of_the_metadata_pool(tmp_path):
    """A subset made from the metadata alone names uids; reshard streams the shards and writes
    those it finds (the 3 rows in no shard are counted as not found)."""
    run_filter(SAMPLE, "no_filter()", tmp_path / "f")
    s = reshard(tmp_path / "f" / "subset.npy", SHARDS, tmp_path / "o")
    assert (s.requested_uids, s.found_uids, s.written_samples) == (44, 41, 41)
    assert main(["reshard", *SHARDS, "--subset", str(tmp_path / "f" / "subset.npy"), "--face-boxes", str(SAMPLE),
                 "--out", str(tmp_path / "o2")]) == 0


@pytest.mark.slow
def test_report_and_reshard_on_the_metadata_joined_with_a_score_index(scored, tmp_path, capsys):
    """``--index METADATA --index SCORE_INDEX``: the score index's report (thumbnails, bands of
    masked_clip_score, per-shard accounting) with DataComp's scores on every card and the
    metadata rows the index lacks counted as ``not_scored``; the joined subset reshards."""
    index = scored[0]
    pool = [index, SAMPLE]
    run_filter(pool, "tmars(fraction=0.5) & clip_score(arch='l14', fraction=0.5)", tmp_path / "f")
    subset = tmp_path / "f" / "subset.npy"
    assert main(["report", "--index", str(SAMPLE), "--index", str(index), "--subset", str(subset),
                 "--out", str(tmp_path / "r"), "--per-band", "2"]) == 0
    out = capsys.readouterr().out
    assert "subset kept" in out and "unreadable" not in out  # every example's image is read back
    text = page_text(tmp_path / "r" / "index.html")
    assert "image not shown" not in text
    counts = {r["status"]: r["n"] for r in query("SELECT status, count(*) AS n FROM scores GROUP BY ALL", pool)
              .to_pylist()}
    assert counts[S.STATUS_NOT_SCORED] == 3
    total = sum(counts.values())
    assert f"{total} samples from 1 metadata file(s), {counts['ok']} ok, joined by uid" in text
    for status, n in counts.items():
        assert f"{status} {n}" in text
    assert "DataComp b32" in text and "l14" in text and "zzz-broken.tar" in text
    assert " ".join(NO_IMAGES.split()) not in text
    thumbs = list((tmp_path / "r" / "images").glob("*.masked.jpg"))
    assert len(thumbs) >= 5
    kept = len(np.load(subset))
    assert f"Kept {kept} of {total} samples" in text

    data = gather_pool_report(pool, per_band=2)
    assert data.joined and data.band_by == S.MASKED_CLIP_SCORE
    ok_scored = query(f"SELECT count(*) AS n FROM scores WHERE status = 'ok' AND isfinite({S.MASKED_CLIP_SCORE})",
                      pool).to_pylist()[0]["n"]
    assert sum(b.count for b in data.bands) == ok_scored
    assert sum(r["samples"] for r in data.accounting) == total - counts[S.STATUS_NOT_SCORED]
    assert all(data.examples[i][L14] is not None for b in data.bands for i in b.rows)

    s = reshard(subset, SHARDS, tmp_path / "o", face_boxes=SAMPLE)
    assert s.found_uids == s.requested_uids == kept and s.written_samples == kept


@pytest.mark.slow
def test_search_joined_with_the_metadata_gives_datacomps_scores(embedded_pool, capsys):
    """``--index SCORE_INDEX --index METADATA``: the index's embeddings are searched as before,
    and each hit carries DataComp's scores from the metadata (the injected copies, in no
    metadata row, are counted)."""
    from curate.report.search import search

    index = embedded_pool["index"]
    l14 = {r["uid"]: r[L14] for r in query(f"SELECT uid, {L14} FROM scores", SAMPLE).to_pylist()}
    alone = search(index, text="a photo", top_k=12)
    r = search([index, SAMPLE], text="a photo", top_k=12)
    assert [h[S.UID] for h in r.rows] == [h[S.UID] for h in alone.rows]
    np.testing.assert_array_equal(r.similarity, alone.similarity)
    for h in r.rows:
        assert h[L14] == (pytest.approx(l14[h[S.UID]]) if h[S.UID] in l14 else None)
    assert r.not_in_metadata == sum(h[S.UID] not in l14 for h in r.rows) > 0
    assert main(["search", "a photo", "--index", str(index), "--index", str(SAMPLE), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 nearest samples" in out and " b32 " in out and " l14 " in out
