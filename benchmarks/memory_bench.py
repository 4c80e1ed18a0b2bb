"""Peak memory of ``curate score`` against the number of shards: it must not grow with the pool.

Pools of ``--small`` and ``--large`` shards of ``--per-shard`` real samples each (taken in turn
from the sample shards, member bytes unchanged) are scored with the same config (DBNet, tiny
CLIP, ``pipelines/tiny_cpu.yaml``), each on a fresh local Ray cluster. A thread samples, every
0.2 s, the resident memory (RSS) of the driver and the summed RSS of every process under it
(Ray's GCS, raylet, and workers), and keeps the peaks. Streaming with backpressure means the
peaks stay flat while the pool grows 5x; collecting the dataset in the driver would not.

    .venv/bin/python benchmarks/memory_bench.py             # 10 vs 50 shards of 2 samples
"""

from __future__ import annotations

import argparse
import io
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


class PeakRSS(threading.Thread):
    """Samples the RSS of this process and of all its descendants; keeps the peaks (bytes)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.driver = self.others = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.driver = max(self.driver, self.me.memory_info().rss)
                total = 0
                for child in self.me.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.others = max(self.others, total)
            except psutil.Error:
                pass


def measure(n_shards: int, per_shard: int, tmp: Path) -> dict:
    import ray

    from curate.config import load_config
    from curate.pipeline import run_score

    pool = tmp / f"pool-{n_shards}"
    write_pool(pool, n_shards, per_shard)
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    watch = PeakRSS()
    watch.start()
    t0 = time.perf_counter()
    summary = run_score([str(pool / "*.tar")], tmp / f"index-{n_shards}", cfg, num_cpus=2, progress=False)
    secs = time.perf_counter() - t0
    ray.shutdown()
    watch.stop.set()
    watch.join()
    return {"shards": n_shards, "samples": summary.num_samples, "seconds": secs,
            "driver_mib": watch.driver / 2**20, "ray_mib": watch.others / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=10)
    p.add_argument("--large", type=int, default=50)
    p.add_argument("--per-shard", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args.per_shard, Path(tmp)) for n in (args.small, args.large)]
    print(f"\n{'shards':>7}{'samples':>9}{'seconds':>9}{'driver peak MiB':>17}{'Ray processes peak MiB':>24}")
    for r in rows:
        print(f"{r['shards']:>7}{r['samples']:>9}{r['seconds']:>9.1f}{r['driver_mib']:>17.0f}{r['ray_mib']:>24.0f}")
    a, b = rows
    print(f"\n{b['shards'] / a['shards']:.0f}x the shards: driver peak x{b['driver_mib'] / a['driver_mib']:.2f}, "
          f"Ray processes peak x{b['ray_mib'] / a['ray_mib']:.2f}")


if __name__ == "__main__":
    main()
