"""Output files written whole or not at all.

A file is written under a temporary name beside its target (``.<name>.tmp-<8 hex>``, which
``curate.io.index.remove_stale_temporaries`` recognises) and renamed into place with
``os.replace`` (atomic within one POSIX filesystem) only once complete. When writing fails (a
full disk, an exception in the caller) the temporary is removed and the previous file, if any,
is left as it was, so a reader never sees half a file and a failed run leaves nothing behind
to take the space.

What curate may replace or remove (issue 28): only files and folders it wrote itself. A command
recognises its previous outputs by its own summary or marker (``read_own_json``), refuses
(``ForeignOutput``, a ``ValueError``: exit 2) before any change when something else is in the
way (``refuse_foreign``), and keeps its intermediate files in work folders that hold its marker
file (``make_work_folder``; ``remove_work_folder`` removes nothing else).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.schema import cap_error


def temporary_name(path: Path) -> Path:
    """The temporary file beside ``path`` that a writer of ``path`` uses."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on a normal exit it replaces
    ``path``, on an exception it is deleted (and the exception propagates). The parent folder is
    created if missing.

    Raises:
        OSError: from creating the folder or renaming (``errno.ENOSPC``: the disk is full).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after os.replace


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """``atomic_path`` for a folder: yield a temporary folder path beside ``path`` (not yet
    created) to build the folder's content in; on a normal exit it takes ``path``'s place (an
    empty folder already there is removed first; anything else there is never removed), on an
    exception it is removed with what it holds.

    Raises:
        ForeignOutput: ``path`` exists and is not an empty folder (the built folder is removed).
        OSError: from removing or renaming (``errno.ENOSPC``: the disk is full).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if path.is_symlink() or not path.is_dir() or any(path.iterdir()):
                refuse_foreign([path])
            path.rmdir()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomically(path: str | Path, obj: Any, **dumps: Any) -> None:
    """Write ``json.dumps(obj, **dumps)`` to ``path`` through ``atomic_path``.

    Raises:
        TypeError, ValueError: from ``json.dumps`` (nothing is written then).
    """
    write_text_atomically(path, json.dumps(obj, **dumps))


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to the text file ``path`` (UTF-8), whole or not at all:
    when the write fails (a full disk) the file is cut back to its previous length, and a last
    line without its newline (a writer killed mid-line) is dropped first, so a reader of one
    JSON object a line never meets half a line.

    Raises:
        OSError: the write failed (``errno.ENOSPC``: the disk is full).
    """
    with open(path, "a+b") as f:
        start = f.seek(0, os.SEEK_END)
        if start:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                start = f.read().rfind(b"\n") + 1
                f.truncate(start)
        try:
            f.write((line + "\n").encode("utf-8"))
            f.flush()
        except BaseException:
            f.truncate(start)
            raise


def inside(folder: str | Path, name: str | Path) -> Path:
    """``folder / name``, checked to stay inside ``folder``: the path that a file written under a
    computed name goes to. curate makes such names from row positions and hashes, never from
    data (a uid, a key, a caption, a member name, a URL); this is the check that one never
    leaves the output folder however it was made.

    Raises:
        ValueError: ``name`` resolves (``..`` segments, an absolute name, a link) to ``folder``
            itself or to a place outside it.
    """
    folder = Path(folder)
    path = folder / name
    top, where = folder.resolve(), path.resolve()
    if where == top or not where.is_relative_to(top):
        raise ValueError(f"refusing to write under {folder}: the name {cap_error(repr(str(name)), 200)} "
                         "leads outside it")
    return path


# --------------------------------------------------------------------------- what curate may replace

WORK_MARKER = ".curate-work"  # the file in every work or spill folder curate creates


class ForeignOutput(CurateError, ValueError):
    """A command would replace or remove a file or folder that curate did not write (a user's
    file where an output goes, an input, a folder without curate's marker); nothing was changed.
    A ``ValueError``: the CLI reports it as a usage error (exit 2)."""


def refuse_foreign(paths, owned=lambda path: False, what: str = "--out") -> None:
    """Refuse to replace ``paths``: raise ``ForeignOutput`` naming the first of them that exists
    (a file, a folder or a link) and that ``owned(path)`` does not recognise as curate's own.

    Raises:
        ForeignOutput: one is in the way; the message says to move it or to give another ``what``.
    """
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and not owned(path):
            raise ForeignOutput(f"{path} exists and was not written by curate; it is not replaced or removed. "
                                f"Move it away, or give another {what}")


def read_own_json(path: str | Path, *keys: str) -> dict | None:
    """The JSON object in the file ``path`` when it holds every one of ``keys`` (a summary that
    curate wrote, recognised by its keys); ``None`` when the path is absent, not a regular file,
    not a JSON object or lacks a key. Reads at most 64 MiB."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 64 << 20:
            return None
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and all(k in obj for k in keys) else None


def make_work_folder(path: str | Path) -> Path:
    """Create the empty folder ``path`` (and its parents) for a run's intermediate files, with
    curate's marker file (``WORK_MARKER``) in it. A folder already there is removed first only
    when it holds the marker (a killed run's): a user's folder of that name is never emptied.

    Returns:
        ``path``.

    Raises:
        ForeignOutput: ``path`` exists and is not a work folder of curate's (nothing is removed).
        OSError: from creating it (``errno.ENOSPC``: the disk is full).
    """
    path = Path(path)
    if not remove_work_folder(path) and (path.exists() or path.is_symlink()):
        refuse_foreign([path], what="--out (curate keeps its intermediate files there)")
    path.mkdir(parents=True)
    (path / WORK_MARKER).touch()
    return path


def remove_work_folder(path: str | Path) -> bool:
    """Remove the folder ``path`` with what it holds when it is a work folder of curate's (a real
    folder holding ``WORK_MARKER``, from ``make_work_folder``); anything else is left as it is.

    Returns:
        Whether a folder was removed.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not (path / WORK_MARKER).is_file():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
