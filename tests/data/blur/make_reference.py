"""Make the DataComp reference outputs of face blurring (tests/io/test_blur.py).

Runs DataComp's own ``resharder.blur_image`` with img2dataset's ``BoundingBoxBlurrer`` on images
of the sample shards with synthetic face boxes, and writes ``<uid>.webp`` (those up to 64 kB) and
``cases.json`` (boxes, digests of input, output and decoded output pixels) here. It needs DataComp's environment, not curate's: run it with that environment's Python from
DataComp's checkout (``resharder.py`` is imported from the current directory)::

    cd /work/datacomp-ref/datacomp && /work/datacomp-env/bin/python \\
        /work/main/tests/data/blur/make_reference.py /work/main/tests/data/shards /work/main/tests/data/blur

Only the standard library, DataComp's code and its dependencies are used (no curate import).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

# (shard, uid, boxes): synthetic boxes in DataComp's face_bboxes form, [x0, y0, x1, y1] in [0, 1].
CASES = [
    # a photo (456x123), two boxes, one crossing the right edge (clipped to width - 1)
    ("sample-000002.tar", "309da635", [[0.10, 0.05, 0.55, 0.20], [0.80, 0.50, 1.20, 0.70]]),
    # a photo (123x456), one box with a negative corner and one of zero size (diagonal 0)
    ("sample-000002.tar", "e3c4e6ee", [[-0.05, 0.10, 0.30, 0.90], [0.5, 0.5, 0.5, 0.5]]),
    # a photo (208x495), one face-sized box: the largest diagonal sets the kernel
    ("sample-000002.tar", "6def2444", [[0.3, 0.2, 0.7, 0.45]]),
    # a PNG with an opaque alpha channel (300x69, BGRA): blurred as 4 channels; the WebP encoder
    # drops the alpha plane, as every pixel is opaque
    ("sample-000002.tar", "c3d5d790", [[0.0, 0.0, 0.25, 1.0]]),
    # a PNG with transparency (1224x601, BGRA): the WebP keeps a (losslessly coded) alpha plane;
    # its WebP (146 kB) is not stored, only its digests
    ("sample-000002.tar", "7e1ab05d", [[0.0, 0.0, 0.25, 1.0], [0.6, 0.1, 0.8, 0.5]]),
]
MAX_STORED_BYTES = 64_000  # a larger reference WebP is recorded by its digests only


def pixels_sha256(encoded: bytes) -> str:
    """sha256 of an image's decoded pixels (``cv2.IMREAD_UNCHANGED``), shape and dtype included."""
    import cv2
    import numpy as np

    a = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def images_by_uid(tar_path: Path) -> dict[str, tuple[str, bytes]]:
    """``{uid: (ext, image bytes)}`` of a shard's samples (uid from the ``.json``)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            if m.isfile():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    out = {}
    for sample in members.values():
        uid = json.loads(sample["json"])["uid"] if "json" in sample else None
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if uid and ext:
            out[uid] = (ext, sample[ext])
    return out


def main(shards: Path, out: Path) -> None:
    sys.path.insert(0, str(Path.cwd()))  # DataComp's checkout
    import cv2
    from importlib.metadata import version

    import albumentations
    import numpy
    import resharder
    from img2dataset.blurrer import BoundingBoxBlurrer

    blurrer = BoundingBoxBlurrer()
    quality = resharder.parser.get_default("reencode_webp_quality")
    commit = (Path(resharder.__file__).parent / "COMMIT")
    cases = []
    for shard, prefix, boxes in CASES:
        images = images_by_uid(shards / shard)
        (uid,) = [u for u in images if u.startswith(prefix)]
        ext, image = images[uid]
        webp = resharder.blur_image(blurrer, image, boxes, quality)
        stored = len(webp) <= MAX_STORED_BYTES
        if stored:
            (out / f"{uid}.webp").write_bytes(webp)
        cases.append({"shard": shard, "uid": uid, "image_ext": ext, "boxes": boxes,
                      "input_sha256": hashlib.sha256(image).hexdigest(),
                      "output": f"{uid}.webp" if stored else None, "output_bytes": len(webp),
                      "output_sha256": hashlib.sha256(webp).hexdigest(), "output_pixels_sha256": pixels_sha256(webp)})
    made_with = {
        "datacomp_commit": commit.read_text().strip() if commit.exists() else "unknown",
        "function": "resharder.blur_image(img2dataset.blurrer.BoundingBoxBlurrer(), image, boxes, quality)",
        "quality": quality, "python": sys.version.split()[0], "opencv": cv2.__version__,
        "img2dataset": version("img2dataset"), "albumentations": albumentations.__version__,
        "numpy": numpy.__version__,
        "opencv_codecs": [line.strip() for line in cv2.getBuildInformation().splitlines()
                          if line.strip().startswith(("JPEG:", "WEBP:", "PNG:"))],
    }
    (out / "cases.json").write_text(json.dumps({"made_with": made_with, "cases": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
