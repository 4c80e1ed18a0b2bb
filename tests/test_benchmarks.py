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
def test_gpu_bench_rehearses_on_cpu():
    """benchmarks/gpu_bench.py --tiny: the script a lent GPU machine runs, rehearsed on CPU
    (correctness checks against the CPU path pass, every throughput row is printed)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_bench.py"), "--tiny"], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["clip_vs_cpu"]["fp32"]["ok"]
    assert set(report["detect_samples_per_s"]) == {"craft", "dbnet"}
    assert report["end_to_end"]["dbnet + tiny"]["samples"] == 41
