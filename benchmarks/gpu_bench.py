"""GPU check and throughput table for a lent machine: correctness against the CPU path, then
samples/s of each model and of ``curate score`` end to end. Runs in well under 8 minutes.

    python benchmarks/gpu_bench.py                 # on the GPU machine
    python benchmarks/gpu_bench.py --tiny          # CPU rehearsal: tiny CLIP, few images (tested in CI)

1. **Correctness** on 8 real sample images: CRAFT and DBNet boxes on the device equal the CPU
   boxes (count, one-to-one IoU >= 0.5); CLIP scores on the device in fp32 equal the CPU scores
   within 1e-4 (ViT-B-32 random init; with ``--tiny`` the tiny model), and bf16 within 2e-2.
2. **Throughput**: CRAFT and DBNet at 512 px (``Detect`` stage, batches of ``--batch``),
   CLIP ViT-B-32 and ViT-L-14 in bf16 (model only: preprocessed batches, original + masked in
   one pass), on ``--images`` copies of the sample images.
3. **End to end**: ``curate score`` over ``--copies`` copies of the sample shards, DBNet +
   ViT-B-32 and CRAFT + ViT-B-32 (random init: throughput does not depend on the weights).

DBNet runs on onnxruntime's CUDA provider only when ``onnxruntime-gpu`` is installed; the table
says which provider ran. Prints one JSON line at the end with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
SHARDS = sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))


def sample_images() -> tuple[list[np.ndarray], list[str]]:
    from curate.io.samples import sample_to_record
    from curate.io.shards import read_shard
    from curate.stages.decode import DecodeError, decode_image

    images, captions = [], []
    for s in SHARDS:
        for sample in read_shard(str(s)).samples:
            rec = sample_to_record(sample)
            if rec["status"] != "ok":
                continue
            try:
                images.append(decode_image(rec["image_bytes"]))
                captions.append(rec["text"])
            except DecodeError:
                continue
    return images, captions


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_detectors(images, device: str, long_side: int) -> dict:
    from detect_accuracy import evaluate

    from curate.stages.detect import DETECTORS

    out = {}
    for name, cls in DETECTORS.items():
        if name == "none":  # no model to measure
            continue
        cpu = cls(long_side=long_side, device="cpu")(images)
        dev_det = cls(long_side=long_side, device=device)
        dev = dev_det(images)
        same = sum(len(a) == len(b) and (len(a) == 0 or evaluate(list(a), [(x, True) for x in b])[0] == len(a))
                   for a, b in zip(cpu, dev))
        provider = getattr(dev_det, "session", None)
        out[name] = {"same_boxes": same, "of": len(images),
                     "provider": provider.get_providers()[0] if provider else device}
    return out


def check_clip(images, captions, device: str, model: str) -> dict:
    from curate.stages.score import Score

    ref = Score(model, None, precision="fp32", device="cpu")
    c_ref, _ = ref.score(images, images, captions, np.zeros(len(images), bool))
    out = {}
    for precision, tol in (("fp32", 1e-4), ("bf16", 2e-2)):
        if device == "cpu" and precision == "bf16":
            continue
        s = Score(model, None, precision=precision, device=device)
        c, _ = s.score(images, images, captions, np.zeros(len(images), bool))
        diff = float(np.abs(c - c_ref).max())
        out[precision] = {"max_diff": diff, "tolerance": tol, "ok": diff <= tol}
    return out


def detector_throughput(images, device: str, long_side: int, batch: int) -> dict:
    from curate.stages.detect import DETECTORS

    out = {}
    for name, cls in DETECTORS.items():
        if name == "none":  # no model to measure
            continue
        det = cls(long_side=long_side, device=device)
        det(images[:batch])  # warm-up (cuDNN autotune, ORT graph)
        _sync(device)
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            det(images[start:start + batch])
        _sync(device)
        out[name] = len(images) / (time.perf_counter() - t0)
    return out


def clip_throughput(images, device: str, models: list[str], batch: int) -> dict:
    import torch
    from PIL import Image

    from curate.stages.score import Score

    out = {}
    for model in models:
        s = Score(model, None, precision="bf16" if device.startswith("cuda") else "fp32", device=device)
        x = torch.stack([s.preprocess(Image.fromarray(im)) for im in images[:batch]]).to(device)
        x2 = torch.cat([x, x])  # original + masked in one pass, as the Score stage does
        if device.startswith("cuda"):
            x2 = x2.contiguous(memory_format=torch.channels_last)
        reps = max(1, len(images) // batch)
        with torch.inference_mode(), s._autocast():
            s.model.encode_image(x2)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                s.model.encode_image(x2)
            _sync(device)
        out[model] = reps * batch / (time.perf_counter() - t0)
    return out


def end_to_end(copies: int, device: str, clip_model: str, detectors: list[str], tmp: Path, num_cpus: int) -> dict:
    import ray

    from curate.scoring import run_score
    from curate.scoring.config import load_config

    pool = tmp / "pool"
    pool.mkdir(exist_ok=True)
    shards = []
    for c in range(copies):
        for s in SHARDS:
            dst = pool / f"pool-{c:04d}-{s.name}"
            if not dst.exists():
                shutil.copyfile(s, dst)
            shards.append(str(dst))
    gpu = device.startswith("cuda")
    out = {}
    for det in detectors:
        # On a GPU: the GPU preset, its resources sized to the machine by curate itself (auto).
        cfg = load_config(REPO / "pipelines" / ("tmars_gpu.yaml" if gpu else "tiny_cpu.yaml"))
        cfg.detect.detector = det
        cfg.score.clip_model, cfg.score.pretrained = clip_model, None
        t0 = time.perf_counter()
        summary = run_score(shards, tmp / f"index-{det}", cfg, num_cpus=num_cpus, progress=False)
        secs = time.perf_counter() - t0
        out[f"{det} + {clip_model}"] = {"samples": summary.num_samples, "seconds": secs,
                                        "samples_per_s": summary.num_samples / secs}
        ray.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: tiny CLIP, few images, 1 shard copy")
    p.add_argument("--images", type=int, default=2048, help="images per throughput measurement")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--copies", type=int, default=123,
                   help="copies of the 3 sample shards for end to end (123: 5,043 samples)")
    p.add_argument("--out", type=Path, help="also write the report as OUT/gpu_bench.json")
    p.add_argument("--no-end-to-end", action="store_true",
                   help="skip `curate score` end to end (the CPU rehearsal in CI: other tests run it on CPU)")
    p.add_argument("--long-side", type=int, default=512)
    args = p.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.images, args.batch, args.copies = 4, 4, 1
    models = ["tiny"] if args.tiny else ["ViT-B-32", "ViT-L-14"]
    images, captions = sample_images()
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    t_start = time.perf_counter()
    report["detectors_vs_cpu"] = check_detectors(images[: 2 if args.tiny else 8], device, args.long_side)
    report["clip_vs_cpu"] = check_clip(images[:8], captions[:8], device, models[0])
    pool = [images[i % len(images)] for i in range(args.images)]
    report["detect_samples_per_s"] = detector_throughput(pool, device, args.long_side, args.batch)
    report["clip_samples_per_s"] = clip_throughput(pool, device, models, args.batch * (4 if device == "cuda" else 1))
    import importlib.util

    if args.no_end_to_end:
        report["end_to_end"] = {}
        report["end_to_end_skipped"] = "--no-end-to-end"
    elif importlib.util.find_spec("ray") is None:  # the machine's image lacks Ray and no payload brought it
        report["end_to_end"] = {}
        report["end_to_end_skipped"] = "ray is not installed"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            detectors = ["dbnet"] if args.tiny else ["dbnet", "craft"]
            report["end_to_end"] = end_to_end(args.copies, device, models[0], detectors, Path(tmp),
                                              num_cpus=os.cpu_count() if device == "cuda" else 2)
    report["seconds"] = time.perf_counter() - t_start

    print(f"\ndevice: {report['device']}")
    print("correctness against the CPU path:")
    for name, r in report["detectors_vs_cpu"].items():
        print(f"  {name:<8} same boxes on {r['same_boxes']} of {r['of']} images (provider {r['provider']})")
    for prec, r in report["clip_vs_cpu"].items():
        print(f"  CLIP {prec}: max |score diff| {r['max_diff']:.2e} (tolerance {r['tolerance']:g}) "
              f"{'OK' if r['ok'] else 'FAIL'}")
    print(f"\n{'what':<40}{'samples/s':>12}")
    for name, v in report["detect_samples_per_s"].items():
        print(f"{'detect ' + name + f' {args.long_side} px':<40}{v:>12.1f}")
    for name, v in report["clip_samples_per_s"].items():
        print(f"{'CLIP ' + name + (' bf16' if device == 'cuda' else ' fp32') + ' (orig + masked)':<40}{v:>12.1f}")
    for name, r in report["end_to_end"].items():
        print(f"{'curate score ' + name:<40}{r['samples_per_s']:>12.1f}")
    if report.get("end_to_end_skipped"):
        print(f"curate score end to end: skipped, {report['end_to_end_skipped']}")
    print(f"total {report['seconds']:.0f} s")
    print(json.dumps(report))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=1))
    ok = all(r["ok"] for r in report["clip_vs_cpu"].values()) and all(
        r["same_boxes"] == r["of"] for r in report["detectors_vs_cpu"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
