"""Shard records: one shard URL in, one record per sample out (the first step of the score plan).

A shard that is empty or cannot be opened travels as one *shard record* (status ``__shard__``)
so that the writer learns its fate; it never reaches an index file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from curate import schema as S
from curate.io.samples import mark_duplicate_uids, sample_digest, sample_to_record, shard_records
from curate.io.shards import (
    SHARD_COMPLETE,
    SHARD_TRUNCATED,
    SHARD_UNREADABLE,
    iter_shard,
    plan_members,
    read_shard,
    stable_uid,
)
from curate.limits import DEFAULT_LIMITS
from curate.stages.common import object_array

SHARD_RECORD = "__shard__"

# Columns that travel with every record through the plan and never reach the index.
SEQ, SHARD_N, SHARD_STATUS, SHARD_ERROR = "_seq", "_shard_n", "_shard_status", "_shard_error"
IGNORED = "_shard_ignored"
FIXES = "_caption_fixes"
DIGEST = "_digest"



def read_shard_records(row: dict[str, Any], max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes,
                       max_caption_chars: int = DEFAULT_LIMITS.max_caption_chars) -> Iterator[dict[str, Any]]:
    """One shard URL in, one record per sample out (the plan reads through
    ``read_shard_batches``); never raises.

    Every record also carries ``_seq`` (position in the shard), ``_shard_n`` (samples in the
    shard), ``_shard_status``, ``_shard_error``, ``_caption_fixes`` (the caption repairs of
    ``curate.io.samples.clean_caption``, ``""`` when none) and ``_digest`` (16 bytes that are
    equal for copies of one sample, ``curate.io.samples.sample_digest``). An empty or unreadable
    shard yields a single shard record with status ``__shard__`` and ``_shard_n == 0``; so does a
    shard whose reading raised for a reason of our own (its error names it), so that one shard
    never stops the job.

    Memory: a local, undamaged shard (a plain ``.tar`` as img2dataset and DataComp write, or a
    compressed ``.tar.gz``) is streamed: a header-only pass (``curate.io.shards.plan_members``;
    a compressed shard is decompressed through once for it, its data dropped) counts its
    samples and finds where each ends, then each record is yielded as soon as its sample is
    read, so a read holds about one sample whatever the shard's size. Different samples sharing
    a uid are then marked ``duplicate_uid`` when the shard's index file is written
    (``finalize_shard``). Any other shard (remote, truncated, damaged) is read whole and marked
    here (``mark_duplicate_uids``); every member is size-checked either way.

    Args:
        row: ``{"url": shard URL}``.
        max_member_bytes: a tar member larger than this (from its header) is never read and its
            sample is ``too_large`` (``curate.io.shards.read_shard``); default
            ``DEFAULT_LIMITS.max_member_bytes`` (256 MiB); the plan passes
            ``limits.max_member_bytes`` (``curate.scoring.plan.read_kwargs``).
        max_caption_chars: longest caption kept (``curate.io.samples.clean_caption``).

    A row may also name a range of the shard's positions, ``start`` (default 0) and ``stop``
    (default -1: to the end), so that one shard is read by two tasks (``shard_items``: the
    plan's first block is the first sample of its first shard alone). A streamed shard of ``n``
    samples yields the records at positions ``start <= _seq < stop``, and stops reading at
    ``stop``; each range's last record carries how the shard ended as far as that range saw it
    (a range that stops early saw it complete). Positions are the order samples are read in
    (then the missing ones), the same for every range since each reads the same bytes; so the
    ranges of one shard together yield exactly the records one whole read would. A shard that
    cannot be streamed is read whole by the range that starts at 0 (the others yield nothing).
    """
    url = str(row["url"])
    start, stop = int(row.get("start", 0)), int(row.get("stop", -1))
    try:
        plan = plan_members(url, max_member_bytes=max_member_bytes)
    except Exception:
        plan = None
    if plan is not None and plan.keys:
        n = len(plan.keys)
        if start < n:
            yield from _streamed_records(url, plan, max_member_bytes, max_caption_chars,
                                         start, None if stop < 0 or stop >= n else stop)
        return
    if start > 0:
        return
    try:
        records = _shard_records(url, max_member_bytes, max_caption_chars)
    except Exception as e:  # an internal fault on this shard: report it as unreadable, go on
        records = [
            _shard_record(url, SHARD_UNREADABLE, f"internal error reading the shard: {type(e).__name__}: {e}", 0)
        ]
    yield from records


# The plan's first block: this many samples of its first shard, read by a task of their own, so
# that the first samples pass every stage while the rest of the pool is still being read (a
# stage taking the usual batch of 8 first would hold the first row back by 8 samples' time;
# CRAFT on 2 CPU cores: about 3 s, ``benchmarks/startup_bench.py``).
FIRST_BLOCK_SAMPLES = 1
# A batch of the read is yielded once its image bytes reach this, before it has its rows, so that
# large samples (up to limits.max_member_bytes each) are not held eight at a time twice over:
# Ray Data's cut that follows holds up to a block of rows anyway.
MAX_BATCH_BYTES = 64 * 2**20


def shard_items(urls: list[str], first_block_samples: int = FIRST_BLOCK_SAMPLES) -> list[dict[str, Any]]:
    """The read's work items, one per shard (``{"url", "start": 0, "stop": -1}``), except that
    the first shard is read as two ranges, its first ``first_block_samples`` samples and the
    rest (``read_shard_records``), so that the plan's first block is that small."""
    items = [{"url": str(u), "start": 0, "stop": -1} for u in urls]
    if items and first_block_samples > 0:
        first = items[0]["url"]
        items[:1] = [{"url": first, "start": 0, "stop": int(first_block_samples)},
                     {"url": first, "start": int(first_block_samples), "stop": -1}]
    return items


def read_shard_batches(items: dict[str, np.ndarray], rows_per_batch: int = 8,
                       max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes,
                       max_caption_chars: int = DEFAULT_LIMITS.max_caption_chars,
                       max_batch_bytes: int = MAX_BATCH_BYTES) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` function of the read: work items (``shard_items``) in, the
    records of their shards out (``read_shard_records``), as numpy batches of
    ``rows_per_batch`` records (fewer at the end of an item, or once their image bytes reach
    ``max_batch_bytes``; ``records_to_batch``) yielded as they are read. A ``map_batches`` read,
    unlike a ``flat_map``, is fused by Ray Data with the streaming cut into blocks that follows
    it (``curate.scoring.plan.read_dataset``): one task per item, and no second copy of the image
    bytes through the object store.

    Args:
        items: columns ``url`` (str), ``start`` and ``stop`` (int64) of the work items.
        rows_per_batch: records per yielded batch (>= 1).
        max_member_bytes, max_caption_chars: as in ``read_shard_records``.
        max_batch_bytes: image bytes after which a batch is yielded short.
    """
    rows_per_batch = max(1, int(rows_per_batch))
    for i in range(len(items["url"])):
        row = {"url": str(items["url"][i]), "start": int(items["start"][i]), "stop": int(items["stop"][i])}
        chunk: list[dict[str, Any]] = []
        held = 0
        for rec in read_shard_records(row, max_member_bytes=max_member_bytes, max_caption_chars=max_caption_chars):
            chunk.append(rec)
            held += len(rec[S.IMAGE_BYTES])
            if len(chunk) == rows_per_batch or held >= max_batch_bytes:
                yield records_to_batch(chunk)
                chunk, held = [], 0
        if chunk:
            yield records_to_batch(chunk)


def shard_record_list(url: str, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes) -> list[dict[str, Any]]:
    """All records of one shard as ``read_shard_records`` yields them, with different samples
    that share a uid marked ``duplicate_uid`` as the index file will have them (what the one-process
    ``StageChain``, the tests and the fuzz harness read). ``max_member_bytes``: as in
    ``read_shard_records``."""
    records = list(read_shard_records({"url": url}, max_member_bytes=max_member_bytes))
    fresh = [r for r in records if r[S.STATUS] not in (S.STATUS_DUPLICATE_UID, SHARD_RECORD)]
    mark_duplicate_uids(fresh, same=lambda a, b: a[DIGEST] == b[DIGEST])
    return records


def _streamed_records(url: str, plan, max_member_bytes: int, max_caption_chars: int, start: int = 0,
                      stop: int | None = None) -> Iterator[dict[str, Any]]:
    """The records at positions ``start <= _seq < stop`` (``None``: to the end) of a streamed shard."""
    n = len(plan.keys)
    seen: set[str] = set()
    held: dict[str, Any] | None = None  # the last record waits for the end: it says how the shard ended
    status, error, ignored = SHARD_COMPLETE, "", 0
    gen = iter_shard(url, plan, max_member_bytes=max_member_bytes)
    stopped = False
    while True:
        if stop is not None and len(seen) >= stop:  # the rest of the shard is another range's
            gen.close()
            stopped = True
            break
        try:
            sample = next(gen)
        except StopIteration as finished:
            status, error, ignored = finished.value.status, finished.value.error or "", finished.value.ignored_members
            break
        except Exception as e:  # an internal fault mid-shard: the rest of the shard is named below
            status, error = SHARD_TRUNCATED, f"internal error reading the shard: {type(e).__name__}: {e}"
            break
        seen.add(sample["__key__"])
        if len(seen) - 1 < start:  # an earlier range's sample: read (the positions count it), not yielded
            continue
        if held is not None:
            yield held
        held = _finish_record(sample_to_record(sample, max_caption_chars), digest=True)
        held.update({SEQ: len(seen) - 1, SHARD_N: n, SHARD_STATUS: SHARD_COMPLETE, SHARD_ERROR: "", IGNORED: 0})
    # Fewer samples than the headers promised (the file changed or failed under us): each missing
    # sample still gets its row, so the shard adds up and nothing vanishes from the counts.
    missing = [] if stopped else [k for k in plan.keys if k not in seen]
    if missing and status == SHARD_COMPLETE:
        status, error = SHARD_TRUNCATED, error or "the shard ended before all its samples were read"
    error = S.cap_error(error)
    ending = {SHARD_STATUS: status, SHARD_ERROR: error, IGNORED: ignored}
    if held is not None:
        held.update(ending)
        yield held
    for seq, key in enumerate(missing, start=len(seen)):
        if seq < start or (stop is not None and seq >= stop):
            continue
        yield {S.UID: stable_uid(url, key), S.KEY: key, S.SHARD: url, S.TEXT: "", S.IMAGE_BYTES: b"",
               S.STATUS: S.STATUS_TRUNCATED, S.ERROR: S.cap_error(f"not read: {error}"), FIXES: "", DIGEST: b"",
               SEQ: seq, SHARD_N: n, **ending}


def _finish_record(rec: dict[str, Any], digest: bool) -> dict[str, Any]:
    # Inside Ray, "no value" is an empty string / bytes: a block of only None would become a
    # null or float column that Arrow cannot merge with strings. The writer maps "" to null.
    rec[DIGEST] = sample_digest(rec) if digest else b""
    rec[S.TEXT] = rec[S.TEXT] or ""
    rec[S.ERROR] = rec[S.ERROR] or ""
    rec[S.IMAGE_BYTES] = rec[S.IMAGE_BYTES] or b""
    rec[FIXES] = rec.pop("caption_fixes", "")
    return rec


def _shard_record(url: str, status: str, error: str, ignored: int) -> dict[str, Any]:
    error = S.cap_error(error or "")
    return {S.UID: "", S.KEY: "", S.SHARD: url, S.TEXT: "", S.IMAGE_BYTES: b"", S.STATUS: SHARD_RECORD,
            S.ERROR: error or "", SEQ: -1, SHARD_N: 0, SHARD_STATUS: status, SHARD_ERROR: error or "",
            IGNORED: ignored, FIXES: "", DIGEST: b""}


def _shard_records(url: str, max_member_bytes: int, max_caption_chars: int) -> list[dict[str, Any]]:
    result = read_shard(url, max_member_bytes=max_member_bytes)
    n = len(result.samples)
    if n == 0:
        return [_shard_record(url, result.status, result.error or "", result.ignored_members)]
    extra = {SHARD_N: n, SHARD_STATUS: result.status, SHARD_ERROR: S.cap_error(result.error or ""),
             IGNORED: result.ignored_members}
    out = []
    for seq, rec in enumerate(shard_records(result.samples, max_caption_chars)):  # duplicate uids marked here
        rec = _finish_record(rec, digest=False)
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
