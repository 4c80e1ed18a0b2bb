"""A DataComp metadata folder is a pool, and DataComp's baselines are curate rules whose
subsets are byte-identical to what DataComp's own ``baselines.py`` writes (issue 29).

The references in ``tests/data/datacomp/reference`` were written by DataComp's code on
``tests/data/datacomp/pool`` (provenance in that folder's README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curate import schema as S
from curate.filters import run_filter
from curate.query import connect, query
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "datacomp"
POOL = DATA / "pool"
REFERENCE = DATA / "reference"

CLIP_CASES = {
    "no_filter": "no_filter()",
    "clip_l14_f0.3": "clip_score(arch='l14', fraction=0.3)",
    "clip_b32_f0.3": "clip_score(arch='b32', fraction=0.3)",
    "clip_l14_f0.1": "clip_score(arch='l14', fraction=0.1)",
    "clip_l14_t0.25": "clip_score(arch='l14', threshold=0.25)",
    "clip_b32_t0.3": "clip_score(arch='b32', threshold=0.3)",
}


@pytest.mark.parametrize("run", sorted(CLIP_CASES))
def test_clip_score_and_no_filter_write_datacomps_subset_byte_for_byte(run, tmp_path):
    """``curate filter --index <metadata folder>`` with DataComp's rule gives DataComp's own
    ``subset.npy``: fractions ranked over the whole pool with DataComp's off-by-one
    (``-np.sort(-x)[int(N * f)]``, so ``n + 1`` rows and ties), thresholds compared in float32."""
    summary = run_filter(POOL, CLIP_CASES[run], tmp_path / "out")
    assert summary.pool_rows == 3000
    got = (tmp_path / "out" / "subset.npy").read_bytes()
    assert got == (REFERENCE / f"{run}.npy").read_bytes(), run


def test_metadata_folder_is_read_in_place_as_a_pool():
    """The view over a metadata folder: every DataComp column as it is, every row ``ok``,
    ``shard`` the file and ``key`` the row's position, nothing copied."""
    con = connect(POOL)
    names = {r[0] for r in con.execute("DESCRIBE scores").fetchall()}
    assert {"uid", "text", "original_width", "clip_l14_similarity_score", "face_bboxes", S.STATUS, S.SHARD,
            S.KEY, S.WIDTH} <= names
    rows = query("SELECT count(*) AS n, count(DISTINCT shard) AS files, min(key) AS k FROM scores "
                 "WHERE status = 'ok'", POOL).to_pylist()[0]
    assert rows == {"n": 3000, "files": 3, "k": "0"}


def test_a_score_index_joined_with_metadata_counts_the_rows_it_lacks(tmp_path):
    """``--index INDEX --index METADATA``: one pool of the metadata's rows, with the index's
    columns by uid; rows the index lacks are ``not_scored`` and never kept; a DataComp score
    is ranked over the whole metadata pool, as DataComp ranks it."""
    from tests.filters.test_filters import make_index

    meta = query("SELECT uid, text, original_width AS w, original_height AS h FROM scores ORDER BY uid LIMIT 40",
                 POOL).to_pylist()
    index = make_index(tmp_path / "index", [(r["uid"], "ok", r["text"], "en", r["w"], r["h"], 0.0, 0.3, 0.2 + i / 100)
                                            for i, r in enumerate(meta)])
    summary = run_filter([index, POOL], "tmars(fraction=0.5) & clip_score(arch='l14', fraction=0.9)", tmp_path / "o")
    assert summary.pool_rows == 3000 and summary.pool_ok == 40 and summary.not_scored == 2960
    assert "not scored    2960" in summary.format()
    kept = np.load(tmp_path / "o" / "subset.npy")
    assert 0 < len(kept) <= 21  # tmars keeps int(40 * 0.5) + 1 at most (DataComp's rank)
    # Every kept uid is one the index scored.
    scored = {(int(r["uid"][:16], 16), int(r["uid"][16:], 16)) for r in meta}
    assert {(int(a), int(b)) for a, b in kept.tolist()} <= scored


def test_clip_score_on_a_metadata_pool_names_the_arch():
    """``clip_score()`` without ``arch`` on DataComp metadata (no curate ``clip_score``) is a
    rule error naming ``arch``, not an empty subset."""
    from curate.filters import RuleError

    with pytest.raises(RuleError, match="arch='l14'"):
        run_filter(POOL, "clip_score(fraction=0.3)", Path("/nonexistent-out-never-written"))


def _wordnet() -> str | None:
    import os

    for p in (os.environ.get("CURATE_WORDNET"), "/usr/share/wordnet", str(Path.home() / "nltk_data/corpora/wordnet")):
        if p and (Path(p) / "data.noun").is_file():
            return p
    return None


TEXT_CASES = {
    "basic_filter": "basic_filter()",
    "laion2b": "laion2b()",
    "text_based": f"text_based(wordnet={_wordnet()!r})",
}


@pytest.mark.parametrize("run", sorted(TEXT_CASES))
def test_caption_baselines_write_datacomps_subset_byte_for_byte(run, tmp_path):
    """DataComp's ``basic_filter`` (fastText ``en``, ``str.split`` words, length, size and
    aspect), ``laion2b`` (CLD3 ``en``, B/32 score >= 0.28 in float32) and ``text_based``
    (fastText ``en``, an ImageNet-21k WordNet word) as curate rules over the metadata folder:
    DataComp's own ``subset.npy``, byte for byte (with the same ``lid.176.ftz``)."""
    if run == "text_based" and _wordnet() is None:
        pytest.skip("no WordNet 3.0 here (apt-get install wordnet-base, or CURATE_WORDNET=DIR)")
    run_filter(POOL, TEXT_CASES[run], tmp_path / "out")
    assert (tmp_path / "out" / "subset.npy").read_bytes() == (REFERENCE / f"{run}.npy").read_bytes(), run


def test_a_baseline_without_its_model_fails_fast_by_name(tmp_path):
    """A missing language model or WordNet is a rule error naming the file, before any row is
    read; laion2b() on a curate index (no B/32 column) names the metadata it needs."""
    from curate.filters import RuleError
    from tests.filters.test_filters import make_index

    with pytest.raises(RuleError, match="lid.176|not found"):
        run_filter(POOL, "basic_filter(lid_model='/nonexistent/lid.176.bin')", tmp_path / "a")
    with pytest.raises(RuleError, match="WordNet"):
        run_filter(POOL, "text_based(wordnet='/nonexistent')", tmp_path / "b")
    index = make_index(tmp_path / "index")
    with pytest.raises(RuleError, match="DataComp metadata"):
        run_filter(index, "laion2b()", tmp_path / "c")
    assert not (tmp_path / "a" / "subset.npy").exists()
