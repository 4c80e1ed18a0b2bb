"""``curate.stages.base.run_isolated``: a row a stage raises on fails alone, found by bisection."""

from __future__ import annotations

import numpy as np

from curate import schema as S
from curate.stages.base import Stage, run_isolated


class _Explodes(Stage):
    """A stage that raises on any batch holding the caption "boom" (the mechanism under test)."""

    name = "explodes"
    error_status = S.STATUS_SCORE_ERROR
    calls = 0

    def process(self, batch, rows):
        self.calls += 1
        out = np.full(len(batch[S.STATUS]), -1, dtype=np.int64)
        for i in rows:
            if batch[S.TEXT][i] == "boom":
                raise RuntimeError("bad sample")
            out[i] = len(batch[S.TEXT][i])
        batch["length"] = out
        return batch


def test_a_row_that_raises_fails_alone():
    batch = {S.TEXT: np.array(["ab", "boom", "abc", "x"], dtype=object),
             S.STATUS: np.array(["ok", "ok", "ok", "decode_error"], dtype=object),
             S.ERROR: np.array(["", "", "", "broken"], dtype=object),
             "image": np.zeros((4, 2, 2, 3), np.uint8)}
    out = run_isolated(_Explodes(), batch)
    assert out["length"].tolist() == [2, -1, 3, -1]
    assert out[S.STATUS].tolist() == ["ok", "score_error", "ok", "decode_error"]
    assert out[S.ERROR][1] == "explodes: RuntimeError: bad sample" and out[S.ERROR][3] == "broken"
    assert out["image"].shape[0] == 4


def test_one_bad_row_costs_a_bisection_not_a_row_by_row_rerun():
    n = 64
    texts = np.array(["ok"] * n, dtype=object)
    texts[37] = "boom"
    stage = _Explodes()
    out = run_isolated(stage, {S.TEXT: texts, S.STATUS: np.array(["ok"] * n, dtype=object),
                               S.ERROR: np.array([""] * n, dtype=object)})
    assert out[S.STATUS].tolist().count("score_error") == 1 and out[S.STATUS][37] == "score_error"
    assert (out["length"] == 2).sum() == n - 1
    assert stage.calls <= 2 * 6 + 2  # whole batch, two halves per level of log2(64) = 6, the default fill
