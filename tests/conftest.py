"""Shared fixtures: the bundled real sample shards, real models, a real local Ray cluster."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
DATA = TESTS / "data"
SHARDS = sorted((DATA / "shards").glob("sample-*.tar"))
SHARD_SPEC = str(DATA / "shards" / "sample-{000000..000002}.tar")
NEMO_SHARD = DATA / "webdataset_real" / "nemo-curator-00000.tar"

# Keep the suite inside the 2-core budget and never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where CUDA is not visible (they never fail for its lack)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


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

    from curate.runtime import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """The 3 sample shards plus a truncated, an empty and an unreadable shard."""
    import shutil

    d = tmp_path_factory.mktemp("pool")
    for s in SHARDS:
        shutil.copy(s, d / s.name)
    with tarfile.open(SHARDS[1]) as tf:
        m = [m for m in tf.getmembers() if m.name == "000010001.jpg"][0]
    data = SHARDS[1].read_bytes()
    (d / "cut-000000.tar").write_bytes(data[: m.offset_data + m.size // 2])  # cut inside a member
    with tarfile.open(d / "empty-000000.tar", "w"):
        pass
    (d / "zzz-broken.tar").write_bytes(b"this is not a tar file" * 100)
    return d


@pytest.fixture(scope="session")
def scored(pool, tmp_path_factory, ray_cluster):
    """``(index folder, config, ScoreSummary)``: ``pool`` scored with CRAFT, EasyOCR's recognizer
    (``--ocr``) and the tiny CLIP (``pipelines/tiny_cpu.yaml``). Tests may rerun into the folder
    but leave it complete."""
    out = tmp_path_factory.mktemp("index")
    from curate.scoring import run_score
    from curate.scoring.config import load_config

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.ocr = True
    summary = run_score([str(pool / "*.tar")], out, cfg, progress=False)
    return out, cfg, summary


def jpeg_bytes(image, quality=90) -> bytes:
    """``image`` (a PIL image) as JPEG bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shard(path, samples):
    """A webdataset tar of ``(key, {extension: bytes})`` samples."""
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def embedded_pool(tmp_path_factory, ray_cluster, sources):
    """The sample shards, plus a shard of copies of four pool images (exact bytes, half size,
    re-encoded at JPEG quality 40, a 10% crop), plus a test set holding two other pool images
    (re-encoded, resized) and two images the pool does not hold; scored with --embeddings (the
    tiny CLIP, no text detector)."""
    from PIL import Image

    from curate.evaluate.make_evalset import make_classification_set
    from curate.scoring import run_score
    from curate.scoring.config import load_config

    d = tmp_path_factory.mktemp("embedded_pool")
    pool = [k for k, v in sources.items() if v["image"] and v["caption"] and k.startswith(("photos/", "flickr30k"))]
    pool = sorted(pool)[:6]
    imgs = {k: Image.open(io.BytesIO(sources[k]["image"])) for k in pool}
    copies = [("copy-exact", sources[pool[0]]["image"]),
              ("copy-half", jpeg_bytes(imgs[pool[1]].resize((imgs[pool[1]].width // 2, imgs[pool[1]].height // 2)))),
              ("copy-q40", jpeg_bytes(imgs[pool[2]], quality=40)),
              ("copy-crop", jpeg_bytes(imgs[pool[3]].crop((0, 0, int(imgs[pool[3]].width * 0.9),
                                                       int(imgs[pool[3]].height * 0.9)))))]
    write_shard(d / "injected-000000.tar", [(k, {"jpg": b, "txt": b"an injected copy of a pool image"})
                                            for k, b in copies])
    tree = d / "evaltree" / "things"
    tree.mkdir(parents=True)
    (tree / "a.jpg").write_bytes(jpeg_bytes(imgs[pool[4]], quality=50))
    (tree / "b.jpg").write_bytes(
        jpeg_bytes(imgs[pool[5]].resize((imgs[pool[5]].width // 2, imgs[pool[5]].height // 2))))
    import numpy as np

    rng = np.random.default_rng(0)  # two pictures the pool does not hold: a gradient and noise
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (192, 1, 3))
    noise = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
    for i, pixels in enumerate((gradient, noise)):
        (tree / f"outside{i}.jpg").write_bytes(jpeg_bytes(Image.fromarray(pixels)))
    make_classification_set(d / "evaltree", "injected", d / "evaldata")
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.score.embeddings = True
    cfg.detect.detector = "none"  # dedup, decontamination and search read images, not text boxes
    index = d / "index"
    shards = [str(s) for s in SHARDS] + [str(d / "injected-000000.tar")]
    assert run_score(shards, index, cfg, progress=False).exit_code == 0
    return {"index": index, "pool": pool, "sources": sources, "evaldata": d / "evaldata", "dir": d, "shards": shards}


# ---------------------------------------------------------------- a pool of unique uids, scored once
N_SHARDS, PER_SHARD = 20, 3


def write_unique_pool(
    folder: Path, n_shards: int, per_shard: int, max_bytes: int = 200_000
) -> dict[tuple[str, str], str]:
    """``n_shards`` shards of ``per_shard`` samples taken in turn from the bundled sample shards
    (images under ``max_bytes``, plus the broken JPEG and the sample without caption), each with
    a fresh uid. Returns ``{(shard path, key): uid}``, read back from the tars with tarfile."""
    samples = [m for _, _, m in sample_members() if max(len(v) for v in m.values()) <= max_bytes]
    folder.mkdir(parents=True)
    i = 0
    for s in range(n_shards):
        with tarfile.open(folder / f"pool-{s:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for _ in range(per_shard):
                sample = dict(samples[i % len(samples)])
                meta = json.loads(sample["json"])
                meta["uid"] = f"{i:032x}"
                sample["json"] = json.dumps(meta).encode()
                for ext, data in sample.items():
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                i += 1
    expected = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    expected[(str(shard), m.name.split(".")[0])] = json.load(tf.extractfile(m))["uid"]
    return expected


def rows_by_uid(index_dir: Path) -> dict[str, dict]:
    from curate import schema as S
    from curate.io.index import read_index

    rows = read_index(index_dir).to_pylist()
    by = {r[S.UID]: r for r in rows}
    assert len(by) == len(rows), "duplicate uids in the index"
    return by


def assert_same_scores(a: dict[str, dict], b: dict[str, dict]) -> None:
    import numpy as np

    from curate import schema as S

    assert a.keys() == b.keys()
    for uid, x in a.items():
        y = b[uid]
        assert (x[S.STATUS], x[S.KEY], x["num_text_boxes"]) == (y[S.STATUS], y[S.KEY], y["num_text_boxes"]), uid
        for col in ("clip_score", "masked_clip_score"):
            if x[col] is None or np.isnan(x[col]):
                assert y[col] is None or np.isnan(y[col]), (uid, col)
            else:
                assert abs(x[col] - y[col]) <= 1e-5, (uid, col, x[col], y[col])



@pytest.fixture(scope="session")
def dbnet_unique_pool(tmp_path_factory, ray_cluster):
    """``N_SHARDS`` shards of ``PER_SHARD`` samples with unique uids (``write_unique_pool``),
    scored once on the session's cluster with ``pipelines/tiny_cpu.yaml`` and DBNet: the
    reference of the driver-kill and node-kill tests. Returns ``(pool folder, {(shard, key):
    uid}, {uid: index row})``."""
    from curate.scoring import run_score
    from curate.scoring.config import load_config

    d = tmp_path_factory.mktemp("unique")
    expected = write_unique_pool(d / "pool", N_SHARDS, PER_SHARD)
    assert len(expected) == N_SHARDS * PER_SHARD
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    single = run_score([str(d / "pool" / "*.tar")], d / "index", cfg, progress=False)
    assert single.exit_code == 0
    return d / "pool", expected, rows_by_uid(d / "index")


@pytest.fixture
def full_disk(tmp_path):
    """``(mount point, fill)``: a 4 MiB tmpfs, and ``fill()`` writes one file on it until the
    disk is full (``errno.ENOSPC``). Needs root to mount; skipped elsewhere."""
    import shutil
    import subprocess

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def fill():
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == 28
        assert shutil.disk_usage(mnt).free < 4096

    try:
        yield mnt, fill
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


# The hostile cases of issue 13 (``tests/data/robustness/CASES.md``, copied from
# ``shared/cases/robustness``): the edge shard, the surrogate shard and the transparent pictures.
CASES = DATA / "robustness"
EDGE = CASES / "edge-000000.tar"
SURR = CASES / "surr-000000.tar"
TRANSPARENT = ["t01_rgba", "t02_rgb_trns", "t03_p_trns", "t04_la", "t05_l_trns"]


def members(shard) -> dict[str, bytes]:
    with tarfile.open(shard) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


@pytest.fixture(scope="session")
def edge_rows():
    """The edge shard through the whole stage chain (no Ray), DBNet and the tiny CLIP."""
    from curate import schema as S
    from curate.io.index import records_to_table
    from curate.models import resolve_pretrained
    from curate.scoring.config import load_config
    from curate.scoring.plan import StageChain
    from curate.scoring.records import records_to_batch, shard_record_list

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    chain = StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir))
    table = records_to_table(chain(records_to_batch(shard_record_list(str(EDGE)))))
    return {r[S.KEY]: r for r in table.to_pylist()}


@pytest.fixture(scope="session")
def hostile_index(ray_cluster, tmp_path_factory):
    """``curate score`` (CLI, in process) over the edge shard, the surrogate shard under names
    with glob, brace, quote and space characters, and a decoy that a glob would also match."""
    from curate.cli import main

    d = tmp_path_factory.mktemp("hostile pool")
    shutil.copy(EDGE, d / "edge-000000.tar")
    shutil.copy(SURR, d / "pool[1].tar")
    shutil.copy(SURR, d / "it's {a,b} *x?.tar")
    with tarfile.open(d / "pool1.tar", "w") as tf:  # what "pool[1].tar" matches as a glob
        for name in ("decoy.jpg", "decoy.txt"):
            data = members(EDGE)["k01_upper.JPG"] if name.endswith("jpg") else b"a decoy sample"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = d / "index [x]"
    shards = [str(d / "edge-000000.tar"), str(d / "pool[1].tar"), str(d / "it's {a,b} *x?.tar"), str(d / "pool1.tar")]
    rc = main(["score", *shards, "--out", str(out), "--config", str(REPO / "pipelines" / "tiny_cpu.yaml"),
               "--detector", "dbnet", "--num-cpus", "2", "--no-progress"])
    return d, out, rc
