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
    return data.decode("utf-8", errors="replace").strip()


def sample_to_record(sample: dict[str, Any]) -> dict[str, Any]:
    """Turn one webdataset sample into a record.

    Args:
        sample: ``{"__key__": str, "__url__": str, "<ext>": bytes, ...}`` as ``read_shard``
            yields it (``__truncated__`` marks a sample cut short).

    Returns:
        ``{"uid", "key", "shard", "text", "image_bytes", "status", "error"}``. The uid is the
        32-hex ``uid`` of the sample's ``.json`` when present (DataComp), else
        ``stable_uid(shard, key)``. The caption is the ``.txt`` member, else the ``caption``
        field of the ``.json``.
    """
    key, url = sample["__key__"], sample["__url__"]
    meta: dict[str, Any] = {}
    meta_error = None
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
            meta = loaded if isinstance(loaded, dict) else {}
        except (ValueError, UnicodeDecodeError) as e:
            meta_error = f"unreadable .json ({e})"
    uid = meta.get("uid") if is_datacomp_uid(meta.get("uid")) else stable_uid(url, key)
    text = None
    for ext in CAPTION_EXTS:
        if ext in sample:
            text = _decode_text(sample[ext])
            break
    if text is None and isinstance(meta.get("caption"), str):
        text = meta["caption"].strip()
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    status, error = S.STATUS_OK, meta_error
    if sample.get("__truncated__"):
        status, error = S.STATUS_TRUNCATED, "the shard ends inside this sample's members"
    elif image_ext is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        status, error = S.STATUS_MISSING_IMAGE, f"no image member; members: {members}"
    elif not text:
        status, error = S.STATUS_MISSING_CAPTION, "no .txt member and no 'caption' in .json" if text is None else "empty caption"
    return {
        S.UID: uid,
        S.KEY: key,
        S.SHARD: url,
        S.TEXT: text,
        "image_bytes": sample.get(image_ext) if image_ext else None,
        S.STATUS: status,
        S.ERROR: error,
    }
