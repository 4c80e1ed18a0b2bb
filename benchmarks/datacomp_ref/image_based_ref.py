"""DataComp's own ``image_based`` baselines on CPU, as the reference for curate's rules (issue 29).

Runs in DataComp's environment, never in curate's (DataComp's code is never imported by curate):

    HOME=/work/datacomp-ref/home DATACOMP_REF_LID_MODEL=/work/datacomp-ref/home/.cache/fasttext/lid.176.ftz \\
    /work/datacomp-env/bin/python benchmarks/datacomp_ref/image_based_ref.py \\
        --pool tests/data/datacomp/pool --assets tests/data/datacomp/image_assets --out OUT \\
        [--make-assets --k 64 --targets-per-file 8 --seed 29] [--tokenize-fixture FILE]

For each run it calls DataComp's own ``baselines.apply_filter.apply_filter(args)`` (pinned copy
``/work/datacomp-ref/datacomp``, commit ``4a8df1992566ef8334773f7152e1855b1f716162``; its
``load_uids_with_image_filter``, ``image_filter_helper``, ``caption_filter``,
``get_centroid_ids_gpu``, ``get_threshold``, then ``uids.sort()`` and ``np.save``) with the
arguments ``baselines.py`` would pass, and writes ``OUT/<run>.npy``:

- ``image_based``: ``--name image_based --image_based_scale small``;
- ``ibcs_l14_f0.3``: ``--name image_based_intersect_clip_score --arch l14 --fraction 0.3``;
- ``ibcs_b32_t0.3``: ``--name image_based_intersect_clip_score --arch b32 --threshold 0.3``.

What is patched, in this process and in every worker it spawns (the patches are at module level,
and ``spawn`` re-imports this file in each worker); DataComp's files are not edited:

1. **device**: ``torch.Tensor.to`` maps a device string starting with ``"cuda"`` to ``"cpu"``
   (``get_centroid_ids_gpu`` moves the centroids and each batch to ``f"cuda:{device}"``): the
   same float32 einsum and argmax, on CPU;
2. **assets**: ``baselines.apply_filter.download`` returns ``--assets``'s
   ``in1k_clip_vit_l14_{i}.pt`` and ``small_centroids_l14.pt`` (synthetic, in DataComp's formats)
   for ``in1k_clip_vit_l14_{i}`` and ``small_centroids``, and ``$DATACOMP_REF_LID_MODEL`` for
   ``fasttext`` (as the environment's hook does); DataComp's ``download`` would fetch the real ones
   and check their sha256;
3. **torch.load**: DataComp calls ``torch.load(path)``; since torch 2.6 that is
   ``weights_only=True``, which refuses the numpy array DataComp's centroids file pickles (torch
   2.14 here: DataComp's ``image_based`` fails on it as released). The call runs with numpy's
   ``_reconstruct``, ``ndarray`` and ``dtype`` allow-listed (``torch.serialization.safe_globals``):
   the same objects are loaded.

``--make-assets`` writes the synthetic assets (deterministic in ``--seed``): ``K`` unit centroids
(K, 768) float32 saved as DataComp's file is (``torch.save`` of the numpy array), and five
``{"image_features": float16 tensor (n, 768)}`` files of targets near a third of the centroids.
``--tokenize-fixture`` writes ``len(fasttext.tokenize(s))`` of the real fastText for tricky strings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

DATACOMP = Path(os.environ.get("DATACOMP_REF_SRC", "/work/datacomp-ref/datacomp"))
sys.path.insert(0, str(DATACOMP))

import baselines.apply_filter as af  # noqa: E402  (DataComp's own module, in DataComp's env)
import numpy as np  # noqa: E402
import torch  # noqa: E402

# ---- patch 1: the device ---------------------------------------------------------------------
_to = torch.Tensor.to


def _to_cpu(self, *args, **kwargs):
    args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
    if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
        kwargs["device"] = "cpu"
    return _to(self, *args, **kwargs)


torch.Tensor.to = _to_cpu

# ---- patch 2: the assets ---------------------------------------------------------------------
def _download(name, root=None):
    assets = os.environ["IMAGE_REF_ASSETS"]  # --assets, set by main() before any worker starts
    if name == "fasttext":
        return os.environ["DATACOMP_REF_LID_MODEL"]
    if name.startswith("in1k_clip_vit_l14_"):
        return str(Path(assets, f"{name}.pt"))
    if name.endswith("_centroids"):
        return str(Path(assets, f"{name}_l14.pt"))
    raise ValueError(f"no local asset for {name}")


af.download = _download

# ---- patch 3: torch.load of the numpy centroids ----------------------------------------------
_load = torch.load


def _load_numpy_ok(*args, **kwargs):
    allowed = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, *(type(np.dtype(t)) for t in ("f2", "f4", "f8"))]
    with torch.serialization.safe_globals(allowed):
        return _load(*args, **kwargs)


torch.load = _load_numpy_ok

RUNS = {
    "image_based": dict(name="image_based"),
    "ibcs_l14_f0.3": dict(name="image_based_intersect_clip_score", arch="l14", fraction=0.3),
    "ibcs_b32_t0.3": dict(name="image_based_intersect_clip_score", arch="b32", threshold=0.3),
}


def make_assets(out: Path, k: int, per_file: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, 768)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(c, out / "small_centroids_l14.pt")  # as DataComp's: a pickled numpy array
    near = rng.choice(k, size=max(1, k // 3), replace=False)
    for i in range(5):
        j = rng.choice(near, size=per_file)
        t = c[j] + 0.5 * rng.standard_normal((per_file, 768)).astype(np.float32) / np.sqrt(768)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        torch.save({"image_features": torch.from_numpy(t).half()}, out / f"in1k_clip_vit_l14_{i}.pt")


TOKENIZE_CASES = [
    "a b", "a\nb", "hello\n", "\n", "  x  ", "a\tb\rc\vd\fe\x00f", "a\xa0b", "a\u3000b", "a\x85b", "a\x1cb", "",
    "é ü", "\n\n", "a\n\nb ", "x\r\n", "one", "two words", " \t ", "x\x00", "\x00\x00y z", "emoji 😀 ok",
    "a\u2009b", "cr\r", "\r\n", "a\x0b", "a\x1fb c", "日本語 テキスト", "word\n", "\nword", "a  \n  b",
    "\x0c\x0c", "z\u200bz", "x\u2028y", "x\u2029y",
]


def tokenize_fixture(path: Path) -> None:
    import fasttext

    rnd = random.Random(29)
    alphabet = ["a", "b", " ", "\n", "\r", "\t", "\x0b", "\x0c", "\x00", "\xa0", "\u3000", "\x85", "é", "😀", "\x1c"]
    cases = TOKENIZE_CASES + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8))) for _ in range(200)]
    with open(path, "w") as f:
        for s in cases:
            f.write(json.dumps({"text": s, "tokens": len(fasttext.tokenize(s))}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--assets", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--make-assets", action="store_true")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--targets-per-file", type=int, default=8)
    p.add_argument("--seed", type=int, default=29)
    p.add_argument("--workers", type=int, default=1, help="DataComp's --num_gpus (worker processes)")
    p.add_argument("--tokenize-fixture", type=Path)
    a = p.parse_args()
    os.environ["IMAGE_REF_ASSETS"] = str(a.assets.resolve())
    if a.make_assets:
        make_assets(a.assets, a.k, a.targets_per_file, a.seed)
    if a.tokenize_fixture:
        tokenize_fixture(a.tokenize_fixture)
    a.out.mkdir(parents=True, exist_ok=True)
    for run in filter(None, a.runs.split(",")):
        spec = RUNS[run]
        args = argparse.Namespace(
            name=spec["name"], metadata_dir=str(a.pool.resolve()), save_path=str((a.out / f"{run}.npy").resolve()),
            image_based_scale="small", num_gpus=a.workers, batch_size=1024, arch=spec.get("arch"),
            threshold=spec.get("threshold"), fraction=spec.get("fraction"), num_workers=2)
        t0 = time.time()
        af.apply_filter(args)
        print(f"{run}\t{time.time() - t0:.1f}s\t{len(np.load(args.save_path))} rows", flush=True)


if __name__ == "__main__":
    main()
