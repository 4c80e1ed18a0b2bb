"""Decode: image bytes to RGB ``uint8 (H, W, 3)`` arrays.

Handles EXIF orientation (as ``PIL.ImageOps.exif_transpose``), grayscale, palette, CMYK,
transparency of every kind (an alpha band or a ``tRNS`` colour key, alpha-composited on a fixed
background colour), and 16-bit images (rescaled by
1/257 so 65535 maps to 255, never clamped). The size is read from the header before any
pixel is decoded, so a decompression bomb, an image whose aspect ratio is over
``limits.max_aspect_ratio`` (a 2.4 KB PNG of 1 x 600,000 pixels) and one that the resizes after
decoding would blow up over ``limits.max_resized_pixels`` (``curate.limits``) get status
``too_large`` without being allocated.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from curate import schema as S
from curate.limits import DEFAULT_LIMITS, PILLOW_MAX_PIXELS, Limits
from curate.stages.base import Stage
from curate.stages.common import EMPTY_IMAGE, batch_len, object_array, set_error


class DecodeError(Exception):
    """Raised by ``decode_image``; ``status`` is the index status (``decode_error``, ``too_large``)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image | np.ndarray:
    """Any Pillow mode to RGB; every kind of transparency is composited on ``background`` the
    same way: an alpha band (RGBA, LA, PA, RGBa, La) and a ``tRNS`` colour key (``P``, ``L``,
    ``RGB``, ``1`` and 16-bit grey with ``info["transparency"]``), so one picture gives the
    same pixels whatever its storage."""
    mode = im.mode
    trns = im.info.get("transparency")
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im).astype(np.float64)
        # 16-bit range (PNG/TIFF 16-bit grey open as I;16 or I): 65535 -> 255.
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        if isinstance(trns, int):  # a tRNS grey level, in the image's own 16-bit scale
            rgb[arr == trns] = background
        return rgb
    if trns is not None and mode in ("P", "L", "RGB", "1"):
        im = im.convert("RGBA")  # Pillow turns the tRNS colour key into alpha 0
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")  # 1, L, P, CMYK (Pillow un-inverts Adobe CMYK JPEGs), YCbCr, LAB, HSV
    return im


# Grey PNGs of 1, 2 or 4 bits open as 8-bit "L" with values scaled to 0-255, but their tRNS grey
# level stays in the file's own scale: multiply it by the same factor.
_LOW_BIT_GREY = {"L;1": 255, "L;1I": 255, "L;2": 85, "L;2I": 85, "L;4": 17, "L;4I": 17}


def _scale_grey_key(im: Image.Image) -> None:
    """Bring a low-bit-depth grey image's ``tRNS`` level into the 0-255 scale (in place; call
    before ``load``, while the tile still names the raw mode)."""
    trns = im.info.get("transparency")
    if im.mode != "L" or not isinstance(trns, int) or not im.tile:
        return
    args = im.tile[0].args
    raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    if raw in _LOW_BIT_GREY:
        im.info["transparency"] = trns * _LOW_BIT_GREY[raw]


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
    (b"\xff\xd8", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def _header_size(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """``(format, (width, height))`` read straight from the header bytes of a PNG, GIF, BMP or
    JPEG (the size may be ``None`` when the header is cut); ``(None, None)`` for other data.
    Used only to explain a file Pillow refuses (e.g. a PNG whose IHDR says width 0)."""
    import struct

    fmt = next((f for sig, f in _SIGNATURES if data.startswith(sig)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WebP"
    size = None
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            size = struct.unpack(">II", data[16:24])
        elif fmt == "GIF":
            size = struct.unpack("<HH", data[6:10])
        elif fmt == "BMP":
            w, h = struct.unpack("<ii", data[18:26])
            size = (w, abs(h))
        elif fmt == "JPEG":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    break
                marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    size = (w, h)
                    break
                i += 2 + length
    except struct.error:
        size = None
    return fmt, size


def _unreadable_message(data: bytes) -> str:
    """What is wrong with bytes that ``Image.open`` cannot identify, as precisely as we can say."""
    if not data:
        return "empty image member (0 bytes)"
    fmt, size = _header_size(data)
    if fmt and size and (size[0] <= 0 or size[1] <= 0):
        return f"zero-size image: the {fmt} header says {size[0]}x{size[1]} pixels"
    if fmt:
        return f"{fmt} data that Pillow cannot open (bad or cut header; {len(data)} bytes)"
    return f"not an image format Pillow reads ({len(data)} bytes, starting {data[:8]!r})"


def decode_image(data: bytes, max_pixels: int = PILLOW_MAX_PIXELS, background: tuple[int, int, int] = (255, 255, 255),
                 min_side: int | None = None, min_long_side: int | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 resize_short: int | None = None, resize_long: int | None = None, reduce: bool = False) -> np.ndarray:
    """Decode one encoded image to an ``(H, W, 3) uint8`` C-contiguous RGB array.

    The same as ``decode_sized`` (see there for the arguments and errors), as a NumPy array.
    """
    return np.ascontiguousarray(decode_pil(data, max_pixels, background, min_side, min_long_side, limits=limits,
                                           resize_short=resize_short, resize_long=resize_long, reduce=reduce),
                                dtype=np.uint8)


def decode_pil(
    data: bytes,
    max_pixels: int = PILLOW_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int | None = None,
    min_long_side: int | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    resize_short: int | None = None,
    resize_long: int | None = None,
    reduce: bool = False,
) -> Image.Image:
    """Decode one encoded image to an RGB ``PIL.Image`` (what open_clip's transforms take).

    The same as ``decode_sized`` without the original size.
    """
    return decode_sized(data, max_pixels, background, min_side, min_long_side, limits=limits,
                        resize_short=resize_short, resize_long=resize_long, reduce=reduce)[0]


# Modes that ``Image.reduce`` averages as they are (LA and RGBA premultiplied by Pillow), before
# the conversion to RGB.
_REDUCIBLE_MODES = {"L", "RGB", "RGBA", "LA"}
# EXIF orientation -> the transpose that rights it (``PIL.ImageOps.exif_transpose``'s table).
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def reduction(width: int, height: int, min_side: int | None, min_long_side: int | None) -> int:
    """The largest of 8, 4 and 2 that keeps the shorter side of a ``width x height`` image at
    least ``min_side`` and its longer side at least ``min_long_side`` pixels when divided by it,
    else 1 (also when neither is given)."""
    if not (min_side or min_long_side):
        return 1
    return next((s for s in (8, 4, 2) if min(width, height) / s >= (min_side or 0)
                 and max(width, height) / s >= (min_long_side or 0)), 1)


def decode_sized(
    data: bytes,
    max_pixels: int = PILLOW_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int | None = None,
    min_long_side: int | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    resize_short: int | None = None,
    resize_long: int | None = None,
    reduce: bool = False,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode one encoded image to an RGB ``PIL.Image``, possibly at a reduced size.

    Before any pixel is decoded, the size in the header is checked against ``max_pixels`` and
    against ``limits.check_shape`` (the aspect ratio, and the pixels after the resizes that
    follow the decode: ``resize_short``, ``resize_long``).

    Args:
        data: encoded bytes (any format Pillow reads: JPEG, PNG, WebP, TIFF, GIF, BMP, ...).
        max_pixels: refuse images with more pixels than this (checked on the header; default
            Pillow's own warning level, ``curate.limits.PILLOW_MAX_PIXELS``).
        background: RGB 0-255 colour that transparent pixels are composited on.
        min_side: when set, a JPEG whose shorter side is at least twice this many pixels is
            decoded at a reduced scale (1/2, 1/4 or 1/8, in the DCT domain: Pillow's
            ``Image.draft``), keeping the shorter side at least ``min_side``. Other formats
            decode in full unless ``reduce``. For consumers that resize to ``min_side`` anyway.
        min_long_side: likewise for the longer side (a text detector that resizes the long side).
            With both, the reduction keeps both bounds.
        limits: ``max_aspect_ratio`` and ``max_resized_pixels`` (``curate.limits``).
        resize_short: the consumer resizes the shorter side to this many pixels (open_clip's
            ``Resize(S)``: ``curate.models.clip_input_size``); ``None``: no such resize.
        resize_long: the consumer resizes the longer side to this many pixels (the detector's
            ``detect.long_side``, a thumbnail); ``None``: no such resize.
        reduce: also shrink the other formats (PNG, WebP, ...) right after decoding, by the
            factor a JPEG would be drafted at (``Image.reduce``: the mean of each 2x2, 4x4 or
            8x8 block, before the conversion to RGB), so that no full-size copy is made after
            the decoder's own. The pixels then differ slightly from a full decode: for
            consumers that resize anyway, not for the score index.

    Returns:
        ``(image, (width, height))``: a mode ``RGB`` image after EXIF orientation, and the
        image's full size in pixels after EXIF orientation (what the index records, whatever
        size it was decoded at).

    Raises:
        DecodeError: ``status='too_large'`` over ``max_pixels`` or over a limit of
            ``limits.check_shape`` (the message names the shape and the limit);
            ``status='decode_error'`` for anything Pillow cannot decode (truncated data,
            unknown format, zero size, ...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(S.STATUS_TOO_LARGE, f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
            if w <= 0 or h <= 0:
                raise DecodeError(S.STATUS_DECODE_ERROR, f"zero-size image: the {im.format} header says {w}x{h} pixels")
            over = limits.check_shape(w, h, resize_short, resize_long)
            if over:
                raise DecodeError(S.STATUS_TOO_LARGE, over)
            s = reduction(w, h, min_side, min_long_side)
            if im.format == "JPEG" and s > 1:
                # The largest DCT scale 1/s that keeps both bounds; Pillow picks s itself from the
                # requested size as min(w // rw, h // rh), so ask for (w // s, h // s).
                im.draft(im.mode, (w // s, h // s))
                s = 1
            _scale_grey_key(im)
            # EXIF orientations 5-8 swap width and height.
            orientation = im.getexif().get(0x0112, 1)
            size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            im.load()
            pending = s if reduce else 1  # the reduction still to do
            if pending > 1 and im.info.get("transparency") is None:  # a tRNS key must become alpha first
                if im.mode == "1":
                    im = im.convert("L")  # 0 or 255 either way; "1" cannot be averaged
                if im.mode in _REDUCIBLE_MODES:
                    im, pending = im.reduce(pending), 1
            if orientation in _ORIENT:  # as ImageOps.exif_transpose, without its copy of an upright image
                im = im.transpose(_ORIENT[orientation])
            rgb = _to_rgb(im, background)
            if pending > 1:  # palette, 16-bit, CMYK, a tRNS key: reduced once in RGB
                rgb = (Image.fromarray(rgb, "RGB") if isinstance(rgb, np.ndarray) else rgb).reduce(pending)
    except DecodeError:
        raise
    except Image.DecompressionBombError:
        raise DecodeError(
            S.STATUS_TOO_LARGE, f"over Pillow's decompression-bomb limit (more than max_pixels {max_pixels})"
        ) from None
    except UnidentifiedImageError:
        raise DecodeError(S.STATUS_DECODE_ERROR, _unreadable_message(data)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise DecodeError(S.STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    return (Image.fromarray(rgb, "RGB") if isinstance(rgb, np.ndarray) else rgb), size


def image_hash(data: bytes | None) -> bytes:
    """BLAKE2b-128 of the image bytes as stored (``hashlib.blake2b(digest_size=16)``); ``b""``
    for no bytes. Equal hashes: byte-identical images."""
    import hashlib

    return hashlib.blake2b(bytes(data), digest_size=16).digest() if data else b""


PHASH_SIZE = 32  # side of the grey image whose DCT imagehash.phash thresholds (hash_size 8 x highfreq_factor 4)
PHASH_MIN_STD = 4.0  # grey levels (0-255): a phash input with a lower standard deviation gives no hash
NO_PHASH = 0  # the stored perceptual hash of an image without one (near-constant, or not decoded)


def phash_input(image: np.ndarray) -> Image.Image:
    """The ``PHASH_SIZE`` x ``PHASH_SIZE`` 8-bit grey image whose DCT ``imagehash.phash`` (4.3)
    thresholds, made from an ``(H, W, 3) uint8`` image as imagehash makes it (Pillow's
    ``convert("L")``, ITU-R 601 luma, then a Lanczos resize)."""
    return Image.fromarray(image).convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS)


def phash_input_std(image: np.ndarray) -> float:
    """Population standard deviation, in grey levels (0-255), of ``phash_input(image)``: how much
    structure the perceptual hash has to encode. 0 for a flat image of any colour."""
    return float(np.asarray(phash_input(image), dtype=np.float64).std())


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit perceptual hash of an ``(H, W, 3) uint8`` image (``imagehash.phash``, Zauner
    2010's DCT hash: the sign of the 8x8 lowest-frequency DCT coefficients of a 32x32 grey image
    against their median), as a signed int64; ``NO_PHASH`` (0) for a near-constant image.
    Resizing and re-encoding change few of its bits (``curate.filters.dedup.phash_range`` finds
    the hashes within a number of bits).

    A near-constant image has no hash: one whose ``phash_input_std`` is below ``PHASH_MIN_STD``
    (4 grey levels). Such a hash encodes no picture, only rounding noise or a faint pattern that
    images of any colour share: every flat image but black hashes to ``0x8000000000000000``
    (only the DC coefficient is above the median), so a flat red and a flat blue image, or
    any two flat test and pool images, were "copies" 0 bits apart. The threshold:
    - below about 1 grey level the 8-bit 32x32 input rounds to flat;
    - measured (2-core CPU, 40 random smooth 256x192 patterns a level, imagehash 4.3.2): at a
      standard deviation of 4 the hash stays within 2 bits of itself after JPEG quality-50
      re-encoding for 25% of the patterns (2: 5%; 12: 88%), so below it the hash has little
      recall to give;
    - real images lie far above it: the 8,000 CIFAR-10 images of ``benchmarks/dedup_pool_bench.py``
      (400 a class from each split) have at least 7.6, the photographs of ``shared/data`` at
      least 25.
    Such images are matched by their bytes (``image_hash``) or embeddings only. ``NO_PHASH`` and
    any other hash without structure never match (``curate.filters.dedup.phash_has_structure``).

    The hash is imagehash's own: ``imagehash.phash`` of ``phash_input(image)``, on which its
    grey conversion and resize change nothing (Pillow copies an image resized to its own size),
    so it equals ``imagehash.phash`` of the image.
    """
    import imagehash

    grey = phash_input(image)
    if float(np.asarray(grey, dtype=np.float64).std()) < PHASH_MIN_STD:
        return NO_PHASH
    bits = imagehash.phash(grey, hash_size=PHASH_SIZE // 4, highfreq_factor=4).hash.ravel()
    value = int("".join("1" if b else "0" for b in bits), 2)
    return int(np.array(value, dtype=np.uint64).view(np.int64))


class Decode(Stage):
    """Stage: decode the ``image_bytes`` column into ``image``, ``width`` and ``height``.

    Input columns: ``image_bytes`` (object: ``bytes``; ``None`` or empty when missing), ``status``,
    ``error``.
    Output: the same batch without ``image_bytes``, plus ``image`` (object: ``(H, W, 3) uint8``;
    an empty ``(0, 0, 3)`` array for failed rows), ``width`` and ``height`` (int32, -1 when not
    decoded). Failures set ``status`` to ``decode_error`` or ``too_large``. ``width`` and
    ``height`` are the full image size even when the image is decoded at a reduced size.

    Args:
        max_pixels: decompression-bomb limit (see ``decode_sized``; default
            ``curate.limits.PILLOW_MAX_PIXELS``).
        background: RGB compositing colour for transparent images.
        min_side, min_long_side: decode large JPEGs at a reduced scale that keeps the shorter
            side at least ``min_side`` and the longer side at least ``min_long_side`` pixels
            (``decode_sized``); ``None``: decode in full.
        limits: the shape limits checked on the header (``curate.limits.Limits.check_shape``:
            aspect ratio, pixels after the resizes below); over them a row is ``too_large``
            with a message naming its shape. ``curate score``: its ``limits`` section.
        resize_short, resize_long: the resizes the later stages make (``curate score``: CLIP's
            shortest-side resize to ``curate.models.clip_input_size``, the detector's long-side
            resize to ``detect.long_side``); ``None``: none.
        hashes: also write ``image_hash`` (object ``bytes``: BLAKE2b-128 of the image bytes as
            stored; ``b""`` for rows without an image) and ``image_phash`` (int64: the 64-bit
            perceptual hash ``imagehash.phash`` of the decoded image, Zauner 2010's DCT hash;
            0 for failed rows and for near-constant images, ``perceptual_hash``), for
            near-duplicate and test-set matching.
    """

    name = "decode"
    error_status = S.STATUS_DECODE_ERROR
    reads = (S.STATUS, S.IMAGE_BYTES)
    writes = (S.IMAGE, S.WIDTH, S.HEIGHT)
    drops = (S.IMAGE_BYTES,)

    def __init__(self, max_pixels: int = PILLOW_MAX_PIXELS, background: tuple[int, int, int] = (255, 255, 255),
                 min_side: int | None = None, min_long_side: int | None = None, hashes: bool = False,
                 limits: Limits = DEFAULT_LIMITS, resize_short: int | None = None, resize_long: int | None = None):
        self.max_pixels = int(max_pixels)
        self.limits, self.resize_short, self.resize_long = limits, resize_short, resize_long
        self.hashes = bool(hashes)
        if self.hashes:
            self.writes = Decode.writes + (S.IMAGE_HASH, S.IMAGE_PHASH)
        self.background = tuple(int(c) for c in background)
        self.min_side, self.min_long_side = min_side, min_long_side
        # Our own header check enforces the limit; keep Pillow's from firing first.
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self.max_pixels)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        n = batch_len(batch)
        images = [EMPTY_IMAGE] * n
        width = np.full(n, -1, dtype=np.int32)
        height = np.full(n, -1, dtype=np.int32)
        data = batch.pop(S.IMAGE_BYTES)
        if self.hashes:
            batch[S.IMAGE_HASH] = object_array([image_hash(b) for b in data])
            batch[S.IMAGE_PHASH] = np.zeros(n, dtype=np.int64)
        for i in rows:
            try:
                im, (w, h) = decode_sized(data[i], self.max_pixels, self.background, self.min_side, self.min_long_side,
                                          limits=self.limits, resize_short=self.resize_short,
                                          resize_long=self.resize_long)
            except DecodeError as e:
                set_error(batch, i, e.status, str(e))
                continue
            images[i] = np.ascontiguousarray(im, dtype=np.uint8)
            height[i], width[i] = h, w
            if self.hashes:
                batch[S.IMAGE_PHASH][i] = perceptual_hash(images[i])
        batch[S.IMAGE] = object_array(images)
        batch[S.WIDTH] = width
        batch[S.HEIGHT] = height
        return batch
