"""DataComp's ``image_based`` baseline, exactly, on CPU (issue 29).

DataComp (Gadre et al., 2023, Sec. 4.2 "Image-based filtering" and App. "image-based
baselines"; ``mlfoundations/datacomp`` at commit ``4a8df1992566ef8334773f7152e1855b1f716162``,
``baselines/apply_filter.py``: ``load_uids_with_image_filter``, ``image_filter_helper``,
``caption_filter``, ``get_centroid_ids_gpu``) keeps a pool row when

1. ``caption_filter``: fastText's top-1 language of the caption (``"\\n"`` replaced by ``" "``)
   is ``en`` (``FastTextEnglish``), ``len(fasttext.tokenize(text)) > 1``
   (:func:`more_than_one_fasttext_token`) and ``len(text) > 5`` code points; and
2. the nearest pool centroid of its ViT-L/14 image embedding (the npz's ``l14_img``, (N, 768)
   float16, cast to float32; nearest = ``argmax`` of the dot product, first index on ties) is
   the nearest centroid of some ImageNet-1k training image (``target_centroid_ids``: the
   ``argmax`` centroid of each of the ``in1k_clip_vit_l14_{0..4}`` image features, unique).

``image_based_intersect_clip_score`` first keeps rows with ``clip_<arch>_similarity_score >=
threshold`` (a fraction's threshold over the whole pool, ``get_threshold``): a row test like the
others, so it is ``image_based(...) & clip_score(arch=..., ...)``.

DataComp runs step 2 on GPUs (``cuda:{i}``, float32 einsum, batches of ``--batch_size``); this
runs it on CPU in float32 with numpy. The two agree except where a row's two best centroids are
closer than float32 rounding of a 768-term dot product (about 1e-6), where any two
implementations (DataComp's on two GPU models included) may pick differently.

The assets (``baselines/utils.py``, ``download``; not downloadable from here) are given by path:

- ``centroids``: the pool's k-means centroids, ``{scale}_centroids`` (``small_centroids_l14.pt``,
  ``medium_centroids_l14.pt``, ...): DataComp's file is ``torch.save`` of a numpy float32 array
  (K, 768); or a ``.npy`` of it.
- ``targets``: ``in1k_clip_vit_l14_{0..4}.pt`` (a list of paths, or a folder holding those five
  names): each ``torch.save`` of ``{"image_features": tensor (n, 768)}``; or ``.npy`` arrays.

``.pt`` files are read with ``torch.load(weights_only=True)``, which unpickles only tensors,
containers and, for the centroids, a plain numeric numpy array (``_reconstruct``, ``ndarray``,
``dtype`` allow-listed): nothing else in a pickle is ever run. ``.npy`` is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.filters.datacomp_text import DataCompAssetError, _bools, _texts

DIM = 768  # OpenAI CLIP ViT-L/14's embedding size (the npz's l14_img)
TARGET_NAMES = tuple(f"in1k_clip_vit_l14_{i}.pt" for i in range(5))  # DataComp's download() files
SCALES = ("small", "medium", "large", "xlarge")
_HOWTO = (
    "DataComp's image_based assets are released at "
    "https://github.com/sagadre/datacomp_baseline_assets/releases/tag/v0.1.0-alpha "
    "(in1k_clip_vit_l14_{0..4}.pt and <scale>_centroids_l14.pt; DataComp's baselines.py downloads "
    "them to ~/.cache/datacomp): fetch them on a machine with network access and copy them here, "
    "then give image_based(centroids='.../small_centroids_l14.pt', targets='DIR or [5 paths]')"
)

# fastText's Dictionary::readWord separators (src/dictionary.cc): a token ends at one of these
# bytes, and each "\n" is a token of its own (EOS, "</s>").
_FASTTEXT_SPACE = " \n\r\t\v\f\x00"
_FASTTEXT_TOKEN = "[^ \\n\\r\\t\\x0b\\x0c\\x00]+"


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))`` of Facebook's fastText 0.9.2 (DataComp's pin), which
    reads words with ``Dictionary::readWord``: tokens are the runs of bytes other than
    ``' \\n\\r\\t\\v\\f\\0'`` (only these ASCII bytes separate; ``\\xa0``, ``\\u3000``, ``\\x85``
    do not), plus one ``"</s>"`` per ``"\\n"``. So ``"hello\\n"`` is 2 tokens, ``"a\\u3000b"`` 1.
    curate's ``fasttext`` module (fasttext-predict) has no ``tokenize``; this is checked against
    the real one in ``tests/filters/test_datacomp_image.py``."""
    count = text.count("\n")
    word = False
    for ch in text:
        if ch in _FASTTEXT_SPACE:
            word = False
        elif not word:
            word, count = True, count + 1
    return count


def more_than_one_fasttext_token(texts) -> pa.BooleanArray:
    """True where ``len(fasttext.tokenize(text)) > 1`` (``caption_filter``'s word count; see
    :func:`fasttext_token_count`), vectorised with Arrow's RE2; null is False."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_null(texts.type):
            return _bools([False] * len(texts))
        arr = texts.cast(pa.large_string()) if pa.types.is_string_view(texts.type) else texts
        n = pc.add(pc.count_substring_regex(arr, _FASTTEXT_TOKEN), pc.count_substring(arr, "\n"))
        out = pc.fill_null(pc.greater(n, 1), False)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return _bools(t is not None and fasttext_token_count(t) > 1 for t in _texts(texts))


# --------------------------------------------------------------------------------------------
# assets


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` with a plain numpy array allowed (DataComp's centroids
    file pickles one, from numpy 1.x: ``numpy.core.multiarray._reconstruct``)."""
    import torch

    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as ma
    allowed = [(ma._reconstruct, "numpy.core.multiarray._reconstruct"),
               (ma._reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _float_matrix(x, path: Path, what: str) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind != "f":
        raise DataCompAssetError(f"{what} {path}: expected a float array (n, {DIM}), got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _asset_path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataCompAssetError(f"{what} must be a path, got {path!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataCompAssetError(f"{what} not found: {p}. {_HOWTO}")
    return p


def load_centroids(path) -> np.ndarray:
    """DataComp's pool centroids (``{scale}_centroids``, ``load_uids_with_image_filter``:
    ``torch.from_numpy(torch.load(path))``), (K, 768) float32. ``.pt`` (a pickled numpy array
    or a tensor, read with ``weights_only=True``) or ``.npy`` (``allow_pickle=False``).

    Raises:
        DataCompAssetError: missing, unreadable or not a float matrix."""
    p = _asset_path(path, "image_based(centroids=...): DataComp's <scale>_centroids file")
    try:
        x = np.load(p, allow_pickle=False) if p.suffix == ".npy" else _torch_load(p)
    except Exception as e:  # noqa: BLE001 -- any reader error is a bad asset
        raise DataCompAssetError(f"cannot read centroids {p} (weights_only, no pickled code): {e}") from None
    c = _float_matrix(x, p, "centroids")
    if c.shape[1] != DIM:
        raise DataCompAssetError(f"centroids {p}: {c.shape[1]} columns, DataComp's are ViT-L/14's {DIM}")
    return c


def target_paths(targets) -> list[Path]:
    """The ImageNet-1k embedding files: a folder (its ``in1k_clip_vit_l14_{0..4}.pt``, else
    ``.npy`` of the same stems), one path, or a list of paths.

    Raises:
        DataCompAssetError: a path is missing."""
    what = "image_based(targets=...): DataComp's in1k_clip_vit_l14_{0..4}"
    if isinstance(targets, (str, os.PathLike)) and Path(targets).expanduser().is_dir():
        d = Path(targets).expanduser()
        for suffix in (".pt", ".npy"):
            found = [d / (n[:-3] + suffix) for n in TARGET_NAMES]
            if all(f.is_file() for f in found):
                return found
        raise DataCompAssetError(f"{what}: {d} lacks in1k_clip_vit_l14_0.pt ... _4.pt. {_HOWTO}")
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    if not items:
        raise DataCompAssetError(f"{what}: no path given")
    return [_asset_path(t, what) for t in items]


def load_targets(path) -> np.ndarray:
    """One ImageNet-1k embedding file (``torch.load(path)["image_features"]``, or ``.npy``),
    float32 (n, 768) (DataComp's ``.float()`` of each batch).

    Raises:
        DataCompAssetError: unreadable, or no ``image_features``."""
    p = Path(path)
    try:
        x = np.load(p, allow_pickle=False) if p.suffix == ".npy" else _torch_load(p)
    except Exception as e:  # noqa: BLE001
        raise DataCompAssetError(
            f"cannot read ImageNet-1k embeddings {p} (weights_only, no pickled code): {e}") from None
    if isinstance(x, dict):
        if "image_features" not in x:
            raise DataCompAssetError(f"{p}: no 'image_features' (has {sorted(map(str, x))})")
        x = x["image_features"]
    t = _float_matrix(x, p, "ImageNet-1k embeddings")
    if t.shape[1] != DIM:
        raise DataCompAssetError(f"{p}: {t.shape[1]} columns, DataComp's are ViT-L/14's {DIM}")
    return t


ROWS_PER_PRODUCT = 1 << 24  # rows x centroids of one float32 product (64 MiB)


def nearest_centroids(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``get_centroid_ids_gpu`` on CPU: for each row of ``features`` (n, 768), cast to float32,
    the index of the centroid with the largest dot product (``argmax``, first on ties), int64.
    In blocks of rows, so at most ``ROWS_PER_PRODUCT`` similarities are held at a time."""
    n = features.shape[0]
    out = np.empty(n, dtype=np.int64)
    step = max(1, ROWS_PER_PRODUCT // max(1, centroids.shape[0]))
    ct = centroids.T
    for i in range(0, n, step):
        block = np.asarray(features[i:i + step], dtype=np.float32)
        out[i:i + step] = np.argmax(block @ ct, axis=1)
    return out


def target_centroid_ids(targets: list[np.ndarray] | np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``torch.unique(get_centroid_ids_gpu(cat(targets), centroids))``: the sorted ids of the
    centroids nearest some target embedding."""
    parts = [targets] if isinstance(targets, np.ndarray) else list(targets)
    return np.unique(np.concatenate([nearest_centroids(t, centroids) for t in parts] or [np.empty(0, np.int64)]))


_CACHE_FILES = 8  # memory maps (the pages are the OS's to drop)
_CACHE_LOADED = 2  # decompressed arrays (savez_compressed npz): one file's l14_img each


class NearTargetCentroid:
    """The vectorised SQL function ``(metadata_file VARCHAR, metadata_row BIGINT) -> BOOLEAN``:
    whether the row's ``l14_img`` (from the ``.npz`` beside its metadata file,
    ``curate.io.datacomp.npz_array``) is nearest a target centroid. Null is False.

    Holds the centroids (K, 768) float32 and a (K,) bool of the target ids; the npz arrays of
    the last ``_CACHE_FILES`` files (memory maps), of which at most ``_CACHE_LOADED`` are
    decompressed arrays (one file's ``l14_img`` each: memory grows with the file, never the pool)."""

    def __init__(self, centroids: np.ndarray, target_ids: np.ndarray):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.is_target = np.zeros(len(centroids), dtype=bool)
        self.is_target[np.asarray(target_ids, dtype=np.int64)] = True
        self._arrays: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _array(self, file: str) -> np.ndarray:
        from curate.io.datacomp import npz_array, npz_path

        with self._lock:
            arr = self._arrays.get(file)
            if arr is not None:
                self._arrays.move_to_end(file)
                return arr
        try:
            arr = npz_array(npz_path(file), "l14_img")
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise DataCompAssetError(
                f"image_based() reads l14_img of the .npz beside each metadata file: {e}") from None
        if arr.ndim != 2 or arr.shape[1] != self.centroids.shape[1]:
            raise DataCompAssetError(
                f"{npz_path(file)}: l14_img is {arr.shape}, expected (rows, {self.centroids.shape[1]})")
        with self._lock:
            self._arrays[file] = arr
            while len(self._arrays) > _CACHE_FILES:
                self._arrays.popitem(last=False)
            loaded = [f for f, a in self._arrays.items() if not isinstance(a, np.memmap)]
            for f in loaded[:-_CACHE_LOADED]:  # decompressed arrays hold memory: keep the newest few
                del self._arrays[f]
        return arr

    def __call__(self, files, rows) -> pa.BooleanArray:
        files = files.combine_chunks() if isinstance(files, pa.ChunkedArray) else pa.array(files, pa.string())
        rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else pa.array(rows, pa.int64())
        n = len(files)
        out = np.zeros(n, dtype=bool)
        valid = np.asarray(pc.and_(pc.is_valid(files), pc.is_valid(rows)).to_numpy(zero_copy_only=False), dtype=bool)
        if not valid.any():
            return pa.array(out)
        enc = pc.dictionary_encode(files)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        row_ids = pc.fill_null(rows, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        for code, file in enumerate(enc.dictionary.to_pylist()):
            sel = np.flatnonzero(valid & (codes == code))
            if not len(sel):
                continue
            arr = self._array(file)
            r = row_ids[sel]
            if r.min() < 0 or r.max() >= arr.shape[0]:
                raise DataCompAssetError(f"{file} has row {int(r.max())} but its .npz l14_img has {arr.shape[0]} rows")
            order = np.argsort(r, kind="stable")  # read the map in file order
            ids = nearest_centroids(arr[r[order]], self.centroids)
            out[sel[order]] = self.is_target[ids]
        return pa.array(out)
