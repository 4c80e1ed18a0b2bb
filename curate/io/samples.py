"""From a webdataset sample (dict of member bytes) to a pipeline record.

A record holds the index identity columns (``uid``, ``key``, ``shard``), the caption, the
image bytes, and ``status`` / ``error`` for what is already known to be wrong (no image
member, no caption, a sample cut short by a truncated shard, a member over
``limits.max_member_bytes`` that was not read).

Caption policy (text at the boundary: a caption is valid UTF-8 once read, whatever the shard
holds). ``clean_caption`` applies it to ``.txt`` members and to the ``.json`` ``caption``:

- bytes that are not UTF-8 are replaced by U+FFFD (``bytes.decode(errors="replace")``); a
  UTF-8 byte-order mark is dropped;
- lone UTF-16 surrogates (a JSON ``"\\ud83d"`` escape without its pair) become U+FFFD;
- control characters (Unicode category ``Cc``: NUL, C0, DEL, C1) other than tab, newline and
  carriage return are removed;
- leading and trailing white space is stripped; a caption is then cut to
  ``MAX_CAPTION_CHARS`` characters (CLIP reads 77 tokens, a few hundred characters; the cap
  keeps one hostile caption from costing megabytes in every later step);
- a caption that is empty after this is ``missing_caption`` ("empty caption");
- a ``.json`` ``caption`` that is not a string (a number, ``NaN``, a list, an object, ``true``,
  ``null``) is ``missing_caption`` with a message naming its JSON type; a ``.json`` that is not
  valid JSON is named in the message too.

What was repaired is recorded per record (``caption_fixes``) and counted per shard by
``curate score``; the caption itself stays usable (status ``ok``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from curate import schema as S
from curate.io.formats import image_extensions
from curate.io.shards import is_datacomp_uid, stable_uid
from curate.limits import DEFAULT_LIMITS

CAPTION_EXTS = ("txt", "caption", "text")
# Longest caption kept, in characters (see the module docstring): the default of
# ``curate.limits.Limits.max_caption_chars``.
MAX_CAPTION_CHARS = DEFAULT_LIMITS.max_caption_chars

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_caption(text: str | bytes | None, max_chars: int = MAX_CAPTION_CHARS) -> tuple[str | None, list[str]]:
    """Apply the caption policy of the module docstring.

    Args:
        text: a ``.txt`` member's bytes, a JSON string, or ``None``.
        max_chars: longest caption kept, in characters (``limits.max_caption_chars``).

    Returns:
        ``(caption, fixes)``: the caption as valid UTF-8 text (``""`` when nothing is left,
        ``None`` for ``None``) and the repairs made, e.g. ``["invalid UTF-8 replaced by U+FFFD"]``.
    """
    if text is None:
        return None, []
    fixes: list[str] = []
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = text.decode("utf-8-sig", errors="replace")
            fixes.append("invalid UTF-8 replaced by U+FFFD")
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
        fixes.append("lone surrogate replaced by U+FFFD")
    if _CONTROLS.search(text):
        text = _CONTROLS.sub("", text)
        fixes.append("control characters removed")
    text = text.strip()
    if len(text) > max_chars:
        fixes.append(f"cut from {len(text)} to {max_chars} characters")
        text = text[:max_chars].rstrip()
    return text, fixes


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def image_member(sample: dict[str, Any]) -> str | None:
    """The extension of the sample's image member (first of ``curate.io.formats.image_extensions()``
    present), or ``None``."""
    return next((e for e in image_extensions() if e in sample), None)


# The columns of a record (``sample_to_record``): what the first stage of the score plan gets,
# besides the read's own bookkeeping (``curate.scoring.records``).
RECORD_COLUMNS = (S.UID, S.KEY, S.SHARD, S.TEXT, S.IMAGE_BYTES, S.STATUS, S.ERROR, "caption_fixes")


def sample_to_record(sample: dict[str, Any], max_caption_chars: int = MAX_CAPTION_CHARS) -> dict[str, Any]:
    """Turn one webdataset sample into a record; never raises.

    Args:
        sample: ``{"__key__": str, "__url__": str, "<ext>": bytes, ...}`` as ``read_shard``
            yields it (with its ``__truncated__``, ``__invalid__``, ``__too_large__`` and
            ``__notes__`` flags; the status is the first of ``invalid_sample``, ``too_large``,
            ``truncated``, ``missing_image``, ``missing_caption`` that applies).

    Returns:
        ``{"uid", "key", "shard", "text", "image_bytes", "status", "error", "caption_fixes"}``.
        The uid is the ``uid`` of the sample's ``.json`` when it is a uid (``curate.schema.is_uid``:
        exactly 32 lower-case hex characters; DataComp), else ``stable_uid(shard, key)``, as for a
        sample without one: a ``.json`` uid that fails the rule (``"<32 hex>\\n"``, upper case)
        is never stored, so no index row, subset or reshard ever holds it. The caption is the
        first non-empty of the ``.txt`` member and the ``caption`` field of the ``.json``, cleaned
        by ``clean_caption``. ``error`` is set only when ``status`` is not ok, and capped
        (``curate.schema.cap_error``); ``caption_fixes`` is ``"; "``-joined repairs or ``""``.
    """
    key, url = sample["__key__"], sample["__url__"]
    rec = dict(zip(RECORD_COLUMNS, (stable_uid(url, key), key, url, None, None, S.STATUS_OK, None, "")))
    try:
        _fill_record(sample, rec, max_caption_chars)
    except Exception as e:  # a sample this odd still gets its row
        rec.update({
            S.STATUS: S.STATUS_INVALID_SAMPLE, S.ERROR: S.cap_error(f"{type(e).__name__}: {e}"), S.IMAGE_BYTES: None,
        })
    return rec


def _fill_record(sample: dict[str, Any], rec: dict[str, Any], max_caption_chars: int = MAX_CAPTION_CHARS) -> None:
    meta: dict[str, Any] = {}
    json_problem = None
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
            if isinstance(loaded, dict):
                meta = loaded
            else:
                json_problem = f".json holds {_json_type(loaded)}, not an object"
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            json_problem = f".json is not valid JSON ({type(e).__name__})"
    if is_datacomp_uid(meta.get("uid")):  # else the stable uid stays (see sample_to_record)
        rec[S.UID] = meta["uid"]
    text, fixes = None, []
    why_none = None
    for ext in CAPTION_EXTS:
        if ext in sample:
            text, fixes = clean_caption(sample[ext], max_caption_chars)
            break
    if not text and "caption" in meta:
        value = meta["caption"]
        if isinstance(value, str):
            json_text, json_fixes = clean_caption(value, max_caption_chars)
            if json_text or text is None:
                text, fixes = json_text, json_fixes
        elif text is None:
            why_none = f"the .json 'caption' is {_json_type(value)}, not a string"
    rec[S.TEXT] = text
    rec["caption_fixes"] = "; ".join(fixes)
    image_ext = image_member(sample)
    rec[S.IMAGE_BYTES] = sample.get(image_ext) if image_ext else None
    notes = list(sample.get("__notes__", []))
    members = sorted(k for k in sample if not k.startswith("__"))
    if sample.get("__invalid__"):
        status, error = S.STATUS_INVALID_SAMPLE, sample["__invalid__"]
    elif sample.get("__too_large__"):  # a member over limits.max_member_bytes, never read
        status, error = S.STATUS_TOO_LARGE, sample["__too_large__"]
    elif sample.get("__truncated__"):
        status, error = S.STATUS_TRUNCATED, f"the shard is cut or damaged inside this sample; members read: {members}"
    elif image_ext is None:
        status, error = S.STATUS_MISSING_IMAGE, f"no image member (a format Pillow decodes); members: {members}"
    elif not text:
        status = S.STATUS_MISSING_CAPTION
        if why_none:
            error = why_none
        elif text is None:
            error = "no .txt member and no 'caption' in .json"
            if json_problem:
                error += f" ({json_problem})"
        else:
            error = "empty caption" + (f" after cleaning ({'; '.join(fixes)})" if fixes else "")
    else:
        status, error = S.STATUS_OK, None
    if status != S.STATUS_OK and notes:
        error = f"{error}; {'; '.join(notes)}"
    rec[S.STATUS], rec[S.ERROR] = status, S.cap_error(error)  # a key with 200,000 members lists them all


def shard_records(samples: list[dict[str, Any]], max_caption_chars: int = MAX_CAPTION_CHARS) -> list[dict[str, Any]]:
    """``sample_to_record`` of each sample of one shard, with ``mark_duplicate_uids`` applied:
    what score, reshard and train read from a shard."""
    records = [sample_to_record(sample, max_caption_chars) for sample in samples]
    mark_duplicate_uids(records)
    return records


def same_sample(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two records hold the same sample: the same image bytes and the same caption
    (copies of one sample, as ``curate reshard`` writes a uid the subset lists k times)."""
    return a.get(S.IMAGE_BYTES) == b.get(S.IMAGE_BYTES) and a.get(S.TEXT) == b.get(S.TEXT)


def sample_digest(rec: dict[str, Any]) -> bytes:
    """16-byte BLAKE2b digest of a record's image bytes and caption: equal for copies of one
    sample (``same_sample``), so a reader can remember a sample without holding its bytes."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(rec.get(S.IMAGE_BYTES) or b"")
    h.update(b"\0")
    h.update((rec.get(S.TEXT) or "").encode("utf-8", "surrogatepass"))
    return h.digest()


def mark_duplicate_uids(records: list[dict[str, Any]], same=None) -> int:
    """Give every record whose uid is carried by a *different* sample of the list status
    ``duplicate_uid`` (in place) and return how many were marked.

    Policy: a uid names one sample. Two different samples of one shard that carry the same uid
    (two ``.json`` files with one ``uid``) cannot be told apart by a subset of uids, so neither is
    scored nor ever kept by a filter; the ``error`` of each names the other keys. Copies of one
    sample (same image bytes and caption: DataComp-style upweighting, ``curate reshard`` output)
    are not duplicates and keep their status. Every record of a uid carried by different samples
    is marked, whatever its status was (its own fault is added to the message), so that neither
    ``reshard`` nor ``train`` ever takes one of them for the sample the uid names.

    Args:
        records: records with ``uid``, ``key``, ``status``, ``error`` (changed in place).
        same: ``same(a, b) -> bool``, whether two records hold one sample (default
            ``same_sample``: image bytes and caption; a streamed shard compares digests).
    """
    same = same or same_sample
    by_uid: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_uid.setdefault(rec[S.UID], []).append(i)
    marked = 0
    for uid, rows in by_uid.items():
        if len(rows) < 2 or all(same(records[rows[0]], records[j]) for j in rows[1:]):
            continue
        for i in rows:
            rec = records[i]
            others = [records[j][S.KEY] for j in rows if j != i]
            error = (f"uid {uid} is also carried by another sample: key(s) {others[:5]!r} of this shard"
                     + (f" and {len(others) - 5} more" if len(others) > 5 else ""))
            if rec[S.STATUS] != S.STATUS_OK:  # the sample's own fault is kept in the message
                error += f"; also {rec[S.STATUS]}: {rec[S.ERROR]}"
            rec[S.STATUS], rec[S.ERROR] = S.STATUS_DUPLICATE_UID, S.cap_error(error)
            rec[S.IMAGE_BYTES] = None
            marked += 1
    return marked
