"""Duplicate groups (``curate.filters.dedup``), on vectors with planted copies and on a real
scored pool with injected copies and test-set images (``dedup()``, ``decontaminate()``)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.filters import RuleError, run_filter
from curate.filters.dedup import dedup_groups, neighbour_lists


def planted(n=5000, d=32, copies=60, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n, copies, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), copies, replace=False)
    x[dst] = x[src] + noise * rng.standard_normal((copies, d)).astype(np.float32)
    return x.astype(np.float16), src, dst, rng.random(n)


def test_planted_near_copies_are_grouped_and_the_higher_priority_is_kept():
    x, src, dst, prio = planted()
    leader = dedup_groups(x, prio, threshold=0.95)
    assert all(leader[s] == leader[t] for s, t in zip(src, dst))  # every planted pair found
    dropped = np.flatnonzero(leader != np.arange(len(x)))
    assert len(dropped) == len(src)  # and nothing else: random vectors are far apart
    assert all(prio[leader[i]] >= prio[i] for i in dropped)
    assert (leader[leader] == leader).all()  # a leader leads itself


@pytest.mark.parametrize("leaves", [1, 30, 300])  # one exact leaf; one-level k-means; two-level k-means
def test_leaf_search_finds_the_pairs_brute_force_finds(leaves):
    """``neighbour_lists`` against all pairs: no pair that is not >= threshold, its similarity
    exact, and (probing 4 leaves) at least 99% of the true pairs; exact with one leaf."""
    rng = np.random.default_rng(3)
    n, d = 10_000, 16
    centres = rng.standard_normal((150, d)).astype(np.float32)
    x = centres[rng.integers(0, 150, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    i, j = np.nonzero(sim >= 0.97 - 1e-5)  # the search allows 1e-6; products differ by ~1e-7
    upper = i < j
    i, j, s = i[upper], j[upper], sim[i[upper], j[upper]]
    near = set(zip(i.tolist(), j.tolist()))
    truth = set(zip(i[s >= 0.97].tolist(), j[s >= 0.97].tolist()))
    assert len(truth) > 1000  # dense enough that leaf boundaries matter
    lims, nbr, got_sim = neighbour_lists(x, 0.97, clusters=leaves)
    rows = np.repeat(np.arange(n), np.diff(lims))
    assert (nbr < rows).all()  # only earlier rows (the default visiting order), each pair once
    found = set(zip(nbr.tolist(), rows.tolist()))
    assert len(found) == len(nbr) and found <= near
    np.testing.assert_allclose(got_sim, sim[nbr, rows], atol=1e-5)
    assert len(found & truth) / len(truth) >= (1.0 if leaves == 1 else 0.99)


def test_exact_hashes_and_perceptual_hashes_group_without_embeddings():
    n = 1000
    rng = np.random.default_rng(1)
    prio = rng.random(n)
    hashes = np.asarray([bytes([i % 256, i // 256]) for i in range(n)], dtype=object)
    hashes[10] = hashes[11]  # byte-identical
    ph = rng.integers(-(2**62), 2**62, size=n)
    ph[20], ph[30] = ph[21] ^ 0b101, ph[31] ^ (2**40 - 1)  # 2 bits apart; 40 bits apart
    leader = dedup_groups(None, prio, 1.0, image_hash=hashes, phash=ph, phash_bits=4)
    assert leader[10] == leader[11] and leader[20] == leader[21] and leader[30] != leader[31]
    assert (leader != np.arange(n)).sum() == 2


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        dedup_groups(np.zeros((2, 4)), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="one entry per row"):
        dedup_groups(np.zeros((2, 4)), np.zeros(3), 0.9)


def test_rules_over_embeddings_need_an_index_scored_with_them(scored, tmp_path):
    out, _, _ = scored
    with pytest.raises(RuleError, match="--embeddings"):
        run_filter(out, "tmars(fraction=0.5) & dedup()", tmp_path / "s")


# ---------------------------------------------------------------- a real pool with injected copies


def _key_of(sources, source_key):
    return sources[source_key]["key"]


@pytest.mark.slow
def test_dedup_finds_the_injected_copies_and_keeps_one_of_each(embedded_pool, tmp_path):
    s = run_filter(embedded_pool["index"], "dedup(threshold=1.0)", tmp_path / "d")
    groups = pq.read_table(tmp_path / "d" / "dedup_groups.parquet").to_pylist()
    by_group: dict[str, set] = {}
    for r in groups:
        by_group.setdefault(r["group"], set()).add(r[S.KEY])
    src = embedded_pool["sources"]
    expected = [{_key_of(src, embedded_pool["pool"][i]), copy} for i, copy in
                ((0, "copy-exact"), (1, "copy-half"), (2, "copy-q40"))]
    for pair in expected:
        assert any(pair <= g for g in by_group.values()), (pair, by_group)
    assert not any("copy-crop" in g for g in by_group.values())  # a crop moves the perceptual hash: a documented miss
    assert all(sum(r["kept"] for r in groups if r["group"] == g) == 1 for g in by_group)
    # what the groups drop is what the subset lacks
    kept_keys = set(pq.read_table(tmp_path / "d" / "subset.parquet").column(S.KEY).to_pylist())
    assert not any(r[S.KEY] in kept_keys for r in groups if not r["kept"])
    assert "dedup" in s.format()
    # curate report shows the groups beside the subset, with thumbnails
    from curate.report import build_report

    build_report(embedded_pool["index"], tmp_path / "rep", subset=str(tmp_path / "d" / "subset.parquet"))
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Duplicate groups" in page and all(r[S.UID] in page for r in groups)


@pytest.mark.slow
def test_a_clean_pool_loses_only_its_byte_identical_copy(embedded_pool, tmp_path):
    """On the sample shards alone (no injected copies), at the default settings, dedup removes
    exactly the samples whose image bytes repeat another's: the pool's planted exact copy, and
    not the two different illustrations with the same layout (4 bits apart in perceptual hash)."""
    import shutil

    clean = tmp_path / "clean"
    (clean / S.EMBEDDINGS_DIR).mkdir(parents=True)
    for f in sorted(embedded_pool["index"].glob("sample-*.parquet")):
        shutil.copy(f, clean / f.name)
        shutil.copy(embedded_pool["index"] / S.EMBEDDINGS_DIR / f.name, clean / S.EMBEDDINGS_DIR / f.name)
    s = run_filter(clean, "dedup(threshold=1.0)", tmp_path / "c")
    from pathlib import Path

    from curate.io.index import read_index
    from tests.conftest import sample_members

    ok = {(Path(r[S.SHARD]).name, r[S.KEY]) for r in read_index(clean).to_pylist() if r[S.STATUS] == S.STATUS_OK}
    images = [next(v for e, v in m.items() if e in ("jpg", "jpeg", "png", "webp")) for shard, key, m in sample_members()
              if (Path(shard).name, key) in ok]
    repeats = len(images) - len(set(images))
    assert s.removed_by["dedup(threshold=1.0)"] == repeats >= 1


@pytest.mark.slow
def test_decontaminate_drops_the_test_images_and_writes_the_matches(embedded_pool, tmp_path):
    rule = f"decontaminate(evalset={str(embedded_pool['evaldata'])!r}, threshold=1.0)"
    s = run_filter(embedded_pool["index"], f"tmars(fraction=1.0) & {rule}", tmp_path / "x")
    matches = pq.read_table(tmp_path / "x" / "decontamination.parquet").to_pylist()
    src = embedded_pool["sources"]
    assert {m[S.KEY] for m in matches} == {
        _key_of(src, embedded_pool["pool"][4]), _key_of(src, embedded_pool["pool"][5])}
    assert all(m["method"] == "phash" and m["phash_distance"] <= 2 for m in matches)
    kept = set(pq.read_table(tmp_path / "x" / "subset.parquet").column(S.KEY).to_pylist())
    assert not kept & {m[S.KEY] for m in matches}
    assert s.removed_by[rule] == 2
    from curate.report import build_report

    build_report(embedded_pool["index"], tmp_path / "rep", subset=str(tmp_path / "x" / "subset.parquet"))
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Test-set matches" in page and all(m[S.UID] in page and m["eval_image"] in page for m in matches)
    with pytest.raises(RuleError, match="evalset"):
        run_filter(embedded_pool["index"], "decontaminate(threshold=0.9)", tmp_path / "y")


_PEAK_RSS = """
import resource, sys
from curate.filters import run_filter
index, evalset, out = sys.argv[1:4]
run_filter(index, f"decontaminate(evalset={evalset!r}, threshold=0.95)", out)
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _decontaminate_peak_kib(index, evalset, out) -> int:
    """Peak resident memory (KiB, Linux ``ru_maxrss``) of a fresh process that runs one
    ``decontaminate()`` (hashes and embeddings) over ``evalset``."""
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(index), str(evalset), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("peak")[-1])


@pytest.mark.slow
def test_decontaminate_holds_one_test_image_at_a_time(embedded_pool, tmp_path):
    """Four flat 6000 x 6000 PNGs (117 KB each, 108 MB each as RGB) cost about what one does:
    each is decoded alone, reduced right after decoding, and only its hash and embedding are
    kept. (Before, every test image was held decoded at full size: +341 MB for the three more,
    measured the same way; now +13 MB.)"""
    from PIL import Image

    sets = {}
    for n in (1, 4):
        folder = tmp_path / f"flat{n}"
        folder.mkdir()
        for i in range(n):
            Image.new("RGB", (6000, 6000), (40 * i + 20, 90, 200 - 30 * i)).save(folder / f"flat{i}.png")
        sets[n] = folder
    one = _decontaminate_peak_kib(embedded_pool["index"], sets[1], tmp_path / "o1")
    four = _decontaminate_peak_kib(embedded_pool["index"], sets[4], tmp_path / "o4")
    full_image_kib = 6000 * 6000 * 3 // 1024
    assert four - one < full_image_kib // 2, (one, four)


@pytest.mark.slow
def test_decontaminate_skips_bad_and_oversized_test_images(embedded_pool, sources, tmp_path):
    """A broken test image and a 1 x 600,000 PNG are skipped and named; the others still match."""
    import io
    import shutil

    from PIL import Image

    evalset = tmp_path / "evalset"
    shutil.copytree(embedded_pool["dir"] / "evaltree", evalset)
    (evalset / "things" / "broken.jpg").write_bytes(sources["bad/broken.jpg"]["image"])
    thin = io.BytesIO()
    Image.new("1", (1, 600_000)).save(thin, "PNG")
    (evalset / "things" / "thin.png").write_bytes(thin.getvalue())
    rule = f"decontaminate(evalset={str(evalset)!r}, threshold=1.0)"
    s = run_filter(embedded_pool["index"], rule, tmp_path / "x")
    found = s.details[rule]
    assert found["test images"] == 4 and found["test images skipped"] == 2
    assert "things/broken.jpg: decode_error" in found["skipped"]
    assert "things/thin.png: too_large: 1x600000 pixels: aspect ratio" in found["skipped"]
    assert "test images skipped 2" in s.format()
    matches = pq.read_table(tmp_path / "x" / "decontamination.parquet").to_pylist()
    src = embedded_pool["sources"]
    assert {m[S.KEY] for m in matches} == {
        _key_of(src, embedded_pool["pool"][4]), _key_of(src, embedded_pool["pool"][5])}
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "thin.png").write_bytes(thin.getvalue())
    with pytest.raises(RuleError, match="no usable image.*thin.png: too_large"):
        run_filter(embedded_pool["index"], f"decontaminate(evalset={str(only_bad)!r}, threshold=1.0)", tmp_path / "y")


def test_text_based_keeps_captions_that_mention_a_class_name(scored, tmp_path):
    """DataComp's text-based baseline on the real index: whole words and phrases, any case; a
    class file with SQL or regex syntax in it is only ever text."""
    import re

    out, _, _ = scored
    rows = pq.read_table(out, columns=[S.KEY, S.SHARD, S.TEXT, S.STATUS]).to_pylist()
    ok = [r for r in rows if r[S.STATUS] == S.STATUS_OK]
    words = {r[S.KEY]: set(re.findall(r"[a-z0-9]+", (r[S.TEXT] or "").lower())) for r in ok}
    common = sorted({w for ws in words.values() for w in ws if len(w) > 3})[:3]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(common + ["') OR TRUE --", "(.*)"]) + "\n")
    s = run_filter(out, f"text_based(classes={str(classes)!r})", tmp_path / "t")
    kept = set(pq.read_table(tmp_path / "t" / "subset.parquet").column(S.KEY).to_pylist())
    assert kept == {k for k, ws in words.items() if ws & set(common)} and kept
    prefix = tmp_path / "prefix.txt"
    prefix.write_text(common[0][:-1] + "\n")  # a prefix of a word is not the word
    run_filter(out, f"text_based(classes={str(prefix)!r})", tmp_path / "p")
    kept = set(pq.read_table(tmp_path / "p" / "subset.parquet").column(S.KEY).to_pylist())
    assert kept == {k for k, ws in words.items() if common[0][:-1] in ws}
    assert "text_based" in s.format()


@pytest.mark.slow
def test_image_based_keeps_the_clusters_of_the_target_images(embedded_pool, tmp_path):
    """With the pool's own images as targets, their samples are kept; the rule composes."""
    target = embedded_pool["dir"] / "target"
    target.mkdir()
    src = embedded_pool["sources"]
    for i in (0, 1):
        (target / f"t{i}.jpg").write_bytes(src[embedded_pool["pool"][i]]["image"])
    s = run_filter(embedded_pool["index"], f"image_based(target={str(target)!r}, clusters=4) & tmars(fraction=1.0)",
                   tmp_path / "i")
    kept = set(pq.read_table(tmp_path / "i" / "subset.parquet").column(S.KEY).to_pylist())
    assert {src[embedded_pool["pool"][0]]["key"], src[embedded_pool["pool"][1]]["key"]} <= kept
    assert s.details["image_based(target=" + repr(str(target)) + ", clusters=4)"]["clusters chosen"] <= 2


def test_phash_range_finds_exactly_the_pairs_within_the_bits():
    """Multi-index hashing against all-pairs Hamming distances on random hashes with planted
    near ones (1 to 4 bits away): the same pairs, the same distances."""
    from curate.filters.dedup import phash_range

    rng = np.random.default_rng(3)
    base = rng.integers(-(2**62), 2**62, size=500)
    query = rng.integers(-(2**62), 2**62, size=300)
    for i, flips in enumerate((1, 2, 3, 4) * 10):
        bitsel = rng.choice(64, flips, replace=False)
        mask = np.array([sum(1 << int(b) for b in bitsel)], dtype=np.uint64)
        query[i] = (base[i * 7 : i * 7 + 1].view(np.uint64) ^ mask).view(np.int64)[0]
    x = np.bitwise_xor(query[:, None], base[None, :]).view(np.uint64)
    brute = np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(-1)
    for bits in (0, 2, 4):
        lims, dist, ids = phash_range(query, base, bits)
        got = {(q, int(ids[k]), int(dist[k])) for q in range(len(query)) for k in range(lims[q], lims[q + 1])}
        want = {(q, b, int(brute[q, b])) for q, b in zip(*np.nonzero(brute <= bits))}
        assert got == want and (bits == 0 or len(want) >= 10)


@pytest.mark.slow
def test_embedding_rules_on_a_random_init_index_fall_back_to_hashes_loudly(embedded_pool, tmp_path):
    """The fixture's index was scored with the random-init tiny CLIP (issue 30): at their default
    threshold ``dedup()`` and ``decontaminate()`` match image hashes only, as with
    ``threshold=1``, and the summary says so in a WARNING line; an explicit threshold is kept,
    with the warning."""
    index, evalset = embedded_pool["index"], str(embedded_pool["evaldata"])
    for rule, hashes_only in (("dedup()", "dedup(threshold=1.0)"),
                              (f"decontaminate(evalset={evalset!r})",
                               f"decontaminate(evalset={evalset!r}, threshold=1.0)")):
        s = run_filter(index, rule, tmp_path / "default")
        ref = run_filter(index, hashes_only, tmp_path / "hashes")
        assert s.kept == ref.kept, (rule, s.format(), ref.format())
        text = s.format()
        assert "WARNING" in text and "random-init CLIP" in text and "image hashes only" in text, text
        assert "WARNING" not in ref.format()
    s = run_filter(index, "dedup(threshold=0.5)", tmp_path / "explicit")
    assert "WARNING" in s.format() and "threshold=0.5 compares them anyway" in s.format()
