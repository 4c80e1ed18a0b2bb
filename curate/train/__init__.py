"""Contrastive CLIP training on a filtered subset (``curate train``), distributed with Ray Train.

- ``config``: ``TrainConfig``, DataComp's scales and the CPU ``tiny`` scale.
- ``data``: streams the pool's shards and keeps the subset's uids, resumable to the sample.
- ``loop``: the per-worker training loop and open_clip-format checkpoints.
- ``run``: the driver (``run_train``).
"""
