"""Listing and reading webdataset shards.

Shard specs accept brace ranges (``sample-{000000..000002}.tar``, via ``braceexpand`` as in
webdataset), globs (``shards/*.tar``) and fsspec URLs (``s3://``, ``gs://``, ``file://``).
Members are grouped into samples with webdataset's own key rule
(``webdataset.tariterators.base_plus_ext``: the key is the path up to the first dot of the
file name, the extension is the rest), so a shard reads here exactly as webdataset reads it.

Reading never raises for a bad shard: ``read_shard`` returns a ``ShardRead`` whose ``status``
is ``complete``, ``truncated`` (some samples read, then the data ended inside a member or
header) or ``unreadable`` (not a tar, missing, permission denied, ...).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import braceexpand
import fsspec
from webdataset.tariterators import base_plus_ext

SHARD_COMPLETE = "complete"
SHARD_TRUNCATED = "truncated"
SHARD_UNREADABLE = "unreadable"

_GLOB_CHARS = re.compile(r"[*?\[]")
_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def expand_shards(specs: list[str] | str) -> list[str]:
    """Expand shard specs into a sorted-within-spec, de-duplicated list of URLs.

    Args:
        specs: one spec or a list; each may hold brace ranges, glob characters and a protocol.

    Returns:
        URLs in the order given (globs sorted), duplicates removed; local paths absolute.

    Raises:
        FileNotFoundError: a glob matched nothing.
    """
    if isinstance(specs, str):
        specs = [specs]
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        for url in braceexpand.braceexpand(spec):
            if _GLOB_CHARS.search(url.split("://", 1)[-1]):
                fs, path = fsspec.core.url_to_fs(url)
                matches = sorted(fs.glob(path))
                if not matches:
                    raise FileNotFoundError(f"no shard matches {url!r}")
                protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
                urls = [m if not protocol or m.startswith(protocol) else protocol + m for m in matches]
            else:
                urls = [url]
            # Local paths are made absolute so an index written here can be used from anywhere.
            urls = [u if "://" in u else os.path.abspath(u) for u in urls]
            for u in urls:
                if u not in seen:
                    seen.add(u)
                    out.append(u)
    return out


def shard_name(url: str) -> str:
    """The shard's file name without directories or protocol, e.g. ``sample-000001.tar``."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def stable_uid(url: str, key: str) -> str:
    """A 32-hex uid for a sample whose JSON has none: md5 of ``"<shard file name>/<key>"``.

    The shard's file name (not its full URL) is hashed so that a pool keeps its uids when it
    moves between storage locations.
    """
    return hashlib.md5(f"{shard_name(url)}/{key}".encode("utf-8")).hexdigest()


def is_datacomp_uid(value: Any) -> bool:
    """True for a DataComp uid: a string of 32 lower-case hex characters."""
    return isinstance(value, str) and bool(_UID_RE.match(value))


@dataclass
class ShardRead:
    """The result of reading one shard.

    Attributes:
        url: the shard URL.
        status: ``complete``, ``truncated`` or ``unreadable``.
        error: the reason for a non-complete status.
        samples: samples in shard order; each is a dict with ``__key__``, ``__url__`` and one
            ``bytes`` value per member extension (lower-case, e.g. ``"jpg"``, ``"txt"``).
            ``__truncated__`` is set on a sample whose members were cut short.
    """

    url: str
    status: str
    error: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)


class _TailTracker(io.RawIOBase):
    """A read-through wrapper that remembers whether EOF was hit and the last bytes read.

    ``tarfile`` in stream mode ends silently when the data stops at a header boundary; the
    tracker lets ``read_shard`` tell a clean end-of-archive (zero blocks) from a cut.
    """

    def __init__(self, raw):
        self.raw = raw
        self.total = 0
        self.eof = False
        self.tail = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        if n == 0:
            self.eof = True
        else:
            self.total += n
            self.tail = (self.tail + data)[-1024:]
        return n


def _ended_cleanly(tracker: _TailTracker) -> bool:
    if not tracker.eof:
        return True  # tarfile stopped at an end-of-archive block before the end of the data
    return tracker.total % 512 == 0 and tracker.tail[-512:] == b"\0" * 512


def read_shard(url: str) -> ShardRead:
    """Read all samples of one shard, never raising for bad data.

    Args:
        url: local path or fsspec URL of a ``.tar`` shard.

    Returns:
        A ``ShardRead``. Samples before a cut are kept; the sample being read when the data
        ended is kept with ``__truncated__`` set so it still gets an index row.
    """
    result = ShardRead(url=url, status=SHARD_COMPLETE)
    current: dict[str, Any] | None = None
    try:
        with fsspec.open(url, "rb") as raw:
            tracker = _TailTracker(raw)
            with tarfile.open(fileobj=tracker, mode="r|*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    key, ext = base_plus_ext(member.name) if "." in member.name.rsplit("/", 1)[-1] else (None, None)
                    if key is None or ext is None:
                        continue
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            result.samples.append(current)
                        current = {"__key__": key, "__url__": url}
                    # Mark the sample before reading, so a cut inside the member is attributed to it.
                    current["__truncated__"] = True
                    data = tf.extractfile(member).read()
                    del current["__truncated__"]
                    current[ext.lower()] = data
            if current is not None:
                result.samples.append(current)
                current = None
            if not _ended_cleanly(tracker):
                result.status = SHARD_TRUNCATED
                result.error = f"shard ends without an end-of-archive block after {tracker.total} bytes"
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if current is not None:
            result.samples.append(current)
        if result.samples:
            result.status = SHARD_TRUNCATED
            result.error = f"{type(e).__name__}: {e}"
        else:
            result.status = SHARD_UNREADABLE
            result.error = f"{type(e).__name__}: {e}"
    return result


def iter_samples(url: str) -> Iterator[dict[str, Any]]:
    """Iterate the samples of one shard (see ``read_shard``); bad shards yield what was read."""
    yield from read_shard(url).samples
