"""open_clip models: our registered configs and offline resolution of pretrained weights.

``register_configs()`` adds the JSON configs in ``curate/model_configs/`` (``tiny``: a small
ViT, random init, for tests and offline demos) to open_clip's registry
(``open_clip.add_model_config``). ``resolve_pretrained`` turns a pretrained tag or path into a
local file *without touching the network*: a tag whose weights are not already in the local
cache raises ``PretrainedNotAvailable`` before any work starts.

Captions reach CLIP's tokenizer only through ``BoundedTokenizer`` (``get_tokenizer``,
``create_clip``): ``tokenizer_text`` bounds what one caption may cost (``curate.limits``) and
leaves the tokens of every ordinary caption unchanged.
"""

from __future__ import annotations

import html
import os
import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.errors import CurateError
from curate.limits import DEFAULT_LIMITS, Limits

_CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_INIT_SEED = 0
# Numeric precisions of a CLIP forward pass: "auto" is bf16 autocast on CUDA and fp32 on CPU.
PRECISIONS = ("auto", "fp32", "bf16")
_registered = False


class PretrainedNotAvailable(CurateError, RuntimeError):
    """Pretrained CLIP weights were asked for but are not on this machine."""


def resolve_device(device: str | None = None) -> str:
    """The torch device to run a model on.

    Args:
        device: ``None`` or ``"auto"``: ``"cuda"`` when ``torch.cuda.is_available()``, else
            ``"cpu"``; any other string (``"cpu"``, ``"cuda:1"``) is returned as given.
    """
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _open_clip_config_dir() -> Path | None:
    """open_clip's ``model_configs`` folder, found without importing open_clip (which imports
    torch, torchvision and transformers: 4-8 s on a small machine, issue 31)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "model_configs").is_dir():
            return Path(root) / "model_configs"
    return None


@cache
def model_config(model: str) -> dict[str, Any] | None:
    """The open_clip model config of ``model`` (the parsed ``<model>.json``), or ``None``.

    Read from curate's ``model_configs`` (``tiny``) and open_clip's own folder, the files
    ``open_clip.get_model_config`` reads (open_clip ``factory._rescan_model_configs``), without
    importing open_clip; a config registered some other way falls back to open_clip's registry.
    """
    import json

    for folder in (_CONFIG_DIR, _open_clip_config_dir()):
        path = folder / f"{model}.json" if folder is not None and "/" not in model else None
        if path is not None and path.is_file():
            cfg = json.loads(path.read_text())
            if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                return cfg
    import open_clip

    register_configs()
    return open_clip.get_model_config(model)


def check_model_name(model: str) -> None:
    """Check that ``model`` is in open_clip's registry (``open_clip.list_models()``, with
    curate's ``tiny``), without importing open_clip when its config file is found
    (``model_config``).

    Raises:
        ValueError: unknown model name (the message says where the names are listed).
    """
    if model_config(model) is None:
        raise ValueError(f"unknown open_clip model {model!r}; see open_clip.list_models() (ours: tiny)")


def register_configs() -> None:
    """Add ``curate/model_configs/*.json`` to open_clip's model registry (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)
    _registered = True


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights come from.

    Attributes:
        model: open_clip model name.
        pretrained: what the user asked for (tag, path) or ``None``.
        path: local checkpoint file to load, or ``None`` for random init.
        is_pretrained: ``False`` for random init.
    """

    model: str
    pretrained: str | None
    path: str | None
    is_pretrained: bool

    def describe(self) -> str:
        if not self.is_pretrained:
            return f"none (random init, seed {RANDOM_INIT_SEED}: scores are NOT meaningful CLIP scores)"
        return f"{self.pretrained} ({self.path})" if self.path != self.pretrained else str(self.path)


def _offline_message(model: str, tag: str, detail: str) -> str:
    return (
        f"pretrained weights {model}/{tag} are not in the local cache ({detail}) and curate never "
        f"downloads at run time. Either pass a local checkpoint file: --pretrained "
        f"/path/to/open_clip_pytorch_model.bin (any file open_clip.create_model_and_transforms("
        f"'{model}', pretrained=PATH) loads), or fill the cache on a machine with network access "
        f"(python -c \"import open_clip; open_clip.create_model_and_transforms('{model}', "
        f"pretrained='{tag}')\") and copy it here (HF_HOME / --cache-dir)."
    )


def resolve_pretrained(model: str, pretrained: str | None, cache_dir: str | None = None) -> ResolvedWeights:
    """Resolve ``pretrained`` for ``model`` to a local file, offline.

    Args:
        model: open_clip model name (``open_clip.list_models()`` or ``tiny``).
        pretrained: ``None`` / ``""`` / ``"none"`` for random init, a path to a checkpoint file,
            or an open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model(model)``).
        cache_dir: open_clip / Hugging Face cache folder (``None``: their defaults).

    Returns:
        ``ResolvedWeights``.

    Raises:
        ValueError: unknown model name or unknown tag for the model.
        PretrainedNotAvailable: a known tag whose weights are not cached locally.
    """
    check_model_name(model)
    if pretrained in (None, "", "none", "None"):
        return ResolvedWeights(model, None, None, False)
    if os.path.isdir(os.path.expanduser(pretrained)):
        raise PretrainedNotAvailable(
            f"--pretrained {pretrained} is a folder; give the checkpoint file inside it "
            f"(e.g. open_clip_pytorch_model.bin or open_clip_model.safetensors)"
        )
    if os.path.isfile(os.path.expanduser(pretrained)):
        path = os.path.abspath(os.path.expanduser(pretrained))
        check_checkpoint(path, model)
        return ResolvedWeights(model, pretrained, path, True)
    import open_clip  # a pretrained tag: open_clip's registry of them
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(model, pretrained)
    if not cfg:
        if "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise PretrainedNotAvailable(f"checkpoint file not found: {pretrained}")
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(f"unknown pretrained tag {pretrained!r} for {model}; known tags: {tags or 'none'}")
    if "file" in cfg and os.path.isfile(cfg["file"]):
        return ResolvedWeights(model, pretrained, cfg["file"], True)
    hf = cfg.get("hf_hub", "")
    if hf:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf)
        names = [filename] if filename else []
        names = [n[:-4] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))] + names
        if not filename:
            names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return ResolvedWeights(model, pretrained, hit, True)
        raise PretrainedNotAvailable(_offline_message(model, pretrained, f"Hugging Face repo {repo_id}"))
    url = cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return ResolvedWeights(model, pretrained, target, True)
        raise PretrainedNotAvailable(_offline_message(model, pretrained, f"looked for {target}"))
    raise PretrainedNotAvailable(_offline_message(model, pretrained, "no download source known"))


def check_checkpoint(path: str, model: str) -> None:
    """Check that the checkpoint at ``path`` loads into ``model`` without building the model.

    The model is created on PyTorch's ``meta`` device (no memory, no init cost) and the file is
    loaded with ``open_clip.load_checkpoint``, so key mismatches, a wrong architecture or a file
    that is not a checkpoint at all are found in the driver, before any shard is read.

    Raises:
        PretrainedNotAvailable: the file cannot be loaded into ``model``.
    """
    import logging
    import warnings

    import open_clip
    import torch

    register_configs()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # open_clip logs "no pretrained weights loaded"
            try:
                meta = open_clip.create_model(model, device="meta")
            finally:
                logging.disable(logging.NOTSET)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying from a non-meta parameter ... is a no-op"
            open_clip.load_checkpoint(meta, path, weights_only=True)  # a user's file: tensors only, never pickled code
    except Exception as e:
        text = str(e).strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(e).__name__]
        detail = S.cap_error(" ".join(lines[:2]), 400)
        raise PretrainedNotAvailable(
            f"--pretrained {path} does not load into open_clip model {model!r} ({type(e).__name__}: {detail}); "
            f"give an open_clip checkpoint of that architecture (a state dict, {{'state_dict': ...}}, "
            f"or a .safetensors file)"
        ) from None


def clip_input_size(model: str) -> int:
    """The image input side in pixels of an open_clip model config (``vision_cfg.image_size``;
    the larger side when it is a pair; 224 when the config does not say).

    Raises:
        ValueError: unknown model name.
    """
    check_model_name(model)
    cfg = model_config(model)
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(max(size)) if isinstance(size, (list, tuple)) else int(size)


# Words CLIP reads: a context of 77 tokens holds the start and end tokens and 75 more, and every
# whitespace-separated word is at least one token, so the first 76 words hold every token read.
TOKENIZER_WORDS = 76
# Entries of open_clip's word cache (``SimpleTokenizer.cache``: BPE piece -> tokens) kept at most;
# beyond, it is reset to its special tokens. A piece is at most ``Limits.max_word_chars``
# characters, so the cache holds a few MB at most; an ordinary batch of captions uses a few
# thousand distinct words.
TOKENIZER_CACHE_WORDS = 10_000


@lru_cache(maxsize=8)
def _long_piece(max_word_chars: int):
    """A regex (``regex`` package) for the pieces of open_clip's ``SimpleTokenizer.pat`` longer
    than ``max_word_chars``: a run of letters (``\\p{L}+``) or of symbols (``[^\\s\\p{L}\\p{N}]+``)."""
    import regex

    n = int(max_word_chars) + 1
    return regex.compile(r"\p{L}{" + str(n) + r",}|[^\s\p{L}\p{N}]{" + str(n) + r",}")


_WORD = re.compile(r"\S+")  # a word of str.split (re's \s is str.isspace)


def _split_long_pieces(text: str, max_word_chars: int) -> str:
    """``text`` with a space inserted every ``max_word_chars`` characters of each longer piece."""
    if len(text) <= max_word_chars:
        return text
    return _long_piece(max_word_chars).sub(
        lambda m: " ".join(m[0][i:i + max_word_chars] for i in range(0, len(m[0]), max_word_chars)), text)


def _yields_a_token(word: str) -> bool:
    """Whether every CLIP tokenizer surely makes at least one token of a whitespace-free
    ``word``: after the tokenizers' double HTML unescaping (``&nbsp;`` is a space) it holds a
    letter or a digit (Unicode category ``L*`` or ``N*``; cleaning never removes one, while
    ``canonicalize`` cleaning removes punctuation and ftfy some control and format characters)."""
    if "&" in word:
        word = html.unescape(html.unescape(word))
    return any(unicodedata.category(c)[0] in "LN" for c in word)


def tokenizer_text(text: str, limits: Limits = DEFAULT_LIMITS, *, words: int | None = TOKENIZER_WORDS) -> str:
    """What of a caption CLIP's tokenizer is given: its cost is bounded, its tokens unchanged.

    The caption is cut after ``limits.max_tokenize_chars`` characters; every piece of open_clip's
    split (a run of letters or of symbols) longer than ``limits.max_word_chars`` characters is
    split by inserting spaces (open_clip's BPE costs the square of a piece's length: 8,192
    letters take 17.7 s); and the caption is cut after its first ``words`` (76)
    whitespace-separated words (``str.split``). An ordinary caption (76 words within
    ``max_tokenize_chars``, no such piece) gives exactly the tokens it gave before: CLIP reads
    77 tokens, the start and end tokens among them, and every word is at least one token. Only
    words with a letter or a digit are counted (a word such as ``&nbsp;``, which the tokenizer
    unescapes to a space, or ``!!`` under ``canonicalize`` cleaning, makes no token).

    Args:
        text: a caption (any length).
        limits: ``max_tokenize_chars`` and ``max_word_chars`` (``curate.limits``).
        words: words kept (``context_length - 1`` for a longer context); ``None``: no cut by
            words (a tokenizer that picks tokens from the whole caption, open_clip's
            ``reduction_mask``).

    Returns:
        The text to tokenize: at most ``max_tokenize_chars`` characters plus the inserted spaces.
    """
    text = _split_long_pieces(text[: limits.max_tokenize_chars], limits.max_word_chars)
    if words is None:
        return text
    counted = 0
    for word in _WORD.finditer(text):
        if _yields_a_token(word[0]):
            counted += 1
            if counted > words:
                return text[: word.start()]
    return text


class _BoundedClean:
    """open_clip's text cleaning (``SimpleTokenizer.clean_fn``: ftfy, HTML unescaping twice,
    whitespace, lower case), then the long pieces split again: cleaning can join short pieces
    into a long one (``a&#97;a`` is ``aaa``) or lengthen one (ligatures). A class, not a closure,
    so the tokenizer still pickles (DataLoader workers)."""

    def __init__(self, clean, max_word_chars: int):
        self.clean, self.max_word_chars = clean, int(max_word_chars)

    def __call__(self, text: str) -> str:
        return _split_long_pieces(self.clean(text), self.max_word_chars)


class BoundedTokenizer:
    """An open_clip tokenizer whose cost per caption is bounded (``tokenizer_text``) and whose
    word cache is bounded (``TOKENIZER_CACHE_WORDS``); it gives the wrapped tokenizer's tokens
    for every ordinary caption.

    Calling it takes a caption or a list of captions (and optionally ``context_length``) and
    returns ``(B, L) int64``, as open_clip's tokenizers do; other attributes
    (``context_length``, ``vocab_size``, ...) are the wrapped tokenizer's.

    Args:
        tokenizer: from ``open_clip.get_tokenizer`` (``SimpleTokenizer``: its cleaning is
            bounded too and its ``cache`` kept at most ``max_cache_words`` entries; an
            ``HFTokenizer`` has no cache).
        limits: ``max_tokenize_chars`` and ``max_word_chars`` (``curate.limits``).
        max_cache_words: entries of ``SimpleTokenizer.cache`` beyond which it is reset to its
            special tokens.
    """

    def __init__(self, tokenizer, limits: Limits = DEFAULT_LIMITS, max_cache_words: int = TOKENIZER_CACHE_WORDS):
        self.tokenizer, self.limits, self.max_cache_words = tokenizer, limits, int(max_cache_words)
        cache = getattr(tokenizer, "cache", None)
        self._initial_cache = dict(cache) if isinstance(cache, dict) else None
        clean = getattr(tokenizer, "clean_fn", None)
        if callable(clean) and not isinstance(clean, _BoundedClean):
            tokenizer.clean_fn = _BoundedClean(clean, limits.max_word_chars)

    def __call__(self, texts: str | list[str], context_length: int | None = None):
        if isinstance(texts, str):
            texts = [texts]
        context = context_length or getattr(self.tokenizer, "context_length", None) or TOKENIZER_WORDS + 1
        words = None if getattr(self.tokenizer, "reduction_fn", None) is not None else max(TOKENIZER_WORDS, context - 1)
        tokens = self.tokenizer([tokenizer_text(str(t), self.limits, words=words) for t in texts], context_length)
        cache = getattr(self.tokenizer, "cache", None)
        if self._initial_cache is not None and isinstance(cache, dict) and len(cache) > self.max_cache_words:
            cache.clear()
            cache.update(self._initial_cache)
        return tokens

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("tokenizer", "limits", "max_cache_words", "_initial_cache"):
            raise AttributeError(name)  # not yet set (unpickling): never recurse
        return getattr(self.tokenizer, name)


def get_tokenizer(model: str, limits: Limits = DEFAULT_LIMITS) -> BoundedTokenizer:
    """open_clip's tokenizer of ``model`` (``open_clip.get_tokenizer``; no weights needed) in a
    ``BoundedTokenizer``.

    Raises:
        ValueError: unknown model name.
    """
    import open_clip

    check_model_name(model)
    return BoundedTokenizer(open_clip.get_tokenizer(model), limits)


def create_clip(model: str, weights: ResolvedWeights, device: str = "cpu", limits: Limits = DEFAULT_LIMITS):
    """Create an open_clip model in eval mode with its inference transform and tokenizer.

    Args:
        model: open_clip model name.
        weights: from ``resolve_pretrained`` (the path, if any, is loaded; nothing is fetched).
            Without weights the model is initialised with seed ``RANDOM_INIT_SEED``.
        device: torch device string.
        limits: what one caption may cost the tokenizer (``BoundedTokenizer``).

    Returns:
        ``(model, preprocess, tokenizer)``: ``preprocess`` maps a PIL image to a
        ``(3, S, S) float32`` tensor, ``tokenizer`` (a ``BoundedTokenizer``) maps a list of
        strings to ``(B, L) int64``.
    """
    import open_clip
    import torch

    register_configs()
    # Random init is seeded (RANDOM_INIT_SEED) so that every actor, and every rerun of a job,
    # builds the same model: a resumed index never mixes scores of two random models.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=weights.path, device=device, load_weights=weights.path is not None,
            weights_only=True,  # --pretrained is a user's file: torch.load with tensors only, never pickled code
        )
    clip.eval()
    return clip, preprocess, get_tokenizer(model, limits)
