"""curate: T-MARS-style data curation for CLIP pretraining.

Ray actors stream webdataset shards through decode, text detection, text masking and CLIP
re-scoring, and write a Parquet score index (one file per input shard). See DESIGN.md.
"""

__version__ = "0.1.0"
