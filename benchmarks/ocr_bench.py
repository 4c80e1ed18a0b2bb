"""What ``curate score --ocr`` costs: scoring time added a sample, bytes a sample, words read.

The score stages run in this process (``StageChain``, no Ray) over the 41 bundled samples (photos,
ICDAR 2015 street scenes, EasyOCR's example text images), with the tiny CLIP, once without and
once with ``--ocr``, the two runs alternated ``--repeats`` times, for each detector and its own
recognizer (CRAFT with EasyOCR's ``english_g2``, DBNet with PP-OCRv4's). Printed: seconds a
sample for each, the ratio (with / without), the text boxes read, and the index file's bytes a
sample with the OCR columns against without.

    .venv/bin/python benchmarks/ocr_bench.py
    .venv/bin/python benchmarks/ocr_bench.py --detectors dbnet --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate import schema as S  # noqa: E402
from curate.io.index import records_to_table, write_index_file  # noqa: E402
from curate.models import resolve_pretrained  # noqa: E402
from curate.scoring.config import load_config  # noqa: E402
from curate.scoring.plan import StageChain  # noqa: E402
from curate.scoring.records import records_to_batch, shard_record_list  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def index_bytes(batch: dict) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.parquet"
        write_index_file(path, records_to_table(batch), {})
        return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", nargs="+", default=["craft", "dbnet"])
    ap.add_argument("--long-side", type=int, default=512, help="detector input size, pixels")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    records = [r for s in sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))
               for r in shard_record_list(str(s))]
    n = len(records)
    weights = resolve_pretrained("tiny", None)
    print(f"{n} samples, detector input {args.long_side} px, tiny CLIP, best of {args.repeats}, 2 threads")
    print("| detector + recognizer | seconds a sample without OCR | with OCR | ratio | boxes read "
          "| index bytes a sample without / with |")
    print("| --- | --- | --- | --- | --- | --- |")
    for detector in args.detectors:
        chains = {}
        for on in (False, True):
            cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
            cfg.detect.detector, cfg.detect.long_side, cfg.detect.ocr = detector, args.long_side, on
            chains[on] = StageChain(cfg, weights)
            chains[on](records_to_batch(records[:4]))  # first-call costs
        times: dict[bool, list[float]] = {False: [], True: []}
        out = {}
        for _ in range(args.repeats):
            for on in (False, True):
                t0 = time.perf_counter()
                out[on] = chains[on](records_to_batch(records))
                times[on].append(time.perf_counter() - t0)
        ok = np.asarray(out[True][S.STATUS]) == S.STATUS_OK
        boxes = int(np.asarray(out[True][S.NUM_TEXT_BOXES])[ok].sum())
        off, on = min(times[False]) / n, min(times[True]) / n
        name = {"craft": "CRAFT + EasyOCR english_g2", "dbnet": "DBNet + PP-OCRv4"}.get(detector, detector)
        print(f"| {name} | {off:.4f} | {on:.4f} | {on / off:.3f} | {boxes} | "
              f"{index_bytes(out[False]) / n:,.0f} / {index_bytes(out[True]) / n:,.0f} |")


if __name__ == "__main__":
    main()
