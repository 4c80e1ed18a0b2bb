"""What one sample may cost, in one place: pixels, shape, bytes, characters, seconds, memory.

At DataComp scale every rare input occurs, so every path that reads, decodes, resizes or
tokenizes a sample checks its cost *before* paying it, and a sample over a limit becomes a row
with a status that names the limit (``too_large`` for shape and size), never an allocation.
``curate score`` takes these as its ``limits`` section (``--limits-max-aspect-ratio 50``,
``limits.sample_timeout_s`` in YAML); every other command (train, evaluate, make-evalset,
search, report, the pool rules) uses ``DEFAULT_LIMITS``.

The defaults are chosen so that no ordinary image, caption or shard meets them: DataComp's
pool (img2dataset, 512 px) and ImageNet-size test sets are far below each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Pillow's own decompression-bomb warning level (``PIL.Image.MAX_IMAGE_PIXELS``): 89,478,485 pixels.
PILLOW_MAX_PIXELS = 89_478_485


@dataclass
class Limits:
    """Per-sample cost limits (``curate score``'s ``limits`` section; ``DEFAULT_LIMITS`` elsewhere).

    Attributes:
        max_aspect_ratio: longer side over shorter side, at most (a 1 x 600,000 PNG is 2.4 KB
            but open_clip's shortest-side resize makes it 224 x 134M pixels). Over it: ``too_large``.
        max_resized_pixels: pixels of an image after any resize a step makes (CLIP's
            shortest-side resize, the detector's long-side resize, a thumbnail), at most;
            checked on the size before resizing. Over it: ``too_large``.
        max_member_bytes: bytes of one tar member, at most, read from its header before any
            byte of it is read (plain and compressed shards; a compressed member is never
            inflated whole). A larger member is skipped and its sample is ``too_large``.
        max_caption_chars: characters of a caption kept (longer ones are cut, still ``ok``, and
            counted as repaired; ``curate.io.samples.clean_caption``).
        max_tokenize_chars: characters of a caption handed to CLIP's tokenizer, at most: the
            caption is cut after its first 76 words (CLIP reads 77 tokens, and every word is
            at least one token) and after this many characters.
        max_word_chars: characters of one tokenizer piece (a run of letters, or of symbols),
            at most: open_clip's BPE costs the square of a piece's length (8,192 letters:
            17.7 s), so a longer piece is split into pieces of this length. Ordinary captions
            (no such piece, 76 words within ``max_tokenize_chars``) tokenize exactly as before.
        sample_timeout_s: seconds one sample, run apart after its batch's worker died (or a
            chunk of a few such samples), may take through the whole score chain; a sample
            alone over it gets status ``timeout`` (``curate.scoring.isolate``).
        batch_timeout_s: seconds one stage call on a batch may take before its worker is
            stopped (a stage that never returns); the batch's samples are then run alone.
            0: no limit.
        worker_memory_mb: megabytes a worker's resident memory may grow during one stage
            call before the worker is stopped (a sample that allocates without bound); its
            samples are then run alone, and the one that does it alone gets ``worker_died``.
            0: no limit (Ray's memory monitor still kills a worker near the node's limit).
        worker_retries: how many more times a batch whose worker died is run whole before its
            samples are run apart, and a sample alone before it is ``worker_died`` (0: the
            isolation pass is the retry; every sample of the batch runs again there, on a fresh
            worker, so a worker lost with its node costs nothing more, while each plan retry of
            a poison batch is one more death and model reload; see ``docs/architecture.md``).
    """

    max_aspect_ratio: float = field(default=100.0, metadata={"min": 1})
    max_resized_pixels: int = field(default=40_000_000, metadata={"min": 1})
    max_member_bytes: int = field(default=256 * 2**20, metadata={"min": 1})
    max_caption_chars: int = field(default=8192, metadata={"min": 1})
    max_tokenize_chars: int = field(default=2000, metadata={"min": 77})
    max_word_chars: int = field(default=200, metadata={"min": 16})
    sample_timeout_s: float = field(default=120.0, metadata={"min": 0.1})
    batch_timeout_s: float = field(default=1800.0, metadata={"min": 0})
    worker_memory_mb: int = field(default=8192, metadata={"min": 0})
    worker_retries: int = field(default=0, metadata={"min": 0})

    def check_shape(self, width: int, height: int, resize_short: int | None = None,
                    resize_long: int | None = None) -> str | None:
        """Why an image of ``width x height`` pixels must not be decoded or resized, or ``None``.

        Args:
            width, height: the image's size in pixels (from its header).
            resize_short: a step will resize the shorter side to this many pixels (open_clip's
                ``Resize(S)``), keeping the aspect ratio.
            resize_long: a step will resize the longer side to this many pixels (the detector).

        Returns:
            A message naming the shape and the limit, or ``None`` when within the limits.
        """
        if width <= 0 or height <= 0:
            return None  # the decoder names a zero size itself
        long, short = max(width, height), min(width, height)
        ratio = long / short
        if ratio > self.max_aspect_ratio:
            return (f"{width}x{height} pixels: aspect ratio {ratio:.4g}:1 over limits.max_aspect_ratio "
                    f"{self.max_aspect_ratio:g}")
        for target, scale in ((resize_short, (resize_short or 0) / short), (resize_long, (resize_long or 0) / long)):
            if target:
                pixels = math.ceil(width * scale) * math.ceil(height * scale)
                if pixels > self.max_resized_pixels:
                    return (f"{width}x{height} pixels resized to {target} px would be {pixels} pixels, over "
                            f"limits.max_resized_pixels {self.max_resized_pixels}")
        return None


DEFAULT_LIMITS = Limits()
