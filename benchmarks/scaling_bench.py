"""Scaling of the detection stage: ``curate score`` with 1 and 2 CRAFT actors, side by side.

Same pool (``--copies`` copies of the 3 sample shards), same config (``pipelines/tiny_cpu.yaml``
with each detect actor on 0.5 CPU and 1 torch thread, so that 2 actors fit next to the score
actor on a 2-CPU cluster), a fresh local Ray cluster of ``--num-cpus`` CPUs for each run.
Prints samples/s, the speed-up of 2 actors over 1, and the parallel efficiency (speed-up / 2).

    .venv/bin/python benchmarks/scaling_bench.py            # 82 samples, CRAFT, 2 CPUs
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))


def main() -> None:
    import ray

    from curate.scoring import run_score
    from curate.scoring.config import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--detector", default="craft", choices=["craft", "dbnet"])
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        pool.mkdir()
        for c in range(args.copies):
            for s in SHARDS:
                shutil.copyfile(s, pool / f"c{c}-{s.name}")
        for actors in (1, 2):
            cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
            cfg.detect.detector = args.detector
            cfg.detect.num_actors, cfg.detect.num_cpus, cfg.detect.torch_threads = actors, 0.5, 1
            cfg.score.num_cpus = 0.25
            t0 = time.perf_counter()
            summary = run_score([str(pool / "*.tar")], Path(tmp) / f"index-{actors}", cfg, num_cpus=args.num_cpus,
                                progress=False)
            secs = time.perf_counter() - t0
            ray.shutdown()
            rates[actors] = summary.num_samples / secs
            print(f"{actors} detect actor(s): {summary.num_samples} samples in {secs:.1f} s, "
                  f"{rates[actors]:.2f} samples/s", flush=True)
    speedup = rates[2] / rates[1]
    print(f"\n{args.detector}, {args.num_cpus} CPUs: speed-up with 2 actors {speedup:.2f}x, "
          f"parallel efficiency {speedup / 2:.0%}")


if __name__ == "__main__":
    main()
