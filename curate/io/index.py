"""Score-index files: one Parquet file per input shard, written atomically.

The file for shard ``.../name.tar`` is ``<out>/name.parquet``. It is written under a temporary
name in the same folder and renamed into place (``os.replace``), so a reader never sees half a
file and a killed job leaves no file that looks complete. Parquet key-value metadata records
the schema and code versions, the models and settings that produced the scores, the shard URL
and whether the whole shard was read (``curate.shard_status``: ``complete`` or ``truncated``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import __version__
from curate import schema as S
from curate.io.atomic import atomic_path, inside
from curate.io.shards import SHARD_COMPLETE, shard_name

INDEX_SUFFIX = ".parquet"
PARTS_DIR = "_parts"  # per-shard part files written by the workers, merged into the shard's index file


def index_path(out_dir: str | Path, shard_url: str) -> Path:
    """Path of the index file for a shard: ``out_dir / <shard name without .tar>.parquet``
    (``curate.io.atomic.inside``: a name made from a URL never leads out of ``out_dir``)."""
    name = shard_name(shard_url)
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return inside(out_dir, name + INDEX_SUFFIX)


def parts_dir(out_dir: str | Path, url: str) -> Path:
    """The folder of the part files of one shard: ``out_dir/_parts/<index file name>``."""
    p = index_path(out_dir, url)
    return p.parent / PARTS_DIR / p.name


def records_to_table(columns: dict[str, Any]) -> pa.Table:
    """Build a schema-conformant table from column arrays (numpy or lists).

    Rows whose status is not ``ok`` get nulls in every measurement column; ``-1`` sizes, NaN
    scores and empty ``text`` / ``error`` strings become nulls; a string that is not valid UTF-8
    (lone surrogates) is stored with them escaped, so one odd name never fails a file; an
    ``error`` is capped (``curate.schema.cap_error``). Extra columns are ignored, missing
    measurement columns become nulls.

    Raises:
        KeyError: an identity column (uid, key, shard, status) is missing.
    """
    n = len(columns[S.STATUS])
    status = np.asarray(columns[S.STATUS], dtype=object)
    ok = status == S.STATUS_OK
    arrays = []
    for field in S.SCHEMA:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(n, field.type))
            continue
        if field.name in (S.WIDTH, S.HEIGHT):
            v = np.asarray(values, dtype=np.int64)
            arrays.append(pa.array(v.astype(np.int32), mask=v < 0, type=field.type))
        elif field.name == S.CAPTION_LANG_SCORE:  # known whenever there is a caption, even if the image failed
            v = np.asarray(values, dtype=np.float32)
            arrays.append(pa.array(v, mask=np.isnan(v), type=field.type))
        elif field.name in (S.TEXT_AREA_FRAC, S.CLIP_SCORE, S.MASKED_CLIP_SCORE):
            v = np.asarray(values, dtype=np.float32)
            arrays.append(pa.array(v, mask=~ok | np.isnan(v), type=field.type))
        elif field.name == S.NUM_TEXT_BOXES:
            v = np.asarray(values, dtype=np.int64)
            arrays.append(pa.array(v.astype(np.int32), mask=~ok | (v < 0), type=field.type))
        elif field.name in (S.OCR_TEXT, S.OCR_CONFIDENCE):  # null when not ok or not read (no --ocr)
            arrays.append(pa.array([_ocr_value(field.name, v) if o else None for v, o in zip(values, ok)],
                                   type=field.type))
        elif field.name == S.TEXT_BOXES:
            vals = [
                _polygon_rows(boxes)
                if (o and boxes is not None)
                else None
                for boxes, o in zip(values, ok)
            ]
            arrays.append(pa.array(vals, type=field.type))
        else:
            vals = [None if (v is None or (isinstance(v, float) and np.isnan(v))) else _utf8(str(v)) for v in values]
            if field.name in (S.TEXT, S.ERROR, S.CAPTION_LANG):
                vals = [v or None for v in vals]  # "" means no value
            if field.name == S.ERROR:  # the last gate before a file: every stored message capped
                vals = [S.cap_error(v) for v in vals]
            arrays.append(pa.array(vals, type=field.type))
    return pa.Table.from_arrays(arrays, schema=S.SCHEMA)


def _ocr_value(name: str, value) -> list | None:
    """An ``ocr_text`` / ``ocr_confidence`` cell: the stage carries the texts as one JSON list
    (a string: Ray's blocks need one type per column) and the confidences as an array; ``""`` or
    ``None``: not read."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if name == S.OCR_TEXT:
        texts = json.loads(value) if isinstance(value, str) else list(value)
        return [_utf8(str(t)) for t in texts]
    return np.asarray(value, dtype=np.float32).reshape(-1).tolist()


def _utf8(text: str) -> str:
    """``text`` if it is valid UTF-8 text, else with its lone surrogates written as ``\\udXXX``
    escapes (a shard path or key read from non-UTF-8 bytes); Parquet strings must be UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _polygon_rows(boxes) -> list[list[float]]:
    arr = np.asarray(boxes, dtype=np.float32)
    return arr.reshape(arr.shape[0], -1).tolist() if arr.size else []


def write_index_file(path: str | Path, table: pa.Table, metadata: dict[str, str]) -> None:
    """Write ``table`` to ``path`` atomically with string key-value ``metadata``.

    Raises:
        ValueError: the table's schema is not ``curate.schema.SCHEMA``.
    """
    if not table.schema.equals(S.SCHEMA, check_metadata=False):
        raise ValueError(f"table schema differs from the score-index schema:\n{table.schema}")
    write_parquet_atomically(path, table, {S.META_SCHEMA_VERSION: S.SCHEMA_VERSION,
                                           S.META_CODE_VERSION: __version__, **metadata})


def write_parquet_atomically(path: str | Path, table: pa.Table, metadata: dict[str, str]) -> None:
    """Write ``table`` (zstd) with string key-value ``metadata`` to a temporary file beside
    ``path``, then rename it (``os.replace``): a reader never sees a half-written file."""
    table = table.replace_schema_metadata({_utf8(k).encode(): _utf8(str(v)).encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # Python opens any name the OS has, even non-UTF-8
        pq.write_table(table, f, compression="zstd")


_TMP_TAIL = re.compile(r"[0-9a-f]{8}")  # what follows ".<name>.tmp-" in a temporary name


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete temporary files that a killed writer of ``path`` left behind (named as
    ``curate.io.atomic.temporary_name`` names them: ``.<name>.tmp-<8 hex>``, nothing else);
    returns how many."""
    path = Path(path)
    prefix = f".{path.name}.tmp-"
    # Listed and compared literally: the name may hold glob characters ("shard[1]").
    stale = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and _TMP_TAIL.fullmatch(p.name[len(prefix):])
             and not p.is_symlink() and p.is_file()] if path.parent.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def read_index_metadata(path: str | Path) -> dict[str, str]:
    """The ``curate.*`` key-value metadata of an index file (empty dict if none); keys written
    under their older names (``schema.LEGACY_META``) are returned under the current ones."""
    return _curate_metadata(pq.read_schema(path).metadata)


def _curate_metadata(raw: dict[bytes, bytes] | None) -> dict[str, str]:
    """The ``curate.*`` entries of Parquet key-value metadata, decoded, legacy keys renamed."""
    found = {k.decode(): v.decode() for k, v in (raw or {}).items() if k.decode().startswith(S.META_PREFIX)}
    return {S.LEGACY_META.get(k, k): v for k, v in found.items()}


def complete_index_metadata(path: str | Path) -> dict[str, str] | None:
    """The ``curate.*`` metadata of ``path`` when it is a readable index file for a completely
    read shard, whose row count matches its recorded sample count, whose schema version is
    current and that has every column of the current schema; else ``None``. One footer read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except Exception:
        return None
    md = _curate_metadata(schema.metadata)
    complete = (
        md.get(S.META_SCHEMA_VERSION) == S.SCHEMA_VERSION
        and set(S.COLUMNS) <= set(schema.names)
        and md.get(S.META_SHARD_STATUS) == SHARD_COMPLETE
        and md.get(S.META_NUM_SAMPLES) == str(meta.num_rows)
    )
    return md if complete else None


# What other folders curate (or a user) passes where a score index goes look like, by the file
# that marks them, checked in this order: (marker, what the folder is, what to give instead).
_NOT_AN_INDEX = (
    ("filter_summary.json", "a subset folder written by `curate filter`",
     "give --index the score index it was filtered from (curate report takes the subset as --subset)"),
    ("train_config.json", "a `curate train` output folder", "give --index a score index written by `curate score`"),
    ("eval_results.jsonl", "a `curate evaluate` output folder", "give --index a score index written by `curate score`"),
    ("index.html", "a `curate report` page", "give --index the score index the page was made from"),
    ("reshard_summary.json", "shards written by `curate reshard`", "score them with `curate score` first"),
)


def describe_not_an_index(index: str | Path) -> str:
    """One line saying that ``index`` is not a score index, what it is, and what to give
    instead, e.g. ``out/subset is a subset folder written by `curate filter`, not a score index:
    give --index the score index it was filtered from (...)``."""
    p = Path(index)
    if not p.exists():
        return f"{index}: no such file or folder"
    if p.is_file():
        return f"{index} is not a score-index file (*{INDEX_SUFFIX} written by `curate score`)"
    for marker, what, instead in _NOT_AN_INDEX:
        if (p / marker).is_file():
            return f"{index} is {what}, not a score index: {instead}"
    if any(p.glob("*.tar")) or any(p.glob("*.tar.gz")):
        return f"{index} holds shards, not a score index: score them with `curate score` first"
    if not any(p.iterdir()):
        return f"{index} is an empty folder, not a score index"
    return f"no score-index files (*{INDEX_SUFFIX} written by `curate score`) in {index}"


def index_files(index: str | Path) -> list[Path]:
    """The index files of a folder (or the one file given), sorted.

    Raises:
        FileNotFoundError: none found, or the folder is another of curate's outputs (a subset
            folder, whose ``subset.parquet`` would otherwise pass for an index file): the message
            is ``describe_not_an_index``'s one line.
    """
    p = Path(index)
    files = sorted(p.glob("*" + INDEX_SUFFIX)) if p.is_dir() else ([p] if p.is_file() else [])
    if p.is_dir() and files and (p / "filter_summary.json").is_file() and (p / "subset.parquet") in files:
        files = []  # a subset folder: subset.parquet holds index columns but is not an index
    if not files:
        raise FileNotFoundError(describe_not_an_index(index))
    return files


def read_index(path: str | Path) -> pa.Table:
    """Read a score index: one file or a folder of ``*.parquet`` files, as one Arrow table.

    Raises:
        FileNotFoundError: no index file at ``path``.
    """
    return pa.concat_tables([pq.read_table(f, schema=S.SCHEMA) for f in index_files(path)])
