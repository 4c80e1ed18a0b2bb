"""What ``curate score --embeddings`` costs: bytes a sample on disk and scoring time added.

The score stages run in this process (``StageChain``, no Ray) over the bundled sample shards,
with a random-init open_clip model of the size asked for (``--model``, default ViT-B-32: the
embedding width, D = 512, is what sets the bytes), once without and once with embeddings, the
two runs alternated ``--repeats`` times. Printed: seconds a sample for each, the ratio (with /
without), and the bytes a sample of the embedding file (zstd Parquet) next to those of the index
file for the same rows.

    .venv/bin/python benchmarks/embeddings_bench.py
    .venv/bin/python benchmarks/embeddings_bench.py --model tiny --detector none --repeats 1   # a quick look
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
from curate.io.embeddings import as_matrix, embeddings_path, write_embeddings_file  # noqa: E402
from curate.io.index import records_to_table, write_index_file  # noqa: E402
from curate.models import resolve_pretrained  # noqa: E402
from curate.scoring.config import load_config  # noqa: E402
from curate.scoring.plan import StageChain  # noqa: E402
from curate.scoring.records import records_to_batch, shard_record_list  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--detector", default="craft", help="text detector of both runs (none: CLIP and hashes alone)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    records = [r for s in sorted((REPO / "tests" / "data" / "shards").glob("sample-*.tar"))
               for r in shard_record_list(str(s))]
    weights = resolve_pretrained(args.model, None)
    chains = {}
    for on in (False, True):
        cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
        cfg.score.clip_model, cfg.score.pretrained, cfg.score.embeddings = args.model, None, on
        cfg.detect.detector = args.detector
        chains[on] = StageChain(cfg, weights)
    chains[False](records_to_batch(records[:4]))  # warm both (first-call costs)
    chains[True](records_to_batch(records[:4]))
    times = {False: [], True: []}
    out = None
    for _ in range(args.repeats):
        for on in (False, True):
            t0 = time.perf_counter()
            batch = chains[on](records_to_batch(records))
            times[on].append(time.perf_counter() - t0)
            if on:
                out = batch
    n = len(records)
    ok = np.asarray(out[S.STATUS]) == S.STATUS_OK
    with tempfile.TemporaryDirectory() as tmp:
        index_file = Path(tmp) / "pool.parquet"
        write_index_file(index_file, records_to_table(out), {})
        cols = {S.UID: out[S.UID], S.KEY: out[S.KEY], S.IMAGE_HASH: out[S.IMAGE_HASH],
                S.IMAGE_PHASH: out[S.IMAGE_PHASH], **{c: as_matrix(out[c]) for c in S.EMBEDDING_COLUMNS}}
        write_embeddings_file(index_file, cols, ok, {})
        index_bytes, emb_bytes = index_file.stat().st_size, embeddings_path(index_file).stat().st_size
    dim = as_matrix(out[S.IMAGE_EMBEDDING]).shape[1]
    off, on = min(times[False]) / n, min(times[True]) / n
    print(f"model {args.model} (D = {dim}), detector {args.detector}, {n} samples ({int(ok.sum())} ok), "
          f"best of {args.repeats}, 2 threads")
    print("| | seconds a sample | bytes a sample |")
    print("| --- | --- | --- |")
    print(f"| score without embeddings | {off:.4f} | {index_bytes / n:,.0f} (index file) |")
    print(f"| score with embeddings | {on:.4f} | {emb_bytes / n:,.0f} (embedding file; raw 3 x D x 2 = {6 * dim:,}) |")
    print(f"| ratio | {on / off:.3f} | |")


if __name__ == "__main__":
    main()
