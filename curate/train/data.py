"""Training data: stream the pool's shards and keep only the subset's uids (no reshard needed).

Each training worker (rank ``r`` of ``R``) runs ``W`` data streams (DataLoader workers; one when
``data_workers`` is 0), ``T = R * W`` streams in all. A stream reads, epoch after epoch forever:

1. the shards in an order shuffled per epoch (seeded); stream ``g`` takes every ``T``-th shard,
   or, when there are fewer shards than streams, every ``T``-th sample of every shard;
2. each sample whose uid is in the subset, as many times as the uid appears there (upweighting,
   as DataComp's resharder does); with no subset, every sample;
3. through a shuffle buffer (webdataset's ``shuffle(n)`` scheme, seeded per stream);
4. decoded (``curate.stages.decode.decode_pil``, after the header checks of
   ``curate.limits.DEFAULT_LIMITS`` for a resize to the model's input size; large images at
   about twice the model's input size, JPEGs drafted and other formats reduced, since the
   transform shrinks them anyway), transformed with open_clip's train transform and tokenised
   (``curate.models.BoundedTokenizer``), into full batches of ``local_batch_size``.

A sample that cannot be used (no caption, no image, broken image, cut shard) is skipped and
counted by its index status; a broken shard is counted and read as far as it goes. Each batch
carries its stream's ``cursor``: the number of shuffled samples the stream has consumed. A
checkpoint stores every stream's cursor, and a resumed run fast-forwards each stream by its
cursor *without decoding*, so it sees exactly the batches the interrupted run would have seen.
Augmentation is seeded per batch from ``(seed, stream, cursor)`` for the same reason.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from curate import schema as S
from curate.io.samples import shard_records
from curate.io.shards import SHARD_COMPLETE, read_shard

from curate.stages.decode import DecodeError, decode_pil

# Consecutive epochs in which a stream finds no sample of the subset before it gives up.
MAX_EMPTY_EPOCHS = 3


class NoTrainingData(RuntimeError):
    """A data stream found no usable sample of the subset in its shards."""


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class SubsetStream(torch.utils.data.IterableDataset):
    """Batches of one training worker (see the module docstring).

    Args:
        shards: shard URLs (already expanded).
        subset: ``uid -> multiplicity``, or ``None`` for every sample.
        preprocess: open_clip train transform, PIL image -> ``(3, S, S) float32``.
        tokenizer: ``curate.models.BoundedTokenizer`` (``get_tokenizer``), list of str ->
            ``(B, L) int64``.
        local_batch_size: samples per batch.
        rank, world_size: this worker's place among the Ray Train workers.
        num_streams: streams per worker (``max(1, data_workers)``).
        seed: run seed.
        shuffle_buffer: samples per stream held for shuffling (0 or 1: no shuffling).
        start_step: the step the run starts at (DataLoader workers take batches in turn, so the
            stream that delivers step ``s`` is ``s % num_streams``).
        start_cursors: per-stream cursors from a checkpoint, or ``None`` at the start.
        decode_min_side: decode large images at a reduced scale keeping the shorter side at
            least this many pixels (``decode_pil(min_side=..., reduce=True)``: JPEGs drafted,
            other formats reduced right after decoding); ``None`` decodes in full.
        input_size: the model's input side in pixels (``curate.models.clip_input_size``): the
            images' shape is checked for a resize of the shorter side to it
            (``curate.limits.DEFAULT_LIMITS``; an image over it is skipped as ``too_large``);
            ``None``: the aspect ratio only.

    Yields:
        ``{"images": (B, 3, S, S) float32, "texts": (B, L) int64, "stream": int, "cursor": int,
        "epoch": int, "skipped": {status: count}, "problems": [str]}``; ``skipped`` and
        ``problems`` cover what the stream met since its previous batch.

    Raises:
        NoTrainingData: ``MAX_EMPTY_EPOCHS`` epochs in a row without a single subset sample.
    """

    def __init__(self, shards: list[str], subset: dict[str, int] | None, preprocess, tokenizer,
                 local_batch_size: int, rank: int = 0, world_size: int = 1, num_streams: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, start_step: int = 0, start_cursors: list[int] | None = None,
                 decode_min_side: int | None = None, input_size: int | None = None):
        super().__init__()
        if not shards:
            raise ValueError("no shards to train on")
        self.shards, self.subset = list(shards), subset
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.local_batch_size, self.rank, self.world_size = local_batch_size, rank, world_size
        self.num_streams, self.seed, self.shuffle_buffer = num_streams, seed, shuffle_buffer
        self.start_step, self.decode_min_side, self.input_size = start_step, decode_min_side, input_size
        self.start_cursors = list(start_cursors) if start_cursors else [0] * num_streams
        if len(self.start_cursors) != num_streams:
            raise ValueError(f"checkpoint has {len(self.start_cursors)} data streams per worker, this run {num_streams}")

    # -- raw, shuffled samples --------------------------------------------------------------
    def _records(self, stream: int, problems: list[str]) -> Iterator[tuple[dict, int]]:
        total = self.world_size * self.num_streams
        empty_epochs = 0
        epoch = 0
        while True:
            order = np.random.default_rng(_seed(self.seed, 1, epoch)).permutation(len(self.shards))
            shard_split = len(self.shards) >= total
            mine = order[stream::total] if shard_split else order
            found = 0
            position = 0
            for i in mine:
                url = self.shards[i]
                result = read_shard(url)
                if result.status != SHARD_COMPLETE:
                    problems.append(f"{url}: {result.status}: {result.error}")
                records = shard_records(result.samples)  # two samples of a shard with one uid: both skipped
                for rec in records:
                    position += 1
                    if not shard_split and (position - 1) % total != stream:
                        continue
                    copies = 1 if self.subset is None else self.subset.get(rec[S.UID], 0)
                    for _ in range(copies):
                        found += 1
                        yield rec, epoch
            empty_epochs = 0 if found else empty_epochs + 1
            if empty_epochs >= MAX_EMPTY_EPOCHS:
                unread = sorted({p.split(": ", 1)[0] for p in problems})
                raise NoTrainingData(
                    f"data stream {stream} of {total} found no sample of the subset in {MAX_EMPTY_EPOCHS} passes "
                    f"over its shards ({len(self.shards)} shards in all); check that the subset's uids come from "
                    f"these shards, or use fewer workers / data_workers"
                    + (f"; shards that could not be read fully: {', '.join(unread[:5])}" if unread else "")
                )
            epoch += 1

    def _shuffled(self, stream: int, problems: list[str]) -> Iterator[tuple[dict, int]]:
        rng = np.random.default_rng(_seed(self.seed, 2, stream))
        if self.shuffle_buffer <= 1:
            yield from self._records(stream, problems)
            return
        buffer: list[tuple[dict, int]] = []
        for item in self._records(stream, problems):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], item = item, buffer[j]
            yield item

    # -- batches ---------------------------------------------------------------------------
    def _slot(self) -> int:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return (worker + self.start_step) % self.num_streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot = self._slot()
        stream = self.rank * self.num_streams + slot
        problems: list[str] = []
        skipped: collections.Counter = collections.Counter()
        items = self._shuffled(stream, problems)
        cursor = 0
        for _ in range(self.start_cursors[slot]):  # fast-forward: no decoding
            next(items)
            cursor += 1
        problems.clear()
        images, texts = [], []
        batch_start = cursor
        for rec, epoch in items:
            cursor += 1
            if not images:
                torch.manual_seed(_seed(self.seed, 3, stream, batch_start))
            if rec[S.STATUS] != S.STATUS_OK:
                skipped[rec[S.STATUS]] += 1
                continue
            try:
                image = self.preprocess(decode_pil(rec[S.IMAGE_BYTES], min_side=self.decode_min_side,
                                                   resize_short=self.input_size, reduce=True))
            except DecodeError as e:
                skipped[e.status] += 1
                continue
            except Exception:  # a transform that chokes on an odd image
                skipped[S.STATUS_DECODE_ERROR] += 1
                continue
            images.append(image)
            texts.append(rec[S.TEXT])
            if len(images) == self.local_batch_size:
                yield {
                    "images": torch.stack(images),
                    "texts": self.tokenizer(texts),
                    "stream": slot,
                    "cursor": cursor,
                    "epoch": epoch,
                    "skipped": dict(skipped),
                    "problems": list(problems),
                }
                images, texts = [], []
                skipped.clear()
                problems.clear()
                batch_start = cursor


def collate_one(batch: dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for batches that are already whole (``batch_size=None``)."""
    return batch
