"""Face blurring at reshard, as DataComp's resharder does it (issue 29).

DataComp (``mlfoundations/datacomp`` at 4a8df199, ``resharder.py``) blurs the faces of an image
when resharding with ``--blur-metadata-map MAP --apply-blur``: the boxes are the ``face_bboxes``
column of the pool's metadata (``[x0, y0, x1, y1]`` per face, normalised to [0, 1]), the blur is
img2dataset 1.40.0's ``BoundingBoxBlurrer`` and the image is written back as WebP.
``blur_faces`` reproduces that function step by step:

1. decode with ``cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)`` (BGR, BGRA or grey, as stored: EXIF
   orientation is not applied);
2. each box becomes pixels by truncation, ``int(x0 * width)``, ``int(y0 * height)``, ...; its
   "diagonal" is ``max(x1 - x0, y1 - y0)`` in pixels; the box grows by ``0.1 * diagonal`` on
   every side (each coordinate truncated again with ``int``), then is clipped to
   ``[0, width - 1]`` and ``[0, height - 1]`` (so the last row and column are never in a box),
   and ``mask[y0:y1, x0:x1] = 1``;
3. with ``sigma = 0.1 * max_diagonal`` over all boxes and ``ksize = int(2 * ceil(4 * sigma)) + 1``,
   the image (as float32 in [0, 1]) and the mask are both blurred by ``cv2.GaussianBlur(ksize x
   ksize, sigmaX=sigma)`` (albumentations 1.3.0's ``gaussian_blur``; OpenCV's default border,
   reflect-101); the result is ``img * (1 - blurred_mask) + blurred_img * blurred_mask``,
   back to uint8 by ``(result * 255.0).astype(np.uint8)`` (truncation);
4. encode with ``cv2.imencode(".webp", result, [cv2.IMWRITE_WEBP_QUALITY, quality])``, quality
   100 by default (lossy WebP at quality 100; OpenCV writes lossless WebP above 100).

The resharder then stores the WebP as the sample's ``webp`` member and deletes its ``jpg``
member; every other member (the ``.json``, the ``.txt``) is kept as it is. A sample whose boxes
are empty (or null, or whose uid the metadata lacks) is not touched. ``FaceBoxes`` reads the
boxes from a DataComp metadata folder one shard's uids at a time.

Where curate differs from DataComp, on purpose:

- an image member of any format is blurred (DataComp reads only ``jpg``; any other sample fails
  with a ``KeyError`` and is dropped);
- an image that cannot be blurred (OpenCV cannot decode it, a malformed box, an image WebP
  cannot hold) is written unchanged and counted (``BlurFailed``), where DataComp's worker logs
  the traceback and drops the sample from its output; so is an image whose header says more
  than ``curate.limits.PILLOW_MAX_PIXELS`` pixels (the blur holds five float32 copies of it;
  DataComp's pool images are at most 512 pixels a side);
- DataComp's metadata map (a JSON file naming the Parquet file of each shard) is replaced by the
  metadata folder itself (``curate.io.datacomp.metadata_files``), searched by uid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curate.io.datacomp import DC_FACES, metadata_files
from curate.limits import PILLOW_MAX_PIXELS

DEFAULT_WEBP_QUALITY = 100  # DataComp's --reencode-webp-quality default
UID_COLUMN = "uid"


class BlurFailed(ValueError):
    """The image could not be blurred (not decodable, a malformed box, not encodable as WebP)."""


def blur_faces(image: bytes, boxes: list[list[float]], quality: int = DEFAULT_WEBP_QUALITY) -> bytes:
    """DataComp's ``blur_image``: blur ``boxes`` in ``image``, return it as WebP bytes.

    Args:
        image: the encoded image (any format OpenCV decodes).
        boxes: ``[x0, y0, x1, y1]`` per face, normalised to [0, 1] (DataComp's ``face_bboxes``);
            at least one (DataComp never calls its blur without one).
        quality: ``cv2.IMWRITE_WEBP_QUALITY`` (1-100 lossy; above 100 lossless).

    Raises:
        BlurFailed: the image does not decode, its header says more than ``PILLOW_MAX_PIXELS``
            pixels, a box is not four finite numbers, or the WebP encoder refuses the result
            (an image over 16383 pixels on a side).
    """
    import cv2
    import numpy as np

    too_large = _too_many_pixels(image)
    if too_large:
        raise BlurFailed(too_large)
    try:
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise BlurFailed(f"OpenCV cannot decode the image ({_first_line(e)})") from None
    if decoded is None or decoded.size == 0:
        raise BlurFailed("OpenCV cannot decode the image")
    blurred = _bounding_box_blur(decoded, boxes)
    try:
        ok, encoded = cv2.imencode(".webp", blurred, params=[int(cv2.IMWRITE_WEBP_QUALITY), int(quality)])
    except cv2.error as e:
        raise BlurFailed(f"OpenCV cannot encode the blurred image as WebP ({_first_line(e)})") from None
    if not ok:
        raise BlurFailed("OpenCV cannot encode the blurred image as WebP")
    return encoded.tobytes()


def _too_many_pixels(image: bytes) -> str | None:
    """Why the image is too large to blur, from its header (Pillow reads no pixel), or ``None``
    (also when Pillow cannot read the header: OpenCV then decides)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(image)) as im:
                width, height = im.size
    except Image.DecompressionBombError as e:
        return f"too large to blur: {e}"
    except Exception:
        return None
    if width * height > PILLOW_MAX_PIXELS:
        return (f"too large to blur: {width}x{height} pixels, over {PILLOW_MAX_PIXELS} "
                "(Pillow's decompression-bomb level)")
    return None


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def _bounding_box_blur(img, bbox_list):
    """img2dataset 1.40.0 ``BoundingBoxBlurrer.__call__``, line for line."""
    import cv2
    import numpy as np

    if len(bbox_list) == 0:
        return img
    height, width = img.shape[:2]
    img = img.astype(np.float32) / 255.0
    mask = np.zeros_like(img)
    max_diagonal = 0
    for bbox in bbox_list:
        x0, y0, x1, y1 = _box(bbox)
        adjusted = [int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)]
        diagonal = max(adjusted[2] - adjusted[0], adjusted[3] - adjusted[1])
        max_diagonal = max(max_diagonal, diagonal)
        # Margins as in princetonvisualai/imagenet-face-obfuscation.
        adjusted[0] = int(adjusted[0] - 0.1 * diagonal)
        adjusted[1] = int(adjusted[1] - 0.1 * diagonal)
        adjusted[2] = int(adjusted[2] + 0.1 * diagonal)
        adjusted[3] = int(adjusted[3] + 0.1 * diagonal)
        adjusted[0] = np.clip(adjusted[0], 0, width - 1)
        adjusted[1] = np.clip(adjusted[1], 0, height - 1)
        adjusted[2] = np.clip(adjusted[2], 0, width - 1)
        adjusted[3] = np.clip(adjusted[3], 0, height - 1)
        mask[adjusted[1]:adjusted[3], adjusted[0]:adjusted[2], ...] = 1
    sigma = 0.1 * max_diagonal
    ksize = int(2 * np.ceil(4 * sigma)) + 1
    blurred_img = _gaussian_blur(cv2, img, ksize, sigma)
    blurred_mask = _gaussian_blur(cv2, mask, ksize, sigma)
    result = img * (1 - blurred_mask) + blurred_img * blurred_mask
    return (result * 255.0).astype(np.uint8)


def _gaussian_blur(cv2, img, ksize: int, sigma: float):
    """albumentations 1.3.0 ``gaussian_blur`` for an image of at most 4 channels (what
    ``cv2.imdecode`` returns): ``cv2.GaussianBlur`` with the shape kept."""
    return cv2.GaussianBlur(img, ksize=(ksize, ksize), sigmaX=sigma).reshape(img.shape)


def _box(bbox: Any) -> tuple[float, float, float, float]:
    """The first four numbers of a box (DataComp reads ``bbox[0..3]``).

    Raises:
        BlurFailed: fewer than four, not numbers, or not finite (DataComp's ``int()`` raises).
    """
    try:
        values = tuple(float(bbox[i]) for i in range(4))
    except (TypeError, IndexError, ValueError, KeyError):
        raise BlurFailed(f"a face box is not four numbers: {str(bbox)[:80]}") from None
    if not all(math.isfinite(v) for v in values):
        raise BlurFailed(f"a face box is not finite: {list(values)}")
    return values


def blur_sample(sample: dict[str, Any], image_ext: str, boxes: list[list[float]],
                quality: int = DEFAULT_WEBP_QUALITY) -> dict[str, Any]:
    """The sample as DataComp's resharder writes it after blurring: the image member
    ``image_ext`` removed and the blurred WebP stored as ``webp`` (last); other members as they are.

    Raises:
        BlurFailed: see ``blur_faces``.
    """
    webp = blur_faces(sample[image_ext], boxes, quality)
    out = {k: v for k, v in sample.items() if k not in (image_ext, "webp")}
    out["webp"] = webp
    return out


class FaceBoxes:
    """The ``face_bboxes`` of a DataComp metadata folder, looked up by uid.

    Memory is bounded by one row group of the metadata, never by the pool: ``lookup`` reads the
    ``uid`` column one row group at a time (a row group whose uid statistics cannot hold any of
    the uids asked for is skipped), and the ``face_bboxes`` of a row group only where one of its
    uids is asked for, keeping only those rows.

    Args:
        folder: a DataComp metadata folder (``<32 hex>.parquet`` files with ``uid`` and
            ``face_bboxes``).

    Raises:
        FileNotFoundError: no metadata file in ``folder``.
        ValueError: a file lacks the ``uid`` or ``face_bboxes`` column.
    """

    def __init__(self, folder: str | Path):
        import pyarrow.parquet as pq

        self.folder = str(folder)
        self.files = metadata_files(folder)
        for f in self.files:
            names = pq.read_schema(f).names
            missing = [c for c in (UID_COLUMN, DC_FACES) if c not in names]
            if missing:
                raise ValueError(f"--face-boxes {folder}: {f.name} has no column {', '.join(missing)}")
        self.rows_read = 0  # uids read (all row groups not skipped), for tests and benchmarks
        self.max_rows_held = 0  # the most rows held at once while reading

    def lookup(self, uids: Iterable[str]) -> dict[str, list[list[float]]]:
        """``{uid: boxes}`` for the uids asked for that the metadata holds (the first row of a
        uid listed twice); a uid the metadata lacks is absent, a null ``face_bboxes`` is ``[]``."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = sorted(set(uids))
        found: dict[str, list[list[float]]] = {}
        if not wanted:
            return found
        value_set = pa.array(wanted, pa.string())
        for path in self.files:
            pf = pq.ParquetFile(path)
            uid_col = pf.schema_arrow.get_field_index(UID_COLUMN)
            for rg in range(pf.num_row_groups):
                if not _may_hold(pf.metadata.row_group(rg), pf.schema_arrow, uid_col, wanted):
                    continue
                ids = pf.read_row_group(rg, columns=[UID_COLUMN]).column(0)
                self.rows_read += len(ids)
                self.max_rows_held = max(self.max_rows_held, len(ids))
                hits = pc.indices_nonzero(pc.fill_null(pc.is_in(ids, value_set=value_set), False))
                if len(hits) == 0:
                    continue
                faces = pf.read_row_group(rg, columns=[DC_FACES]).column(0).take(hits)
                for uid, boxes in zip(ids.take(hits).to_pylist(), faces.to_pylist()):
                    found.setdefault(uid, boxes or [])
                del ids, faces
        return found


def _may_hold(row_group, schema, uid_col: int, wanted: list[str]) -> bool:
    """Whether a row group may hold one of the sorted ``wanted`` uids: its ``uid`` min/max
    statistics (when written) bound a range that contains one."""
    import bisect

    stats = None
    for i in range(row_group.num_columns):
        col = row_group.column(i)
        if col.path_in_schema == schema.field(uid_col).name:
            stats = col.statistics
            break
    if stats is None or not stats.has_min_max:
        return True
    low, high = stats.min, stats.max
    if isinstance(low, bytes):
        low, high = low.decode("utf-8", "replace"), high.decode("utf-8", "replace")
    i = bisect.bisect_left(wanted, low)
    return i < len(wanted) and wanted[i] <= high
