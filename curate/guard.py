"""Guards around the calls a worker process makes on samples: time, memory, and the fault-injection seam.

Used by ``curate score``'s stage calls (``curate.scoring.plan.run_stage``) and ``curate train``'s
data workers.

A Python exception from one sample is isolated by the stage itself (``curate.stages.base``). What
a stage cannot isolate is a call that never returns or that makes its worker allocate without
bound: ``StageGuard`` watches each call from a thread and, past ``limits.batch_timeout_s``
seconds or ``limits.worker_memory_mb`` MB of resident-memory growth, ends the worker process
(``os._exit``). To Ray that is a worker death like a native crash or an out-of-memory kill; the
plan's bounded retries and the isolation pass (``curate.scoring.isolate``) take it from there.

The fault-injection seam (tests and ``benchmarks/fuzz_bench.py``): ``CURATE_FAULTS``, read by the
driver when it builds the plan and shipped to the workers with it, names sample keys that make a
given stage crash, hang or allocate without bound::

    CURATE_FAULTS="detect:abort:key1,score:hang:key2,decode:alloc:key3"

Faults: ``abort`` (``os.abort()``: SIGABRT, as a native library's assertion), ``segv`` (a read of
address 0: SIGSEGV, as a native crash), ``exit`` (``os._exit(1)``), ``hang`` (sleeps forever),
``alloc`` (touches 64 MiB more memory every few milliseconds until stopped), ``raise`` (a Python
``RuntimeError``, which the stage isolates as usual). A fault fires in every call of its stage
whose rows include its key, so it fires again on every retry, alone too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from curate import schema as S

log = logging.getLogger("curate")

FAULTS_ENV = "CURATE_FAULTS"
FAULT_KINDS = ("abort", "segv", "exit", "hang", "alloc", "raise")
# Exit code of a worker the guard ends (Ray reports it in the worker-death message).
EXIT_TIMEOUT = 124
EXIT_MEMORY = 137
POLL_S = 0.05  # how often the guard looks at the clock and the resident memory


@dataclass(frozen=True)
class Fault:
    """One injected fault: in stage ``stage``, a batch holding the sample ``key`` does ``kind``."""

    stage: str
    kind: str
    key: str


def parse_faults(text: str | None) -> tuple[Fault, ...]:
    """Parse ``CURATE_FAULTS`` (``stage:kind:key`` entries, comma-separated; keys may hold ``:``).

    Raises:
        ValueError: an entry without three parts or an unknown kind (the message names it).
    """
    faults = []
    for entry in filter(None, (e.strip() for e in (text or "").split(","))):
        parts = entry.split(":", 2)
        if len(parts) != 3 or parts[1] not in FAULT_KINDS:
            raise ValueError(f"{FAULTS_ENV}: bad entry {entry!r}; expected stage:kind:key with kind one of "
                             f"{', '.join(FAULT_KINDS)}")
        faults.append(Fault(*parts))
    return tuple(faults)


def faults_from_env() -> tuple[Fault, ...]:
    """The faults named by ``CURATE_FAULTS`` in this (the driver's) environment; ``()`` when unset."""
    return parse_faults(os.environ.get(FAULTS_ENV))


def inject(faults: tuple[Fault, ...], stage: str, batch: dict[str, np.ndarray]) -> None:
    """Do the first fault of ``stage`` whose key is a row of ``batch`` (nothing when none)."""
    if not faults or S.KEY not in batch:
        return
    keys = set(np.asarray(batch[S.KEY], dtype=object).tolist())
    for fault in faults:
        if fault.stage == stage and fault.key in keys:
            do_fault(fault)


def do_fault(fault: Fault) -> None:
    """Do what ``fault`` names, in this process (it never returns, except for ``raise``, which
    raises ``RuntimeError``)."""
    print(f"curate: injected fault {fault.kind} in {fault.stage} on sample {fault.key!r} (pid {os.getpid()})",
          file=sys.stderr, flush=True)
    if fault.kind == "abort":
        os.abort()
    if fault.kind == "segv":
        import ctypes

        ctypes.string_at(0)
    if fault.kind == "exit":
        os._exit(1)
    if fault.kind == "hang":
        while True:
            time.sleep(3600)
    if fault.kind == "alloc":
        held = []
        while True:
            held.append(np.ones(64 * 2**20, dtype=np.uint8))
            time.sleep(0.005)
    raise RuntimeError(f"injected fault on sample {fault.key!r}")


def resident_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process (this one by default) in bytes (``/proc/<pid>/statm``, else
    psutil); ``None`` when neither can tell."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process(None if pid == "self" else int(pid)).memory_info().rss)
    except Exception:
        return None


class StageGuard:
    """Context manager: end this worker process when the call inside runs too long or grows its
    resident memory too much.

    Args:
        what: the call, for the message (``detect on 16 samples``).
        timeout_s: seconds, or 0 for no limit.
        memory_mb: megabytes of growth over the resident memory at entry, or 0 for no limit.

    On a breach the guard prints one line to stderr and calls ``os._exit`` (code 124 for time,
    137 for memory) from its thread: the only way to stop a call stuck in native code. Nothing is
    started when both limits are 0.
    """

    def __init__(self, what: str, timeout_s: float, memory_mb: int):
        self.what, self.timeout_s, self.memory_mb = what, float(timeout_s), int(memory_mb)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageGuard:
        if self.timeout_s > 0 or self.memory_mb > 0:
            start = resident_bytes() if self.memory_mb > 0 else None
            self._thread = threading.Thread(target=self._watch, args=(time.monotonic(), start),
                                            name="curate-stage-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self, t0: float, start_rss: int | None) -> None:
        limit = self.memory_mb * 2**20
        while not self._done.wait(POLL_S):
            elapsed = time.monotonic() - t0
            if self.timeout_s > 0 and elapsed > self.timeout_s:
                self._end(EXIT_TIMEOUT, f"{self.what} ran past limits.batch_timeout_s ({self.timeout_s:g} s)")
            if start_rss is not None:
                rss = resident_bytes()
                if rss is not None and rss - start_rss > limit:
                    self._end(EXIT_MEMORY, f"{self.what} grew this worker's memory by {(rss - start_rss) / 2**20:.0f} "
                                           f"MB, over limits.worker_memory_mb ({self.memory_mb})")

    def _end(self, code: int, message: str) -> None:
        if self._done.is_set():
            return
        print(f"curate: {message}; ending worker process {os.getpid()} (its samples will be run alone)",
              file=sys.stderr, flush=True)
        os._exit(code)
