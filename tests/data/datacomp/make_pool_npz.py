"""Write the ``.npz`` beside each metadata file of ``tests/data/datacomp/pool`` (issue 29), in
DataComp's format (``download_upstream.py --download_npz``): ``b32_img``, ``b32_txt`` (N, 512),
``l14_img``, ``l14_txt`` (N, 768), ``dedup`` (N, 256), float16, in the Parquet file's row order.

Synthetic and small (``numpy.savez_compressed``; DataComp's own files are stored uncompressed,
which ``curate.io.datacomp.npz_array`` memory-maps: the tests also write such a copy): each
row's ``l14_img`` has 24 non-zero dimensions (normal, scale 0.2) and every 97th row is all zero
(every centroid ties: the first wins); the other arrays are zeros (no baseline reads them).
Deterministic:

    .venv/bin/python tests/data/datacomp/make_pool_npz.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SIZES = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768, "dedup": 256}


def main() -> None:
    files = sorted((HERE / "pool").glob("*.parquet"))
    for i, f in enumerate(files):
        n = pq.read_metadata(f).num_rows
        rng = np.random.default_rng(2900 + i)
        l14 = np.zeros((n, 768), dtype=np.float16)
        for r in range(n):
            if (r + i) % 97 == 0:
                continue
            dims = rng.choice(768, size=24, replace=False)
            l14[r, dims] = (0.2 * rng.standard_normal(24)).astype(np.float16)
        arrays = {k: (l14 if k == "l14_img" else np.zeros((n, d), dtype=np.float16)) for k, d in SIZES.items()}
        np.savez_compressed(f.with_suffix(".npz"), **arrays)
        print(f"wrote {f.with_suffix('.npz')} ({n} rows)")


if __name__ == "__main__":
    main()
