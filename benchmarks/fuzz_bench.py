#!/usr/bin/env python
"""Fuzz the score path's stage chain (no Ray) with hostile shards and count what happens.

    python benchmarks/fuzz_bench.py [--samples 10000] [--per-shard 50] [--seed 0] [--detector dbnet]

Builds shards from the grammar of ``tests/fuzz_shards.py`` (seeded ``RandomDriver``): corrupt,
truncated and zero-size images of every mode and format, captions with lone surrogates, NUL,
invalid UTF-8 and 100k characters, non-string JSON captions, shared uids, repeated and
non-adjacent members, links, directories, and shards cut at a random byte. Each shard goes
through ``read_shard_records`` and ``StageChain`` (caption language, decode, detect, mask, tiny
CLIP score) and ``records_to_table``, as ``curate score`` runs them. Prints samples, rows,
rows by status, shards by read status and crashes (an exception out of the chain or the
writer: the goal is 0), and the throughput of fuzzed samples against the bundled clean sample
shards through the same chain, as a ratio.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate import schema as S  # noqa: E402
from curate.scoring.config import load_config  # noqa: E402
from curate.io.index import records_to_table  # noqa: E402
from curate.models import resolve_pretrained  # noqa: E402
from curate.scoring.plan import StageChain
from curate.scoring.records import SHARD_RECORD, records_to_batch, shard_record_list
from tests.fuzz_shards import RandomDriver, build_tar, expected_keys, shard_members  # noqa: E402


def run_shard(chain: StageChain, path: Path, batch_size: int) -> tuple[list[dict], str]:
    records = shard_record_list(str(path))
    shard_status = records[0]["_shard_status"]
    samples = [r for r in records if r[S.STATUS] != SHARD_RECORD]
    rows = []
    for i in range(0, len(samples), batch_size):
        rows += records_to_table(chain(records_to_batch(samples[i : i + batch_size]))).to_pylist()
    return rows, shard_status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10_000, help="fuzzed samples to generate (about)")
    ap.add_argument("--per-shard", type=int, default=50, help="at most this many samples per shard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector", default="dbnet", choices=["craft", "dbnet"])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = args.detector
    chain = StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir))

    # Baseline: the bundled clean sample shards through the same chain.
    t0 = time.perf_counter()
    clean = sum(len(run_shard(chain, p, args.batch_size)[0]) for p in sorted((REPO / "tests/data/shards").glob("*.tar")))
    clean_rate = clean / (time.perf_counter() - t0)

    d = RandomDriver(args.seed)
    statuses: collections.Counter = collections.Counter()
    shard_statuses: collections.Counter = collections.Counter()
    samples = rows = crashes = row_mismatches = shards = 0
    fuzz_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        while samples < args.samples:
            members = shard_members(d, max_samples=args.per_shard)
            data = build_tar(members)
            cut = d.boolean(0.1)
            path = Path(tmp) / f"fuzz-{shards:06d}.tar"
            # Cut inside the members, not in the tar's zero padding (which still reads as complete).
            path.write_bytes(data[: d.integer(0, max(0, len(data) - 1024))] if cut else data)
            n = len(expected_keys(members))
            shards += 1
            t0 = time.perf_counter()
            try:
                got, shard_status = run_shard(chain, path, args.batch_size)
            except Exception:  # a crash: what the harness exists to find
                crashes += 1
                traceback.print_exc()
                continue
            finally:
                fuzz_s += time.perf_counter() - t0
            shard_statuses[shard_status] += 1
            if not cut:
                samples += n
                rows += len(got)
                row_mismatches += len(got) != n
            statuses.update(r[S.STATUS] for r in got)
            path.unlink()
    fuzz_rows = sum(statuses.values())
    fuzz_rate = fuzz_rows / fuzz_s if fuzz_s else 0.0
    print(f"fuzzed shards       {shards} ({', '.join(f'{k} {v}' for k, v in sorted(shard_statuses.items()))})")
    print(f"samples (intact)    {samples}")
    print(f"rows (intact)       {rows}   rows == samples: {rows == samples} ({row_mismatches} shard(s) differ)")
    print(f"crashes             {crashes}")
    print("rows by status      " + ", ".join(f"{k} {v}" for k, v in statuses.most_common()))
    print(f"throughput          fuzzed {fuzz_rate:.1f} rows/s, clean sample shards {clean_rate:.1f} samples/s")
    print(f"ratio (fuzzed / clean rows/s): {fuzz_rate / clean_rate:.2f}x")
    if crashes or rows != samples:
        sys.exit(1)


if __name__ == "__main__":
    main()
