"""Subset files (``curate filter`` output): a DataComp ``.npy`` (structured ``u8,u8`` uid halves,
``uids_to_datacomp``) or a ``subset.parquet`` with a ``uid`` column, read into ``UidCounts``
(uid -> multiplicity). Read by ``curate reshard``, ``curate train`` and ``curate report``;
written by ``curate filter`` through the writers here (``write_datacomp_subset``,
``write_npy_from_raw``, ``write_unshared``), in bounded memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate import schema as S

if TYPE_CHECKING:
    import pyarrow as pa

_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)


def uids_to_datacomp(uids) -> np.ndarray:
    """Uids to DataComp's subset array: structured ``np.dtype("u8,u8")`` (the two 64-bit
    halves of the uid), sorted, as DataComp's ``baselines.py`` saves and its resharder loads.

    Args:
        uids: a list of ``str`` or a ``pyarrow`` string array (checked by ``curate.schema.uid_mask``
            and decoded without Python objects, a lookup table over the string bytes).

    Raises:
        ValueError: a value that is not a uid (``curate.schema.is_uid``: 32 lower-case hex
            characters), named in the message.
    """
    import pyarrow as pa

    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    arr = pa.array(arr, pa.string()) if not isinstance(arr, pa.Array) else arr.cast(pa.string())
    if arr.null_count:
        raise ValueError("a uid is missing (null)")
    good = S.uid_mask(arr)
    if not good.all():
        bad = arr[int(np.flatnonzero(~good)[0])].as_py()
        raise ValueError(f"uid {S.cap_error(repr(bad), 100)} is not a uid (32 lower-case hex characters)")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if len(arr) else \
        np.zeros(0, np.uint8)
    nibbles = _HEX[data].reshape(-1, 32)
    halves = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).view(">u8").reshape(-1, 2)
    hi, lo = halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64)
    if not ((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))).all():
        order = np.lexsort((lo, hi))  # a structured sort is slow: sort the halves as keys
        hi, lo = hi[order], lo[order]
    out = np.empty(len(halves), dtype=np.dtype("u8,u8"))
    out["f0"], out["f1"] = hi, lo
    return out


class UidCounts:
    """A subset as ``uid -> multiplicity``, held as sorted ``u8,u8`` pairs (16 bytes per uid).

    A Python dict of 100M DataComp uids would take about 10 GB in every data worker; this takes
    1.6 GB plus 8 bytes per uid of counts, and a lookup is two binary searches.

    Args:
        uids: DataComp subset array, structured ``np.dtype("u8,u8")`` (``uids_to_datacomp``);
            a uid may repeat (upweighting).

    Raises:
        ValueError: the subset is empty.
    """

    def __init__(self, uids: np.ndarray):
        if len(uids) == 0:
            raise ValueError("the subset is empty: nothing to train on")
        keys, counts = np.unique(np.asarray(uids, dtype=np.dtype("u8,u8")), return_counts=True)
        self.hi = np.ascontiguousarray(keys["f0"])
        self.lo = np.ascontiguousarray(keys["f1"])
        self.counts = counts.astype(np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        """Samples with repeats."""
        return int(self.counts.sum())

    def get(self, uid: str, default: int = 0) -> int:
        """Multiplicity of ``uid`` in the subset; ``default`` when absent or not a uid
        (``curate.schema.is_uid``: ``"<32 hex>\\n"`` never counts as its first 32 characters)."""
        if not S.is_uid(uid):
            return default
        hi, lo = int(uid[:16], 16), int(uid[16:], 16)
        i, j = np.searchsorted(self.hi, hi, "left"), np.searchsorted(self.hi, hi, "right")
        if i == j:
            return default
        k = i + int(np.searchsorted(self.lo[i:j], lo))
        return int(self.counts[k]) if k < j and self.lo[k] == lo else default


def load_subset_counts(path: str | None) -> UidCounts | None:
    """The subset file (DataComp ``.npy`` or ``subset.parquet`` with ``uid``) as ``UidCounts``.

    Returns ``None`` for ``path=None`` (train on every sample).

    Raises:
        FileNotFoundError: no such file. ValueError: unknown file type, no ``uid`` column,
            a value that is not a uid (``curate.schema.is_uid``), or an empty subset.
    """
    if path is None:
        return None
    from pathlib import Path

    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"subset file not found: {path}")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)  # a user's file: an object array is refused, never unpickled
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable .npy file ({e})") from None
        if arr.dtype.names is None or len(arr.dtype.names) != 2:
            raise ValueError(f"{path} is not a DataComp subset (structured u8,u8 array), dtype {arr.dtype}")
        return UidCounts(arr)
    if p.suffix == ".parquet":
        try:
            table = pq.read_table(p, columns=[S.UID])
        except Exception as e:  # pyarrow raises ArrowInvalid, KeyError-like errors, OSError
            raise ValueError(f"{path} has no readable '{S.UID}' column ({type(e).__name__}: {e})") from None
        uids = table.column(S.UID).to_pylist()
        if any(u is None for u in uids):
            raise ValueError(f"{path}: {sum(u is None for u in uids)} null uid(s)")
        try:
            return UidCounts(uids_to_datacomp([str(u) for u in uids]))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raise ValueError(f"--subset must be a .npy (DataComp) or .parquet file, got {p.name}")


BATCH_ROWS = 1 << 20  # rows a batch of a subset file (one Parquet row group; uids a batch of the .npy)


def write_array(f, a: np.ndarray) -> None:
    """Append ``a``'s bytes to the binary file ``f``. Unlike ``ndarray.tofile``, whose error on
    a full disk has no errno ("1000000 requested and 0 written"), Python's write raises
    ``OSError`` with ``errno.ENOSPC``."""
    f.write(np.ascontiguousarray(a).view(np.uint8).data)


def write_npy_from_raw(raw: Path, npy_path: Path, dtype: np.dtype, n: int, sort: bool = False) -> None:
    """``npy_path``: the ``n`` records of ``dtype`` in the raw file ``raw`` behind a ``.npy``
    header (``numpy.lib.format``), copied in blocks; sorted in place (memory-mapped) if
    ``sort``. ``raw`` is removed."""
    with open(npy_path, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out, 1 << 24)
    raw.unlink()
    if sort and n:
        arr = np.load(npy_path, mmap_mode="r+", allow_pickle=False)  # the file just written above
        arr.sort()
        arr.flush()
        del arr


def write_unshared(reader: pa.RecordBatchReader, path: str | Path) -> tuple[int, int]:
    """Stream ``reader``'s rows to the Parquet file ``path`` (a row group a batch), leaving out
    the rows whose boolean column ``_shared`` is true, and the column itself.

    Returns:
        ``(rows written, rows left out)``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = reader.schema.remove(reader.schema.get_field_index("_shared"))
    kept = shared = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in reader:
            mask = batch.column("_shared").to_numpy(zero_copy_only=False).astype(bool)
            shared += int(mask.sum())
            table = pa.Table.from_batches([batch]).drop_columns(["_shared"]).filter(pa.array(~mask))
            writer.write_table(table)
            kept += table.num_rows
    return kept, shared


def write_datacomp_subset(parquet_path: str | Path, npy_path: str | Path) -> int:
    """Write the DataComp subset array (``uids_to_datacomp``: sorted structured ``u8,u8``) of
    the ``uid`` column of ``parquet_path`` to ``npy_path``, ``BATCH_ROWS`` uids at a time into a
    memory-mapped ``.npy``: 16 bytes a uid on disk, one batch in memory. Batches are sorted
    each; if the file is not sorted by uid as well, the array is sorted in place at the end.

    Returns:
        Uids written.

    Raises:
        ValueError: a value that is not a uid (``curate.schema.is_uid``).
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(parquet_path)
    n = pf.metadata.num_rows
    arr = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.dtype("u8,u8"), shape=(n,))
    with open(npy_path, "r+b") as f:  # reserve the blocks: a full disk is ENOSPC here, not SIGBUS on a page
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    at, in_order = 0, True
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[S.UID]):
        part = uids_to_datacomp(batch.column(0))
        if at and len(part) and part[0].item() < arr[at - 1].item():
            in_order = False
        arr[at : at + len(part)] = part
        at += len(part)
    if not in_order:
        arr.sort()
    arr.flush()
    del arr
    return n
