"""``curate.stages.language``: the caption-language stage."""

from __future__ import annotations

import numpy as np

from curate import schema as S


def test_the_real_language_stage_isolates_a_caption_it_raises_on():
    from curate.stages.language import CaptionLanguage

    # A lone surrogate that reached the stage without the boundary's cleaning: fastText raises.
    batch = {S.TEXT: np.array(["a dog on a beach", "a cat \ud83d", ""], dtype=object),
             S.STATUS: np.array(["ok", "ok", "missing_caption"], dtype=object),
             S.ERROR: np.array(["", "", "empty caption"], dtype=object)}
    out = CaptionLanguage()(batch)
    assert (out[S.CAPTION_LANG].tolist()[0] == "en"
            and out[S.STATUS].tolist() == ["ok", "language_error", "missing_caption"])
    assert out[S.ERROR][1].startswith("language: ")
