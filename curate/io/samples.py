"""From a webdataset sample (dict of member bytes) to a pipeline record.

A record holds the index identity columns (``uid``, ``key``, ``shard``), the caption, the
image bytes, and ``status`` / ``error`` for what is already known to be wrong (no image
member, no caption, a sample cut short by a truncated shard).
"""

from __future__ import annotations

import json
from typing import Any

from curate import schema as S
from curate.io.shards import is_datacomp_uid, stable_uid

# Image extensions in order of preference (webdataset's decoders use the same names).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pbm", "jp2", "img", "image")
CAPTION_EXTS = ("txt", "caption", "text")


def _decode_text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8-sig", errors="replace").strip()


def sample_to_record(sample: dict[str, Any]) -> dict[str, Any]:
    """Turn one webdataset sample into a record; never raises.

    Args:
        sample: ``{"__key__": str, "__url__": str, "<ext>": bytes, ...}`` as ``read_shard``
            yields it (with its ``__truncated__``, ``__invalid__`` and ``__notes__`` flags).

    Returns:
        ``{"uid", "key", "shard", "text", "image_bytes", "status", "error"}``. The uid is the
        32-hex ``uid`` of the sample's ``.json`` when present (DataComp), else
        ``stable_uid(shard, key)``. The caption is the first non-empty of the ``.txt`` member and
        the ``caption`` field of the ``.json``. ``error`` is set only when ``status`` is not ok.
    """
    key, url = sample["__key__"], sample["__url__"]
    rec = {S.UID: stable_uid(url, key), S.KEY: key, S.SHARD: url, S.TEXT: None, "image_bytes": None,
           S.STATUS: S.STATUS_OK, S.ERROR: None}
    try:
        _fill_record(sample, rec)
    except Exception as e:  # a sample this odd still gets its row
        rec.update({S.STATUS: S.STATUS_INVALID_SAMPLE, S.ERROR: f"{type(e).__name__}: {e}"[:1000], "image_bytes": None})
    return rec


def _fill_record(sample: dict[str, Any], rec: dict[str, Any]) -> None:
    meta: dict[str, Any] = {}
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
            meta = loaded if isinstance(loaded, dict) else {}
        except (ValueError, RecursionError):
            meta = {}  # the uid falls back to the stable hash
    if is_datacomp_uid(meta.get("uid")):
        rec[S.UID] = meta["uid"]
    text = None
    for ext in CAPTION_EXTS:
        if ext in sample:
            text = _decode_text(sample[ext])
            break
    if not text and isinstance(meta.get("caption"), str):
        text = meta["caption"].strip() or text
    rec[S.TEXT] = text
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    rec["image_bytes"] = sample.get(image_ext) if image_ext else None
    notes = "; ".join(sample.get("__notes__", []))
    members = sorted(k for k in sample if not k.startswith("__"))
    if sample.get("__invalid__"):
        status, error = S.STATUS_INVALID_SAMPLE, sample["__invalid__"]
    elif sample.get("__truncated__"):
        status, error = S.STATUS_TRUNCATED, f"the shard is cut or damaged inside this sample; members read: {members}"
    elif image_ext is None:
        status, error = S.STATUS_MISSING_IMAGE, f"no image member; members: {members}"
    elif not text:
        status = S.STATUS_MISSING_CAPTION
        error = "no .txt member and no 'caption' in .json" if text is None else "empty caption"
    else:
        status, error = S.STATUS_OK, None
    if status != S.STATUS_OK and notes:
        error = f"{error}; {notes}"
    rec[S.STATUS], rec[S.ERROR] = status, error
