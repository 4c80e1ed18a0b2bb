"""The ICDAR 2015 matching used by benchmarks/detect_accuracy.py, on hand-made cases."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location(
    "detect_accuracy", Path(__file__).resolve().parents[2] / "benchmarks" / "detect_accuracy.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def test_matching_rules():
    gt = [(box(0, 0, 100, 20), True), (box(200, 0, 300, 20), True), (box(400, 0, 500, 20), False)]
    dets = [
        box(0, 0, 100, 20),  # exact match
        box(200, 0, 240, 20),  # IoU 0.4 with the second word: no match
        box(410, 2, 490, 18),  # inside a "###" region: not counted
        box(0, 0, 95, 20),  # a second detection of the first word: one-to-one, unmatched
    ]
    matched, counted_dets, counted_gt = bench.evaluate(dets, gt)
    assert (matched, counted_dets, counted_gt) == (1, 3, 2)
    assert bench.intersection(box(0, 0, 10, 10), box(5, 5, 15, 15)) == 25
    assert bench.area(box(0, 0, 10, 4)) == 40

