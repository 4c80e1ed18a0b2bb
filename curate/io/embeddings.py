"""Embedding files beside a score index (``curate score --embeddings``).

One Parquet file per index file, ``<index>/_embeddings/<index file name>``, with one row per index
row in the same order (the ``uid`` and ``key`` columns repeat the index's, so a join is never
needed and a misaligned file is detected):

| column | type |
| --- | --- |
| ``uid``, ``key`` | string |
| ``image_embedding`` | fixed_size_list<float16>[D], L2-normalised; null where the row is not ``ok`` |
| ``masked_image_embedding`` | fixed_size_list<float16>[D], L2-normalised; null where the row is not ``ok`` |
| ``text_embedding`` | fixed_size_list<float16>[D], L2-normalised; null where the row is not ``ok`` |
| ``image_hash`` | binary(16): BLAKE2b-128 of the image bytes as stored in the shard |
| ``image_phash`` | int64: 64-bit perceptual hash (``imagehash.phash``) of the decoded image; 0: none (see below) |

``image_phash`` is 0 for a near-constant image (``curate.stages.decode.perceptual_hash``), which has none.

Any Parquet reader reads them without curate: ``pyarrow.parquet.read_table``, DuckDB
(``SELECT uid, image_embedding FROM 'index/_embeddings/*.parquet'``), or numpy via
``read_embeddings``. DataComp ships its pool's CLIP embeddings the same way, beside the metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.errors import CurateError
from curate.io.index import index_files, write_parquet_atomically


def embeddings_path(index_file: str | Path) -> Path:
    """The embedding file of an index file: ``<folder>/_embeddings/<name>``."""
    index_file = Path(index_file)
    return index_file.parent / S.EMBEDDINGS_DIR / index_file.name


def as_matrix(column: np.ndarray) -> np.ndarray:
    """A batch column of vectors as ``(N, D) float16``: a 2-D array as it is, or a 1-D ``object``
    array of rows (what concatenated batches hold), ``None`` rows as NaN."""
    column = np.asarray(column) if not isinstance(column, np.ndarray) else column
    if column.dtype != object:
        return np.asarray(column, dtype=np.float16).reshape(len(column), -1)
    rows = [None if v is None else np.asarray(v, dtype=np.float16).ravel() for v in column]
    dim = next((len(r) for r in rows if r is not None), 0)
    return np.stack([np.full(dim, np.nan, np.float16) if r is None else r for r in rows]) if rows else \
        np.zeros((0, dim), np.float16)


def vectors_to_arrow(vectors: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``(N, D)`` float vectors as ``fixed_size_list<float16>[D]``, null where not ``valid``."""
    vectors = np.asarray(vectors, dtype=np.float16).reshape(len(valid), -1)
    values = pa.array(vectors.ravel(), pa.float16())
    arr = pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])
    if valid.all():
        return arr
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=pa.array(~valid))


def write_embeddings_file(index_file: str | Path, columns: dict[str, np.ndarray], valid: np.ndarray,
                          metadata: dict[str, str]) -> Path:
    """Write the embedding file of ``index_file`` atomically.

    Args:
        columns: ``uid``, ``key`` (``(N,)`` str), each of ``EMBEDDING_COLUMNS`` (``(N, D)``
            float), ``image_hash`` (``(N,)`` bytes) and ``image_phash`` (``(N,)`` int64).
        valid: ``(N,) bool``, rows whose embeddings are meaningful (status ``ok``).
        metadata: string key-value metadata (the run's model identity; ``embedding_dim`` is added).

    Returns:
        The file's path.
    """
    dim = int(np.asarray(columns[S.IMAGE_EMBEDDING]).reshape(len(valid), -1).shape[1])
    table = pa.table({
        S.UID: pa.array(columns[S.UID], pa.string()),
        S.KEY: pa.array(columns[S.KEY], pa.string()),
        **{c: vectors_to_arrow(columns[c], valid) for c in S.EMBEDDING_COLUMNS},
        S.IMAGE_HASH: pa.array([bytes(h) if h else None for h in columns[S.IMAGE_HASH]], pa.binary()),
        S.IMAGE_PHASH: pa.array(np.asarray(columns[S.IMAGE_PHASH], dtype=np.int64), pa.int64(),
                                mask=~np.asarray(valid, dtype=bool)),
    })
    path = embeddings_path(index_file)
    write_parquet_atomically(path, table, {**metadata, S.META_EMBEDDING_DIM: str(dim)})
    return path


class NoEmbeddings(CurateError, ValueError):
    """The index was scored without ``--embeddings`` (or an embedding file is missing or stale)."""


def read_embeddings(index: str | Path, column: str = S.IMAGE_EMBEDDING,
                    index_columns: tuple[str, ...] = (S.UID, S.SHARD, S.KEY, S.STATUS)):
    """The ``ok`` rows of an index with one embedding column, aligned row by row.

    Args:
        index: score-index folder (or one index file).
        column: one of ``EMBEDDING_COLUMNS``.
        index_columns: index columns to return beside it.

    Returns:
        ``(rows, vectors, hashes)``: ``rows`` a ``pyarrow.Table`` of ``index_columns`` for the
        ``ok`` rows, ``vectors`` ``(N, D) float16``, ``hashes`` a ``pyarrow.Table`` of
        ``image_hash`` and ``image_phash`` for the same rows.

    Raises:
        NoEmbeddings: an index file has no embedding file, or one whose rows do not match.
        FileNotFoundError: no index files.
    """
    if column not in S.EMBEDDING_COLUMNS:
        raise ValueError(f"column must be one of {', '.join(S.EMBEDDING_COLUMNS)}, got {column!r}")
    rows, vecs, hashes = [], [], []
    cols = list(dict.fromkeys((*index_columns, S.UID, S.KEY, S.STATUS)))
    for f in index_files(index):
        emb_file = embeddings_path(f)
        if not emb_file.is_file():
            raise NoEmbeddings(f"{f} has no embedding file ({emb_file}): score with --embeddings "
                               f"(curate score ... --embeddings) to use rules that read embeddings")
        t = pq.read_table(f, columns=cols)
        e = pq.read_table(emb_file, columns=[S.UID, S.KEY, column, S.IMAGE_HASH, S.IMAGE_PHASH])
        if e.num_rows != t.num_rows or e.column(S.UID) != t.column(S.UID) or e.column(S.KEY) != t.column(S.KEY):
            raise NoEmbeddings(f"{emb_file} does not match {f} row by row: rescore with --overwrite")
        ok = np.asarray(t.column(S.STATUS).to_pylist()) == S.STATUS_OK
        sel = pa.array(np.flatnonzero(ok))
        rows.append(t.take(sel).select(list(index_columns)))
        emb = e.column(column).take(sel).combine_chunks()
        dim = emb.type.list_size
        vecs.append(emb.flatten().to_numpy(zero_copy_only=False).astype(np.float16).reshape(-1, dim))
        hashes.append(e.select([S.IMAGE_HASH, S.IMAGE_PHASH]).take(sel))
    return pa.concat_tables(rows), np.concatenate(vecs), pa.concat_tables(hashes)
