"""``curate score``: shards -> language, decode, detect, mask, CLIP score -> score index.

Modules, in the order a run uses them:

- ``records``: one shard in, one record per sample out (never raises).
- ``provenance``: the settings fingerprint, index metadata and the resume plan.
- ``plan``: the declared stages bound to a config, sized to the cluster, as a Ray Data plan.
- ``writer``: part files written by the workers, merged per shard; the driver's books.
- ``summary``: per-shard results and the printed summary.
- ``run``: ``run_score`` and the Python API ``score`` (also ``curate.score``).
"""

from curate.scoring.provenance import IndexConfigMismatch
from curate.scoring.run import run_score, score
from curate.scoring.summary import ScoreSummary, ShardResult

__all__ = ["IndexConfigMismatch", "ScoreSummary", "ShardResult", "run_score", "score"]
