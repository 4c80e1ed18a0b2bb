#!/usr/bin/env python
"""Filter throughput: `curate filter` (DuckDB) against a vectorised pyarrow + numpy baseline.

    python benchmarks/filter_bench.py [--rows 10000000] [--files 100] [--workdir /tmp/filter_bench]

Builds a synthetic score index of ``--rows`` rows in the real schema (``curate.schema``), split
into ``--files`` Parquet files like one file per shard, with real web captions from
``tests/data/captions/laion_sample_1000.parquet`` and random sizes, scores and languages. Then
runs ``tmars(fraction=0.3) & basic()`` with ``curate.filters.run_filter`` and the same rule written
the way a user would with pyarrow.compute and numpy, checks both keep the same uids, and prints
rows/s of each and their ratio. Goal (issue 3): at least 2 million rows/s on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate import schema as S  # noqa: E402
from curate.filters import run_filter  # noqa: E402


def build(workdir: Path, rows: int, files: int, seed: int = 0) -> Path:
    index = workdir / "index"
    if index.exists():
        shutil.rmtree(index)
    index.mkdir(parents=True)
    captions = [t for t in pq.read_table(REPO / "tests/data/captions/laion_sample_1000.parquet").column("TEXT").to_pylist() if t]
    rng = np.random.default_rng(seed)
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        if n <= 0:
            break
        start = f * per
        uid = pa.array([f"{i:032x}" for i in range(start, start + n)])
        status = np.where(rng.random(n) < 0.02, "decode_error", "ok")
        ok = status == "ok"
        w = rng.integers(64, 2048, n).astype(np.int32)
        h = rng.integers(64, 2048, n).astype(np.int32)
        clip = rng.normal(0.25, 0.05, n).astype(np.float32)
        masked = (clip - np.abs(rng.normal(0, 0.03, n))).astype(np.float32)
        lang = np.where(rng.random(n) < 0.6, "en", "de")
        text = pa.array(np.array(captions, dtype=object)[rng.integers(0, len(captions), n)], pa.string())
        empty_lists = pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.list_(pa.float32())))
        table = pa.table(
            {
                S.UID: uid, S.KEY: pa.array(np.char.mod("%09d", np.arange(n)).astype(object)),
                S.SHARD: pa.array([f"pool-{f:06d}.tar"] * n), S.TEXT: text,
                S.WIDTH: pa.array(w, mask=~ok), S.HEIGHT: pa.array(h, mask=~ok),
                S.STATUS: pa.array(status.astype(object)), S.ERROR: pa.nulls(n, pa.string()),
                S.TEXT_BOXES: empty_lists, S.NUM_TEXT_BOXES: pa.array(np.zeros(n, np.int32), mask=~ok),
                S.TEXT_AREA_FRAC: pa.array(np.zeros(n, np.float32), mask=~ok),
                S.CLIP_SCORE: pa.array(clip, mask=~ok), S.MASKED_CLIP_SCORE: pa.array(masked, mask=~ok),
                S.CAPTION_LANG: pa.array(lang.astype(object)), S.CAPTION_LANG_SCORE: pa.array(np.full(n, 0.9, np.float32)),
            },
            schema=S.SCHEMA,
        )
        pq.write_table(table, index / f"pool-{f:06d}.parquet", compression="zstd")
    return index


def baseline(index: Path, fraction: float) -> set[str]:
    """The same rule with pyarrow.compute + numpy, reading only the needed columns."""
    cols = [S.UID, S.STATUS, S.MASKED_CLIP_SCORE, S.CAPTION_LANG, S.TEXT, S.WIDTH, S.HEIGHT]
    t = pa.concat_tables(
        [pq.read_table(p, columns=cols) for p in sorted(index.glob("*.parquet"))])
    ok = pc.equal(t[S.STATUS], "ok")
    scores = pc.filter(t[S.MASKED_CLIP_SCORE], pc.and_(ok, pc.is_valid(t[S.MASKED_CLIP_SCORE]))).to_numpy()
    k = int(len(scores) * fraction)
    thr = -np.inf if k >= len(scores) else -np.sort(-scores)[k]
    words = pc.list_value_length(pc.split_pattern_regex(pc.utf8_trim_whitespace(t[S.TEXT]), r"\s+"))
    w, h = t[S.WIDTH], t[S.HEIGHT]
    short, long_ = pc.min_element_wise(w, h), pc.max_element_wise(w, h)
    keep = pc.and_kleene(ok, pc.greater_equal(t[S.MASKED_CLIP_SCORE], thr))
    keep = pc.and_kleene(keep, pc.equal(t[S.CAPTION_LANG], "en"))
    keep = pc.and_kleene(keep, pc.greater(words, 2))
    keep = pc.and_kleene(keep, pc.greater(pc.utf8_length(t[S.TEXT]), 5))
    keep = pc.and_kleene(keep, pc.greater_equal(short, 200))
    keep = pc.and_kleene(keep, pc.less_equal(long_, pc.multiply(short, 3)))
    keep = pc.fill_null(keep, False)
    return set(pc.filter(t[S.UID], keep).to_pylist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/filter_bench"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    index = build(args.workdir, args.rows, args.files)
    print(f"built {args.rows:,} rows in {args.files} files in {time.perf_counter() - t0:.1f} s")
    rule = "tmars(fraction=0.3) & basic()"
    t0 = time.perf_counter()
    summary = run_filter(index, rule, args.workdir / "subset")
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = baseline(index, 0.3)
    base_s = time.perf_counter() - t0
    ours = set(pq.read_table(args.workdir / "subset" / "subset.parquet", columns=[S.UID]).column(S.UID).to_pylist())
    same = ours == base
    print(f"rule: {rule}; kept {summary.kept:,} of {summary.pool_ok:,} ok rows; same uids as baseline: {same}")
    print(f"{'':24}{'seconds':>10}{'rows/s':>16}")
    print(f"{'curate filter (DuckDB)':24}{ours_s:10.2f}{args.rows / ours_s:16,.0f}")
    print(f"{'pyarrow+numpy baseline':24}{base_s:10.2f}{args.rows / base_s:16,.0f}")
    print(f"ratio (curate / baseline rows/s): {base_s / ours_s:.2f}x")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
