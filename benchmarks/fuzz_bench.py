#!/usr/bin/env python
"""Fuzz the score path's stage chain (no Ray) with hostile shards and count what happens.

    python benchmarks/fuzz_bench.py [--samples 10000] [--per-shard 50] [--seed 0] [--detector dbnet]
    python benchmarks/fuzz_bench.py --worker-faults [--samples 5000] [--fault-every 1000]

``--worker-faults``: the whole ``curate score`` job on a local Ray cluster (2 CPUs), over a pool of
real samples (the bundled shards' photos and captions, each with a fresh uid), run twice: clean,
then with one sample in ``--fault-every`` poisoned through ``CURATE_FAULTS`` (in turn: an abort in
detect, an allocation without bound in decode, a hang in score, a segfault in mask). Prints the
rows present, the rows by status, job failures (the goal is 0) and the throughput against the
clean run, as a ratio.

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
from curate.io.index import records_to_table  # noqa: E402
from curate.models import resolve_pretrained  # noqa: E402
from curate.scoring.config import load_config  # noqa: E402
from curate.scoring.plan import StageChain  # noqa: E402
from curate.scoring.records import SHARD_RECORD, records_to_batch, shard_record_list  # noqa: E402
from tests.fuzz_shards import RandomDriver, build_tar, expected_keys, shard_members  # noqa: E402


def run_shard(chain: StageChain, path: Path, batch_size: int) -> tuple[list[dict], str]:
    records = shard_record_list(str(path))
    shard_status = records[0]["_shard_status"]
    samples = [r for r in records if r[S.STATUS] != SHARD_RECORD]
    rows = []
    for i in range(0, len(samples), batch_size):
        rows += records_to_table(chain(records_to_batch(samples[i : i + batch_size]))).to_pylist()
    return rows, shard_status


FAULT_TURNS = (("detect", "abort"), ("decode", "alloc"), ("score", "hang"), ("mask", "segv"))


def worker_fault_bench(args) -> None:
    """The ``--worker-faults`` mode (see the module docstring)."""
    import json
    import os
    import subprocess

    from tests.conftest import write_unique_pool

    per_shard = args.per_shard
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        expected = write_unique_pool(pool, -(-args.samples // per_shard), per_shard)
        keys = sorted(k for _, k in expected)
        poison = {keys[i]: FAULT_TURNS[j % len(FAULT_TURNS)]
                  for j, i in enumerate(range(args.fault_every // 2, len(keys), args.fault_every))}
        faults = ",".join(f"{stage}:{kind}:{key}" for key, (stage, kind) in poison.items())
        limits = ["--limits-batch-timeout-s", str(args.batch_timeout), "--limits-sample-timeout-s",
                  str(args.sample_timeout), "--limits-worker-memory-mb", "1024"]
        if args.worker_retries is not None:
            limits += ["--limits-worker-retries", str(args.worker_retries)]
        results = {}
        for name, env_faults in (("clean", ""), ("faults", faults)):
            out = Path(tmp) / name
            env = dict(os.environ, RAY_AUTH_MODE="disabled", CURATE_FAULTS=env_faults)
            cmd = [sys.executable, "-m", "curate.cli", "score", str(pool / "*.tar"), "--out", str(out),
                   "--config", str(REPO / "pipelines" / "tiny_cpu.yaml"), "--detector", args.detector,
                   "--num-cpus", "2", "--no-progress", *limits]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            summary = json.loads((out / "_summary.json").read_text()) if (out / "_summary.json").exists() else {}
            results[name] = (proc.returncode, wall, summary)
            print(f"{name:7} exit {proc.returncode}, {wall:.1f} s, {summary.get('num_samples')} rows, "
                  f"statuses {summary.get('statuses')}, isolation {summary.get('isolation')}")
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-3000:])
    n = len(expected)
    failures = sum(1 for code, _, s in results.values() if code != 0 or s.get("num_samples") != n)
    (_, clean_wall, _), (_, fault_wall, fsum) = results["clean"], results["faults"]
    died = fsum.get("statuses", {}).get(S.STATUS_WORKER_DIED, 0)
    hung = fsum.get("statuses", {}).get(S.STATUS_TIMEOUT, 0)
    print(f"samples             {n} in {len(list(range(0, n, per_shard)))} shards; poisoned {len(poison)} "
          f"(1 in {args.fault_every}: {', '.join(f'{st}:{k}' for st, k in FAULT_TURNS)} in turn)")
    print(f"poisoned rows       worker_died {died}, timeout {hung} (expected {len(poison)} in all)")
    print(f"job failures        {failures}")
    print(f"throughput          clean {n / clean_wall:.2f} samples/s, with faults {n / fault_wall:.2f} samples/s")
    print(f"ratio (with faults / clean): {clean_wall / fault_wall:.2f}x")
    if failures or died + hung != len(poison):
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10_000, help="fuzzed samples to generate (about)")
    ap.add_argument("--per-shard", type=int, default=50, help="at most this many samples per shard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector", default="dbnet", choices=["craft", "dbnet"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--worker-faults", action="store_true",
                    help="the whole Ray job, clean and with crash, hang and memory-bomb samples (see above)")
    ap.add_argument("--fault-every", type=int, default=1000, help="--worker-faults: one poisoned sample in this many")
    ap.add_argument("--batch-timeout", type=float, default=10.0, help="--worker-faults: limits.batch_timeout_s")
    ap.add_argument("--sample-timeout", type=float, default=10.0, help="--worker-faults: limits.sample_timeout_s")
    ap.add_argument("--worker-retries", type=int, default=None,
                    help="--worker-faults: limits.worker_retries (default: curate's)")
    args = ap.parse_args()
    if args.worker_faults:
        worker_fault_bench(args)
        return

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = args.detector
    chain = StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir))

    # Baseline: the bundled clean sample shards through the same chain.
    t0 = time.perf_counter()
    clean = sum(
        len(run_shard(chain, p, args.batch_size)[0]) for p in sorted((REPO / "tests/data/shards").glob("*.tar"))
    )
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
