"""Benchmark scripts that CI runs in their small form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_rehearses_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu-rehearsal: the script a lent GPU machine runs, on CPU. A small
    payload is split into parts, received, verified by sha256 and installed with pip --no-index;
    then gpu_bench.py --tiny (correctness against the CPU path, every throughput row; `curate
    score` end to end is skipped here, as many other tests run it on CPU) and the tests marked gpu
    (skipped without CUDA) write their files to $OUT."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-rehearsal"], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "OUT": str(out), "RAY_AUTH_MODE": "disabled",
                               "GPU_BENCH_ARGS": "--no-end-to-end"})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = (out / "summary.txt").read_text()
    assert "payload verified and installed" in summary and "done: ok" in summary
    report = json.loads((out / "gpu_bench.json").read_text())
    assert report["clip_vs_cpu"]["fp32"]["ok"]
    assert set(report["detect_samples_per_s"]) == {"craft", "dbnet"}
    assert report["end_to_end_skipped"] == "--no-end-to-end"
    assert "skipped" in (out / "gpu_tests.txt").read_text() and (out / "env.txt").is_file()


def test_toy_datacomp_pool_has_the_kinds_it_claims(tmp_path):
    """benchmarks/toy_datacomp.py's pool from real CIFAR-10 images: the shares per kind, captions
    naming the right class, the class word rendered only where claimed, unique DataComp uids,
    and shards that curate's own reader reads whole."""
    import io

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "benchmarks"))
    import toy_datacomp as toy

    from curate.io.shards import SHARD_COMPLETE, is_datacomp_uid, read_shard

    cifar = REPO.parent / "shared" / "data" / "cifar10" / "test.tar"
    shares = {"match": 0.4, "match_text": 0.1, "text_spot": 0.3, "mismatch": 0.2}
    counts = toy.build_pool(cifar, tmp_path, 200, shares, seed=0, shard_size=64)
    assert counts == {"match": 80, "match_text": 20, "text_spot": 60, "mismatch": 40}
    samples = []
    for shard in sorted(tmp_path.glob("pool-*.tar")):
        r = read_shard(str(shard))
        assert r.status == SHARD_COMPLETE
        samples += r.samples
    assert len(samples) == 200 and len({json.loads(s["json"])["uid"] for s in samples}) == 200
    from scipy.ndimage import maximum_filter

    text_pixels = {}
    for s in samples:
        meta = json.loads(s["json"])
        assert is_datacomp_uid(meta["uid"])
        assert s["txt"].decode().rstrip(".").endswith(meta["caption_class"])
        assert (meta["caption_class"] == meta["label"]) == (meta["kind"] in ("match", "match_text"))
        img = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("L")).astype(int)
        assert img.shape == (64, 64)
        # rendered text: dark pixels right next to the white band (CIFAR photos have none)
        dark_on_white = int(((img < 80) & (maximum_filter(img, 3) > 235)).sum())
        text_pixels.setdefault(meta["kind"], []).append(dark_on_white)
    assert min(text_pixels["text_spot"] + text_pixels["match_text"]) >= 20
    assert max(text_pixels["match"] + text_pixels["mismatch"]) < 20


def _run_bench(*args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_dedup_bench_runs_small_and_finds_its_planted_copies():
    out = _run_bench(str(REPO / "benchmarks" / "dedup_bench.py"), "--sizes", "4000", "8000", "--dim", "32")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["n"] for r in rows] == [4000, 8000]
    assert all(r["recall"] >= 0.95 and r["extra_removed"] == 0 for r in rows), rows
    assert "| 8,000 | 32 |" in out


@pytest.mark.slow
def test_embeddings_bench_runs_small():
    out = _run_bench(str(REPO / "benchmarks" / "embeddings_bench.py"), "--model", "tiny", "--detector", "none",
                     "--repeats", "1")
    assert "D = 64" in out and "| ratio |" in out


def test_filter_bench_runs_small_and_agrees_with_its_baseline(tmp_path):
    """benchmarks/filter_bench.py at two small sizes: one build reused through links, each size
    filtered in its own process, the same uids as the in-memory pyarrow baseline, the table."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "filter_bench.py"), "--rows", "20000", "60000",
                           "--rows-per-file", "10000", "--baseline-max", "60000", "--memory-limit", "256MiB",
                           "--no-query-baseline",  # tests/filters compares with the one-query filter
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["rows"] for r in rows] == [20000, 60000] and all(r["same_uids"] for r in rows)
    assert 0 < rows[0]["kept"] < rows[1]["kept"] < 0.3 * 60000
    assert len(list((tmp_path / "index-20000").iterdir())) == 2 and "| 60,000 |" in proc.stdout
    # A build the disk cannot hold is refused before it starts, naming the space and the way out.
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "filter_bench.py"), "--rows", str(10**13),
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "GB are free there: give --workdir on a larger disk" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_toy_datacomp_quick_runs_every_step_and_measures_its_mechanism(tmp_path):
    """benchmarks/toy_datacomp.py --quick (300 samples, one pool, one seed, 300 test images): every
    subset trained and evaluated; matched sizes really matched; and the mechanism on a real
    scored pool: DBNet finds and masks the rendered words, PP-OCRv4 reads them, text-match drops
    exactly the samples with a rendered word, T-MARS keeps matching-with-text samples that
    text-match and text-area drop."""
    out = _run_bench(str(REPO / "benchmarks" / "toy_datacomp.py"), "--quick", "--out", str(tmp_path), timeout=900)
    assert "Paired comparisons" in out and "Mechanism, pool 0" in out
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"no filter", "CLIP score 30%", "T-MARS 30%", "T-MARS ∩ CLIP score 30%", "CLIP score 50%",
                         "T-MARS 50%", "T-MARS ∩ CLIP score 50%", "text-match", "text-area (drop all text)"}
    assert all(0.0 < r["acc"]["0"] < 1.0 for r in rows.values())
    for pct in (30, 50):
        sizes = [rows[f"{name} {pct}%"]["size"] for name in ("CLIP score", "T-MARS", "T-MARS ∩ CLIP score")]
        assert max(sizes) - min(sizes) <= 4 and abs(sizes[0] - 3 * pct) <= 2, sizes
    mech = res["mechanism"]["0"]
    for kind in ("match_text", "text_spot"):
        assert mech[kind]["boxes"] >= 0.95 and mech[kind]["masked"] >= 0.9 and mech[kind]["read"] >= 0.9, mech[kind]
    for kind in ("match", "mismatch"):
        assert mech[kind]["boxes"] <= 0.05 and mech[kind]["tm"] <= 0.05, mech[kind]
    for name in ("text-match", "text-area (drop all text)"):
        kept = rows[name]["kept"]
        assert kept["text_spot"] <= 0.02 and kept["match_text"] <= 0.02 and kept["match"] >= 0.95, (name, kept)
    assert rows["T-MARS 50%"]["kept"]["match_text"] >= 0.2
    assert {t["a"] for t in res["tests"]} >= {"T-MARS 30%", "T-MARS 50%"}
