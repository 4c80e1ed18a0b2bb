"""``curate score``: shards -> language, decode, detect, mask, CLIP score -> score index.

Modules, in the order a run uses them:

- ``records``: one shard in, one record per sample out (never raises).
- ``provenance``: the settings fingerprint, index metadata and the resume plan.
- ``plan``: the declared stages bound to a config, sized to the cluster, as a Ray Data plan.
- ``writer``: part files written by the workers, merged per shard; the driver's books.
- ``summary``: per-shard results and the printed summary.
- ``run``: ``run_score`` and the Python API ``score`` (also ``curate.score``).

Each name below is imported on first use, so that a worker that only reads shards
(``curate.scoring.records``) does not import the driver's modules (pyarrow.parquet, cv2,
pyarrow.compute: about 0.3 s per Ray worker process).
"""

import importlib

_LAZY = {"IndexConfigMismatch": "provenance", "run_score": "run", "score": "run", "ScoreSummary": "summary",
         "ShardResult": "summary"}

__all__ = ["IndexConfigMismatch", "ScoreSummary", "ShardResult", "run_score", "score"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"curate.scoring.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'curate.scoring' has no attribute {name!r}")
