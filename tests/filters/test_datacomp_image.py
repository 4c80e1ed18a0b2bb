"""DataComp's ``image_based`` and ``image_based_intersect_clip_score`` as curate rules whose
subsets are byte-identical to what DataComp's own code writes (issue 29).

The references in ``tests/data/datacomp/reference`` (``image_based.npy``, ``ibcs_*.npy``) were
written by DataComp's ``apply_filter`` on ``tests/data/datacomp/pool`` with the synthetic assets
of ``tests/data/datacomp/image_assets``, on CPU (``benchmarks/datacomp_ref/image_based_ref.py``,
provenance in ``tests/data/datacomp/README.md``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from curate.filters import RuleError, run_filter
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "datacomp"
POOL = DATA / "pool"
REFERENCE = DATA / "reference"
ASSETS = DATA / "image_assets"
CENTROIDS = ASSETS / "small_centroids_l14.pt"

CASES = {
    "image_based": "image_based(centroids={c!r}, targets={t!r})",
    "ibcs_l14_f0.3": "image_based_intersect_clip_score(centroids={c!r}, targets={t!r}, arch='l14', fraction=0.3)",
    "ibcs_b32_t0.3": "image_based_intersect_clip_score(centroids={c!r}, targets={t!r}, arch='b32', threshold=0.3)",
}


def _rule(run, centroids=CENTROIDS, targets=ASSETS):
    t = [str(p) for p in targets] if isinstance(targets, list) else str(targets)
    return CASES[run].format(c=str(centroids), t=t)


@pytest.mark.parametrize("run", sorted(CASES))
def test_image_based_writes_datacomps_subset_byte_for_byte(run, tmp_path):
    """DataComp's caption filter (fastText ``en``, ``fasttext.tokenize`` > 1 token, > 5 code
    points), nearest centroid of ``l14_img`` among the ImageNet targets' centroids, and for the
    intersection the CLIP-score threshold first: DataComp's own ``subset.npy``, byte for byte."""
    summary = run_filter(POOL, _rule(run), tmp_path / "out")
    assert summary.pool_rows == 3000
    got = (tmp_path / "out" / "subset.npy").read_bytes()
    assert got == (REFERENCE / f"{run}.npy").read_bytes(), run
    assert len(np.load(tmp_path / "out" / "subset.npy")) > 50


def _stored_copy(tmp_path):
    """The pool with its npz stored uncompressed (``numpy.savez``, as DataComp's files are)."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in POOL.glob("*.parquet"):
        shutil.copy(f, pool / f.name)
        with np.load(f.with_suffix(".npz")) as z:
            np.savez(pool / f.with_suffix(".npz").name, **{k: z[k] for k in z.files})
    return pool


def test_stored_npz_is_memory_mapped_and_gives_the_same_subset(tmp_path):
    from curate.io.datacomp import npz_array

    pool = _stored_copy(tmp_path)
    npz = sorted(pool.glob("*.npz"))[0]
    arr = npz_array(npz, "l14_img")
    assert isinstance(arr, np.memmap) and arr.shape == (1000, 768) and arr.dtype == np.float16
    with np.load(npz) as z:
        assert np.array_equal(arr, z["l14_img"])
    assert not isinstance(npz_array(sorted(POOL.glob("*.npz"))[0], "l14_img"), np.memmap)  # compressed: loaded
    run_filter(pool, _rule("image_based"), tmp_path / "out")
    assert (tmp_path / "out" / "subset.npy").read_bytes() == (REFERENCE / "image_based.npy").read_bytes()


def test_assets_as_npy_and_as_a_list_of_paths(tmp_path):
    """The same subset from ``.npy`` assets and from the targets given as five paths."""
    from curate.filters.datacomp_image import load_centroids, load_targets, target_paths

    np.save(tmp_path / "c.npy", load_centroids(CENTROIDS))
    targets = []
    for i, p in enumerate(target_paths(ASSETS)):
        np.save(tmp_path / f"t{i}.npy", load_targets(p).astype(np.float16))
        targets.append(tmp_path / f"t{i}.npy")
    run_filter(POOL, _rule("image_based", tmp_path / "c.npy", targets), tmp_path / "a")
    run_filter(POOL, _rule("image_based", CENTROIDS, target_paths(ASSETS)), tmp_path / "b")
    for out in ("a", "b"):
        assert (tmp_path / out / "subset.npy").read_bytes() == (REFERENCE / "image_based.npy").read_bytes()


def test_fasttext_token_count_matches_the_real_tokenize():
    """``len(fasttext.tokenize(s))`` of Facebook's fastText 0.9.2 (written in DataComp's env):
    only `` \\n\\r\\t\\v\\f\\0`` separate, and each ``\\n`` is a token (``</s>``)."""
    from curate.filters.datacomp_image import fasttext_token_count, more_than_one_fasttext_token

    rows = [json.loads(line) for line in (DATA / "fasttext_tokenize.jsonl").read_text().splitlines()]
    assert len(rows) > 200
    assert [fasttext_token_count(r["text"]) for r in rows] == [r["tokens"] for r in rows]
    got = more_than_one_fasttext_token(pa.array([r["text"] for r in rows] + [None])).to_pylist()
    assert got == [r["tokens"] > 1 for r in rows] + [False]
    assert more_than_one_fasttext_token(["hello\n", "a\u3000b", None]).to_pylist() == [True, False, False]


def test_missing_assets_fail_fast_by_name(tmp_path):
    """A missing centroids or targets file, or a pool without its npz, is a rule error naming
    DataComp's asset and where to get it, before any row is filtered."""
    with pytest.raises(RuleError, match="centroids.*not found.*datacomp_baseline_assets"):
        run_filter(POOL, _rule("image_based", tmp_path / "small_centroids_l14.pt"), tmp_path / "a")
    with pytest.raises(RuleError, match="in1k_clip_vit_l14"):
        run_filter(POOL, _rule("image_based", CENTROIDS, tmp_path), tmp_path / "b")
    with pytest.raises(RuleError, match="needs targets="):
        run_filter(POOL, f"image_based(centroids={str(CENTROIDS)!r})", tmp_path / "c")
    with pytest.raises(RuleError, match="arch="):
        run_filter(POOL, f"image_based_intersect_clip_score(centroids={str(CENTROIDS)!r}, targets={str(ASSETS)!r}, "
                         "fraction=0.3)", tmp_path / "d")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in POOL.glob("*.parquet"):
        shutil.copy(f, bare / f.name)
    with pytest.raises(RuleError, match=r"\.npz"):
        run_filter(bare, _rule("image_based"), tmp_path / "e")
    with pytest.raises(RuleError, match="not both"):
        run_filter(POOL, f"image_based(target='x', centroids={str(CENTROIDS)!r})", tmp_path / "f")
    assert not any((tmp_path / d / "subset.npy").exists() for d in "abcdef")


def test_a_pickle_with_code_is_refused_not_run(tmp_path):
    """Asset files are read with ``torch.load(weights_only=True)``: a pickle naming any other
    callable is refused, and the callable is never called."""
    import torch

    class Boom:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    torch.save(Boom(), tmp_path / "evil.pt")
    with pytest.raises(RuleError, match="weights_only"):
        run_filter(POOL, _rule("image_based", tmp_path / "evil.pt"), tmp_path / "out")
    assert (tmp_path / "victim").is_dir()


def test_image_based_on_a_curate_index_names_the_metadata(tmp_path):
    from tests.filters.test_filters import make_index

    index = make_index(tmp_path / "index")
    with pytest.raises(RuleError, match="DataComp metadata"):
        run_filter(index, _rule("image_based"), tmp_path / "out")


def test_image_based_on_metadata_joined_with_a_score_index(tmp_path):
    """Joined with a score index (``--index INDEX --index METADATA``), the rule still reads each
    row's ``l14_img`` by its metadata file and row (``metadata_file``, ``metadata_row``); it keeps
    DataComp's subset restricted to the rows the index scored (its captions are the metadata's)."""
    from curate.query import query
    from tests.filters.test_filters import make_index

    ref = np.load(REFERENCE / "image_based.npy")
    ref_uids = {f"{int(a):016x}{int(b):016x}" for a, b in ref.tolist()}
    meta = query("SELECT uid, text, original_width AS w, original_height AS h FROM scores ORDER BY uid LIMIT 600",
                 POOL).to_pylist()
    index = make_index(tmp_path / "index", [(r["uid"], "ok", r["text"], "en", r["w"], r["h"], 0.0, 0.3, 0.3)
                                            for r in meta])
    summary = run_filter([index, POOL], _rule("image_based"), tmp_path / "o")
    assert summary.not_scored == 2400
    kept = {f"{int(a):016x}{int(b):016x}" for a, b in np.load(tmp_path / "o" / "subset.npy").tolist()}
    want = ref_uids & {r["uid"] for r in meta}
    assert kept == want and len(want) > 10
