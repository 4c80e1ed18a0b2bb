"""The model stages on a GPU give what they give on the CPU (run where CUDA is visible: the tests
marked ``gpu`` are skipped elsewhere; ``benchmarks/gpu_check.sh`` runs them on the device)."""

from __future__ import annotations

import numpy as np
import pytest

from curate.stages.decode import decode_image
from curate.stages.detect import CraftDetector
from curate.stages.score import Score

pytestmark = pytest.mark.gpu

KEYS = ["icdar2015_toy/img_1.jpg", "photos/389_535.jpg", "text_images/example3.png", "dj_images/img2.jpg"]


@pytest.fixture(scope="module")
def images(sources):
    return [decode_image(sources[k]["image"]) for k in KEYS], [sources[k]["caption"] or "" for k in KEYS]


def test_craft_boxes_on_cuda_match_cpu(images):
    imgs, _ = images
    cpu = CraftDetector(long_side=512, device="cpu")(imgs)
    gpu = CraftDetector(long_side=512, device="cuda")(imgs)
    for image, a, b in zip(imgs, cpu, gpu):
        assert len(a) == len(b)  # the same text regions are found
        if len(a):  # corners within 2 pixels of the 512-pixel detector input (cuDNN vs CPU convolutions)
            np.testing.assert_allclose(np.sort(a.reshape(len(a), -1), axis=0), np.sort(b.reshape(len(b), -1), axis=0),
                                       atol=2.0 * max(image.shape[:2]) / 512)


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_clip_scores_on_cuda_match_cpu(images, precision, atol):
    imgs, captions = images
    has_text = np.array([True, False, True, False])
    cpu = Score(clip_model="tiny", pretrained=None, device="cpu", precision="fp32")
    gpu = Score(clip_model="tiny", pretrained=None, device="cuda", precision=precision)
    for a, b in zip(cpu.score(imgs, imgs, captions, has_text), gpu.score(imgs, imgs, captions, has_text)):
        np.testing.assert_allclose(a, b, atol=atol)
