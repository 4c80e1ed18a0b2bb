"""Text recognition (``curate score --ocr``) on real text: the ICDAR 2015 words of the sample shards."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from curate.io.shards import read_shard
from curate.stages.recognize import PAIRED, RECOGNIZERS, crop_quad, recognizer_for
from tests.conftest import DATA, SHARDS


@pytest.fixture(scope="module")
def icdar_words() -> list[tuple[np.ndarray, str]]:
    """``(crop, transcription)`` of every legible ground-truth word of the 10 ICDAR 2015 images in
    ``sample-000001`` (``###`` regions left out), cut out along its ground-truth quadrilateral."""
    out = []
    for sample in read_shard(str(SHARDS[1])).samples:
        name = json.loads(sample["json"])["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
        for line in (DATA / "icdar2015_gt" / f"gt_{name}.txt").read_text(encoding="utf-8-sig").splitlines():
            parts = line.split(",", 8)
            if parts[8] != "###":
                out.append((crop_quad(image, np.asarray(parts[:8], np.float32).reshape(4, 2)), parts[8]))
    assert len(out) == 21
    return out


def test_crop_quad_straightens_a_rotated_box():
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:50, 20:80] = 255  # a white bar 60 x 10
    # The bar's corners, clockwise from top-left: upright crop 60 wide, 10 high, all white.
    crop = crop_quad(image, np.array([[20, 40], [80, 40], [80, 50], [20, 50]], np.float32))
    assert crop.shape == (10, 60, 3) and crop.min() == 255
    # A box taller than wide (vertical text) is turned to lie flat.
    assert crop_quad(image, np.array([[0, 0], [10, 0], [10, 40], [0, 40]], np.float32)).shape == (10, 40, 3)


@pytest.mark.parametrize("name, at_least", [("ppocr", 11), ("easyocr", 2)])
def test_recognizers_read_the_icdar_words(icdar_words, name, at_least):
    """Measured here: PP-OCRv4 reads 12 of the 21 words exactly (case aside), EasyOCR's
    english_g2 2 (benchmarks/RESULTS.md); a confidence in [0, 1] for every crop."""
    read = RECOGNIZERS[name]()([c for c, _ in icdar_words])
    assert len(read) == len(icdar_words)
    assert all(isinstance(t, str) and 0.0 <= c <= 1.0 for t, c in read)
    exact = sum(t.strip().lower() == w.lower() for (t, _), (_, w) in zip(read, icdar_words))
    assert exact >= at_least, [(w, t) for (t, _), (_, w) in zip(read, icdar_words)]


def test_each_detector_has_its_recognizer_and_none_has_none():
    assert PAIRED == {"craft": "easyocr", "dbnet": "ppocr"}
    assert type(recognizer_for("dbnet")).__name__ == "PPOCRRecognizer"
    with pytest.raises(ValueError, match="needs a text detector"):
        recognizer_for("none")
    with pytest.raises(ValueError, match="unknown recognizer"):
        recognizer_for("dbnet", "tesseract")
