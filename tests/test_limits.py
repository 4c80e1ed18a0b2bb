"""What one caption may cost CLIP's tokenizer (``curate.models.tokenizer_text``,
``BoundedTokenizer``), and the limits handed to the score plan's decode and score stages
(``curate.limits``)."""

from __future__ import annotations

import json
import random
import re
import string
import time
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from curate.limits import DEFAULT_LIMITS, PILLOW_MAX_PIXELS, Limits
from curate.models import TOKENIZER_CACHE_WORDS, BoundedTokenizer, get_tokenizer, register_configs, tokenizer_text
from tests.conftest import DATA, REPO, load_sources

SHARED = Path("/work/shared/data")
MODELS = ["tiny", "ViT-B-32"]  # tokenizers need no weights


def real_captions() -> list[str]:
    """Real captions: LAION alt-texts (``captions/laion_sample_1000.parquet``, here and in the
    shared data), Flickr30k's human captions (markup stripped) and SNLI-VE's sentences, and the
    captions of the bundled sample shards."""
    caps: list[str] = []
    for path in (SHARED / "captions" / "laion_sample_1000.parquet", DATA / "captions" / "laion_sample_1000.parquet"):
        if path.is_file():
            caps += [t for t in pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    flickr = SHARED / "flickr30k_snli"
    for path in sorted(flickr.glob("*.sentences.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            caps.append(" ".join(re.sub(r"\[/EN#\d+/\S+ ([^\]]*)\]", r"\1", line).split()))
    if (flickr / "snli_ve_pairs.jsonl").is_file():
        for line in (flickr / "snli_ve_pairs.jsonl").read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)
            caps += [pair.get("sentence1") or "", pair.get("sentence2") or ""]
    caps += [v["caption"] for v in load_sources().values() if v["caption"]]
    return [c for c in caps if c]


@pytest.fixture(scope="module")
def captions() -> list[str]:
    caps = real_captions()
    assert len(caps) > 1000
    rng = random.Random(0)
    # long multi-sentence captions, far over 77 tokens (and over 76 words)
    long = [". ".join(rng.sample(caps, 20)) for _ in range(200)]
    assert sum(len(c.split()) > 76 for c in long) > 150
    return caps + long


@pytest.mark.parametrize("model", MODELS)
def test_ordinary_captions_give_open_clips_own_tokens(model, captions):
    register_configs()
    ours, theirs = get_tokenizer(model), open_clip.get_tokenizer(model)
    assert isinstance(ours, BoundedTokenizer)
    for start in range(0, len(captions), 256):
        batch = captions[start:start + 256]
        assert torch.equal(ours(batch), theirs(batch)), start
    assert torch.equal(ours(captions[0]), theirs(captions[0]))  # one string, as open_clip takes it


def test_words_that_make_no_token_are_not_counted():
    """``&nbsp;`` is unescaped to a space by the tokenizer: 40 of them among the first 76 words
    must not push real words out of the 77 tokens."""
    text = " ".join(["word &nbsp;"] * 40 + [f"w{i}" for i in range(60)])
    assert len(text.split()) > 76
    ours, theirs = get_tokenizer("ViT-B-32"), open_clip.get_tokenizer("ViT-B-32")
    assert torch.equal(ours([text]), theirs([text]))


def test_tokenizer_text_cuts_and_splits():
    limits = DEFAULT_LIMITS
    ordinary = "A red double-decker bus on a street in London, 2019."
    assert tokenizer_text(ordinary) == ordinary
    words = " ".join(f"w{i}" for i in range(100))
    assert tokenizer_text(words).split() == [f"w{i}" for i in range(76)]
    letters = "x" * 8192
    out = tokenizer_text(letters)
    assert out.replace(" ", "") == "x" * limits.max_tokenize_chars
    assert max(len(w) for w in out.split()) == limits.max_word_chars
    bangs = tokenizer_text("!" * 8192)
    assert max(len(w) for w in bangs.split()) == limits.max_word_chars
    # a piece is a run of letters or of symbols: digits and mixed runs are left alone
    assert tokenizer_text("ab1" * 100) == "ab1" * 100
    small = Limits(max_tokenize_chars=100, max_word_chars=16)
    assert tokenizer_text("y" * 50, small) == " ".join(["y" * 16] * 3 + ["yy"])


def _time(tokenizer: BoundedTokenizer, text: str) -> float:
    """Seconds to tokenize ``text`` alone with an empty word cache (best of 3)."""
    best = float("inf")
    for _ in range(3):
        cache = tokenizer.tokenizer.cache
        special = {k: v for k, v in cache.items() if k.startswith("<")}
        cache.clear()
        cache.update(special)
        t0 = time.perf_counter()
        tokenizer([text])
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("model", MODELS)
def test_a_caption_without_spaces_costs_about_an_ordinary_one(model, captions):
    """open_clip's BPE costs the square of a piece's length (8,192 random letters: 14 s for
    ViT-B-32's tokenizer, about 3,500 times a 77-word caption); bounded, such a caption costs at
    most a few dozen ordinary 77-word captions (35x measured, random letters being the worst)."""
    tok = get_tokenizer(model)
    rng = random.Random(1)
    ordinary = [" ".join(c.split()[:77]) for c in captions if len(c.split()) > 76][:5]
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(8192))
    symbols = "".join(rng.choice("!#$%&()*+,-./:;<=>?@[]^_{|}~") for _ in range(8192))
    for text in (letters, "!" * 8192, symbols, "\u00e9" * 8192):
        ratios = []
        for _ in range(3):  # each round times both back to back; the best round counts (a busy machine)
            base = sorted(_time(tok, c) for c in ordinary)[2]  # median of 5
            ratios.append(_time(tok, text) / base)
        assert min(ratios) < 50, (text[:20], ratios)
    # and the tokens of a bounded caption are those of the bounded text
    theirs = open_clip.get_tokenizer(model)
    assert torch.equal(tok([letters]), theirs([tokenizer_text(letters)]))


def test_the_word_cache_stays_bounded():
    tok = get_tokenizer("tiny")
    rng = random.Random(2)
    sizes = []
    for start in range(0, 10_000, 50):  # 10,000 distinct long words, 50 per caption
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(24)) + str(start + i) for i in range(50)]
        tok([" ".join(words)])
        sizes.append(len(tok.tokenizer.cache))
    assert max(sizes) <= TOKENIZER_CACHE_WORDS
    assert "<start_of_text>" in tok.tokenizer.cache  # reset to its special tokens, not emptied
    assert torch.equal(tok(["a photo of a cat"]), open_clip.get_tokenizer("tiny")(["a photo of a cat"]))


def test_the_bounded_tokenizer_pickles():
    """DataLoader workers may receive the training tokenizer pickled."""
    import pickle

    tok = get_tokenizer("tiny")
    copy = pickle.loads(pickle.dumps(tok))
    assert torch.equal(copy(["a photo of a cat", "x" * 5000]), tok(["a photo of a cat", "x" * 5000]))
    assert copy.context_length == tok.tokenizer.context_length == open_clip.get_tokenizer("tiny").context_length


def test_the_score_plan_hands_its_limits_to_decode_and_score():
    from curate.models import clip_input_size, resolve_pretrained
    from curate.runtime import ClusterResources
    from curate.scoring.config import load_config
    from curate.scoring.plan import fit_to_cluster, stage_specs

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.limits = Limits(max_aspect_ratio=20, max_word_chars=64)
    specs = {s.name: s for s in stage_specs(fit_to_cluster(cfg, ClusterResources(cpus=2, gpus=0)),
                                            resolve_pretrained("tiny", None))}
    decode = specs["decode"].kwargs
    assert decode["limits"] == cfg.limits
    assert decode["resize_short"] == clip_input_size(cfg.score.clip_model)
    assert decode["resize_long"] == (None if cfg.detect.detector == "none" else cfg.detect.long_side)
    assert specs["score"].kwargs["limits"] == cfg.limits
    stage = specs["decode"].build()
    assert stage.limits.max_aspect_ratio == 20


def test_pillows_pixel_limit_is_one_constant():
    """``89_478_485`` is written once, in ``curate/limits.py``; every default reads
    ``PILLOW_MAX_PIXELS``."""
    from curate.stages.decode import Decode, decode_sized

    assert Decode().max_pixels == PILLOW_MAX_PIXELS
    assert decode_sized.__defaults__[0] == PILLOW_MAX_PIXELS
    holders = [p for p in (REPO / "curate").rglob("*.py") if re.search(r"89_?478_?485", p.read_text())]
    assert holders == [REPO / "curate" / "limits.py"]
