"""Does ``curate search`` find what it is asked for? Precision at 10 with a model trained by curate.

1. A pool of CIFAR-10 train images captioned "a photo of a <class>" (``--pool-size``; the pool
   of ``benchmarks/dedup_pool_bench.py`` when ``--pool`` points at it, else built here the same way).
2. ``curate train --scale tiny`` on it (``--samples-seen``), then ``curate score --embeddings``
   with the trained checkpoint (no text detector: CIFAR images hold no text).
3. For each class, ``curate search "a photo of a <class>" -k 10``: the share of the 10 hits whose
   own caption names that class. Chance is 1/10 (the classes are balanced).

Printed: precision at 10 per class, the mean, and the chance level; the same for the random-init
model the training starts from, as the baseline in the same command.

    .venv/bin/python benchmarks/search_bench.py --out out/search_bench
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from toy_datacomp import curate, read_class_folders  # noqa: E402


def main() -> None:
    from dedup_pool_bench import write_shards

    from curate import schema as S
    from curate.report.search import search

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar-train", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "train.tar")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "search_bench")
    ap.add_argument("--pool-size", type=int, default=5000)
    ap.add_argument("--samples-seen", type=int, default=40_000)
    args = ap.parse_args()
    t0 = time.time()
    train = read_class_folders(args.cifar_train)
    classes = sorted(train)
    per_class = args.pool_size // len(classes)
    samples = [(f"{c}-{i:05d}", d, f"a photo of a {c}") for c in classes for i, d in enumerate(train[c][:per_class])]
    import random

    random.Random(0).shuffle(samples)
    shards = write_shards(samples, args.out / "pool")
    ckpt_dir = args.out / "train"
    curate("train", *shards, "--scale", "tiny", "--out", str(ckpt_dir), "--samples-seen", str(args.samples_seen),
           "--no-progress")
    ckpt = sorted((ckpt_dir / "checkpoints").glob("step_*.pt"))[-1]
    cfg = args.out / "score.yaml"
    cfg.write_text("detect: {detector: none}\nscore: {batch_size: 128}\n")
    results = {}
    for name, weights in (("random init (the start of training)", "none"), ("trained by curate train", str(ckpt))):
        index = args.out / ("index-" + ("trained" if weights != "none" else "random"))
        curate("score", *shards, "--out", str(index), "--config", str(cfg), "--clip-model", "tiny",
               "--pretrained", weights, "--embeddings", "--no-progress")
        per = {}
        for c in classes:
            r = search(index, text=f"a photo of a {c}", top_k=10)
            per[c] = sum((row[S.TEXT] or "").endswith(f" {c}") for row in r.rows) / len(r.rows)
        results[name] = per
    print(f"\npool {len(samples)} CIFAR-10 train images, {len(classes)} classes; training {args.samples_seen} samples "
          f"seen; total {time.time() - t0:.0f} s\n")
    print("| model | " + " | ".join(classes) + " | mean precision@10 | chance |")
    print("| --- | " + " | ".join("---" for _ in classes) + " | --- | --- |")
    for name, per in results.items():
        mean = sum(per.values()) / len(per)
        print(f"| {name} | " + " | ".join(f"{per[c]:.1f}" for c in classes)
              + f" | {mean:.3f} | {1 / len(classes):.3f} |")


if __name__ == "__main__":
    main()
