"""A grammar of hostile webdataset shards, for the fuzz tests and ``benchmarks/fuzz_bench.py``.

One grammar, two drivers: ``HypothesisDriver`` draws every choice from a Hypothesis ``draw`` (so
failures shrink), ``RandomDriver`` from a seeded ``random.Random`` (for 10,000-sample benchmark
runs, which Hypothesis is not built for). A shard is a list of tar members; each sample draws:

- a key: ASCII, Unicode, spaces, glob and quote characters, dots inside the base name;
- an image member: an extension in any case (every format of ``curate.io.formats`` that Pillow
  writes, plus ``img``, an unknown one, or none), and bytes that are a valid image in any mode
  (RGB, RGBA, LA, P, P/L/RGB with ``tRNS``, 1, L, I;16, CMYK) and format (PNG, JPEG, WebP, BMP,
  TIFF, GIF, AVIF), or corrupt, truncated, empty, a decompression bomb's header, or a zero size;
- captions: ``.txt`` bytes (any Unicode, lone surrogates written with ``surrogatepass``, NUL and
  control characters, invalid UTF-8, 100k characters) and/or a ``.json`` whose ``caption`` is
  any of those or a number, ``NaN``, a list, an object, ``null``, with a uid that is valid,
  shared with another sample, or malformed;
- member faults: a member repeated with the same or other bytes, members of one key that are not
  adjacent, hard links, directories, symbolic links, members with no extension.

A shard may also be cut at any byte. ``build_tar`` writes the members; ``expected_keys`` counts
the samples a shard holds, with ``tarfile`` and webdataset's key rule, independently of curate.
"""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image
from webdataset.tariterators import base_plus_ext

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "gif": "GIF", "avif": "AVIF"}
MODES = ("RGB", "RGBA", "LA", "P", "P+trns", "L", "L+trns", "RGB+trns", "1", "I;16", "CMYK")
SPECIAL_TEXT = ("\ud83d", "\udfff", "\x00", "\x07", "\x1b[31m", "\u202e", "\ufeff", "\r\n", "\x85",
                "'; DROP TABLE scores; --", "{{c}}", "%s%n", "\U0001f600", "")
SHARED_UID = "0123456789abcdef0123456789abcdef"


class RandomDriver:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def text(self, max_len: int) -> str:
        n = self.rng.randint(0, max_len)
        ranges = ((0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FFF), (0xD800, 0xDFFF), (0x1F300, 0x1F6FF))
        out = []
        for _ in range(n):
            lo, hi = ranges[0] if self.rng.random() < 0.7 else self.choice(ranges)
            out.append(chr(self.rng.randint(lo, hi)))
        return "".join(out)

    def binary(self, max_len: int) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, max_len)))


class HypothesisDriver:
    """Choices from a Hypothesis ``draw`` (inside ``st.composite`` or ``st.data()``)."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def choice(self, seq):
        return self.draw(self.st.sampled_from(list(seq)))

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def boolean(self, p: float = 0.5) -> bool:
        return self.draw(self.st.booleans())

    def text(self, max_len: int) -> str:
        st = self.st
        return self.draw(st.text(st.characters(codec=None, categories=None), max_size=max_len))

    def binary(self, max_len: int) -> bytes:
        return self.draw(self.st.binary(max_size=max_len))


def _image(d, mode: str, fmt: str) -> bytes:
    w, h = d.integer(1, 40), d.integer(1, 40)
    rng = np.random.default_rng(d.integer(0, 2**31))
    base = mode.split("+")[0]
    if base == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA").convert(base)
    if mode.endswith("+trns"):
        im.info["transparency"] = 0 if base in ("P", "L") else (0, 0, 0)
    buf = io.BytesIO()
    try:
        kwargs = {"transparency": im.info["transparency"]} if "transparency" in im.info and fmt == "PNG" else {}
        im.save(buf, format=fmt, **kwargs)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store: PNG always works
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def image_bytes(d) -> bytes:
    """Bytes of an image member: valid in some mode and format, or broken in some way."""
    kind = d.choice(("valid",) * 10 + ("corrupt", "truncated", "empty", "bomb", "zero"))
    if kind == "valid" or kind == "truncated":
        data = _image(d, d.choice(MODES), d.choice(tuple(IMAGE_FORMATS.values())))
        return data if kind == "valid" else data[: d.integer(0, max(0, len(data) - 1))]
    if kind == "corrupt":
        return d.binary(64)
    if kind == "empty":
        return b""
    if kind == "bomb":
        return _png_header(100_000, 100_000)
    return _png_header(0, d.integer(0, 16))


def caption_text(d) -> str:
    """A caption string: plain words, arbitrary Unicode, specials (lone surrogates, NUL, ...), long."""
    kind = d.choice(("words", "words", "words", "unicode", "special", "long"))
    if kind == "words":
        return d.choice(("a dog on a beach", "a red car", "un chat sur un canapé", "SALE 50% OFF", "  ", "x"))
    if kind == "unicode":
        return d.text(40)
    if kind == "special":
        return d.choice(("a cat ", "", "text ")) + d.choice(SPECIAL_TEXT) + d.choice(("", " end"))
    return "word " * d.integer(20_000, 25_000)


def caption_members(d, key: str) -> list[tuple[str, bytes]]:
    out = []
    where = d.choice(("txt", "txt", "txt", "json", "both", "none"))
    if where in ("txt", "both"):
        kind = d.choice(("utf8", "utf8", "utf8", "invalid", "binary"))
        text = caption_text(d)
        if kind == "utf8":
            data = text.encode("utf-8", "surrogatepass")
        elif kind == "invalid":
            data = text.encode("utf-8", "surrogatepass") + b"\xff\xfe\xc3"
        else:
            data = d.binary(32)
        out.append((f"{key}.{d.choice(('txt', 'TXT', 'txt', 'caption'))}", data))
    if where in ("json", "both") or d.boolean(0.3):
        meta = {}
        caption = d.choice(("text", "text", "nan", "number", "list", "object", "null", "absent"))
        if caption == "text":
            meta["caption"] = caption_text(d)
        elif caption != "absent":
            meta["caption"] = {"nan": float("nan"), "number": 3.5, "list": ["a", "b"], "object": {"a": 1},
                               "null": None}[caption]
        uid = d.choice(("random", "random", "shared", "bad", "absent"))
        if uid == "random":
            meta["uid"] = f"{d.integer(0, 2**64 - 1):016x}{d.integer(0, 2**64 - 1):016x}"
        elif uid == "shared":
            meta["uid"] = SHARED_UID
        elif uid == "bad":
            meta["uid"] = d.choice((12, "XYZ", "0" * 31, None))
        data = json.dumps(meta).encode()  # ensure_ascii: lone surrogates become "\\udXXX" escapes
        if d.boolean(0.1):
            data = data[: max(0, len(data) - 3)]  # not valid JSON
        out.append((f"{key}.json", data))
    return out


def sample_members(d, n: int) -> list[tuple]:
    """Members ``(name, bytes)`` / ``(name, None, tarfile type)`` of one sample."""
    key = d.choice(("s", "img", "caf\u00e9", "a b", "x[1]", "q*?", "it's", "k.v", "UPPER", "\u00fc\u00df")) + f"{n:05d}"
    members: list[tuple] = []
    if d.boolean(0.9):
        ext = d.choice(tuple(IMAGE_FORMATS) * 2 + ("JPG", "jpeg", "PNG", "img", "zzz"))
        members.append((f"{key}.{ext}", image_bytes(d)))
    members += caption_members(d, key)
    fault = d.choice(("none",) * 10 + ("repeat_same", "repeat_other", "hardlink", "symlink", "noext", "dir"))
    if fault == "repeat_same" and members:
        members.append(members[0])
    elif fault == "repeat_other" and members:
        members.append((members[0][0], members[0][1] + b"\x00"))
    elif fault == "hardlink":
        members.append((f"{key}.png", None, tarfile.LNKTYPE))
    elif fault == "symlink":
        members.append((f"{key}.webp", None, tarfile.SYMTYPE))
    elif fault == "noext":
        members.append((f"{key}", b"no extension"))
    elif fault == "dir":
        members.append((f"{key}.d", None, tarfile.DIRTYPE))
    return members


def shard_members(d, max_samples: int = 8) -> list[tuple]:
    """The members of one shard; some samples' members are interleaved (not adjacent)."""
    samples = [sample_members(d, i) for i in range(d.integer(0, max_samples))]
    members = [m for s in samples for m in s]
    if len(members) > 2 and d.boolean(0.2):
        i, j = d.integer(0, len(members) - 1), d.integer(0, len(members) - 1)
        members[i], members[j] = members[j], members[i]
    return members


def build_tar(members: list[tuple], cut: int | None = None) -> bytes:
    """A tar (GNU format) of ``members``; ``cut``: keep only that many bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for m in members:
            name, data = m[0], m[1]
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = m[2]
                info.linkname = "elsewhere.png" if info.type in (tarfile.LNKTYPE, tarfile.SYMTYPE) else ""
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return data if cut is None else data[:cut]


def expected_keys(members: list[tuple]) -> set[str]:
    """The sample keys of an intact shard, by webdataset's rule, counted without curate: every
    non-directory member whose file name has an extension."""
    keys = set()
    for m in members:
        if len(m) > 2 and m[2] == tarfile.DIRTYPE:
            continue
        base = m[0].rsplit("/", 1)[-1]
        if "." not in base.lstrip("."):
            continue
        key, ext = base_plus_ext(m[0])
        if key is not None and ext is not None:
            keys.add(key)
    return keys
