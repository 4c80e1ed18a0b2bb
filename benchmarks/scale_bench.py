"""How ``curate score`` scales: pipeline efficiency, the driver's ceiling, memory per shard size,
and cost growth (issue 14). Every figure is a ratio against a baseline run in the same command.

The pool: the real images of the bundled sample shards (``tests/data/shards``), shrunk to at most
512 px on the long side and re-encoded as JPEG (img2dataset's ``--image_size 512`` resize, as in
DataComp's pool), with their real captions, cycled to the size asked and given fresh uids.

1. **Efficiency**: ``curate score`` samples/s (DBNet at 512 px, tiny CLIP, ``tiny_cpu.yaml``)
   divided by the stage-sum rate of the same samples in one process (language, decode, detect,
   mask and score back to back with ``StageChain``, torch on 2 threads); for the samples in one
   shard and in shards of 100. "After start-up" leaves out the seconds before the first rows
   reach the writer (``ScoreSummary.startup_s``).
2. **Driver ceiling**: rows/s the driver's books (``ShardTracker.add``) absorb from synthetic part
   records (Ray Data blocks of 256 rows, 10,000-row shards), against the 3.2M rows/s that 10x a
   64-GPU cluster at the goal rate (5,000 samples/s per GPU) would send.
3. **Memory**: peak RSS (driver plus every Ray process) for one 10,000-sample shard against the
   same samples in 100 shards of 100, with ``--detector none`` (the read and decode path; the
   detector's memory does not depend on the shard layout) and tiny CLIP.
4. **Cost growth**: wall time for 1x, 4x and 16x samples (``--detector none``), and the per-shard
   overhead (the same samples in shards of 10 against shards of 500).

    .venv/bin/python benchmarks/scale_bench.py            # all (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/scale_bench.py --quick    # small sizes, a minute or two
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))
TINY = REPO / "pipelines" / "tiny_cpu.yaml"


def real_samples(max_side: int = 512) -> list[dict[str, bytes]]:
    """The sample shards' decodable images, shrunk to ``max_side`` and re-encoded, with captions."""
    out = []
    for shard in SHARDS:
        groups: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                groups.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for g in groups.values():
            img = next((g[e] for e in ("jpg", "png", "webp", "jpeg") if e in g), None)
            if img is None or "txt" not in g:
                continue
            try:
                im = Image.open(io.BytesIO(img)).convert("RGB")
            except Exception:
                continue
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            out.append({"jpg": buf.getvalue(), "txt": g["txt"]})
    return out


def write_pool(folder: Path, n_samples: int, per_shard: int, pool: list[dict[str, bytes]]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, n_samples, per_shard)):
        path = folder / f"shard-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
            for i in range(start, min(start + per_shard, n_samples)):
                sample = dict(pool[i % len(pool)])
                sample["json"] = json.dumps({"uid": f"{i:032x}"}).encode()
                for ext, data in sample.items():
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


class PeakRSS:
    """Samples every 0.2 s the RSS of this process plus all its descendants (Ray's processes)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def score(paths: list[str], out: Path, cfg, fresh: bool = True):
    """``run_score`` on a fresh local Ray cluster of 2 CPUs; returns the summary."""
    import ray

    from curate.runtime import init_ray
    from curate.scoring import run_score

    if fresh and ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    summary = run_score(paths, out, cfg, progress=False)
    assert summary.exit_code == 0, summary.format()
    return summary


def stage_sum_rate(paths: list[str], cfg) -> float:
    """Samples/s of the stages back to back in one process (torch on 2 threads)."""
    import torch

    from curate.models import resolve_pretrained
    from curate.scoring.plan import StageChain
    from curate.scoring.records import records_to_batch, shard_record_list

    torch.set_num_threads(2)
    chain = StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained))
    records = [r for p in paths for r in shard_record_list(p)]
    batch = records_to_batch(records[:8])
    chain(batch)  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(records), 64):
        chain(records_to_batch(records[start:start + 64]))
    return len(records) / (time.perf_counter() - t0)


def driver_ceiling(n_rows: int = 2_000_000, block: int = 256, shard_size: int = 10_000) -> float:
    """Rows/s of ``ShardTracker.add`` over synthetic part records (no files: finalize is stubbed)."""
    from curate.scoring.writer import ShardTracker

    tracker = ShardTracker("/nonexistent", {}, lambda r: None, finalize="local")
    tracker._start = lambda url, status, error, ignored, n: tracker.started.add(url)  # books only
    records = []
    for shard in range(n_rows // shard_size):
        for start in range(0, shard_size, block):
            records.append(
                (f"s3://pool/{shard:08d}.tar", np.arange(start, min(start + block, shard_size), dtype=np.int64)))
    batches = []
    for i in range(0, len(records), 16):  # Ray Data hands the driver blocks of part records
        part = records[i:i + 16]
        batches.append({
            "shard": np.array([u for u, _ in part], dtype=object), "part": np.array(["p"] * len(part), dtype=object),
            "seqs": np.array([s.tobytes() for _, s in part], dtype=object), "shard_n": np.full(len(part), shard_size),
            "shard_status": np.array(["complete"] * len(part), dtype=object),
            "shard_error": np.array([""] * len(part), dtype=object), "ignored": np.zeros(len(part), dtype=np.int64),
            "write_error": np.array([""] * len(part), dtype=object), "_busy_detect": np.ones(len(part)),
        })
    t0 = time.perf_counter()
    rows = sum(tracker.add(b) for b in batches)
    dt = time.perf_counter() - t0
    assert rows == n_rows and len(tracker.started) == n_rows // shard_size
    return rows / dt


def efficiency(tmp: Path, n: int, pool) -> dict:
    """``curate score`` samples/s against the one-process stage sum, one shard and shards of 100."""
    from curate.scoring.config import load_config

    cfg = load_config(TINY)
    cfg.detect.detector = "dbnet"
    one = write_pool(tmp / "eff-one", n, n, pool)
    many = write_pool(tmp / "eff-many", n, 100, pool)
    base = stage_sum_rate(one, cfg)
    out: dict = {"stage_sum_samples_per_s": round(base, 1)}
    print("stage sum", out, flush=True)
    for name, paths in (("one shard", one), ("shards of 100", many)):
        s = score(paths, tmp / f"index-eff-{len(paths)}", cfg)
        rate = n / s.wall_s
        after = n / max(s.wall_s - s.startup_s, 1e-9)
        out[f"efficiency, {name}"] = {
            "samples_per_s": round(rate, 1), "efficiency": round(rate / base, 2),
            "startup_s": round(s.startup_s, 1), "after_startup_samples_per_s": round(after, 1),
            "after_startup_efficiency": round(after / base, 2),
            "driver_cpu_share": round(s.driver_cpu_s / s.wall_s, 3),
            "stages": {k: round(v["samples"] / v["busy_s"], 1) for k, v in s.stage_stats.items() if v["busy_s"]}}
        print(name, out[f"efficiency, {name}"], flush=True)
    return out


def cost_growth(tmp: Path, sizes, pool, cfg) -> dict:
    """Wall time for growing pools (shards of 100), and the per-shard overhead."""
    walls = {}
    for n in sizes:
        s = score(write_pool(tmp / f"grow-{n}", n, 100, pool), tmp / f"index-grow-{n}", cfg)
        walls[n] = (s.wall_s, s.startup_s)
        print(n, f"{s.wall_s:.1f} s", flush=True)
    first = walls[sizes[0]][0] - walls[sizes[0]][1]
    out: dict = {"growth": {str(n): {"wall_s": round(w, 1), "after_startup_s": round(w - st, 1),
                                     "after_startup_vs_first": round((w - st) / first, 2)}
                            for n, (w, st) in walls.items()}}
    n = sizes[-2] if len(sizes) > 1 else sizes[0]
    small = score(write_pool(tmp / "oh-10", n, 10, pool), tmp / "index-oh-10", cfg)
    big = score(write_pool(tmp / "oh-500", n, 500, pool), tmp / "index-oh-500", cfg)
    extra = (small.wall_s - small.startup_s) - (big.wall_s - big.startup_s)
    out["per_shard_overhead_s"] = round(extra / (n / 10 - max(1, n // 500)), 3)
    out["overhead_samples"] = n
    print("per shard", out["per_shard_overhead_s"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--parts", nargs="+", default=["efficiency", "driver", "memory", "growth"],
                    choices=["efficiency", "driver", "memory", "growth"], help="which measurements (default: all)")
    args = ap.parse_args()
    from curate.scoring.config import load_config

    pool = real_samples()
    eff_n, mem_n, growth = (200, 1000, (100, 400)) if args.quick else (2000, 10_000, (500, 2000, 8000))
    results: dict = {"pool_images": len(pool)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "efficiency" in args.parts:
            results.update(efficiency(tmp, eff_n, pool))
        if "driver" in args.parts:
            ceiling = driver_ceiling(200_000 if args.quick else 2_000_000)
            results["driver_rows_per_s"] = round(ceiling)
            results["driver_vs_10x_64_gpus"] = round(ceiling / (10 * 64 * 5000), 2)
            print("driver", results["driver_rows_per_s"], "rows/s", flush=True)
        cfg = load_config(TINY)
        cfg.detect.detector = "none"
        if "memory" in args.parts:
            peaks = {}
            for name, per in (("one shard", mem_n), ("100 shards", max(1, mem_n // 100))):
                paths = write_pool(tmp / f"mem-{per}", mem_n, per, pool)
                with PeakRSS() as m:
                    score(paths, tmp / f"index-mem-{per}", cfg)
                peaks[name] = m.peak / 2**30
                print(name, f"{peaks[name]:.2f} GiB", flush=True)
            results["memory_gib"] = {k: round(v, 2) for k, v in peaks.items()}
            results["memory_ratio_one_vs_100"] = round(peaks["one shard"] / peaks["100 shards"], 2)
        if "growth" in args.parts:
            results.update(cost_growth(tmp, growth, pool, cfg))
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
