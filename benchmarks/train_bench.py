"""Training throughput: ``curate train`` against open_clip's own trainer, side by side.

Both train the same open_clip model on the same shards with the same global batch size, data
workers, torch threads, precision and recipe (AdamW, cosine with warm-up, local loss with
gather-with-grad). The baseline is ``open_clip_train.main`` (shipped in the open_clip_torch
wheel) with its webdataset loader (``--dataset-type webdataset --dataset-resampled``); ours is
``curate train`` (Ray Train, one worker). Throughput is steady state: samples/s over the log
intervals after the first (start-up, Ray and DataLoader spin-up excluded on both sides), from
``train_log.jsonl`` for curate and from open_clip's ``Batch (t)`` interval average in its
``out.log``. A third row runs curate with ``--no-draft-decode`` (every JPEG decoded in full, as
open_clip does) to show what draft-mode decoding is worth.

    .venv/bin/python benchmarks/train_bench.py            # tiny model, 150 steps of 32, CPU
    .venv/bin/python benchmarks/train_bench.py --model ViT-B-32 --batch-size 256 --steps 200 --gpu

Prints one table and the ratio curate / open_clip (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARDS = str(REPO / "tests/data/shards/sample-{000000..000002}.tar")

# open_clip_train 3.x with webdataset >= 0.2.96 crashes with KeyError 'fname' on the EOF marker
# that tar_file_expander now yields (webdataset#384, open_clip#935); the fix given there is
# eof_value=None, applied here to the baseline only.
_OPEN_CLIP = """
import functools, sys, torch
torch.set_num_threads({threads})
from curate.models import register_configs
register_configs()
import open_clip_train.data as data
data.tar_file_expander = functools.partial(data.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[1:])
"""


def run_open_clip(args, logs: Path) -> dict:
    argv = [
        "--train-data", args.shards, "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(args.steps * args.batch_size), "--epochs", "1",
        "--batch-size", str(args.batch_size), "--workers", str(args.data_workers), "--model", args.model,
        "--lr", str(args.lr), "--warmup", str(args.warmup), "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98",
        "--eps", "1e-6", "--precision", "amp_bf16" if args.gpu else "fp32", "--device", "cuda" if args.gpu else "cpu",
        "--logs", str(logs), "--name", "open_clip", "--log-every-n-steps", str(args.log_every), "--seed", "0",
        "--save-frequency", "1", "--report-to", "", "--local-loss", "--gather-with-grad",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _OPEN_CLIP.format(threads=args.threads), *argv],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"open_clip_train failed:\n{proc.stderr[-3000:]}")
    text = (logs / "open_clip" / "out.log").read_text()
    batch_times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    steady = batch_times[1:] or batch_times
    return {"samples_per_s": args.batch_size / statistics.mean(steady), "wall_s": wall, "intervals": len(steady)}


def run_curate(args, out: Path, draft: bool = True) -> dict:
    cmd = [
        sys.executable, "-m", "curate.cli", "train", args.shards, "--out", str(out), "--scale", "tiny",
        "--model", args.model, "--batch-size", str(args.batch_size),
        "--samples-seen", str(args.steps * args.batch_size),
        "--lr", str(args.lr), "--warmup", str(args.warmup), "--data-workers", str(args.data_workers),
        "--cpus-per-worker", str(args.threads), "--torch-threads", str(args.threads),
        "--save-every", str(args.steps), "--log-every", str(args.log_every), "--no-progress",
        "--precision", "bf16" if args.gpu else "fp32", "--shuffle-buffer", "1000",
        "--draft-decode" if draft else "--no-draft-decode",
    ]
    if args.gpu:
        cmd.append("--use-gpu")
    else:
        cmd += ["--num-cpus", str(max(2, args.threads))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"curate train failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steady = [r["samples_per_s"] for r in log[1:]] or [log[0]["samples_per_s"]]
    # Interval rates are harmonic-averaged: equal step counts per interval, so time adds up.
    return {"samples_per_s": len(steady) / sum(1 / r for r in steady), "wall_s": wall, "intervals": len(steady)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default=DEFAULT_SHARDS)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--data-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on both sides")
    p.add_argument("--gpu", action="store_true", help="one GPU, bf16 autocast on both sides")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_curate(args, Path(tmp) / "curate")
        full = run_curate(args, Path(tmp) / "curate-full", draft=False)
        base = run_open_clip(args, Path(tmp) / "logs")
    ratio = ours["samples_per_s"] / base["samples_per_s"]
    print(f"model {args.model}, global batch {args.batch_size}, {args.steps} steps, {args.data_workers} data "
          f"worker(s), {args.threads} threads, {'GPU bf16' if args.gpu else 'CPU fp32'}")
    print(f"{'trainer':<28}{'samples/s (steady)':>20}{'wall s (with start-up)':>24}")
    print(f"{'open_clip_train.main':<28}{base['samples_per_s']:>20.1f}{base['wall_s']:>24.1f}")
    print(f"{'curate train, full decode':<28}{full['samples_per_s']:>20.1f}{full['wall_s']:>24.1f}")
    print(f"{'curate train (default)':<28}{ours['samples_per_s']:>20.1f}{ours['wall_s']:>24.1f}")
    print(f"ratio curate / open_clip: {ratio:.3f} (goal >= 0.95); with full decode "
          f"{full['samples_per_s'] / base['samples_per_s']:.3f}")


if __name__ == "__main__":
    main()
