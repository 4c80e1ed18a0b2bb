"""Listing and reading webdataset shards.

Shard specs accept brace ranges (``sample-{000000..000002}.tar``, via ``braceexpand`` as in
webdataset), globs (``shards/*.tar``) and fsspec URLs (``s3://``, ``gs://``, ``file://``); any
other scheme, webdataset's ``pipe:`` (a shell command) above all, is refused with a
``ValueError`` naming the spec before any work (``check_shard_spec``, ``SHARD_SCHEMES``), and a
shard URL met later (an index's, a training config's) is read only under the same rule. Members
are only ever read as bytes: nothing here decodes, inflates or unpickles a member.
Members are grouped into samples with webdataset's own key rule
(``webdataset.tariterators.base_plus_ext``: the key is the path up to the first dot of the
file name, the extension is the rest, compared in lower case). Exactly one sample per key: members
of one key are gathered even when they are not adjacent in the tar (webdataset would yield two
broken samples; here the sample is noted); a member repeated with the same bytes is read once;
one repeated with *different* bytes makes the sample ``invalid`` (which copy is the sample's is
unknown), so one sample is never silently replaced by another.

Reading never raises for a bad shard: ``read_shard`` returns a ``ShardRead`` whose ``status``
is ``complete``, ``truncated`` (some samples read, then the data ended inside a member or
header), ``damaged`` (invalid headers skipped) or ``unreadable`` (not a tar, missing,
permission denied, ...).

Cost: every member's size is taken from its tar header before any byte of it is read. A member
over ``max_member_bytes`` (``curate.limits.Limits.max_member_bytes``, 256 MiB by default) is
never read: its data is skipped (in a compressed shard, decompressed through in 1 MiB pieces
and dropped, so a gzip bomb costs time, not memory) and its sample is flagged ``__too_large__``
(status ``too_large``). A GNU long-name or pax extended header whose data is over the limit ends
the read there (``truncated``), since ``tarfile`` would read that data whole.
"""

from __future__ import annotations

import functools
import glob as globlib
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import fsspec

from curate import schema as S
from curate.limits import DEFAULT_LIMITS

SHARD_COMPLETE = "complete"
SHARD_TRUNCATED = "truncated"
SHARD_DAMAGED = "damaged"
SHARD_UNREADABLE = "unreadable"

_GLOB_CHARS = re.compile(r"[*?\[]")
# Bytes of member data skipped per read when a member is not kept: ``tarfile``'s own skip in a
# stream reads 10 KiB at a time and re-slices its decompressed buffer on each read (a 1 GiB gzip
# bomb: 32 s); 1 MiB reads drop the same data in 5.6 s, holding at most one piece plus what one
# 10 KiB compressed block inflates to (about 10 MiB: deflate's ratio is at most 1032:1).
_SKIP_CHUNK = 2**20
# Magic numbers of the compressions ``tarfile``'s stream mode reads (gzip, bzip2, xz).
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
# The URL schemes a shard is read from: the fsspec protocols curate deliberately supports, the
# local disk (``file://``), the object stores of the README (``s3://``; ``gs://``, ``gcs://``) and
# plain web URLs (``http(s)://``, as webdataset users give them; fsspec's HTTP reader, aiohttp).
# Any other scheme is refused before any work (``check_shard_spec``): webdataset's ``pipe:``
# above all (``pipe:cmd`` runs ``cmd`` in a shell; curate never runs one), and fsspec's other
# protocols (``ssh://``, ``memory://``, chained ``a::b``), which curate never meant.
SHARD_SCHEMES = ("file", "s3", "gs", "gcs", "http", "https")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def check_shard_spec(spec: str | os.PathLike, what: str = "shard spec",
                     schemes: tuple[str, ...] = SHARD_SCHEMES) -> str:
    """Refuse a shard spec, shard URL or data path that would not be read as a plain file.

    A spec without a scheme is a local path. One with a scheme (``name:`` at its start) must be
    ``<scheme>://...`` with ``scheme`` in ``schemes`` (``SHARD_SCHEMES``; ``()`` for readers of
    local paths only, such as ``curate evaluate``). ``::`` (fsspec's chaining, which also cuts a
    local path there) is refused anywhere. A local file whose name holds a colon is given as
    ``./name``. Only the string is looked at: nothing is opened, listed or run.

    Args:
        spec: the spec, URL or path as the user (or an index, or a config) gave it.
        what: what ``spec`` is, for the message (``shard spec``, ``--data-dir``, ...).
        schemes: the schemes accepted.

    Returns:
        ``spec`` as a string.

    Raises:
        ValueError: naming ``spec`` and its scheme: webdataset's ``pipe:`` (a shell command,
            never run), a scheme not in ``schemes``, or ``::``.
    """
    text = os.fspath(spec)
    if not isinstance(text, str):
        raise ValueError(f"{what} {text!r}: not a text path")
    where = ("a local path" + (" or a " + ", ".join(f"{s}://" for s in schemes) + " URL" if schemes else "")
             + "; a local file whose name holds a colon is written ./name")
    match = _SCHEME_RE.match(text)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme == "pipe":
            raise ValueError(f"{what} {text!r}: webdataset's pipe: runs a shell command; curate never runs one "
                             f"and reads shards as files: give {where}")
        if scheme not in schemes:
            raise ValueError(f"{what} {text!r}: URL scheme {match.group(1)!r} is not supported: give {where}")
        if not text[match.end():].startswith("//"):
            raise ValueError(f"{what} {text!r}: not a {scheme}:// URL: give {where}")
    if "::" in text:
        raise ValueError(f"{what} {text!r}: '::' (fsspec's URL chaining) is not supported: give {where}")
    return text


def expand_shards(specs: list[str] | str) -> list[str]:
    """Expand shard specs into a sorted-within-spec, de-duplicated list of URLs.

    A spec that names an existing file is taken literally, whatever characters its name holds
    (``shard[1].tar``, ``a{1,2}.tar``, ``it's *here*.tar``): it is never expanded as a brace
    range or a glob. Otherwise brace ranges are expanded first, then each expansion that is not
    an existing file is matched as a glob (for a local path whose folder exists, only the file
    name is a pattern: ``pool [1]/*.tar`` globs ``*.tar`` in the folder ``pool [1]``).

    Args:
        specs: one spec or a list; each may hold brace ranges, glob characters and a protocol.

    Returns:
        URLs in the order given (globs sorted), duplicates removed; local paths absolute.

    Raises:
        FileNotFoundError: a glob matched nothing, or local paths (literal or from a brace range)
            do not exist: the message names them (``N of M shards do not exist: ...``), so a typo
            fails here, before any cluster starts. Remote URLs are not checked (no request is
            made before the job; an unreadable one is the shard's ``unreadable`` row).
        ValueError: a spec with a scheme curate does not read (``check_shard_spec``: ``pipe:``
            and any scheme not in ``SHARD_SCHEMES``), found before any spec is expanded.
    """
    if isinstance(specs, str):
        specs = [specs]
    for spec in specs:
        check_shard_spec(spec)
    out: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.startswith("file://"):
            spec = spec[len("file://"):]  # a local path: the literal-folder rule below applies
        expansions = [spec] if _exists(spec) else braceexpand.braceexpand(spec)
        for url in expansions:
            if _GLOB_CHARS.search(url.split("://", 1)[-1]) and not _exists(url):
                fs, path = fsspec.core.url_to_fs(url)
                folder, _, pattern = path.rpartition("/")
                if "://" not in url and folder and os.path.isdir(folder):
                    # An existing local folder is literal ("pool [1]/*.tar"): only the file
                    # name is a pattern.
                    matches = sorted(globlib.glob(globlib.escape(folder) + "/" + pattern))
                else:
                    matches = sorted(fs.glob(path))
                if not matches:
                    raise FileNotFoundError(f"no shard matches {url!r}")
                protocol = url.split("://", 1)[0] + "://" if "://" in url else ""
                urls = [m if not protocol or m.startswith(protocol) else protocol + m for m in matches]
            else:
                urls = [url]
            # Local paths are made absolute so an index written here can be used from anywhere.
            urls = [_local_or_url(u) for u in urls]
            for u in urls:
                if u not in seen:
                    seen.add(u)
                    out.append(u)
    missing = [u for u in out if "://" not in u and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(out)} shards do not exist: {', '.join(missing[:5])}"
                                + (" ..." if len(missing) > 5 else ""))
    return out


def _local_or_url(url: str) -> str:
    """Local files as absolute paths (``file://`` stripped), so one shard has one spelling."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    return url if "://" in url else os.path.abspath(url)


def _exists(url: str) -> bool:
    """True when ``url`` names an existing file literally (so ``[1]`` in a name is not a glob)."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.exists(path)
    except Exception:
        return False


def shard_name(url: str) -> str:
    """The shard's file name without directories or protocol, e.g. ``sample-000001.tar``."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def stats_sample_count(url: str) -> int | None:
    """Samples of a shard as recorded beside it by the tool that wrote it: img2dataset's
    ``<shard>_stats.json`` (``successes``) or ``curate reshard``'s (``count``); ``None`` when
    there is no such file (or it cannot be read)."""
    if "://" in url:
        return None
    p = Path(url)
    name = p.name
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    stats = p.with_name(f"{name}_stats.json")
    try:
        data = json.loads(stats.read_text())
        value = data.get("successes", data.get("count"))
        return int(value) if isinstance(value, int) and value >= 0 else None
    except (OSError, ValueError, AttributeError):
        return None


def stable_uid(url: str, key: str) -> str:
    """A 32-hex uid for a sample whose JSON has none: md5 of ``"<shard file name>/<key>"``.

    The shard's file name (not its full URL) is hashed so that a pool keeps its uids when it
    moves between storage locations.
    """
    return hashlib.md5(f"{shard_name(url)}/{key}".encode("utf-8", "surrogateescape")).hexdigest()


def is_datacomp_uid(value: Any) -> bool:
    """True for a DataComp uid: ``curate.schema.is_uid``, a string that is exactly 32 lower-case
    hex characters (a ``.json`` uid ``"<32 hex>\\n"`` is not one)."""
    return S.is_uid(value)


@dataclass
class ShardRead:
    """The result of reading one shard.

    Attributes:
        url: the shard URL.
        status: ``complete``; ``truncated`` (the data ends before an end-of-archive block, or
            inside a member); ``damaged`` (invalid tar headers were skipped, so members there
            are lost; the samples after the damage are still read); or ``unreadable``.
        error: the reason for a non-complete status.
        samples: samples in shard order; each is a dict with ``__key__``, ``__url__`` and one
            ``bytes`` value per member extension (lower-case, e.g. ``"jpg"``, ``"txt"``).
            One sample per key, in the order of each key's first member. Problems are flagged
            on the sample: ``__truncated__`` (members may be missing), ``__invalid__`` (a message:
            a member repeated with different bytes), ``__too_large__`` (a message naming each
            member over ``max_member_bytes``, its size and the limit; such a member is not read),
            ``__notes__`` (members that were skipped, e.g. links, repeated or not adjacent to
            their key's other members).
        ignored_members: regular members that belong to no sample (no extension), skipped as
            webdataset skips them.
    """

    url: str
    status: str
    error: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    ignored_members: int = 0


class _HeaderLog:
    """What ``tarfile`` met while looking for headers (it hides most of it)."""

    def __init__(self):
        self.zero_blocks_since_member = 0
        self.invalid_offsets: list[int] = []
        self.end: str | None = None  # "eof" (clean block boundary) or "truncated_header"


class _CheckedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that records header errors on the archive before ``tarfile`` swallows them.

    In stream mode ``tarfile`` stops silently at a bad or cut header after the first member;
    with ``ignore_zeros`` it skips invalid blocks. Recording them lets ``read_shard`` report a
    truncated or damaged shard instead of losing its tail without a word.

    A subclass made by ``_checked_tarinfo(limit)`` also refuses a GNU long-name / long-link or
    pax extended header whose data is larger than ``max_header_bytes`` (``tarfile`` reads that
    data whole while parsing the header, before any member is handed out): ``tarfile`` then
    raises ``ReadError`` with the message, and the read ends there.
    """

    max_header_bytes: int | None = None

    def _check_header_data(self, tf) -> None:
        limit = self.max_header_bytes
        if limit is not None and self.size > limit:
            raise tarfile.SubsequentHeaderError(
                f"extended header {_readable_name(self.name)!r} at byte {self.offset} holds {self.size} bytes, "
                f"over limits.max_member_bytes {limit}; not read")

    def _proc_gnulong(self, tf):
        self._check_header_data(tf)
        return super()._proc_gnulong(tf)

    def _proc_pax(self, tf):
        self._check_header_data(tf)
        return super()._proc_pax(tf)

    @classmethod
    def fromtarfile(cls, tf):
        log = tf.__dict__.setdefault("_curate_log", _HeaderLog())
        offset = tf.offset
        try:
            info = super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            log.zero_blocks_since_member += 1
            raise
        except tarfile.InvalidHeaderError:
            log.invalid_offsets.append(offset)
            raise
        except tarfile.EmptyHeaderError:
            log.end = "eof"
            raise
        except tarfile.TruncatedHeaderError:
            log.end = "truncated_header"
            raise
        log.zero_blocks_since_member = 0
        return info


@functools.lru_cache(maxsize=16)
def _checked_tarinfo(max_header_bytes: int) -> type[_CheckedTarInfo]:
    """``_CheckedTarInfo`` refusing extended headers over ``max_header_bytes`` (a class, since
    ``tarfile.open`` reads the first header before the archive object can be given anything)."""
    return type("_CheckedTarInfo", (_CheckedTarInfo,), {"max_header_bytes": max_header_bytes})


def _readable_name(name: str) -> str:
    """Member names that are not UTF-8 (tarfile keeps the bytes as surrogates) made printable."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def skip_member_data(tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Move past the data of ``member``, the member ``tf`` just gave, without keeping it: read and
    dropped ``_SKIP_CHUNK`` (1 MiB) at a time, decompressed through in a compressed stream, so
    it costs about 10 MiB of memory whatever the member's size (``tarfile``'s own skip in stream
    mode holds as little but is about 6 times slower). Links and folders have no data.

    Raises:
        What reading the member would raise (``tarfile.ReadError``, ``EOFError``, ``OSError``)
        when the data ends inside the member or the compressed data is corrupt.
    """
    if member.size and (member.isreg() or member.type not in tarfile.SUPPORTED_TYPES):
        data = tf.extractfile(member)
        while data.read(_SKIP_CHUNK):
            pass


def read_shard(url: str, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes) -> ShardRead:
    """Read all samples of one shard, never raising for bad data.

    Concatenated archives are read through (zero blocks are skipped, as ``tar -i`` does).

    Args:
        url: local path or fsspec URL of a ``.tar`` (or compressed ``.tar.gz``) shard.
        max_member_bytes: a member whose header size is larger is not read; its sample is
            flagged ``__too_large__`` (default ``DEFAULT_LIMITS.max_member_bytes``, 256 MiB).

    Returns:
        A ``ShardRead``. Samples before a cut or damage are kept; a sample that may have lost
        members is flagged so it still gets an index row with status ``truncated``. A URL that
        ``check_shard_spec`` refuses (``pipe:``, another scheme) is ``unreadable``, never opened.
    """
    samples, result = drain(_read_samples(url, None, max_member_bytes))
    result.samples = samples
    return result


def drain(gen) -> tuple[list[Any], Any]:
    """Every item of a generator and its return value: ``(items, value)``."""
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


@dataclass
class MemberPlan:
    """What a header-only pass over a shard found (``plan_members``).

    Attributes:
        keys: the sample keys, in order of each key's first member (one sample each).
        last_member: for each key, the position (in tar order) of its last member.
    """

    keys: list[str]
    last_member: dict[str, int]


def plan_members(url: str, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes) -> MemberPlan | None:
    """Read only the tar headers of a local, undamaged shard and return where each sample ends;
    ``None`` for anything else (remote, truncated, damaged, unreadable), whose samples are then
    read by ``read_shard`` as a whole.

    An uncompressed shard's member data is skipped by seeking (one header read per member). A
    compressed one (gzip, bzip2, xz) is read once as a stream (``tarfile`` mode ``r|*``): member
    data is decompressed through in ``_SKIP_CHUNK`` pieces and dropped, never stored, so the
    pass costs one decompression of the shard and about 10 MiB of memory whatever it holds.

    Args:
        url: local path (or ``file://`` URL) of the shard.
        max_member_bytes: extended (GNU long-name, pax) headers larger than this are not read
            and make the plan ``None`` (``read_shard`` then reports the shard truncated there).

    Returns:
        A ``MemberPlan``, or ``None``.
    """
    if "://" in url and not url.startswith("file://"):
        return None
    try:
        check_shard_spec(url, "shard")
    except ValueError:
        return None  # read_shard then reports why
    path = _local_or_url(url)
    if path.startswith("file://"):
        path = path[len("file://"):]
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            compressed = magic.startswith(_COMPRESSED_MAGIC)
            f.seek(0)
            mode = "r|*" if compressed else "r:"
            with tarfile.open(fileobj=f, mode=mode, ignore_zeros=True,
                              tarinfo=_checked_tarinfo(max_member_bytes)) as tf:
                log = tf.__dict__.setdefault("_curate_log", _HeaderLog())
                keys: dict[str, None] = {}
                last: dict[str, int] = {}
                for position, member in enumerate(tf):
                    key = _member_key(member)
                    if key is not None:
                        keys.setdefault(key)
                        last[key] = position
                    if compressed:
                        skip_member_data(tf, member)
                    tf.members = []  # counted: the plan keeps no list of headers (tarfile would)
                if log.invalid_offsets or log.end != "eof" or log.zero_blocks_since_member == 0:
                    return None
    except Exception:
        return None
    return MemberPlan(list(keys), last)


def _member_key(member: tarfile.TarInfo) -> str | None:
    """The sample key of a tar member, or ``None`` for a folder or a member without extension."""
    return None if member.isdir() else _key_ext(_readable_name(member.name))[0]


# webdataset's key rule, ``webdataset.tariterators.base_plus_ext``'s pattern: the key is the path
# up to the first dot of the file name, the extension the rest. Written out here because
# ``import webdataset`` imports torch (2-3 s of CPU and about 200 MB in every read task's worker,
# issue 31); tests/io/test_shards.py checks it against webdataset's own function.
WDS_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def _key_ext(name: str) -> tuple[str | None, str | None]:
    """webdataset's ``base_plus_ext`` split of a member name, ``(None, None)`` without extension;
    the extension in lower case."""
    base = name.rsplit("/", 1)[-1]
    match = WDS_KEY_EXT.match(name) if "." in base.lstrip(".") else None
    key, ext = (match.group(1), match.group(2)) if match else (None, None)
    return (None, None) if key is None or ext is None else (key, ext.lower())


def iter_shard(url: str, plan: MemberPlan | None, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes):
    """Yield the samples of a shard one by one, as ``read_shard`` would give them, holding at
    most the samples whose members are not all read yet (with a ``plan_members`` plan: one
    sample, plus any whose members are not adjacent). The generator's return value is the
    ``ShardRead`` (without samples). With ``plan`` ``None`` every sample is held to the end
    (the order and flags of ``read_shard``). ``max_member_bytes``: as in ``read_shard``."""
    return (yield from _read_samples(url, plan, max_member_bytes))


def _read_samples(url: str, plan: MemberPlan | None, max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes):
    """The one reader behind ``read_shard`` and ``iter_shard`` (a generator; returns the
    ``ShardRead`` without samples). A member over ``max_member_bytes`` (its header's size) is
    skipped unread (``skip_member_data``) and flags its sample ``__too_large__``."""
    result = ShardRead(url=url, status=SHARD_COMPLETE)
    current: dict[str, Any] | None = None  # the sample of the last member read
    by_key: dict[str, dict[str, Any]] = {}  # samples not yet yielded, in order of first member
    done: list[dict[str, Any]] = []  # samples whose last member is read, yielded after the next header
    log = _HeaderLog()
    last = plan.last_member if plan is not None else {}

    try:
        check_shard_spec(url, "shard")  # an index's or a config's URL too: never pipe: or another scheme
        with fsspec.open(url, "rb") as raw:
            with tarfile.open(fileobj=raw, mode="r|*", ignore_zeros=True,
                              tarinfo=_checked_tarinfo(max_member_bytes)) as tf:
                log = tf.__dict__.setdefault("_curate_log", log)
                damage_seen = 0
                for position, member in enumerate(tf):
                    tf.members = []  # tarfile would keep every header of the shard
                    # Members lost in a damaged stretch may belong to the sample before it or to
                    # the one after it: both are flagged.
                    damaged_before = len(log.invalid_offsets) > damage_seen
                    if damaged_before:
                        damage_seen = len(log.invalid_offsets)
                        if current is not None:
                            current["__truncated__"] = True
                    while done:  # complete, and the header after them was read cleanly
                        yield done.pop(0)
                    if member.isdir():
                        continue
                    name = _readable_name(member.name)
                    key, ext = _key_ext(name)
                    if key is None:
                        result.ignored_members += 1
                        skip_member_data(tf, member)
                        continue
                    if key in by_key:
                        if by_key[key] is not current:
                            # One key, one sample: members of a key that are not adjacent are
                            # gathered (webdataset would split them into two broken samples).
                            by_key[key].setdefault("__notes__", []).append(
                                f"member {name!r} is not adjacent to the other members of its key")
                        current = by_key[key]
                    else:
                        current = by_key[key] = {"__key__": key, "__url__": url}
                    if damaged_before:
                        current["__truncated__"] = True
                    if last.get(key, -1) == position:
                        done.append(by_key.pop(key))
                    if not member.isfile():
                        current.setdefault("__notes__", []).append(
                            f"skipped {name!r}: not a regular file (link or device)")
                        skip_member_data(tf, member)
                        continue
                    if member.size > max_member_bytes:
                        # Never read: its size comes from the header (a cut inside it raises here).
                        problem = (f"member {name!r} is {member.size} bytes, over limits.max_member_bytes "
                                   f"{max_member_bytes}; not read")
                        before = current.get("__too_large__")
                        current["__too_large__"] = f"{before}; {problem}" if before else problem
                        skip_member_data(tf, member)
                        continue
                    # A cut inside this member raises here; the handler below flags this sample.
                    data = tf.extractfile(member).read()
                    if ext in current:
                        if current[ext] != data:
                            problem = (f"member {name!r} appears more than once in the shard with different "
                                       "content; which one is the sample's is unknown")
                            before = current.get("__invalid__")
                            current["__invalid__"] = f"{before}; {problem}" if before else problem
                        else:
                            current.setdefault("__notes__", []).append(f"member {name!r} repeated (same bytes)")
                        continue
                    current[ext] = data
            if len(log.invalid_offsets) > damage_seen and current is not None:
                current["__truncated__"] = True
            if log.invalid_offsets:
                result.status = SHARD_DAMAGED
                result.error = (
                    f"{len(log.invalid_offsets)} invalid tar header block(s) skipped, first at byte "
                    f"{log.invalid_offsets[0]}; members stored there are lost"
                )
            elif log.end != "eof" or log.zero_blocks_since_member == 0:
                result.status = SHARD_TRUNCATED
                where = "inside a header" if log.end == "truncated_header" else "without an end-of-archive block"
                result.error = f"the shard ends {where}"
                if current is not None:
                    current["__truncated__"] = True
    except Exception as e:  # tarfile.ReadError, zlib / gzip errors, OSError from fsspec, ...
        result.error = S.cap_error(f"{type(e).__name__}: {e}")
        result.status = SHARD_TRUNCATED if (done or by_key or plan is not None) else SHARD_UNREADABLE
        if current is not None:
            current["__truncated__"] = True
    yield from done
    yield from by_key.values()
    if result.status == SHARD_DAMAGED and not (done or by_key) and plan is None:
        result.status = SHARD_UNREADABLE
        result.error = S.cap_error("not a tar archive: " + result.error)
    return result
