"""DataComp's pool metadata, read as it lies on disk (issue 29).

DataComp's ``download_upstream.py`` leaves the pool's metadata as one flat folder of
``<32 hex>.parquet`` files (Gadre et al. 2023, DataComp, App. "Pool metadata"; the format of
``mlfoundations/datacomp``), one row per sample of the pool:

| column | type | meaning |
| --- | --- | --- |
| ``uid`` | string | the sample's uid (32 hex characters) |
| ``url``, ``text`` | string | the image URL and the caption |
| ``original_width``, ``original_height`` | int64 | the image's size in pixels, as downloaded |
| ``clip_b32_similarity_score`` | float32 | OpenAI CLIP ViT-B/32 image-caption cosine similarity |
| ``clip_l14_similarity_score`` | float32 | OpenAI CLIP ViT-L/14 image-caption cosine similarity |
| ``face_bboxes`` | list<list<double>> | faces, ``[x0, y0, x1, y1]`` normalised to [0, 1] |
| ``sha256`` | string | of the image bytes |

With ``--download_npz`` a ``<same stem>.npz`` lies beside each file (``b32_img``, ``b32_txt``
(N, 512), ``l14_img``, ``l14_txt`` (N, 768), ``dedup`` (N, 256), float16, in the Parquet file's
row order).

curate reads this folder in place, as a pool (``curate.query.connect``): nothing is converted or
copied. Its rows are all ``ok`` (DataComp's baselines rank and filter every row of the
metadata), ``shard`` is the metadata file and ``key`` the row's position in it, and
``width``/``height`` are ``original_width``/``original_height``. ``metadata_file`` and
``metadata_row`` (``DC_FILE``, ``DC_ROW``) name the file and row a pool row comes from, also when
the folder is joined with a score index; ``npz_array`` reads an array of the ``.npz`` beside a
file in place (memory-mapped where the member is stored uncompressed, as ``numpy.savez`` writes).
"""

from __future__ import annotations

import re
from pathlib import Path

from curate import schema as S

# The columns of a DataComp metadata file (``download_upstream.py``); the first four identify one.
DC_URL = "url"
DC_WIDTH = "original_width"
DC_HEIGHT = "original_height"
DC_FACES = "face_bboxes"
DC_SHA256 = "sha256"
# Columns curate adds to a metadata pool's view: the metadata file a row is in and its position
# there (also on a pool joined with a score index, whose ``shard``/``key`` are the index's), so
# that a rule can read the row's embeddings from the ``.npz`` beside the file (``npz_array``).
DC_FILE = "metadata_file"
DC_ROW = "metadata_row"
NPZ_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt", "dedup")  # DataComp's npz arrays (float16)
ARCHS = ("b32", "l14")  # the CLIP models DataComp scored the pool with (``--arch``)


def score_column(arch: str) -> str:
    """DataComp's CLIP-score column of ``arch`` (``clip_b32_similarity_score``, ...).

    Raises:
        ValueError: ``arch`` is not one of ``ARCHS``.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    return f"clip_{arch}_similarity_score"


SCORE_COLUMNS = tuple(score_column(a) for a in ARCHS)
IDENTIFYING = (S.UID, S.TEXT, DC_WIDTH, DC_HEIGHT)
# A metadata file is named by a uid-like hex stem (DataComp names them by a hash); curate lists
# exactly these, where DataComp's ``fs.ls`` keeps any path holding ".parquet" (a stray
# ``x.parquet.tmp`` included).
_FILE = re.compile(r"[0-9a-f]{32}\.parquet")


def metadata_files(folder: str | Path) -> list[Path]:
    """The metadata files of a DataComp metadata folder, sorted: regular files named
    ``<32 hex>.parquet`` (one level, as DataComp lists them).

    Raises:
        FileNotFoundError: no such file in ``folder``.
    """
    p = Path(folder)
    files = sorted(f for f in p.iterdir() if _FILE.fullmatch(f.name) and f.is_file()) if p.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no DataComp metadata files (<32 hex>.parquet) in {folder}")
    return files


def is_metadata_folder(path: str | Path) -> bool:
    """Whether ``path`` is a DataComp metadata folder: its first ``<32 hex>.parquet`` file has
    DataComp's identifying columns (``IDENTIFYING``) and no ``status`` (a curate score index has
    one). Reads one file's schema only."""
    import pyarrow.parquet as pq

    try:
        first = metadata_files(path)[0]
        names = set(pq.read_schema(first).names)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return set(IDENTIFYING) <= names and S.STATUS not in names


def npz_path(parquet: str | Path) -> Path:
    """The embeddings file beside a metadata file (``<stem>.npz``; DataComp derives it the same
    way, ``path.split(".parquet")[0] + ".npz"``)."""
    p = Path(parquet)
    return p.with_name(p.name[: -len(".parquet")] + ".npz")


def view_sql(patterns: str, names: set[str]) -> str:
    """The ``SELECT`` of the pool view over metadata files (``patterns``: DuckDB's list of file
    patterns): every DataComp column as it is, and curate's pool columns made from them
    (``status`` ``ok``, ``shard`` the file, ``key`` the row's position in it, ``width`` and
    ``height`` from ``original_*``). ``names``: the files' column names (a score column a pool
    lacks is null)."""
    extra = [f"CAST(NULL AS FLOAT) AS {c}" for c in SCORE_COLUMNS if c not in names]
    cols = [
        "* EXCLUDE (filename, file_row_number)", f"'{S.STATUS_OK}' AS {S.STATUS}",
        f"CAST(NULL AS VARCHAR) AS {S.ERROR}",
        f"filename AS {S.SHARD}", f"CAST(file_row_number AS VARCHAR) AS {S.KEY}",
        f"CAST({DC_WIDTH} AS INTEGER) AS {S.WIDTH}", f"CAST({DC_HEIGHT} AS INTEGER) AS {S.HEIGHT}", *extra,
        f"filename AS {DC_FILE}", f"file_row_number AS {DC_ROW}",
    ]
    return (f"SELECT {', '.join(cols)} FROM read_parquet([{patterns}], filename = true, "
            f"file_row_number = true, union_by_name = true)")


def joined_sql(meta_sql: str, meta_names: set[str], index_sql: str, index_names: set[str]) -> str:
    """The ``SELECT`` of the pool view over DataComp metadata joined with a curate score index
    by uid: one row per metadata row (the pool is DataComp's), with the index row's columns
    where the index has its uid and ``status`` ``not_scored`` where it has not (an image that
    failed to download, or a shard not scored yet: such a row is never kept). DataComp's
    columns come from the metadata, curate's (``shard``, ``key``, ``text``, ``width``, ...)
    from the index. ``meta_names``, ``index_names``: the files' column names."""
    from_meta = [f"m.{n}" for n in (DC_URL, DC_WIDTH, DC_HEIGHT, DC_FACES, DC_SHA256) if n in meta_names]
    from_meta += [f"m.{n}" for n in SCORE_COLUMNS]  # the metadata view makes them, null when absent
    from_meta += [f"m.{DC_FILE}", f"m.{DC_ROW}"]
    from_index = [f"i.{n}" for n in sorted(index_names) if n not in (S.UID, S.STATUS) and f"m.{n}" not in from_meta]
    cols = [f"m.{S.UID}", *from_meta, *from_index,
            f"coalesce(i.{S.STATUS}, '{S.STATUS_NOT_SCORED}') AS {S.STATUS}"]
    return (f"SELECT {', '.join(cols)} FROM ({meta_sql}) m LEFT JOIN ({index_sql}) i ON m.{S.UID} = i.{S.UID}")


def npz_array(npz: str | Path, name: str):
    """The array ``name`` (e.g. ``"l14_img"``, (N, 768) float16) of a DataComp ``.npz``, without
    reading the rest of the file.

    A member stored uncompressed (``numpy.savez``, as DataComp's files and
    ``benchmarks/datacomp_pool.py`` write them) is memory-mapped read-only at its offset in the
    zip (the local file header, then the ``.npy`` header, then the data): rows are read from disk
    as they are indexed. A compressed member (``numpy.savez_compressed``) is decompressed whole
    (``numpy.load``; one file's array, never the pool's). Object arrays are refused (no pickle).

    Raises:
        FileNotFoundError: no such file.
        KeyError: the file has no such array.
        ValueError: not a zip of ``.npy`` members, or an object array.
    """
    import struct
    import zipfile

    import numpy as np

    path = Path(npz)
    if not path.is_file():
        raise FileNotFoundError(
            f"DataComp embeddings not found: {path} (download_upstream.py --download_npz writes it)")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo(f"{name}.npy")
            except KeyError:
                raise KeyError(
                    f"{path} has no array {name!r} (it has {sorted(n[:-4] for n in z.namelist())})") from None
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not an .npz file: {e}") from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        with np.load(path, allow_pickle=False) as z:
            return z[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for {name}.npy")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            with np.load(path, allow_pickle=False) as z:
                return z[name]
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {name} is an object array (refused: it would need pickle)")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size:
        raise ValueError(f"{path}: {name}.npy is {info.file_size} bytes, its header says {offset - start + nbytes}")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
