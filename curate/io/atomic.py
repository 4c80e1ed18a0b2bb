"""Output files written whole or not at all.

A file is written under a temporary name beside its target (``.<name>.tmp-<8 hex>``, which
``curate.io.index.remove_stale_temporaries`` recognises) and renamed into place with
``os.replace`` (atomic within one POSIX filesystem) only once complete. When writing fails (a
full disk, an exception in the caller) the temporary is removed and the previous file, if any,
is left as it was, so a reader never sees half a file and a failed run leaves nothing behind
to take the space.
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
    created) to build the folder's content in; on a normal exit it replaces ``path`` (a folder
    already there is removed first), on an exception it is removed with what it holds.

    Raises:
        OSError: from removing or renaming (``errno.ENOSPC``: the disk is full).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
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
