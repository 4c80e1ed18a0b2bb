"""Scoring throughput: ``curate score`` against a naive, hand-written T-MARS loop, side by side.

The pool: ``--copies`` copies of the three sample shards (41 real samples each copy; 5 copies =
205 samples). Both sides use the same images, the same open_clip model (``tiny``, seeded random
init, as ``pipelines/tiny_cpu.yaml``), the same detector input size and the same torch threads.

- **baseline**, written the way a user scripts T-MARS by hand: for each sample, decode with PIL,
  ``easyocr.Reader.detect(image, canvas_size=L, mag_ratio=1, add_margin=0)`` (its boxes and free
  polygons), fill the boxes with the mean colour around them (``curate.stages.mask.mask_text``,
  so the fill is not what differs), ``model.encode_image`` on the image and on the masked image,
  ``model.encode_text`` on the caption.
- **curate score** (``pipelines/tiny_cpu.yaml``, a fresh local Ray cluster, its start-up
  included), once with CRAFT and once with DBNet at the same input size.

Agreement with the baseline: ``clip_score`` (the unmasked image: same decode, same model) must
agree within 1e-4; boxes are matched one-to-one at IoU >= 0.5 (``detect_accuracy.evaluate``, the ICDAR matching), and
the masked score is compared on the images whose boxes all match.

    .venv/bin/python benchmarks/score_bench.py                  # 205 samples, 2 threads, CPU
    .venv/bin/python benchmarks/score_bench.py --copies 1 --skip-dbnet

Per-stage times come from running curate's stages in one process over the same pool; decode is
timed in full and with reduced-size JPEG decoding (``decode.draft``, the default).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))


def build_pool(folder: Path, copies: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(copies):
        for s in SHARDS:
            dst = folder / f"pool-{c:02d}-{s.name}"
            shutil.copyfile(s, dst)
            out.append(dst)
    return out


def pool_samples(shards: list[Path]) -> list[dict]:
    from curate.io.samples import sample_to_record
    from curate.io.shards import read_shard

    return [sample_to_record(s) for p in shards for s in read_shard(str(p)).samples]


def run_curate(shards: list[Path], out: Path, detector: str, threads: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "curate.cli", "score", *map(str, shards), "--out", str(out), "--config",
           str(REPO / "pipelines" / "tiny_cpu.yaml"), "--num-cpus", str(threads), "--detector", detector,
           "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    wall = time.perf_counter() - t0
    if proc.returncode not in (0,):
        raise SystemExit(f"curate score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    from curate.io.index import read_index

    table = read_index(out).to_pylist()
    return wall, {(r["shard"].rsplit("/", 1)[-1], r["key"]): r for r in table}


def run_baseline(records: list[dict], long_side: int, threads: int) -> tuple[float, dict]:
    import easyocr
    import easyocr_en_models
    import torch
    from PIL import Image

    from curate.models import create_clip, resolve_pretrained
    from curate.stages.mask import mask_text, polygons_to_pixels

    torch.set_num_threads(threads)
    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                            download_enabled=False, recognizer=False, verbose=False, quantize=False)
    model, preprocess, tokenizer = create_clip("tiny", resolve_pretrained("tiny", None))
    out = {}
    t0 = time.perf_counter()
    for rec in records:
        if rec["status"] != "ok":
            continue
        try:
            image = np.asarray(Image.open(io.BytesIO(rec["image_bytes"])).convert("RGB"))
        except Exception:
            continue
        h, w = image.shape[:2]
        horizontal, free = reader.detect(image, canvas_size=long_side, mag_ratio=1.0, add_margin=0.0)
        polys = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
                 for x0, x1, y0, y1 in horizontal[0]] + [np.asarray(p, dtype=np.float64) for p in free[0]]
        masked = image
        if polys:
            norm = [(p / [w, h]).reshape(-1) for p in polys]
            masked, _ = mask_text(image, polygons_to_pixels(norm, w, h), method="mean")
        with torch.no_grad():
            a = model.encode_image(preprocess(Image.fromarray(image))[None])
            b = model.encode_image(preprocess(Image.fromarray(masked))[None])
            t = model.encode_text(tokenizer([rec["text"]]))
        a, b, t = (torch.nn.functional.normalize(x, dim=-1) for x in (a, b, t))
        out[(rec["shard"].rsplit("/", 1)[-1], rec["key"])] = {
            "clip_score": float((a * t).sum()), "masked_clip_score": float((b * t).sum()),
            "polys": [p.tolist() for p in polys], "width": w, "height": h}
    return time.perf_counter() - t0, out


def compare(curate_rows: dict, base_rows: dict) -> dict:
    from detect_accuracy import evaluate

    clip_diff, masked_diff, same_boxes, n = [], [], 0, 0
    for key, b in base_rows.items():
        c = curate_rows.get(key)
        if c is None or c["status"] != "ok":
            continue
        n += 1
        clip_diff.append(abs(c["clip_score"] - b["clip_score"]))
        ours = [np.asarray(p).reshape(-1, 2) * [b["width"], b["height"]] for p in (c["text_boxes"] or [])]
        theirs = [np.asarray(p) for p in b["polys"]]
        matched = evaluate(ours, [(t, True) for t in theirs])[0] if ours and theirs else 0
        if matched == len(ours) == len(theirs):
            same_boxes += 1
            masked_diff.append(abs(c["masked_clip_score"] - b["masked_clip_score"]))
    return {"samples": n, "clip_max_diff": max(clip_diff, default=float("nan")),
            "clip_within_1e-4": int(sum(d <= 1e-4 for d in clip_diff)),
            "same_boxes": same_boxes, "masked_max_diff_same_boxes": max(masked_diff, default=float("nan"))}


def stage_times(records: list[dict], long_side: int, threads: int) -> dict[str, float]:
    """Seconds per stage in one process (batches of 16) over the pool: what each stage costs."""
    import torch

    from curate.stages.decode import Decode
    from curate.stages.detect import Detect
    from curate.stages.mask import Mask
    from curate.stages.score import Score

    torch.set_num_threads(threads)
    stages = {"decode (full)": Decode(), "decode": Decode(min_side=64, min_long_side=2 * long_side),
              "detect (craft)": Detect("craft", long_side=long_side),
              "detect (dbnet)": Detect("dbnet", long_side=long_side), "mask": Mask(),
              "score (tiny CLIP)": Score("tiny", None, batch_size=16)}
    times = dict.fromkeys(stages, 0.0)
    cols = ("uid", "key", "shard", "text", "image_bytes", "status", "error")
    for start in range(0, len(records), 16):
        chunk = records[start:start + 16]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in cols}
        for name, stage in stages.items():
            if name in ("detect (dbnet)", "decode (full)"):  # timed side by side, output not used
                t0 = time.perf_counter()
                stage({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in batch.items()})
                times[name] += time.perf_counter() - t0
                continue
            t0 = time.perf_counter()
            batch = stage(batch)
            times[name] += time.perf_counter() - t0
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=5, help="copies of the 3 sample shards (41 samples each)")
    p.add_argument("--long-side", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-dbnet", action="store_true")
    p.add_argument("--skip-stages", action="store_true")
    p.add_argument("--stages-only", action="store_true", help="only the per-stage times")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = build_pool(tmp / "pool", args.copies)
        records = pool_samples(shards)
        print(f"pool: {len(shards)} shards, {len(records)} samples; tiny CLIP, detector input {args.long_side} px, "
              f"{args.threads} threads", flush=True)
        if args.stages_only:
            for name, secs in stage_times(records, args.long_side, args.threads).items():
                print(f"  {name:<22}{secs:>8.1f} s  {len(records) / secs:>8.1f} samples/s")
            return
        rows = []
        base_s, base = run_baseline(records, args.long_side, args.threads)
        rows.append(("naive loop (Reader.detect + 2x encode_image)", base_s))
        craft_s, craft = run_curate(shards, tmp / "idx-craft", "craft", args.threads)
        rows.append(("curate score --detector craft", craft_s))
        agreement = compare(craft, base)
        if not args.skip_dbnet:
            dbnet_s, _ = run_curate(shards, tmp / "idx-dbnet", "dbnet", args.threads)
            rows.append(("curate score --detector dbnet", dbnet_s))
        n = len(records)
        print(f"\n{'run':<48}{'seconds':>10}{'samples/s':>12}{'vs naive':>10}")
        for name, secs in rows:
            print(f"{name:<48}{secs:>10.1f}{n / secs:>12.2f}{base_s / secs:>10.2f}x")
        print(f"\nagreement, curate (craft) vs naive, {agreement['samples']} samples scored by both:")
        print(f"  clip_score max |diff|           {agreement['clip_max_diff']:.2e} (goal <= 1e-4); within 1e-4: "
              f"{agreement['clip_within_1e-4']} of {agreement['samples']} (the rest decode differently: the naive "
              f"loop ignores EXIF orientation and composites transparency on black)")
        print(f"  images with the same boxes      {agreement['same_boxes']} of {agreement['samples']} "
              f"(one-to-one at IoU >= 0.5)")
        print(f"  masked_clip_score max |diff| on those {agreement['masked_max_diff_same_boxes']:.2e}")
        if not args.skip_stages:
            times = stage_times(records, args.long_side, args.threads)
            print(f"\nper stage, one process, batches of 16 ({n} samples):")
            for name, secs in times.items():
                print(f"  {name:<22}{secs:>8.1f} s  {n / secs:>8.1f} samples/s")
        print(json.dumps({"rows": rows, "agreement": agreement}))


if __name__ == "__main__":
    main()
