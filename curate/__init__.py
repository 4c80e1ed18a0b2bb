"""curate: T-MARS-style data curation for CLIP pretraining.

Ray actors stream webdataset shards through decode, text detection, text masking and CLIP
re-scoring, and write a Parquet score index (one file per input shard). See
``docs/architecture.md``.

Python API, each imported on first use so that ``import curate`` stays light:

- ``curate.score(shards, out, ...)`` (``curate.scoring.run.score``): the score job;
- ``curate.register_configs()`` (``curate.models.register_configs``): add curate's open_clip model
  configs (``tiny``) to open_clip's registry, so that ``open_clip.create_model_and_transforms(
  "tiny", pretrained=CHECKPOINT)`` loads a checkpoint written by ``curate train``.
"""

__version__ = "0.1.0"

__all__ = ["register_configs", "score"]


def __getattr__(name: str):
    if name == "score":
        from curate.scoring.run import score

        return score
    if name == "register_configs":
        from curate.models import register_configs

        return register_configs
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
