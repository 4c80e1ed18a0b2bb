"""Fast to the first row (issue 31): how long ``curate score`` takes from the command to its first
scored sample, where that time goes, and what it costs a job of 41, 500 and 5,000 samples against
the same job's own steady-state rate.

Each job runs ``curate score`` with ``pipelines/tiny_cpu.yaml`` (random-init tiny CLIP, detection
at 512 px, a fresh local Ray cluster of 2 CPUs) as a new process, as a user runs it:

- ``demo``: ``make demo``'s job, the 41 samples of the bundled sample shards
  (``tests/data/shards``) with the default detector, CRAFT (about 2 samples/s on 2 cores);
- 41, 500 and 5,000 samples with DBNet (``--detector dbnet``, about 17 samples/s, as
  ``benchmarks/scale_bench.py``'s efficiency runs): the sample shards, then their real images
  shrunk to at most 512 px and re-encoded as JPEG, with their real captions, cycled with fresh
  uids, in shards of 100 and 500 (``scale_bench.py``'s pool).

Per job: the seconds from launching the process to the first sample leaving the last stage, split
into the interpreter and imports, curate's checks, ``ray.init``, building the plan, and the rest
(Ray Data starts the actors, which load their models, while the first shards are read; the first
batch passes every stage), with each actor's construction from Ray's own task timeline
(``ray.timeline()``); the total wall; the steady-state rate (``ScoreSummary.steady_samples_per_s``:
the rows after the first batch over the seconds from the first to the last); and the ratio of the
wall to the wall the job would take at its steady-state rate with no start-up at all. Plus the
driver's heaviest imports (``python -X importtime``).

    .venv/bin/python benchmarks/startup_bench.py                  # demo, 41, 500, 5,000 (about 10 minutes)
    .venv/bin/python benchmarks/startup_bench.py --jobs demo      # the demo job only (under a minute)
    .venv/bin/python benchmarks/startup_bench.py --out startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))
TINY = REPO / "pipelines" / "tiny_cpu.yaml"
PER_SHARD = {500: 100, 5000: 500}


def child(detector: str, shards: list[str], out: str, report: str) -> None:
    """Run ``curate score`` in this process as the CLI does, then write what Ray's task timeline
    says about the actors' construction and the summary's start-up figures to ``report``."""
    from curate.cli import STARTED_AT, main

    try:
        main(["score", *shards, "--out", out, "--config", str(TINY), "--num-cpus", "2", "--no-progress",
              "--detector", detector])
    except SystemExit as e:
        if e.code:
            raise
    import ray

    actors = []
    for e in ray.timeline():
        if e.get("ph") == "X" and e.get("name") == "__init__":
            actors.append({"actor": str(e.get("cat", "")).removeprefix("task::").removesuffix(".__init__"),
                           "start_s": e["ts"] / 1e6 - STARTED_AT, "seconds": e["dur"] / 1e6})
    summary = json.loads((Path(out) / "_summary.json").read_text())
    Path(report).write_text(json.dumps({"started_at": STARTED_AT, "summary": summary, "actors": actors}))


def run_job(shards: list[str], tmp: Path, label: str, detector: str, run: int = 0) -> dict:
    """One job in a fresh process, into a new index folder; the figures of the table."""
    out, report = tmp / f"index-{run}-{label}", tmp / f"report-{run}-{label}.json"
    launched = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", detector, str(out), str(report), *shards],
                          capture_output=True, text=True, cwd=REPO)
    ended = time.time()
    if proc.returncode != 0:
        sys.exit(f"job {label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(report.read_text())
    s = r["summary"]
    n = s["num_samples"]
    phases = dict(s["startup_phases"])
    phases["before_call"] += r["started_at"] - launched  # the interpreter and imports before curate.cli
    first_row = sum(phases.values())
    steady = s["steady_samples_per_s"]
    run_start = first_row - phases["first_batch"]  # when Ray Data began (seconds from launch)
    stage_actors = [a for a in r["actors"] if "MapWorker" in a["actor"]]
    ready = max((a["start_s"] + a["seconds"] for a in stage_actors), default=float("nan"))
    ready += r["started_at"] - launched
    wall = ended - launched
    return {
        "job": label, "detector": detector, "samples": n, "shards": len(shards), "first_row_s": round(first_row, 2),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "stage_actors_ready_s": round(ready - run_start, 2), "first_samples": s.get("first_samples"),
        "actor_init_s": sorted(round(a["seconds"], 2) for a in stage_actors),
        "ray_actors_started": len(r["actors"]),
        "wall_s": round(wall, 2), "steady_samples_per_s": steady,
        "wall_over_steady": round(wall / (n / steady), 2) if steady else None,
    }


def heaviest_imports(top: int = 6) -> list[tuple[str, float]]:
    """The driver's heaviest top-level imports (``python -X importtime``), cumulative seconds."""
    code = "import curate.cli, curate.scoring.run, curate.scoring.plan, ray, ray.data"
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         cwd=REPO).stderr
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].startswith(" ") and not parts[2].startswith("  "):
            try:
                rows.append((parts[2].strip(), int(parts[1]) / 1e6))
            except ValueError:
                pass
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", nargs="+", default=["demo", "41", "500", "5000"],
                    help="demo (make demo's job: CRAFT), or a number of samples scored with DBNet: 41 (the sample "
                         "shards) or any size built from their images")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        detector, out, report, *shards = args.child
        return child(detector, shards, out, report)

    sys.path.insert(0, str(Path(__file__).parent))
    from scale_bench import real_samples, write_pool

    results = {"imports": heaviest_imports(), "jobs": []}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pool = None
        for i, job in enumerate(args.jobs):
            n = 41 if job == "demo" else int(job)
            if n == 41:
                shards = [str(p) for p in SHARDS]
            else:
                pool = pool or real_samples()
                shards = write_pool(tmp / f"pool-{n}", n, PER_SHARD.get(n, 500), pool)
            results["jobs"].append(run_job(shards, tmp, job, "craft" if job == "demo" else "dbnet", run=i))
            print(json.dumps(results["jobs"][-1]), flush=True)

    print("\ndriver's heaviest imports (python -X importtime, cumulative):")
    for name, sec in results["imports"]:
        print(f"  {name:<28} {sec:6.2f} s")
    names = ["before_call", "checks", "ray_init", "plan", "first_batch"]
    print("\n| job | detector | samples | first row | imports | checks | ray.init | plan | actors ready | "
          "first batch | samples in it | wall | steady samples/s | wall / (samples / steady rate) |")
    print("|" + " --- |" * 14)
    for j in results["jobs"]:
        p = j["phases_s"]
        steps = " | ".join(f"{p.get(k, 0):.1f}" for k in names[:4])
        print(f"| {j['job']} | {j['detector']} | {j['samples']:,} | **{j['first_row_s']:.1f} s** | {steps}"
              f" | {j['stage_actors_ready_s']:.1f} | {p.get('first_batch', 0):.1f} | {j.get('first_samples') or '?'}"
              f" | {j['wall_s']:.1f} s | "
              f"{j['steady_samples_per_s'] or float('nan'):.1f} | {j['wall_over_steady'] or float('nan'):.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
