#!/usr/bin/env python
"""Text-detection accuracy on ICDAR 2015 (the 10-image toy split): precision, recall, H-mean.

    python benchmarks/detect_accuracy.py [--detectors craft dbnet] [--sizes 512 768 1280] [--data tests/data]

Protocol (ICDAR 2015 incidental text, Karatzas et al. 2015, task 4.1 "IoU" evaluation): a
detection matches a ground-truth region when their polygon IoU is at least 0.5, one-to-one
(greedy by IoU); ground-truth regions transcribed ``###`` are "don't care": they are not counted,
and a detection lying mostly (over half its area) inside one is not counted either. Polygon areas
and intersections are computed exactly with ``cv2.intersectConvexConvex`` on each quadrilateral's
convex hull. For masking, recall matters most (text left unmasked is text CLIP can still read).

The images are read from the bundled sample shard (``sample-000001.tar``, the 10 ICDAR images),
the ground truth from ``tests/data/icdar2015_gt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate.io.shards import read_shard  # noqa: E402
from curate.stages.decode import decode_image  # noqa: E402
from curate.stages.detect import DETECTORS  # noqa: E402


def load(data: Path):
    """``[(image (H, W, 3) uint8, [(quad (4, 2) float32, care: bool)])]`` for img_1..img_10."""
    import json

    by_source = {}
    for s in read_shard(str(data / "shards" / "sample-000001.tar")).samples:
        by_source[json.loads(s["json"])["source"].rsplit("/", 1)[-1]] = decode_image(s["jpg"])
    out = []
    for i in range(1, 11):
        gt = []
        for line in (data / "icdar2015_gt" / f"gt_img_{i}.txt").read_text(encoding="utf-8-sig").splitlines():
            parts = line.split(",", 8)
            gt.append((np.array(parts[:8], np.float32).reshape(4, 2), parts[8].strip() != "###"))
        out.append((by_source[f"img_{i}.jpg"], gt))
    return out


def _hull(p: np.ndarray) -> np.ndarray:
    return cv2.convexHull(np.asarray(p, np.float32).reshape(-1, 1, 2))


def area(p: np.ndarray) -> float:
    return float(cv2.contourArea(_hull(p)))


def intersection(a: np.ndarray, b: np.ndarray) -> float:
    inter, _ = cv2.intersectConvexConvex(_hull(a), _hull(b))
    return float(inter)


def evaluate(dets: list[np.ndarray], gts: list[tuple[np.ndarray, bool]]) -> tuple[int, int, int]:
    """``(matched, counted detections, counted ground truth)`` for one image."""
    care = [g for g, c in gts if c]
    dont = [g for g, c in gts if not c]
    kept = [d for d in dets if area(d) > 0 and not any(intersection(d, g) / area(d) > 0.5 for g in dont)]
    pairs = []
    for i, d in enumerate(kept):
        for j, g in enumerate(care):
            inter = intersection(d, g)
            union = area(d) + area(g) - inter
            if union > 0 and inter / union >= 0.5:
                pairs.append((inter / union, i, j))
    used_d, used_g, matched = set(), set(), 0
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_d and j not in used_g:
            used_d.add(i)
            used_g.add(j)
            matched += 1
    return matched, len(kept), len(care)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1280])
    ap.add_argument("--detectors", nargs="+", default=["craft", "dbnet"], choices=sorted(DETECTORS))
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data")
    args = ap.parse_args()
    data = load(args.data)
    images = [img for img, _ in data]
    print(f"{'detector':10}{'long side':>10}{'precision':>11}{'recall':>8}{'H-mean':>8}{'s/image':>9}")
    for name, size in [(n, s) for n in args.detectors for s in args.sizes]:
        det = DETECTORS[name](long_side=size)
        t0 = time.perf_counter()
        boxes = [det([img])[0] for img in images]
        per_image = (time.perf_counter() - t0) / len(images)
        m = d = g = 0
        for b, (_, gts) in zip(boxes, data):
            mi, di, gi = evaluate(list(b), gts)
            m, d, g = m + mi, d + di, g + gi
        p = m / d if d else 0.0
        r = m / g if g else 0.0
        h = 2 * p * r / (p + r) if p + r else 0.0
        print(f"{name:10}{size:>10}{p:>11.3f}{r:>8.3f}{h:>8.3f}{per_image:>9.2f}")


if __name__ == "__main__":
    main()
