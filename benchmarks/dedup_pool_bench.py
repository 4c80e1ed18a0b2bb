"""Dedup and decontamination on a pool with planted copies: recall and false positives per method.

The command builds its own pool from CIFAR-10's real train split (``--cifar-train``, class
folders in a tar): ``--pool-size`` images (captions "a photo of a <class>"), plus, for
``--copies`` random pool images each, four kinds of injected copy: ``exact`` (the same bytes),
``resized`` (2x larger, JPEG), ``reencoded`` (JPEG quality 50) and ``crop`` (a 10% border cut,
resized back), plus ``--test-images`` images of CIFAR-10's test split (``--cifar-test``). It
scores the pool with ``curate score --embeddings`` (the ``tiny`` random-init model, no text
detector), writes a test folder with ``curate make-evalset`` (the injected test images plus as
many test images that are not in the pool), and runs ``curate filter`` with ``dedup()`` and
``decontaminate()``.

Printed per method: recall (share of planted copies grouped with their source, or of injected
test images matched) and extra matches (rows removed beyond the planted ones, per 1,000 pool
samples). CIFAR-10 holds near-duplicates of its own (Barz and Denzler, 2020, "Do we train on
test data?": 3.3% of CIFAR-10's test images have a near-duplicate in its train split), so some
extra matches are true duplicates. The embedding path needs a trained CLIP: with the random-init
``tiny`` model every image is close to every other, so by default only ``threshold=1`` (hashes)
is run. ``--train-samples-seen N`` also trains ``tiny`` on the pool itself (``curate train``),
scores it again with that checkpoint and runs both rules on embeddings alone (``phash_bits=0``,
``--threshold``), printing the cosine of each kind of planted pair beside that of different images.

    .venv/bin/python benchmarks/dedup_pool_bench.py --out out/dedup_pool
    .venv/bin/python benchmarks/dedup_pool_bench.py --out out/dedup_pool --train-samples-seen 40000
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from toy_datacomp import curate, read_class_folders  # noqa: E402

KINDS = ("exact", "resized", "reencoded", "crop")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def variant(data: bytes, kind: str) -> bytes:
    if kind == "exact":
        return data
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "resized":
        return jpeg(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC))
    if kind == "reencoded":
        return jpeg(im, quality=50)
    w, h = im.size
    cut = max(1, round(w * 0.05))
    return jpeg(im.crop((cut, cut, w - cut, h - cut)).resize((w, h), Image.Resampling.BICUBIC))


def write_shards(samples: list[tuple[str, bytes, str]], out: Path, shard_size: int = 1000) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(samples), shard_size):
        path = out / f"pool-{s // shard_size:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for key, image, caption in samples[s:s + shard_size]:
                for ext, data in (("jpg", image), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar-train", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "train.tar")
    ap.add_argument("--cifar-test", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "test.tar")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "dedup_pool")
    ap.add_argument("--pool-size", type=int, default=4000)
    ap.add_argument("--copies", type=int, default=100, help="planted copies of each kind")
    ap.add_argument("--test-images", type=int, default=200)
    ap.add_argument("--train-samples-seen", type=int, default=0,
                    help="also train tiny on the pool (curate train) and measure the embedding path with it")
    ap.add_argument("--threshold", type=float, default=0.95, help="cosine threshold of the embedding path")
    args = ap.parse_args()
    t0 = time.time()
    rng = random.Random(0)
    train = read_class_folders(args.cifar_train)
    test = read_class_folders(args.cifar_test)
    per_class = args.pool_size // len(train)
    samples, origin = [], {}  # origin: key -> (kind, source key)
    for c, images in train.items():
        for i, data in enumerate(images[:per_class]):
            samples.append((f"{c}-{i:05d}", data, f"a photo of a {c}"))
    base = list(samples)
    for kind in KINDS:
        for j, (key, data, caption) in enumerate(rng.sample(base, args.copies)):
            samples.append((f"copy-{kind}-{j:04d}", variant(data, kind), caption))
            origin[f"copy-{kind}-{j:04d}"] = (kind, key)
    test_flat = [(c, d) for c, images in test.items() for d in images]
    rng.shuffle(test_flat)
    injected_test, held_out = test_flat[:args.test_images], test_flat[args.test_images:2 * args.test_images]
    for j, (c, data) in enumerate(injected_test):
        samples.append((f"test-{j:04d}", data, f"a photo of a {c}"))
        origin[f"test-{j:04d}"] = ("test", None)
    rng.shuffle(samples)
    shards = write_shards(samples, args.out / "pool")
    tree = args.out / "evaltree"
    for j, (c, data) in enumerate(injected_test + held_out):
        (tree / c).mkdir(parents=True, exist_ok=True)
        (tree / c / f"{j:05d}.jpg").write_bytes(data)
    curate("make-evalset", "--imagefolder", str(tree), "--name", "cifar10", "--out", str(args.out / "evalsets"))
    cfg = args.out / "score.yaml"
    cfg.write_text("detect: {detector: none}\nscore: {clip_model: tiny, pretrained: null, batch_size: 128}\n")
    t_score = time.time()
    curate("score", *shards, "--out", str(args.out / "index"), "--config", str(cfg), "--embeddings", "--no-progress")
    t_score = time.time() - t_score

    n = len(samples)
    evalset = args.out / "evalsets" / "wds_cifar10_test"
    runs = [("hashes: threshold=1, phash_bits=2", measure(args.out / "index", args.out / "hashes", evalset, origin, n,
                                                           "threshold=1.0"))]
    if args.train_samples_seen:
        # The embedding path with a CLIP trained by curate on this very pool (captions name the class).
        ckpt_dir = args.out / "train"
        curate("train", *shards, "--scale", "tiny", "--out", str(ckpt_dir), "--samples-seen",
               str(args.train_samples_seen), "--no-progress")
        ckpt = sorted((ckpt_dir / "checkpoints").glob("step_*.pt"))[-1]
        curate("score", *shards, "--out", str(args.out / "index-trained"), "--config", str(cfg), "--pretrained",
               str(ckpt), "--embeddings", "--no-progress")
        runs.append((f"embeddings only (tiny trained on the pool, {args.train_samples_seen} samples seen): "
                     f"threshold={args.threshold}, phash_bits=0",
                     measure(args.out / "index-trained", args.out / "embeddings", evalset, origin, n,
                             f"threshold={args.threshold}, phash_bits=0")))
        runs[-1][1]["cosines"] = cosines(args.out / "index-trained", origin)
    print(f"\npool {n} samples ({args.pool_size} CIFAR-10 train, {args.copies} copies of each of {len(KINDS)} kinds, "
          f"{args.test_images} CIFAR-10 test images); scoring {t_score:.0f} s, total {time.time() - t0:.0f} s")
    for name, m in runs:
        print(f"\n| method ({name}) | recall | planted |")
        print("| --- | --- | --- |")
        for label, recall, k in m["rows"]:
            print(f"| {label} | {recall:.3f} | {k} |")
        print(f"\nextra rows dropped by dedup beyond the planted copies: {m['extra_dedup']} "
              f"({1000 * m['extra_dedup'] / n:.2f} per 1,000 samples); dedup {m['dedup_s']:.1f} s")
        print(f"extra pool rows matched to the test set beyond the injected ones: {m['extra_decon']} "
              f"({1000 * m['extra_decon'] / n:.2f} per 1,000 samples); decontaminate {m['decon_s']:.1f} s")
        if "cosines" in m:
            print("image-embedding cosine, median [1st percentile] of each kind of planted pair; "
                  "different images: median [99th percentile]: "
                  + ", ".join(f"{k} {v[0]:.3f} [{v[1]:.3f}]" for k, v in m["cosines"].items()))
    json.dump({"runs": runs, "n": n}, open(args.out / "result.json", "w"), default=str)


def measure(index: Path, out: Path, evalset: Path, origin: dict, n: int, args: str) -> dict:
    """``dedup({args})`` and ``decontaminate(evalset, {args})`` through ``curate filter``: recall
    per planted kind and extra matches."""
    rows = []
    t = time.time()
    curate("filter", "--index", str(index), "--rule", f"dedup({args})", "--out", str(out / "dedup"))
    dedup_s = time.time() - t
    groups = pq.read_table(out / "dedup" / "dedup_groups.parquet").to_pylist()
    group_of = {r["key"]: r["group"] for r in groups}
    planted_keys = set()
    for kind in KINDS:
        pairs = [(k, src) for k, (kd, src) in origin.items() if kd == kind]
        found = sum(1 for k, src in pairs if k in group_of and group_of.get(src) == group_of[k])
        planted_keys |= {k for k, _ in pairs} | {src for _, src in pairs}
        rows.append((f"dedup: {kind} copies", found / len(pairs), len(pairs)))
    extra = sum(1 for r in groups if not r["kept"] and r["key"] not in planted_keys)
    t = time.time()
    curate("filter", "--index", str(index), "--rule", f"decontaminate(evalset={str(evalset)!r}, {args})",
           "--out", str(out / "decon"))
    decon_s = time.time() - t
    matched = {m["key"] for m in pq.read_table(out / "decon" / "decontamination.parquet").to_pylist()}
    tests = [k for k, (kd, _) in origin.items() if kd == "test"]
    rows.append(("decontaminate: injected test images", sum(k in matched for k in tests) / len(tests), len(tests)))
    return {"rows": rows, "extra_dedup": extra, "extra_decon": len(matched - set(tests)), "dedup_s": dedup_s,
            "decon_s": decon_s}


def cosines(index: Path, origin: dict) -> dict:
    """Image-embedding cosine of each kind of planted pair (median, 1st percentile) and of random
    pairs of different pool images (median, 99th percentile)."""
    import numpy as np

    from curate.io.embeddings import read_embeddings

    rows, vectors, _ = read_embeddings(index)
    keys = rows.column("key").to_pylist()
    at = {k: i for i, k in enumerate(keys)}
    x = np.asarray(vectors, dtype=np.float32)
    out = {}
    for kind in KINDS:
        sims = [float(x[at[k]] @ x[at[src]]) for k, (kd, src) in origin.items() if kd == kind and k in at and src in at]
        out[kind] = (float(np.median(sims)), float(np.percentile(sims, 1)))
    rng = np.random.default_rng(0)
    plain = [i for i, k in enumerate(keys) if k not in origin]
    a, b = rng.choice(plain, 5000), rng.choice(plain, 5000)
    sims = (x[a] * x[b]).sum(1)[a != b]
    out["different images"] = (float(np.median(sims)), float(np.percentile(sims, 99)))
    return out

if __name__ == "__main__":
    main()
