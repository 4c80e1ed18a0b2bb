"""Peak memory of ``curate score`` against the number of shards: it must not grow with the pool.

Pools of ``--small`` and ``--large`` shards of ``--per-shard`` real samples each (taken in turn
from the sample shards, member bytes unchanged) are scored with the same config (DBNet, tiny
CLIP, ``pipelines/tiny_cpu.yaml``), each on a fresh local Ray cluster. A thread samples, every
0.2 s, the resident memory (RSS) of the driver and the summed RSS of every process under it
(Ray's GCS, raylet, and workers), and keeps the peaks. Streaming with backpressure means the
peaks stay flat while the pool grows 5x; collecting the dataset in the driver would not.

    .venv/bin/python benchmarks/memory_bench.py                    # 10 vs 50 shards of 2 samples
    .venv/bin/python benchmarks/memory_bench.py --sizes 10 50 200  # and 200
"""

from __future__ import annotations

import argparse
import io
import re
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))


def samples() -> list[list[tuple[str, bytes]]]:
    """The sample shards' samples as lists of ``(extension, bytes)`` members."""
    out = []
    for shard in SHARDS:
        groups: dict[str, list[tuple[str, bytes]]] = {}
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                groups.setdefault(key, []).append((ext, tf.extractfile(m).read()))
        out.extend(groups.values())
    return out


def write_pool(folder: Path, n_shards: int, per_shard: int) -> None:
    folder.mkdir(parents=True)
    pool = samples()
    i = 0
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for _ in range(per_shard):
                for ext, data in pool[i % len(pool)]:
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                i += 1


def role(proc: psutil.Process) -> str:
    """A Ray process's role from its title: ``ray::MapWorker(MapBatches(DetectActor))``, ``raylet``..."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "gone"
    title = cmd[0] if cmd else proc.name()
    if title.startswith("ray::"):
        name = title.split()[0]
        name = re.sub(r"\(\)$", "", name)
        # a task worker's title is the task running now; group task workers under one name
        if "MapWorker" in name:  # ray::MapWorker(MapBatches(DetectActor)).submit -> the actor
            return name.split(").")[0] + ")" if ")." in name else name
        return name if name == "ray::IDLE" else "ray::<task worker>"
    for known in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if any(known in c for c in cmd[:3]):
            return known
    return Path(cmd[1]).name if len(cmd) > 1 and cmd[0].endswith("python") else proc.name()


class PeakMemory(threading.Thread):
    """Samples this process and all its descendants every ``period`` s; keeps peaks (bytes).

    RSS counts a shared page (Ray's object store is shared memory) once per process that maps it;
    PSS (``psutil.Process.memory_full_info().pss``, Linux ``/proc/PID/smaps_rollup``) divides it
    among them, so the PSS sum is the memory the job really holds.
    """

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.period = period
        self.driver_rss = self.driver_pss = self.rss = self.pss = 0
        self.role_pss: dict[str, int] = {}
        self.role_count: dict[str, int] = {}
        self.series: list[tuple[float, int]] = []  # (seconds since start, PSS sum of Ray processes)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                mine = self.me.memory_full_info()
                rss = pss = 0
                by_role: dict[str, list[int]] = {}
                for child in self.me.children(recursive=True):
                    try:
                        m = child.memory_full_info()
                    except psutil.Error:
                        continue
                    rss += m.rss
                    pss += m.pss
                    by_role.setdefault(role(child), []).append(m.pss)
            except psutil.Error:
                continue
            self.series.append((time.perf_counter(), pss))
            self.driver_rss = max(self.driver_rss, mine.rss)
            self.driver_pss = max(self.driver_pss, mine.pss)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            for r, v in by_role.items():
                self.role_pss[r] = max(self.role_pss.get(r, 0), sum(v))
                self.role_count[r] = max(self.role_count.get(r, 0), len(v))


def measure(n_shards: int, per_shard: int, tmp: Path, object_store_mib: int | None = None) -> dict:
    import ray

    from curate.scoring import run_score
    from curate.scoring.config import load_config

    pool = tmp / f"pool-{n_shards}"
    write_pool(pool, n_shards, per_shard)
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    watch = PeakMemory()
    watch.start()
    t0 = time.perf_counter()
    if object_store_mib:
        from curate.runtime import init_ray

        init_ray(num_cpus=2, object_store_memory=object_store_mib * 2**20)
    summary = run_score([str(pool / "*.tar")], tmp / f"index-{n_shards}", cfg, num_cpus=2, progress=False)
    secs = time.perf_counter() - t0
    store = (
        ray.available_resources().get("object_store_memory", 0),
        ray.cluster_resources().get("object_store_memory", 0),
    )
    ray.shutdown()
    watch.stop.set()
    watch.join()
    mib = 2**20
    return {"shards": n_shards, "samples": summary.num_samples, "seconds": secs,
            "driver_rss_mib": watch.driver_rss / mib, "driver_pss_mib": watch.driver_pss / mib,
            "ray_rss_mib": watch.rss / mib, "ray_pss_mib": watch.pss / mib,
            "roles": {r: (watch.role_count[r], v / mib) for r, v in watch.role_pss.items()},
            "object_store_capacity_mib": store[1] / mib,
            "quarters_mib": quarters(watch.series, t0)}


def quarters(series: list[tuple[float, int]], t0: float) -> list[float]:
    """Peak PSS sum (MiB) in each quarter of the run: flat when memory is bounded."""
    if not series:
        return []
    t_end = series[-1][0]
    out = []
    for q in range(4):
        lo, hi = t0 + (t_end - t0) * q / 4, t0 + (t_end - t0) * (q + 1) / 4
        out.append(max((v for t, v in series if lo <= t <= hi), default=0) / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="pool sizes in shards (default: 10 50)")
    p.add_argument("--per-shard", type=int, default=2)
    p.add_argument("--object-store-mib", type=int, default=None,
                   help="Ray object store size (default: Ray's, 30%% of memory)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args.per_shard, Path(tmp), args.object_store_mib) for n in args.sizes]
    print(f"\nobject store capacity: {rows[0]['object_store_capacity_mib']:.0f} MiB")
    print(f"\n{'shards':>7}{'samples':>9}{'seconds':>9}{'driver RSS':>12}{'driver PSS':>12}"
          f"{'Ray RSS sum':>13}{'Ray PSS sum':>13}   (peak MiB)")
    for r in rows:
        print(f"{r['shards']:>7}{r['samples']:>9}{r['seconds']:>9.1f}{r['driver_rss_mib']:>12.0f}"
              f"{r['driver_pss_mib']:>12.0f}{r['ray_rss_mib']:>13.0f}{r['ray_pss_mib']:>13.0f}")
    roles = sorted({k for r in rows for k in r["roles"]}, key=lambda k: -rows[-1]["roles"].get(k, (0, 0))[1])
    print("\npeak PSS (MiB) and peak process count per Ray process role:")
    print(f"{'role':<48}" + "".join(f"{str(r['shards']) + ' shards':>18}" for r in rows))
    for k in roles:
        cells = "".join(f"{'{} x {:.0f}'.format(*r['roles'][k]) if k in r['roles'] else '-':>18}" for r in rows)
        print(f"{k[:47]:<48}{cells}")
    print("\npeak Ray PSS sum (MiB) per quarter of each run:")
    for r in rows:
        print(f"{r['shards']:>7} shards: " + "  ".join(f"{v:.0f}" for v in r["quarters_mib"]))
    a, b = rows[0], rows[-1]
    print(f"\n{b['shards'] / a['shards']:.0f}x the shards: "
          f"driver PSS x{b['driver_pss_mib'] / a['driver_pss_mib']:.2f}, "
          f"Ray PSS sum x{b['ray_pss_mib'] / a['ray_pss_mib']:.2f}, "
          f"Ray RSS sum x{b['ray_rss_mib'] / a['ray_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
