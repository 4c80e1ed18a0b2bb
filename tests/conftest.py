"""Shared fixtures: the bundled real sample shards, real models, a real local Ray cluster."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DATA = TESTS / "data"
SHARDS = sorted((DATA / "shards").glob("sample-*.tar"))
SHARD_SPEC = str(DATA / "shards" / "sample-{000000..000002}.tar")
NEMO_SHARD = DATA / "webdataset_real" / "nemo-curator-00000.tar"

# Keep the suite inside the 2-core budget and never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def sample_members() -> list[tuple[str, str, dict[str, bytes]]]:
    """``(shard path, key, {extension: bytes})`` for every sample of the bundled shards, in order."""
    out = []
    for shard in SHARDS:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        out += [(str(shard), key, sample) for key, sample in members.items()]
    return out


def load_sources() -> dict[str, dict]:
    """``source path -> {"image": bytes, "caption": str | None, "key", "shard"}`` from the shards."""
    out: dict[str, dict] = {}
    for shard, key, sample in sample_members():
        meta = json.loads(sample["json"])
        image = next(v for k, v in sample.items() if k in ("jpg", "png"))
        out.setdefault(meta["source"].removeprefix("shared/data/"), {
            "image": image, "caption": meta.get("caption"), "key": key, "shard": shard})
    return out


@pytest.fixture(scope="session")
def sources() -> dict[str, dict]:
    return load_sources()


def samples_per_shard(path: str | Path) -> int:
    """Number of distinct webdataset keys in a shard (counted with tarfile, independently of curate)."""
    with tarfile.open(path) as tf:
        return len({m.name.split(".", 1)[0] for m in tf.getmembers() if m.isfile()})


@pytest.fixture(scope="session")
def craft():
    from curate.stages.detect import CraftDetector

    return CraftDetector(long_side=512)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from curate.pipeline import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()
