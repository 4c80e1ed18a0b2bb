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
``tiny`` model every image is close to every other, so only ``threshold=1`` (hashes) is run here.

    .venv/bin/python benchmarks/dedup_pool_bench.py --out out/dedup_pool
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
    rows = []
    t = time.time()
    curate("filter", "--index", str(args.out / "index"), "--rule", "dedup(threshold=1.0)", "--out", str(args.out / "dedup"))
    dedup_s = time.time() - t
    groups = pq.read_table(args.out / "dedup" / "dedup_groups.parquet").to_pylist()
    group_of = {r["key"]: r["group"] for r in groups}
    uid_of = {r["key"]: r["uid"] for r in groups}
    planted_keys = set()
    for kind in KINDS:
        pairs = [(k, src) for k, (kd, src) in origin.items() if kd == kind]
        found = sum(1 for k, src in pairs if k in group_of and group_of.get(src) == group_of[k])
        planted_keys |= {k for k, _ in pairs} | {src for _, src in pairs}
        rows.append((f"dedup: {kind} copies", found / len(pairs), len(pairs)))
    extra = sum(1 for r in groups if not r["kept"] and r["key"] not in planted_keys)
    t = time.time()
    evalset = args.out / "evalsets" / "wds_cifar10_test"
    curate("filter", "--index", str(args.out / "index"), "--rule", f"decontaminate(evalset={str(evalset)!r}, threshold=1.0)",
           "--out", str(args.out / "decon"))
    decon_s = time.time() - t
    matches = pq.read_table(args.out / "decon" / "decontamination.parquet").to_pylist()
    matched = {m["key"] for m in matches}
    tests = [k for k, (kd, _) in origin.items() if kd == "test"]
    rows.append(("decontaminate: injected test images", sum(k in matched for k in tests) / len(tests), len(tests)))
    decon_extra = len(matched - set(tests))
    print(f"\npool {n} samples ({args.pool_size} CIFAR-10 train, {args.copies} copies of each of {len(KINDS)} kinds, "
          f"{args.test_images} CIFAR-10 test images); scoring {t_score:.0f} s, dedup {dedup_s:.1f} s, "
          f"decontaminate {decon_s:.1f} s, total {time.time() - t0:.0f} s")
    print("\n| method (hashes: threshold=1, phash_bits=2) | recall | planted |")
    print("| --- | --- | --- |")
    for name, recall, k in rows:
        print(f"| {name} | {recall:.3f} | {k} |")
    print(f"\nextra rows dropped by dedup beyond the planted copies: {extra} ({1000 * extra / n:.2f} per 1,000 samples)")
    print(f"extra pool rows matched to the test set beyond the injected ones: {decon_extra} "
          f"({1000 * decon_extra / n:.2f} per 1,000 samples)")
    json.dump({"rows": rows, "extra_dedup": extra, "extra_decon": decon_extra, "n": n, "uids": len(uid_of)},
              open(args.out / "result.json", "w"))


if __name__ == "__main__":
    main()
