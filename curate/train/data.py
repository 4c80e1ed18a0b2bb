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

Worker deaths. A sample whose decode kills its DataLoader worker (a native crash, an
``os.abort()``, an out-of-memory kill) is skipped and counted, and the run goes on
(``GuardedLoader``):

- each stream writes into a shared-memory record (``WorkerBoard``, created in the training
  process before the DataLoader and inherited by its workers) its worker's pid and the sample
  it is decoding right now (shard, position in the shard, key, cursor; none between samples);
- when the DataLoader reports a dead worker, the loader reads which stream died and on which
  sample, adds that sample to the stream's skip set (``SubsetStream.skip``: never decoded again,
  in any epoch or copy; the checkpoint stores the set, so a resumed run skips it too), and
  starts a new DataLoader with every stream at the cursor of the last batch the loop consumed
  from it: the loop sees the batches it would have seen had the sample been skipped from the
  start. The stream counts the sample as ``worker_died`` each time it passes it, as it counts
  the other skipped samples by their status;
- a thread of the training process watches the records: a sample that decodes for longer than
  ``limits.sample_timeout_s`` (``DEFAULT_LIMITS``) or grows its worker's resident memory by more
  than ``limits.worker_memory_mb`` gets its worker killed (SIGKILL), then is skipped the same
  way (``timeout``, ``worker_died``);
- it is bounded: a second death at the same place (the same sample, or the same stream between
  the same two samples) or more than ``max_deaths`` deaths in one run raise ``DataWorkerError``;
- a death costs about 5 s: torch looks at its workers that often while it waits for a batch.
  (Its SIGCHLD handler, which would raise the death wherever the training process is, in the
  middle of an optimizer step too, is set aside while the loader runs in the main thread.)

With ``data_workers: 0`` the streams run in the training process itself, so nothing survives a
sample that kills it: that mode is for debugging (a skip set from a checkpoint still applies).

Test seam: ``CURATE_FAULTS="train:kind:key,..."`` (the format of ``curate score``'s, read by
``train_faults_from_env`` in the process that builds the stream and carried to the DataLoader
workers with it) makes the stream abort, segfault, exit, hang, allocate without bound or raise
(a ``decode_error``, as any exception of the decode) when it decodes the sample with that key.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from curate import schema as S
from curate.guard import Fault, do_fault, faults_from_env, resident_bytes
from curate.io.samples import shard_records
from curate.io.shards import SHARD_COMPLETE, read_shard
from curate.limits import DEFAULT_LIMITS
from curate.stages.decode import DecodeError, decode_pil

# Consecutive epochs in which a stream finds no sample of the subset before it gives up.
MAX_EMPTY_EPOCHS = 3

# A sample of the stream: (index of its shard in ``SubsetStream.shards``, its position in the shard).
Where = tuple[int, int]


class NoTrainingData(RuntimeError):
    """A data stream found no usable sample of the subset in its shards."""


class DataWorkerError(RuntimeError):
    """DataLoader workers died more than a run survives: twice at the same place, or more than
    ``max_deaths`` times (the message names the samples)."""


# -- the fault-injection seam (CURATE_FAULTS, stage `train`: curate.guard) ----------------------
FAULT_STAGE = "train"


def train_faults_from_env() -> tuple[Fault, ...]:
    """The ``train`` entries of ``CURATE_FAULTS`` in this process's environment
    (``curate.guard.parse_faults``; entries of other stages are left to ``curate score``);
    ``()`` when unset.

    Raises:
        ValueError: a malformed entry (the message names it).
    """
    return tuple(f for f in faults_from_env() if f.stage == FAULT_STAGE)


def _inject(faults: tuple[Fault, ...], key: str) -> None:
    """Do the first fault whose key is ``key`` (nothing when none)."""
    for fault in faults:
        if fault.key == key:
            do_fault(fault)


# -- what each DataLoader worker is doing, in shared memory -------------------------------------
class WorkerBoard:
    """One shared-memory record per data stream of a training worker: the pid of the DataLoader
    worker that runs it and the sample it is decoding right now.

    Created in the training process before the DataLoader (``multiprocessing.RawArray``: shared
    with forked workers, and passed to spawned ones while they start). A record holds int64
    fields ``PID``, ``CURSOR`` (the sample's cursor, 1-based; -1 between samples), ``LAST`` (the
    cursor of the last sample begun, or the cursor the stream resumed at), ``SHARD``, ``INDEX``
    (``Where``), ``SINCE`` (``time.monotonic_ns()`` when the decode began), ``RSS`` (the worker's
    peak resident bytes then, or 0 when memory is not watched), ``KILLED`` (``KILLED_TIME`` or
    ``KILLED_MEMORY`` once the watchdog ended the worker; else 0) and ``MEASURED`` (what the
    watchdog measured: ns or bytes), and the sample's key (UTF-8, at most ``KEY_BYTES`` bytes).

    Args:
        num_streams: records (streams per training worker).
    """

    PID, CURSOR, LAST, SHARD, INDEX, SINCE, RSS, KILLED, MEASURED = range(9)
    FIELDS = 9
    KEY_BYTES = 256
    KILLED_TIME, KILLED_MEMORY = 1, 2

    def __init__(self, num_streams: int):
        self.num_streams = num_streams
        self._ints = multiprocessing.RawArray("q", num_streams * self.FIELDS)
        self._keys = multiprocessing.RawArray("B", num_streams * self.KEY_BYTES)
        self._view()
        self.reset()

    def _view(self) -> None:
        self.ints = np.frombuffer(self._ints, dtype=np.int64).reshape(self.num_streams, self.FIELDS)
        self.keys = np.frombuffer(self._keys, dtype=np.uint8).reshape(self.num_streams, self.KEY_BYTES)

    def __getstate__(self) -> dict[str, Any]:
        return {"num_streams": self.num_streams, "_ints": self._ints, "_keys": self._keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._view()

    def reset(self) -> None:
        """Every record empty: no pid, no sample (before a DataLoader starts)."""
        self.ints[:] = 0
        self.ints[:, self.CURSOR] = -1
        self.ints[:, self.LAST] = -1

    def attach(self, slot: int, cursor: int) -> None:
        """In a DataLoader worker: this process runs stream ``slot``, resuming at ``cursor``."""
        self.ints[slot, self.LAST] = cursor
        self.ints[slot, self.PID] = os.getpid()

    def begin(self, slot: int, cursor: int, where: Where, key: str, rss: bool) -> None:
        """In a DataLoader worker: stream ``slot`` starts decoding sample ``where`` (``key``) at
        ``cursor``; ``rss``: record the peak resident memory so far (for the memory watch)."""
        rec = self.ints[slot]
        rec[self.CURSOR] = -1  # the watchdog never reads a half-written record as a sample
        rec[self.SHARD], rec[self.INDEX], rec[self.LAST] = where[0], where[1], cursor
        raw = key.encode("utf-8", "replace")[: self.KEY_BYTES]
        self.keys[slot, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self.keys[slot, len(raw):] = 0
        # The peak so far (2 us; /proc/self/statm costs 20-30): at least the resident memory now, so
        # the growth the watchdog measures against it is never more than the sample's own.
        rec[self.RSS] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if rss else 0
        rec[self.SINCE] = time.monotonic_ns()
        rec[self.CURSOR] = cursor

    def end(self, slot: int) -> None:
        """In a DataLoader worker: stream ``slot`` is between samples again."""
        self.ints[slot, self.CURSOR] = -1

    def slot_of(self, pid: int) -> int | None:
        """The stream whose worker has ``pid``, or ``None``."""
        found = np.flatnonzero(self.ints[:, self.PID] == pid)
        return int(found[0]) if len(found) else None

    def key(self, slot: int) -> str:
        """The key of the sample stream ``slot`` began last."""
        return self.keys[slot].tobytes().rstrip(b"\0").decode("utf-8", "replace")

    def detach(self, slot: int) -> None:
        """In the training process: stream ``slot``'s worker is gone (never watched again)."""
        self.ints[slot, self.PID] = 0
        self.ints[slot, self.CURSOR] = -1


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
        skip: ``Where -> status`` of samples never to decode (they killed a DataLoader worker:
            ``worker_died`` or ``timeout``); each pass over one counts it under its status.
            ``GuardedLoader`` adds to it (``self.skip``) and the checkpoint stores it
            (``skip_list``).
        faults: injected faults (``Fault``); ``None`` reads ``CURATE_FAULTS`` now, in the
            process that builds the stream (``train_faults_from_env``).

    Yields:
        ``{"images": (B, 3, S, S) float32, "texts": (B, L) int64, "stream": int, "cursor": int,
        "epoch": int, "skipped": {status: count}, "problems": [str]}``; ``skipped`` and
        ``problems`` cover what the stream met since its previous batch (``skipped`` counts the
        samples of ``skip`` under their status too).

    Attributes:
        board: the ``WorkerBoard`` its DataLoader workers write to (set by ``GuardedLoader``),
            or ``None``.

    Raises:
        NoTrainingData: ``MAX_EMPTY_EPOCHS`` epochs in a row without a single subset sample.
        ValueError: no shards, or ``start_cursors`` for another number of streams; a bad
            ``CURATE_FAULTS`` entry.
    """

    def __init__(self, shards: list[str], subset: dict[str, int] | None, preprocess, tokenizer,
                 local_batch_size: int, rank: int = 0, world_size: int = 1, num_streams: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, start_step: int = 0, start_cursors: list[int] | None = None,
                 decode_min_side: int | None = None, input_size: int | None = None,
                 skip: dict[Where, str] | None = None, faults: tuple[Fault, ...] | None = None):
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
            raise ValueError(
                f"checkpoint has {len(self.start_cursors)} data streams per worker, this run {num_streams}")
        self.skip: dict[Where, str] = dict(skip or {})
        self.faults = train_faults_from_env() if faults is None else tuple(faults)
        self.board: WorkerBoard | None = None
        self.watch_memory = False  # GuardedLoader: record each decode's starting resident memory

    def skip_list(self) -> list[list]:
        """``skip`` as JSON-able ``[[shard index, position in shard, status], ...]``, sorted."""
        return [[i, j, status] for (i, j), status in sorted(self.skip.items())]

    @staticmethod
    def skip_from_list(items: list[list] | None) -> dict[Where, str]:
        """The inverse of ``skip_list`` (``None``: empty)."""
        return {(int(i), int(j)): str(status) for i, j, status in items or []}

    # -- raw, shuffled samples --------------------------------------------------------------
    def _records(self, stream: int, problems: list[str]) -> Iterator[tuple[dict, int]]:
        """``(record, epoch)`` of stream ``stream``, in order, forever."""
        for rec, epoch, _ in self._placed(stream, problems):
            yield rec, epoch

    def _placed(self, stream: int, problems: list[str]) -> Iterator[tuple[dict, int, Where]]:
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
                    problems.append(S.cap_error(f"{url}: {result.status}: {result.error}"))
                records = shard_records(result.samples)  # two samples of a shard with one uid: both skipped
                for j, rec in enumerate(records):
                    position += 1
                    if not shard_split and (position - 1) % total != stream:
                        continue
                    copies = 1 if self.subset is None else self.subset.get(rec[S.UID], 0)
                    for _ in range(copies):
                        found += 1
                        yield rec, epoch, (int(i), j)
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

    def _shuffled(self, stream: int, problems: list[str]) -> Iterator[tuple[dict, int, Where]]:
        rng = np.random.default_rng(_seed(self.seed, 2, stream))
        if self.shuffle_buffer <= 1:
            yield from self._placed(stream, problems)
            return
        buffer: list[tuple[dict, int, Where]] = []
        for item in self._placed(stream, problems):
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
        board = self.board if torch.utils.data.get_worker_info() is not None else None
        if board is not None:
            board.attach(slot, self.start_cursors[slot])
        items = self._shuffled(stream, problems)
        cursor = 0
        for _ in range(self.start_cursors[slot]):  # fast-forward: no decoding
            next(items)
            cursor += 1
        problems.clear()
        images, texts = [], []
        batch_start = cursor
        for rec, epoch, where in items:
            cursor += 1
            if not images:
                torch.manual_seed(_seed(self.seed, 3, stream, batch_start))
            if rec[S.STATUS] != S.STATUS_OK:
                skipped[rec[S.STATUS]] += 1
                continue
            dead = self.skip.get(where)
            if dead is not None:  # it killed a DataLoader worker: never decoded again
                skipped[dead] += 1
                continue
            if board is not None:
                board.begin(slot, cursor, where, rec[S.KEY], self.watch_memory)
            try:
                if self.faults:
                    _inject(self.faults, rec[S.KEY])
                image = self.preprocess(decode_pil(rec[S.IMAGE_BYTES], min_side=self.decode_min_side,
                                                   resize_short=self.input_size, reduce=True))
            except DecodeError as e:
                skipped[e.status] += 1
                continue
            except Exception:  # a transform that chokes on an odd image
                skipped[S.STATUS_DECODE_ERROR] += 1
                continue
            finally:
                if board is not None:
                    board.end(slot)
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



# -- the DataLoader that survives a worker death -----------------------------------------------
_DEAD_WORKERS = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")


def dead_worker_pids(error: BaseException) -> list[int] | None:
    """The pids a DataLoader's worker-death error names ("DataLoader worker (pid(s) 12, 13) exited
    unexpectedly", or "(pid 12) is killed by signal: ..."), or ``None`` for any other error."""
    if not isinstance(error, RuntimeError):
        return None
    found = _DEAD_WORKERS.search(str(error))
    if found is None:
        return None
    return [int(p) for p in re.findall(r"\d+", found.group(1))]


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "ended"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _is_child(pid: int) -> bool:
    """True when ``pid`` is a live child of this process (``/proc/<pid>/stat``'s parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]) == os.getpid() and fields[0] != b"Z"
    except (OSError, ValueError, IndexError):
        return False


class GuardedLoader:
    """Batches of a ``SubsetStream`` through a ``torch.utils.data.DataLoader``, surviving a sample
    that kills or wedges one of its workers (see the module docstring, "Worker deaths").

    Iterate it like the DataLoader: each batch it returns is taken to be consumed (trained on),
    so a DataLoader started again after a death resumes every stream at the cursor of the last
    batch it returned from it, at the step after it.

    Args:
        stream: the batches; its ``start_step`` and ``start_cursors`` are where the first
            DataLoader starts, and its ``skip`` grows with every sample that kills a worker.
        num_workers: DataLoader workers (``data_workers``); 0 loads in this process, where a
            sample that kills the process cannot be survived.
        prefetch_factor: batches each worker prepares ahead (ignored with 0 workers).
        max_deaths: worker deaths this loader survives; one more raises ``DataWorkerError``.
        sample_timeout_s: seconds one sample may decode before its worker is killed
            (``limits.sample_timeout_s``; 0: no limit).
        memory_mb: megabytes a worker's resident memory may grow while it decodes one sample
            before it is killed (``limits.worker_memory_mb``; 0: no limit).
        seed: seeds the DataLoader's own generator (its workers' base seed), so that starting
            one never draws from torch's global generator; the stream seeds its own randomness.
        poll_s: how often the watchdog thread reads the records.

    Attributes:
        step, cursors: batches returned so far (plus the stream's ``start_step``) and, per stream
            slot, the cursor of the last batch returned from it.
        deaths: one dict per worker death, in order: ``stream`` (global stream number),
            ``pid``, ``how`` (e.g. ``killed by SIGABRT``), ``status`` (``worker_died``,
            ``timeout``, or ``None`` when no sample was being decoded), ``shard``, ``key``,
            ``cursor`` (``None`` likewise), ``step`` and ``message``.

    Raises (from iteration):
        DataWorkerError: a second death at the same place, or more than ``max_deaths``.
        Whatever the stream raises (``NoTrainingData``, ...).
    """

    def __init__(self, stream: SubsetStream, num_workers: int, prefetch_factor: int = 4,
                 max_deaths: int = 16, sample_timeout_s: float = DEFAULT_LIMITS.sample_timeout_s,
                 memory_mb: int = DEFAULT_LIMITS.worker_memory_mb, seed: int = 0, poll_s: float = 0.25):
        self.stream, self.num_workers, self.prefetch_factor = stream, int(num_workers), prefetch_factor
        self.max_deaths, self.seed, self.poll_s = int(max_deaths), seed, poll_s
        self.sample_timeout_s, self.memory_mb = float(sample_timeout_s), int(memory_mb)
        self.step, self.cursors = stream.start_step, list(stream.start_cursors)
        self.deaths: list[dict[str, Any]] = []
        self._places: set[tuple] = set()
        self._it = None
        self._board = WorkerBoard(stream.num_streams) if self.num_workers > 0 else None
        stream.board = self._board
        stream.watch_memory = self._board is not None and self.memory_mb > 0
        self._sigchld: list[Any] = []  # the SIGCHLD handler to put back on close
        self._watchdog: tuple[threading.Thread, threading.Event] | None = None

    def __iter__(self) -> GuardedLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            try:
                if self._it is None:
                    self._start()
                batch = next(self._it)
            except RuntimeError as e:
                pids = dead_worker_pids(e)
                if pids is None or self._board is None:
                    raise
                self._survive(pids)
                continue
            except (EOFError, ConnectionError):  # the pipe of a worker that died, before torch names it
                pids = self._dead_pids()
                if not pids or self._board is None:
                    raise
                self._survive(pids)
                continue
            self.step += 1
            self.cursors[batch["stream"]] = batch["cursor"]
            return batch

    def close(self) -> None:
        """Stop the watchdog and the DataLoader's workers; put back the SIGCHLD handler."""
        self._end_loader()
        if self._sigchld and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, self._sigchld.pop())

    # -- internals ----------------------------------------------------------------------------
    def _dead_pids(self) -> list[int]:
        """The pids of this loader's DataLoader workers that are no longer alive (torch's
        ``_MultiProcessingDataLoaderIter._workers``; ``[]`` when it cannot tell)."""
        time.sleep(0.2)  # let a dying worker's exit be seen
        workers = getattr(self._it, "_workers", None) or []
        return [w.pid for w in workers if w.pid is not None and not w.is_alive()]

    def _start(self) -> None:
        self.stream.start_step, self.stream.start_cursors = self.step, list(self.cursors)
        if self._board is not None:
            self._board.reset()
        loader = torch.utils.data.DataLoader(
            self.stream, batch_size=None, collate_fn=collate_one, num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            generator=torch.Generator().manual_seed(self.seed))
        main = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGCHLD) if main and self.num_workers else None
        self._it = iter(loader)
        if main and self.num_workers:
            # torch's SIGCHLD handler raises a worker's death wherever this thread is, in the middle
            # of an optimizer step too; without it the DataLoader raises the death from `next`
            # (it looks at its workers every 5 s while it waits).
            if not self._sigchld and before is not None:
                self._sigchld.append(before)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self._board is not None and (self.sample_timeout_s > 0 or self.memory_mb > 0):
            stop = threading.Event()  # one watchdog per DataLoader: none runs while workers fork
            self._watchdog = (threading.Thread(target=self._watch, args=(stop,), name="curate-data-watchdog",
                                               daemon=True), stop)
            self._watchdog[0].start()

    def _end_loader(self) -> None:
        if self._watchdog is not None:
            thread, stop = self._watchdog
            stop.set()
            thread.join(timeout=5)
            self._watchdog = None
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    def _survive(self, pids: list[int]) -> None:
        board, stream = self._board, self.stream
        exitcodes = {w.pid: w.exitcode for w in getattr(self._it, "_workers", [])}
        found, places = [], set()  # two streams may die on one sample (in two epochs) before the loader looks
        for pid in pids:
            slot = board.slot_of(pid)
            how = _how_it_ended(exitcodes.get(pid))
            death: dict[str, Any] = {"stream": None, "pid": pid, "how": how, "status": None, "shard": None,
                                     "key": None, "cursor": None, "step": self.step}
            if slot is None:
                place: tuple = ("unknown",)
                death["message"] = f"a data worker (pid {pid}) {how} before it took a stream"
            else:
                rec = board.ints[slot].copy()
                death["stream"] = stream.rank * stream.num_streams + slot
                cursor = int(rec[board.CURSOR])
                if cursor >= 0:
                    where = (int(rec[board.SHARD]), int(rec[board.INDEX]))
                    place = ("sample", where)
                    killed = int(rec[board.KILLED])
                    status = S.STATUS_TIMEOUT if killed == board.KILLED_TIME else S.STATUS_WORKER_DIED
                    why = how
                    if killed == board.KILLED_TIME:
                        why = (f"was killed after {rec[board.MEASURED] / 1e9:.0f} s, past limits.sample_timeout_s "
                               f"({self.sample_timeout_s:g} s)")
                    elif killed == board.KILLED_MEMORY:
                        why = (f"was killed after growing by at least {rec[board.MEASURED] / 2**20:.0f} MB, over "
                               f"limits.worker_memory_mb ({self.memory_mb})")
                    death.update(status=status, shard=stream.shards[where[0]], key=board.key(slot), cursor=cursor)
                    death["message"] = (f"data stream {death['stream']}: its worker (pid {pid}) {why} decoding sample "
                                        f"{death['key']!r} (position {where[1]}) of {death['shard']}; the sample is "
                                        f"skipped as {status} from now on")
                    stream.skip[where] = status
                else:
                    last = int(rec[board.LAST])
                    place = ("between", death["stream"], last)
                    death["message"] = (f"data stream {death['stream']}: its worker (pid {pid}) {how} between "
                                        f"samples, after cursor {last} (not decoding a sample: reading a shard or "
                                        f"handing a batch over)")
                board.detach(slot)
            if place in self._places:
                self._end_loader()
                raise DataWorkerError(f"{death['message']}; this is the second death there, so the run stops "
                                      f"(look for the cause in the worker's output above)")
            places.add(place)
            found.append(death)
        self._places |= places
        self._end_loader()
        self.deaths.extend(found)
        for death in found:
            print(f"curate train: {death['message']}; data loader restarted at step {self.step}", file=sys.stderr,
                  flush=True)
        if len(self.deaths) > self.max_deaths:
            raise DataWorkerError(f"{len(self.deaths)} data worker deaths in this run, over max_worker_deaths "
                                  f"({self.max_deaths}); the last: {self.deaths[-1]['message']}")

    def _watch(self, stop: threading.Event) -> None:
        board = self._board
        timeout_ns = int(self.sample_timeout_s * 1e9)
        limit = self.memory_mb * 2**20
        while not stop.wait(self.poll_s):
            for slot in range(board.num_streams):
                rec = board.ints[slot]
                pid, cursor, since, rss0 = (int(rec[board.PID]), int(rec[board.CURSOR]), int(rec[board.SINCE]),
                                            int(rec[board.RSS]))
                if pid <= 0 or cursor < 0 or rec[board.KILLED]:
                    continue
                reason, measured, what = 0, 0, ""
                elapsed = time.monotonic_ns() - since
                if timeout_ns > 0 and elapsed > timeout_ns:
                    reason, measured = board.KILLED_TIME, elapsed
                    what = f"ran past limits.sample_timeout_s ({self.sample_timeout_s:g} s)"
                elif limit > 0 and rss0 > 0:
                    rss = resident_bytes(pid)
                    if rss is not None and rss - rss0 > limit:
                        reason, measured = board.KILLED_MEMORY, rss - rss0
                        what = (f"grew by at least {measured / 2**20:.0f} MB, over limits.worker_memory_mb "
                                f"({self.memory_mb})")
                # Only the sample it was on, and only our own worker (a pid is reused once reaped).
                if reason and int(rec[board.CURSOR]) == cursor and int(rec[board.PID]) == pid and _is_child(pid):
                    rec[board.MEASURED], rec[board.KILLED] = measured, reason
                    print(f"curate train: data worker {pid} {what} decoding sample {board.key(slot)!r}; ending it",
                          file=sys.stderr, flush=True)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass


def collate_one(batch: dict[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for batches that are already whole (``batch_size=None``)."""
    return batch
