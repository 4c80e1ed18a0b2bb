"""CLIP scoring with open_clip (the random-init `tiny` config stands in for pretrained CLIP)."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from curate import schema as S
from curate.models import PretrainedNotAvailable, register_configs, resolve_pretrained
from curate.stages.common import object_array
from curate.stages.decode import decode_image
from curate.stages.mask import mask_text
from curate.stages.score import Score

KEYS = ["icdar2015_toy/img_1.jpg", "photos/389_535.jpg", "flickr30k_snli/4945942737.jpg", "dj_images/img2.jpg",
        "text_images/example3.png"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny open_clip checkpoint on disk, in open_clip's format (state_dict under 'state_dict')."""
    register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def scorer(checkpoint):
    return Score(clip_model="tiny", pretrained=checkpoint, batch_size=4)


@pytest.fixture(scope="module")
def data(sources):
    images = [decode_image(sources[k]["image"]) for k in KEYS]
    captions = [sources[k]["caption"] for k in KEYS]
    return images, captions


def direct_scores(checkpoint, image, masked, caption):
    """One sample, computed with open_clip directly (no curate code)."""
    model, _, preprocess = open_clip.create_model_and_transforms("tiny", pretrained=checkpoint)
    model.eval()
    tok = open_clip.get_tokenizer("tiny")
    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(image)), preprocess(Image.fromarray(masked))])
        im = F.normalize(model.encode_image(x), dim=-1)
        tx = F.normalize(model.encode_text(tok([caption])), dim=-1)
    return (im @ tx.T)[:, 0].numpy()


def test_batched_scores_equal_one_by_one_open_clip(scorer, checkpoint, data):
    images, captions = data
    masked = []
    for img in images:
        h, w = img.shape[:2]
        poly = np.array([[w // 4, h // 4], [w // 2, h // 4], [w // 2, h // 2], [w // 4, h // 2]], np.int32)
        masked.append(mask_text(img, [poly])[0])
    has_text = np.array([True, True, False, True, True])
    masked = [m if t else i for m, i, t in zip(masked, images, has_text)]
    clip, mclip = scorer.score(images, masked, captions, has_text)
    assert clip.dtype == np.float32 and clip.shape == (5,)
    for i in range(5):
        ref = direct_scores(checkpoint, images[i], masked[i], captions[i])
        assert clip[i] == pytest.approx(ref[0], abs=1e-5)
        assert mclip[i] == pytest.approx(ref[1], abs=1e-5)
    assert mclip[2] == clip[2]  # no text: the masked image is the original
    assert mclip[0] != clip[0]


def test_score_stage_rows(scorer, data):
    images, captions = data
    n = len(images) + 1
    batch = {
        "image": object_array(images + [np.zeros((0, 0, 3), np.uint8)]),
        "masked_image": object_array(images + [np.zeros((0, 0, 3), np.uint8)]),
        S.TEXT: np.array(captions + [None], dtype=object),
        S.NUM_TEXT_BOXES: np.array([0] * (n - 1) + [-1], dtype=np.int32),
        S.STATUS: np.array(["ok"] * (n - 1) + ["decode_error"], dtype=object),
        S.ERROR: np.array([None] * n, dtype=object),
    }
    out = scorer(batch)
    assert np.isfinite(out[S.CLIP_SCORE][:-1]).all() and np.isnan(out[S.CLIP_SCORE][-1])
    np.testing.assert_array_equal(out[S.CLIP_SCORE][:-1], out[S.MASKED_CLIP_SCORE][:-1])
    assert (np.abs(out[S.CLIP_SCORE][:-1]) <= 1.0001).all()


def test_random_init_is_labelled():
    w = resolve_pretrained("tiny", None)
    assert not w.is_pretrained and "random init" in w.describe()
    assert resolve_pretrained("tiny", "none").path is None


def test_pretrained_tag_not_cached_fails_fast_with_offline_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model, tag in [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-L-14", "openai")]:
        with pytest.raises(PretrainedNotAvailable) as e:
            resolve_pretrained(model, tag, cache_dir=str(tmp_path))
        msg = str(e.value)
        assert "--pretrained /path/to" in msg and model in msg and tag in msg


def test_unknown_model_tag_or_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        resolve_pretrained("ViT-Nope", None)
    with pytest.raises(ValueError, match="known tags"):
        resolve_pretrained("ViT-B-32", "no_such_tag")
    with pytest.raises(PretrainedNotAvailable, match="not found"):
        resolve_pretrained("tiny", str(tmp_path / "missing.pt"))


def test_local_checkpoint_path(checkpoint):
    w = resolve_pretrained("tiny", checkpoint)
    assert w.is_pretrained and w.path == checkpoint


def test_random_init_is_reproducible(data):
    images, captions = data
    a = Score(clip_model="tiny", pretrained=None).score(images[:2], images[:2], captions[:2], np.zeros(2, bool))
    b = Score(clip_model="tiny", pretrained=None).score(images[:2], images[:2], captions[:2], np.zeros(2, bool))
    np.testing.assert_array_equal(a[0], b[0])


def test_one_bad_sample_fails_alone(scorer, data):
    images, captions = data
    bad = np.zeros((0, 5, 3), np.uint8)  # cannot be resized: the whole batch raises, then row by row
    imgs = images[:2] + [bad] + images[2:4]
    batch = {
        "image": object_array(imgs),
        "masked_image": object_array(imgs),
        S.TEXT: np.array(captions[:2] + ["x"] + captions[2:4], dtype=object),
        S.NUM_TEXT_BOXES: np.zeros(5, np.int32),
        S.STATUS: np.array(["ok"] * 5, dtype=object),
        S.ERROR: np.array([""] * 5, dtype=object),
    }
    out = scorer(batch)
    assert list(out[S.STATUS]) == ["ok", "ok", "score_error", "ok", "ok"]
    assert out[S.ERROR][2] and np.isnan(out[S.CLIP_SCORE][2])
    assert np.isfinite(np.delete(out[S.CLIP_SCORE], 2)).all()


def test_an_image_over_the_limits_is_a_score_error_not_a_resize(scorer, data):
    """Decode refuses such images; should one reach the score stage all the same (a 2 x 300
    strip: aspect ratio 150), the guard raises before open_clip's resize, and the row alone
    gets ``score_error`` naming its shape."""
    images, captions = data
    strip = np.full((2, 300, 3), 128, np.uint8)
    imgs = images[:2] + [strip] + images[2:3]
    batch = {
        "image": object_array(imgs),
        "masked_image": object_array(imgs),
        S.TEXT: np.array(captions[:2] + ["a strip"] + captions[2:3], dtype=object),
        S.NUM_TEXT_BOXES: np.zeros(4, np.int32),
        S.STATUS: np.array(["ok"] * 4, dtype=object),
        S.ERROR: np.array([""] * 4, dtype=object),
    }
    out = scorer(batch)
    assert list(out[S.STATUS]) == ["ok", "ok", S.STATUS_SCORE_ERROR, "ok"]
    assert "300x2 pixels: aspect ratio 150:1 over limits.max_aspect_ratio 100" in out[S.ERROR][2]
    with pytest.raises(ValueError, match="too large for CLIP's resize"):
        scorer.image_input(strip)


def test_captions_go_through_the_bounded_tokenizer(scorer, checkpoint, data):
    """An 8,192-letter caption without a space is scored as its bounded text
    (``tokenizer_text``); an ordinary caption's text embedding is open_clip's own."""
    import random
    import string

    from curate.models import BoundedTokenizer, tokenizer_text

    assert isinstance(scorer.tokenizer, BoundedTokenizer)
    images, captions = data
    rng = random.Random(0)
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(8192))
    model, _, _ = open_clip.create_model_and_transforms("tiny", pretrained=checkpoint)
    model.eval()
    tok = open_clip.get_tokenizer("tiny")
    _, ours = scorer.embed([], [captions[0], letters])
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok([captions[0], tokenizer_text(letters)])), dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
