"""Near-duplicate removal at pool scale: time, peak memory and recall of ``dedup_groups``.

For each pool size N, synthetic L2-normalised float16 embeddings are written to a ``.npy`` file
(memory-mapped, as a pool's embedding files would be streamed): ``N / 1000`` random cluster
centres with spread-out members (a clustered pool, like real CLIP embeddings), plus 0.5% of the
rows replaced by near-copies (cosine ~0.99) of other rows. Each size runs in its own process,
so its peak RSS is its own.

Printed per size: wall seconds, rows/s, peak RSS, recall of the planted pairs (share grouped
together), extra rows removed beyond the planted copies (false positives), and the growth
ratio against the smallest size (``time(N) / time(N0)`` next to ``N / N0``; SemDeDup-style
clustering should grow about as ``N^1.5``).

    .venv/bin/python benchmarks/dedup_bench.py                     # 1M and 10M rows, D=512
    .venv/bin/python benchmarks/dedup_bench.py --sizes 100000 --dim 64   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_pool(path: Path, n: int, dim: int, seed: int = 0, copies: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Write ``n`` synthetic embeddings to ``path`` (``.npy``, float16); return the planted
    ``(source, copy)`` row pairs."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    centres = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    chunk = 200_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = (centres[rng.integers(0, len(centres), m)]
             + 0.9 * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim) * 3)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = int(n * copies)
    src = rng.choice(n, k, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), k, replace=False)
    noise = 0.1 * rng.standard_normal((k, dim)).astype(np.float32) / np.sqrt(dim)
    y = out[src].astype(np.float32) + noise
    out[dst] = y / np.linalg.norm(y, axis=1, keepdims=True)
    out.flush()
    return src, dst


def run_one(n: int, dim: int, threshold: float) -> dict:
    from curate.filters.dedup import dedup_groups

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emb.npy"
        src, dst = make_pool(path, n, dim)
        emb = np.load(path, mmap_mode="r")
        prio = np.random.default_rng(1).random(n)
        t0 = time.perf_counter()
        leader = dedup_groups(emb, prio, threshold)
        wall = time.perf_counter() - t0
    removed = int((leader != np.arange(n)).sum())
    found = int((leader[src] == leader[dst]).sum())
    return {"n": n, "dim": dim, "wall_s": wall, "rows_per_s": n / wall, "peak_rss_gib":
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "planted": len(src),
            "recall": found / len(src), "extra_removed": removed - found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.dim, args.threshold)))
        return
    rows = []
    for n in args.sizes:
        r = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(args.dim),
                            "--threshold", str(args.threshold)], capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print("\n| rows | dim | wall | rows/s | peak RSS | recall of planted copies | extra removed "
          "| time growth (rows growth) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']:,} | {r['dim']} | {r['wall_s']:.1f} s | {r['rows_per_s']:,.0f} | {r['peak_rss_gib']:.2f} GiB "
              f"| {r['recall']:.4f} ({r['planted']:,}) | {r['extra_removed']:,} | "
              f"{r['wall_s'] / base['wall_s']:.2f}x ({r['n'] / base['n']:.0f}x) |")


if __name__ == "__main__":
    main()
