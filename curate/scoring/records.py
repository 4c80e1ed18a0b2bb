"""Shard records: one shard URL in, one record per sample out (the first step of the score plan).

A shard that is empty or cannot be opened travels as one *shard record* (status ``__shard__``)
so that the writer learns its fate; it never reaches an index file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate import schema as S
from curate.io.samples import shard_records
from curate.io.shards import SHARD_UNREADABLE, read_shard
from curate.stages.common import object_array

SHARD_RECORD = "__shard__"

# Columns that travel with every record through the plan and never reach the index.
SEQ, SHARD_N, SHARD_STATUS, SHARD_ERROR = "_seq", "_shard_n", "_shard_status", "_shard_error"
IGNORED = "_shard_ignored"
FIXES = "_caption_fixes"



def read_shard_records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray ``flat_map`` function: one shard URL in, one record per sample out; never raises.

    Every record also carries ``_seq`` (position in the shard), ``_shard_n`` (samples read from
    the shard), ``_shard_status``, ``_shard_error`` and ``_caption_fixes`` (the caption repairs
    of ``curate.io.samples.clean_caption``, ``""`` when none). Samples of the shard that share a
    uid get status ``duplicate_uid`` (``mark_duplicate_uids``). An empty or unreadable shard
    yields a single shard record with status ``__shard__`` and ``_shard_n == 0``; so does a shard
    whose reading raised for a reason of our own (its error names it), so that one shard never
    stops the job.
    """
    url = row["url"]
    try:
        return _shard_records(url)
    except Exception as e:  # an internal fault on this shard: report it as unreadable, go on
        return [_shard_record(url, SHARD_UNREADABLE, f"internal error reading the shard: {type(e).__name__}: {e}", 0)]


def _shard_record(url: str, status: str, error: str, ignored: int) -> dict[str, Any]:
    return {S.UID: "", S.KEY: "", S.SHARD: url, S.TEXT: "", "image_bytes": b"", S.STATUS: SHARD_RECORD,
            S.ERROR: error or "", SEQ: -1, SHARD_N: 0, SHARD_STATUS: status, SHARD_ERROR: error or "",
            IGNORED: ignored, FIXES: ""}


def _shard_records(url: str) -> list[dict[str, Any]]:
    result = read_shard(url)
    n = len(result.samples)
    if n == 0:
        return [_shard_record(url, result.status, result.error or "", result.ignored_members)]
    extra = {SHARD_N: n, SHARD_STATUS: result.status, SHARD_ERROR: result.error or "", IGNORED: result.ignored_members}
    records = shard_records(result.samples)
    out = []
    for seq, rec in enumerate(records):
        # Inside Ray, "no value" is an empty string / bytes: a block of only None would become a
        # null or float column that Arrow cannot merge with strings. The writer maps "" to null.
        rec[S.TEXT] = rec[S.TEXT] or ""
        rec[S.ERROR] = rec[S.ERROR] or ""
        rec["image_bytes"] = rec["image_bytes"] or b""
        rec[FIXES] = rec.pop("caption_fixes", "")
        rec.update({SEQ: seq, **extra})
        out.append(rec)
    return out


def records_to_batch(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Records (``read_shard_records`` rows) as one numpy batch, the way Ray Data hands a block to
    ``map_batches(batch_format="numpy")``: ints and floats as numeric arrays, the rest as
    ``object`` arrays."""
    batch: dict[str, np.ndarray] = {}
    for name in records[0]:
        values = [r[name] for r in records]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            batch[name] = np.asarray(values, dtype=np.int64)
        else:
            batch[name] = object_array(values)
    return batch
