"""curate: T-MARS-style data curation for CLIP pretraining.

Ray actors stream webdataset shards through decode, text detection, text masking and CLIP
re-scoring, and write a Parquet score index (one file per input shard). See
``docs/architecture.md``.

Python API: ``curate.score(shards, out, ...)`` (``curate.scoring.run.score``), imported on first
use so that ``import curate`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["score"]


def __getattr__(name: str):
    if name == "score":
        from curate.scoring.run import score

        return score
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
