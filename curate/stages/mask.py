"""Mask: cover detected text so CLIP can no longer read it.

T-MARS (Maini et al., 2023, Sec. 4) fills each detected text box with the average colour of
the pixels around it. ``mask_text(method="mean")`` does exactly that, per polygon, using a ring
of ``ring_px`` pixels around the polygon that excludes every text polygon of the image;
``method="inpaint"`` uses ``cv2.inpaint`` (Telea's method) over the union of the polygons.
Polygons are clipped to the image and rounded to integer pixels before rasterising, so a
detector's negative, float or out-of-range coordinates cannot break masking.
"""

from __future__ import annotations

import cv2
import numpy as np

from curate import schema as S
from curate.stages.base import Stage
from curate.stages.common import EMPTY_IMAGE, batch_len, image_at, object_array


def polygons_to_pixels(text_boxes, width: int, height: int) -> list[np.ndarray]:
    """Normalised flattened polygons to integer pixel polygons clipped to the image.

    Args:
        text_boxes: ``(N, 2k)`` array or iterable of ``[x1, y1, ..., xk, yk]``, coordinates
            normalised to [0, 1].
        width, height: image size in pixels.

    Returns:
        List of ``(k, 2) int32`` arrays with ``0 <= x <= width - 1`` and ``0 <= y <= height - 1``.
    """
    out = []
    for poly in text_boxes if text_boxes is not None else []:
        p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(p) < 3 or not np.isfinite(p).all():
            continue
        p = p * np.array([width, height])
        p = np.rint(p)
        p[:, 0] = np.clip(p[:, 0], 0, width - 1)
        p[:, 1] = np.clip(p[:, 1], 0, height - 1)
        out.append(p.astype(np.int32))
    return out


def text_mask(polys: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise integer polygons into a ``(H, W) uint8`` mask (255 inside text, 0 elsewhere)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if polys:
        cv2.fillPoly(mask, polys, 255)
    return mask


MASK_METHODS = ("mean", "inpaint")  # the methods mask_text implements (config key mask.method)


def mask_text(
    image: np.ndarray,
    polys: list[np.ndarray],
    method: str = "mean",
    ring_px: int = 3,
    inpaint_radius: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Cover text polygons in an image.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        polys: integer pixel polygons, each ``(k, 2) int32`` (see ``polygons_to_pixels``).
        method: ``mean`` (T-MARS) or ``inpaint`` (``cv2.inpaint``, ``INPAINT_TELEA``).
        ring_px: width in pixels of the surrounding ring whose mean colour fills a polygon.
        inpaint_radius: ``cv2.inpaint`` radius in pixels.

    Returns:
        ``(masked, mask)``: the masked ``(H, W, 3) uint8`` copy (the input itself when there
        are no polygons) and the ``(H, W) uint8`` text mask. Only pixels inside the mask change.

    Raises:
        ValueError: unknown method.
    """
    h, w = image.shape[:2]
    mask = text_mask(polys, h, w)
    if not polys:
        return image, mask
    if method == "inpaint":
        return cv2.inpaint(np.ascontiguousarray(image), mask, inpaint_radius, cv2.INPAINT_TELEA), mask
    if method != "mean":
        raise ValueError(f"unknown mask method {method!r}; use one of {', '.join(MASK_METHODS)}")
    out = image.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * ring_px + 1, 2 * ring_px + 1))
    not_text = mask == 0
    fallback = image[not_text].mean(axis=0) if not_text.any() else image.reshape(-1, 3).mean(axis=0)
    for poly in polys:
        x0, y0 = np.maximum(poly.min(axis=0) - ring_px, 0)
        x1, y1 = np.minimum(poly.max(axis=0) + ring_px + 1, [w, h])
        local = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillPoly(local, [poly - np.array([x0, y0], dtype=np.int32)], 255)
        ring = (cv2.dilate(local, kernel) > 0) & not_text[y0:y1, x0:x1]
        colour = image[y0:y1, x0:x1][ring].mean(axis=0) if ring.any() else fallback
        region = out[y0:y1, x0:x1]
        region[local > 0] = np.rint(colour).astype(np.uint8)
    return out, mask


class Mask(Stage):
    """Stage: add ``masked_image`` and ``text_area_frac`` to a batch.

    Input columns: ``image``, ``text_boxes`` (normalised polygons), ``status``.
    Output columns added: ``masked_image`` (object: ``(H, W, 3) uint8`` for a row with text
    masked; an empty ``(0, 0, 3)`` array when nothing was masked or the row failed: the image is
    unchanged, so it never travels twice between Ray workers, and the score stage embeds the
    original image once) and ``text_area_frac`` (float32,
    the fraction of image pixels inside the union of text polygons, in [0, 1]; NaN for failed
    rows). A row whose masking raises gets status ``mask_error`` (``curate.stages.base.Stage``).

    Args:
        method, ring_px, inpaint_radius: see ``mask_text``.
    """

    name = "mask"
    error_status = S.STATUS_MASK_ERROR
    reads = (S.STATUS, S.IMAGE, S.TEXT_BOXES)
    writes = (S.MASKED_IMAGE, S.TEXT_AREA_FRAC)

    def __init__(self, method: str = "mean", ring_px: int = 3, inpaint_radius: int = 3):
        if method not in MASK_METHODS:
            raise ValueError(f"unknown mask method {method!r}; use one of {', '.join(MASK_METHODS)}")
        self.method = method
        self.ring_px = int(ring_px)
        self.inpaint_radius = int(inpaint_radius)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        n = batch_len(batch)
        images = batch[S.IMAGE]
        masked = [EMPTY_IMAGE] * n
        frac = np.full(n, np.nan, dtype=np.float32)
        for i in rows:
            img = image_at(images, i)
            h, w = img.shape[:2]
            polys = polygons_to_pixels(batch[S.TEXT_BOXES][i], w, h)
            if not len(polys):
                frac[i] = 0.0
                continue
            masked[i], mask = mask_text(img, polys, self.method, self.ring_px, self.inpaint_radius)
            frac[i] = np.count_nonzero(mask) / float(h * w)
        batch[S.MASKED_IMAGE] = object_array(masked)
        batch[S.TEXT_AREA_FRAC] = frac
        return batch
