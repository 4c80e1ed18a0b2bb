"""Duplicate groups (``curate.filters.dedup``), on vectors with planted copies and on a real
scored pool with injected copies and test-set images (``dedup()``, ``decontaminate()``)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import schema as S
from curate.filters import RuleError, run_filter
from curate.filters.dedup import dedup_groups


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


def _jpeg(image: Image.Image, quality=90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def injected(tmp_path_factory, ray_cluster, sources):
    """The sample shards, plus a shard of copies of four pool images (exact bytes, half size,
    re-encoded at JPEG quality 40, a 10% crop), plus a test set holding two other pool images
    (re-encoded, resized) and two images the pool does not hold; scored with --embeddings."""
    from curate.evaluate.make_evalset import make_classification_set
    from curate.scoring import run_score
    from curate.scoring.config import load_config
    from tests.conftest import REPO, SHARDS

    d = tmp_path_factory.mktemp("injected")
    pool = [k for k, v in sources.items() if v["image"] and v["caption"] and k.startswith(("photos/", "flickr30k"))]
    pool = sorted(pool)[:6]
    imgs = {k: Image.open(io.BytesIO(sources[k]["image"])) for k in pool}
    copies = [("copy-exact", sources[pool[0]]["image"]),
              ("copy-half", _jpeg(imgs[pool[1]].resize((imgs[pool[1]].width // 2, imgs[pool[1]].height // 2)))),
              ("copy-q40", _jpeg(imgs[pool[2]], quality=40)),
              ("copy-crop", _jpeg(imgs[pool[3]].crop((0, 0, int(imgs[pool[3]].width * 0.9),
                                                       int(imgs[pool[3]].height * 0.9)))))]
    _write_shard(d / "injected-000000.tar", [(k, {"jpg": b, "txt": b"an injected copy of a pool image"})
                                            for k, b in copies])
    tree = d / "evaltree" / "things"
    tree.mkdir(parents=True)
    (tree / "a.jpg").write_bytes(_jpeg(imgs[pool[4]], quality=50))
    (tree / "b.jpg").write_bytes(_jpeg(imgs[pool[5]].resize((imgs[pool[5]].width // 2, imgs[pool[5]].height // 2))))
    outside = [k for k in sources if k.startswith("dj_images/") and sources[k]["image"]][:2]
    for i, k in enumerate(outside):
        (tree / f"outside{i}.jpg").write_bytes(_jpeg(Image.open(io.BytesIO(sources[k]["image"]))))
    make_classification_set(d / "evaltree", "injected", d / "evaldata")
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.score.embeddings = True
    index = d / "index"
    shards = [str(s) for s in SHARDS] + [str(d / "injected-000000.tar")]
    assert run_score(shards, index, cfg, progress=False).exit_code == 0
    return {"index": index, "pool": pool, "sources": sources, "evaldata": d / "evaldata", "dir": d}


def _key_of(sources, source_key):
    return sources[source_key]["key"]


@pytest.mark.slow
def test_dedup_finds_the_injected_copies_and_keeps_one_of_each(injected, tmp_path):
    s = run_filter(injected["index"], "dedup(threshold=1.0, phash_bits=4)", tmp_path / "d")
    groups = pq.read_table(tmp_path / "d" / "dedup_groups.parquet").to_pylist()
    by_group: dict[str, set] = {}
    for r in groups:
        by_group.setdefault(r["group"], set()).add(r[S.KEY])
    src = injected["sources"]
    expected = [{_key_of(src, injected["pool"][i]), copy} for i, copy in
                ((0, "copy-exact"), (1, "copy-half"), (2, "copy-q40"))]
    for pair in expected:
        assert any(pair <= g for g in by_group.values()), (pair, by_group)
    assert not any("copy-crop" in g for g in by_group.values())  # a crop moves the perceptual hash: a documented miss
    assert all(sum(r["kept"] for r in groups if r["group"] == g) == 1 for g in by_group)
    # what the groups drop is what the subset lacks
    kept_keys = set(pq.read_table(tmp_path / "d" / "subset.parquet").column(S.KEY).to_pylist())
    assert not any(r[S.KEY] in kept_keys for r in groups if not r["kept"])
    assert "dedup" in s.format()


@pytest.mark.slow
def test_a_clean_pool_loses_only_its_byte_identical_copy(injected, tmp_path):
    """On the sample shards alone (no injected copies) dedup removes exactly the samples whose
    image bytes repeat another's: the pool's one planted exact copy, nothing else."""
    import shutil

    clean = tmp_path / "clean"
    (clean / "embeddings").mkdir(parents=True)
    for f in sorted(injected["index"].glob("sample-*.parquet")):
        shutil.copy(f, clean / f.name)
        shutil.copy(injected["index"] / "embeddings" / f.name, clean / "embeddings" / f.name)
    s = run_filter(clean, "dedup(threshold=1.0, phash_bits=4)", tmp_path / "c")
    images = [v["image"] for v in injected["sources"].values() if v["image"]]
    repeats = len(images) - len(set(images))
    assert s.removed_by["dedup(threshold=1.0, phash_bits=4)"] == repeats >= 1


@pytest.mark.slow
def test_decontaminate_drops_the_test_images_and_writes_the_matches(injected, tmp_path):
    rule = f"decontaminate(evalset={str(injected['evaldata'])!r}, threshold=1.0)"
    s = run_filter(injected["index"], f"tmars(fraction=1.0) & {rule}", tmp_path / "x")
    matches = pq.read_table(tmp_path / "x" / "decontamination.parquet").to_pylist()
    src = injected["sources"]
    assert {m[S.KEY] for m in matches} == {_key_of(src, injected["pool"][4]), _key_of(src, injected["pool"][5])}
    assert all(m["method"] == "phash" and m["phash_distance"] <= 4 for m in matches)
    kept = set(pq.read_table(tmp_path / "x" / "subset.parquet").column(S.KEY).to_pylist())
    assert not kept & {m[S.KEY] for m in matches}
    assert s.removed_by[rule] == 2
    with pytest.raises(RuleError, match="evalset"):
        run_filter(injected["index"], "decontaminate(threshold=0.9)", tmp_path / "y")


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
def test_image_based_keeps_the_clusters_of_the_target_images(injected, tmp_path):
    """With the pool's own images as targets, their samples are kept; the rule composes."""
    target = injected["dir"] / "target"
    target.mkdir()
    src = injected["sources"]
    for i in (0, 1):
        (target / f"t{i}.jpg").write_bytes(src[injected["pool"][i]]["image"])
    s = run_filter(injected["index"], f"image_based(target={str(target)!r}, clusters=4) & ~text_area(max=0.99)",
                   tmp_path / "i")
    kept = set(pq.read_table(tmp_path / "i" / "subset.parquet").column(S.KEY).to_pylist())
    assert {src[injected["pool"][0]]["key"], src[injected["pool"][1]]["key"]} <= kept
    assert s.details["image_based(target=" + repr(str(target)) + ", clusters=4)"]["clusters chosen"] <= 2
