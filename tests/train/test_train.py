"""curate train: recipes, the subset stream (real shards), the loop (real tiny CLIP), Ray Train runs."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate import schema as S
from curate.io.samples import sample_to_record
from curate.io.shards import read_shard
from curate.io.subset import UidCounts, load_subset_counts, uids_to_datacomp
from curate.train.config import SCALES, train_config
from curate.train.data import SubsetStream
from curate.train.loop import build_model, build_optimizer, train_step
from tests.conftest import SHARD_SPEC, SHARDS

REPO = Path(__file__).resolve().parents[2]
URLS = [str(p) for p in SHARDS]


def shard_records() -> list[dict]:
    """Records of the sample shards; ``usable``: a caption and an image that decodes."""
    from curate.stages.decode import DecodeError, decode_image

    out = []
    for url in URLS:
        for sample in read_shard(url).samples:
            rec = sample_to_record(sample)
            rec["usable"] = rec[S.STATUS] == S.STATUS_OK
            if rec["usable"]:
                try:
                    decode_image(rec["image_bytes"])
                except DecodeError:
                    rec["usable"] = False
            out.append(rec)
    return out


@pytest.fixture(scope="module")
def records():
    return shard_records()


@pytest.fixture(scope="module")
def tiny():
    return build_model(train_config("tiny"))


@pytest.fixture(scope="module")
def subset_file(tmp_path_factory, records):
    """Every other usable sample, and the first one twice (upweighting), as curate filter writes it."""
    ok = [r[S.UID] for r in records if r["usable"]]
    uids = ok[::2] + [ok[0]]
    path = tmp_path_factory.mktemp("subset") / "subset.parquet"
    pq.write_table(pa.table({S.UID: uids}), path)
    return path


# -- recipes --------------------------------------------------------------------------------------
def test_datacomp_scales_and_overrides(tmp_path):
    small = train_config("small")
    assert (small.model, small.batch_size, small.lr, small.warmup, small.samples_seen) == (
        "ViT-B-32", 4096, 5e-4, 500, 12_800_000)
    assert (small.weight_decay, small.beta2, small.eps) == (0.2, 0.98, 1e-6)
    assert train_config("xlarge").beta2 == 0.95 and train_config("large").model == "ViT-B-16"
    assert small.steps == 3125
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("batch_size: 64\nsamples_seen: 1.28e4\nlr: 1e-3\n")
    cfg = train_config("tiny", yaml_file, {"lr": 2e-3, "num_workers": 2})
    assert (cfg.batch_size, cfg.samples_seen, cfg.lr, cfg.num_workers, cfg.local_batch_size) == (64, 12800, 2e-3, 2, 32)
    with pytest.raises(ValueError, match="unknown train config key"):
        train_config("tiny", overrides={"batchsize": 3})
    with pytest.raises(ValueError, match="not divisible"):
        train_config("tiny", overrides={"num_workers": 3})
    with pytest.raises(ValueError, match="must be int"):
        train_config("tiny", overrides={"batch_size": "big"})
    with pytest.raises(ValueError, match="unknown scale"):
        train_config("huge")
    assert set(SCALES) == {"tiny", "small", "medium", "large", "xlarge"}


def test_uid_counts_match_a_counter(tmp_path, records):
    uids = [r[S.UID] for r in records]
    many = uids + uids[:5] + uids[:2]
    counts = UidCounts(uids_to_datacomp(many))
    expected = collections.Counter(many)
    assert len(counts) == len(expected) and counts.total == len(many)
    for uid in expected:
        assert counts.get(uid) == expected[uid]
    assert counts.get("0" * 32) == 0 and counts.get("not-a-uid") == 0
    np.save(tmp_path / "s.npy", uids_to_datacomp(many))
    from_npy = load_subset_counts(str(tmp_path / "s.npy"))
    assert all(from_npy.get(u) == expected[u] for u in expected)
    with pytest.raises(ValueError, match="empty"):
        UidCounts(uids_to_datacomp([]))
    with pytest.raises(FileNotFoundError):
        load_subset_counts(str(tmp_path / "missing.parquet"))


# -- the subset stream ----------------------------------------------------------------------------
def _stream(tiny, subset=None, batch=4, **kw):
    _, preprocess, tokenizer = tiny
    return SubsetStream(URLS, subset, preprocess, tokenizer, batch, **kw)


def test_stream_keeps_subset_uids_with_repeats_and_counts_skips(tiny, records, subset_file):
    subset = load_subset_counts(str(subset_file))
    total = subset.total
    # With no shuffling and one stream, one epoch is exactly the subset with repeats, in shard order.
    stream = iter(_stream(tiny, subset, batch=1, shuffle_buffer=0))
    seen = [next(stream) for _ in range(total)]
    assert all(b["epoch"] == 0 for b in seen) and next(stream)["epoch"] == 1
    assert seen[-1]["cursor"] == total
    # Every sample of the pool, no subset: the broken JPEG and the caption-less sample are
    # skipped and counted, never raised.
    usable = sum(r["usable"] for r in records)
    skipped: collections.Counter = collections.Counter()
    stream = iter(_stream(tiny, None, batch=1, shuffle_buffer=0))
    for _ in range(usable):
        skipped.update(next(stream)["skipped"])
    assert skipped == {"decode_error": 1, "missing_caption": 1}


def test_stream_texts_are_the_subset_captions(tiny, records, subset_file):
    _, _, tokenizer = tiny
    subset = load_subset_counts(str(subset_file))
    want = collections.Counter()
    for r in records:
        for _ in range(subset.get(r[S.UID])):
            want[tuple(tokenizer([r[S.TEXT]])[0].tolist())] += 1
    got = collections.Counter()
    for batch in _take(_stream(tiny, subset, batch=1, shuffle_buffer=0), subset.total):
        got[tuple(batch["texts"][0].tolist())] += 1
    assert got == want


def test_stream_reads_resharded_shards_without_a_subset(tiny, subset_file, tmp_path):
    """Training on `curate reshard` output (no --subset) sees what training on the pool with the
    subset sees: the same samples, with the same repeats."""
    from curate.io.reshard import reshard

    reshard(subset_file, URLS, tmp_path, shard_size=4)
    subset = load_subset_counts(str(subset_file))
    _, preprocess, tokenizer = tiny
    resharded = sorted(str(p) for p in tmp_path.glob("*.tar"))
    a = _take(SubsetStream(resharded, None, preprocess, tokenizer, 1, shuffle_buffer=0), subset.total)
    b = _take(_stream(tiny, subset, batch=1, shuffle_buffer=0), subset.total)
    texts = lambda batches: collections.Counter(tuple(x["texts"][0].tolist()) for x in batches)  # noqa: E731
    assert texts(a) == texts(b)
    assert sum(sum(x["skipped"].values()) for x in a) == 0


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_stream_resumes_at_the_same_batch(tiny, subset_file):
    subset = load_subset_counts(str(subset_file))
    full = _take(_stream(tiny, subset, batch=4, shuffle_buffer=8, seed=3), 9)
    cut = full[4]
    resumed = _take(_stream(tiny, subset, batch=4, shuffle_buffer=8, seed=3, start_step=5,
                            start_cursors=[cut["cursor"]]), 4)
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a["texts"], b["texts"])
        assert torch.equal(a["images"], b["images"])  # augmentation is seeded by (stream, cursor)
    other_seed = _take(_stream(tiny, subset, batch=4, shuffle_buffer=8, seed=4), 3)
    assert not all(torch.equal(a["texts"], b["texts"]) for a, b in zip(full, other_seed))


def test_stream_with_two_loader_workers_resumes_in_turn(tiny, subset_file):
    subset = load_subset_counts(str(subset_file))

    def run(start_step=0, cursors=None, n=6):
        ds = _stream(tiny, subset, batch=2, shuffle_buffer=4, num_streams=2, start_step=start_step,
                     start_cursors=cursors)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        return _take(loader, n)

    full = run(n=7)
    assert [b["stream"] for b in full] == [0, 1, 0, 1, 0, 1, 0]
    cursors = [0, 0]
    for b in full[:3]:
        cursors[b["stream"]] = b["cursor"]
    resumed = run(start_step=3, cursors=cursors, n=4)
    assert [b["stream"] for b in resumed] == [1, 0, 1, 0]
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["texts"], b["texts"]) and torch.equal(a["images"], b["images"])


# -- a sample that kills a data worker -----------------------------------------------------------
def _poison(records, subset, nth: int = 1) -> tuple[str, tuple[int, int]]:
    """Key and place (shard index, position in the shard) of the ``nth`` usable sample the subset
    holds once."""
    once = [r for r in records if r["usable"] and subset.get(r[S.UID]) == 1]
    rec = once[nth]
    shard = URLS.index(rec[S.SHARD])
    position = [r[S.KEY] for r in records if r[S.SHARD] == rec[S.SHARD]].index(rec[S.KEY])
    return rec[S.KEY], (shard, position)


def test_train_faults_read_curate_faults_format(monkeypatch):
    from curate.guard import Fault
    from curate.train.data import train_faults_from_env

    monkeypatch.setenv("CURATE_FAULTS", "detect:abort:k1, train:hang:a:b,train:raise:c")
    assert train_faults_from_env() == (Fault("train", "hang", "a:b"), Fault("train", "raise", "c"))
    monkeypatch.setenv("CURATE_FAULTS", "")
    assert train_faults_from_env() == ()
    monkeypatch.setenv("CURATE_FAULTS", "train:explode:k")
    with pytest.raises(ValueError, match="bad entry 'train:explode:k'"):
        train_faults_from_env()


def test_a_sample_that_kills_a_data_worker_is_skipped_and_the_batches_go_on(tiny, records, subset_file):
    """The stream whose worker aborts on a sample goes on without it: the batches are exactly
    those of a stream that skipped the sample from the start, and it is counted as worker_died."""
    from curate.guard import Fault
    from curate.train.data import GuardedLoader

    subset = load_subset_counts(str(subset_file))
    key, where = _poison(records, subset)

    def take(n, max_deaths=16, **kw):
        stream = _stream(tiny, subset, batch=2, shuffle_buffer=4, num_streams=2, seed=1, **kw)
        loader = GuardedLoader(stream, 2, prefetch_factor=2, max_deaths=max_deaths, sample_timeout_s=0, memory_mb=0)
        try:
            return _take(loader, n), loader, stream
        finally:
            loader.close()

    got, loader, stream = take(12, faults=(Fault("train", "abort", key),))
    assert len(loader.deaths) == 1, loader.deaths
    death = loader.deaths[0]
    assert (death["key"], death["status"], death["how"]) == (key, "worker_died", "killed by SIGABRT")
    assert stream.skip == {where: "worker_died"}
    want, clean, _ = take(12, skip={where: "worker_died"}, faults=())
    assert clean.deaths == [] and [b["stream"] for b in got] == [0, 1] * 6
    for a, b in zip(got, want):
        assert torch.equal(a["texts"], b["texts"]) and torch.equal(a["images"], b["images"])
        assert a["skipped"] == b["skipped"] and a["cursor"] == b["cursor"]
    assert sum(b["skipped"].get("worker_died", 0) for b in got) >= 1


def test_worker_deaths_are_bounded(tiny):
    """A second death at one place (here: between samples, after the same cursor) stops the run;
    deaths at new places go on up to max_deaths. (The records are written by hand: no process dies.)"""
    from curate.train.data import DataWorkerError, GuardedLoader, WorkerBoard

    def die(loader, slot, pid, cursor=-1, last=7, where=(0, 1), key="k"):
        board = loader._board
        if cursor >= 0:
            board.begin(slot, cursor, where, key, rss=False)
        board.ints[slot, WorkerBoard.PID], board.ints[slot, WorkerBoard.LAST] = pid, last
        board.ints[slot, WorkerBoard.CURSOR] = cursor
        loader._survive([pid])

    loader = GuardedLoader(_stream(tiny, num_streams=2), 2, max_deaths=3)
    die(loader, 0, 101)
    die(loader, 0, 102, cursor=9, where=(2, 5), key="poison")
    assert loader.stream.skip == {(2, 5): "worker_died"}
    assert [(d["stream"], d["status"], d["key"], d["cursor"]) for d in loader.deaths] == [
        (0, None, None, None), (0, "worker_died", "poison", 9)]
    with pytest.raises(DataWorkerError, match="between samples, after cursor 7 .*; this is the second death there"):
        die(loader, 0, 103)
    loader = GuardedLoader(_stream(tiny, num_streams=2), 2, max_deaths=1)
    die(loader, 1, 201, cursor=3, where=(0, 2))
    with pytest.raises(DataWorkerError, match="2 data worker deaths in this run, over max_worker_deaths \\(1\\)"):
        die(loader, 1, 202, cursor=4, where=(0, 3))
    loader = GuardedLoader(_stream(tiny), 1, max_deaths=0)
    with pytest.raises(DataWorkerError, match="a data worker \\(pid 301\\) ended before it took a stream"):
        loader._survive([301])


@pytest.mark.slow
def test_a_sample_that_hangs_a_data_worker_is_ended_and_skipped(tiny, records, subset_file):
    """Past sample_timeout_s the watchdog kills the worker; the sample is skipped as timeout."""
    from curate.guard import Fault
    from curate.train.data import GuardedLoader

    subset = load_subset_counts(str(subset_file))
    key, where = _poison(records, subset, 4)
    stream = _stream(tiny, subset, batch=2, shuffle_buffer=4, num_streams=1, faults=(Fault("train", "hang", key),))
    loader = GuardedLoader(stream, 1, prefetch_factor=2, sample_timeout_s=1, memory_mb=0)
    try:
        batches = _take(loader, 16)
    finally:
        loader.close()
    assert [(d["key"], d["status"], d["how"]) for d in loader.deaths] == [(key, "timeout", "killed by SIGKILL")]
    assert "past limits.sample_timeout_s (1 s)" in loader.deaths[0]["message"]
    assert stream.skip == {where: "timeout"} and sum(b["skipped"].get("timeout", 0) for b in batches) >= 1


def test_stream_without_subset_samples_fails_clearly(tiny):
    from curate.train.data import NoTrainingData

    absent = UidCounts(uids_to_datacomp(["f" * 32]))
    with pytest.raises(NoTrainingData, match="no sample of the subset"):
        next(iter(_stream(tiny, absent)))


# -- the loop -----------------------------------------------------------------------------------
def test_tiny_model_overfits_a_fixed_batch(tiny, subset_file):
    import open_clip

    cfg = train_config("tiny", overrides={"lr": 1e-3, "warmup": 0})
    model, preprocess, tokenizer = build_model(cfg)
    model.train()
    batch = _take(_stream((model, preprocess, tokenizer), None, batch=16, shuffle_buffer=0), 1)[0]
    optimizer = build_optimizer(model, cfg)
    loss_fn = open_clip.loss.ClipLoss()
    losses = [train_step(model, loss_fn, optimizer, batch["images"], batch["texts"], cfg) for _ in range(60)]
    assert losses[0] > 2.0  # ln(16) = 2.77 for an untrained model
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert float(model.logit_scale.detach()) <= np.log(100) + 1e-6
    # Weight decay skips gains, biases and logit_scale (open_clip_train's grouping).
    no_decay = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(model.logit_scale) in no_decay and id(model.visual.conv1.weight) not in no_decay


# -- Ray Train runs -------------------------------------------------------------------------------
def _train(out, *extra, subset=None):
    from curate.cli import main

    args = ["train", SHARD_SPEC, "--out", str(out), "--scale", "tiny", "--batch-size", "8", "--samples-seen", "160",
            "--save-every", "10", "--log-every", "5", "--data-workers", "0", "--shuffle-buffer", "16",
            "--no-progress", *extra]
    if subset is not None:
        args += ["--subset", str(subset)]
    return main(args)


@pytest.mark.slow
def test_train_on_subset_writes_checkpoints_open_clip_and_score_load(ray_cluster, tmp_path, subset_file, capsys):
    import open_clip

    out = tmp_path / "run"
    assert _train(out, subset=subset_file) == 0
    printed = capsys.readouterr().out
    assert "steps         20  samples seen 160 (160 trained this run)" in printed
    ckpts = sorted((out / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_00000010.pt", "step_00000020.pt"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    assert [r["samples_seen"] for r in log] == [40, 80, 120, 160]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 and r["samples_per_s"] > 0 for r in log)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["samples_trained"] == 160
    # open_clip loads the checkpoint as pretrained weights, and they are the trained ones.
    model, _, _ = open_clip.create_model_and_transforms("tiny", pretrained=str(ckpts[-1]))
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.visual.conv1.weight, state["visual.conv1.weight"])
    untrained, _, _ = build_model(train_config("tiny"))
    assert not torch.equal(untrained.visual.conv1.weight, state["visual.conv1.weight"])
    # A second run into the same folder without --resume is refused.
    assert _train(out, subset=subset_file) == 2
    # --local runs the same loop in this process: the same log and the same weights.
    local = tmp_path / "local"
    assert _train(local, "--local", subset=subset_file) == 0
    local_log = [json.loads(line) for line in (local / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in local_log] == [r["loss"] for r in log]
    local_state = torch.load(
        local / "checkpoints" / ckpts[-1].name, map_location="cpu", weights_only=True)["state_dict"]
    assert local_state.keys() == state.keys() and all(torch.equal(local_state[k], state[k]) for k in state)
    assert _train(tmp_path / "two", "--local", "--num-workers", "2", subset=subset_file) == 2
    # curate score takes it as --pretrained.
    from curate.cli import main

    index = tmp_path / "index"
    code = main(["score", str(SHARDS[0]), "--out", str(index), "--config", str(REPO / "pipelines/tiny_cpu.yaml"),
                 "--detector", "dbnet", "--pretrained", str(ckpts[-1]), "--no-progress"])
    assert code == 0
    meta = pq.read_table(next(index.glob("*.parquet")))
    assert meta.num_rows == 11 and pc_ok(meta) > 0


def pc_ok(table) -> int:
    return sum(s == S.STATUS_OK for s in table.column(S.STATUS).to_pylist())


@pytest.mark.slow
def test_two_workers_see_the_same_samples_as_one(ray_cluster, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(one, "--local") == 0  # one worker: the same loop as under Ray Train (checked above)
    assert _train(two, "--num-workers", "2") == 0
    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert (s1["num_workers"], s2["num_workers"]) == (1, 2)
    assert s1["steps"] == s2["steps"] == 20
    assert s1["samples_seen"] == s2["samples_seen"] == s1["samples_trained"] == s2["samples_trained"] == 160
    # Every bad sample of the pool is skipped and counted, with one worker and with two.
    assert s1["skipped"]["decode_error"] >= 1 and s2["skipped"]["decode_error"] >= 1


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    common = ["--scale", "tiny", "--batch-size", "8", "--samples-seen", "240", "--save-every", "5",
              "--log-every", "5", "--data-workers", "0", "--shuffle-buffer", "16", "--num-cpus", "2", "--no-progress"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    cmd = [sys.executable, "-m", "curate.cli", "train", SHARD_SPEC, *common]
    whole = tmp_path / "whole"
    # The uninterrupted run goes on beside the one that is killed, in one process (--local: the
    # same loop and weights as Ray Train, without a second Ray cluster starting beside the first).
    uninterrupted = subprocess.Popen(cmd + ["--out", str(whole), "--local"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + ["--out", str(cut)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step_00000010.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((cut / "train_log.jsonl").read_text().splitlines()[-1])["step"]
    assert done < 30, "killed too late to test anything"
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-2000:]
    # The resumed run reads the killed Ray Train run's checkpoint in the same loop (--local; a
    # test above checks --local against Ray Train): Ray Train's start-up once, not twice.
    resumed = subprocess.run(cmd + ["--out", str(cut), "--resume", "latest", "--local"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["samples_seen"] == 240
    assert summary["samples_trained"] == (30 - summary["start_step"]) * 8
    a = torch.load(whole / "checkpoints" / "step_00000030.pt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "step_00000030.pt", weights_only=True)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    assert a["curate"]["cursors"] == b["curate"]["cursors"]


@pytest.mark.slow
def test_a_sample_that_kills_a_data_worker_costs_one_sample_not_the_run(tmp_path, records, subset_file, monkeypatch):
    """`curate train` with a sample of the subset that aborts its DataLoader worker
    (CURATE_FAULTS=train:abort:KEY) trains every step, skips the sample as worker_died and names
    it; a run resumed from a checkpoint after the death never decodes it again."""
    from curate.cli import main

    key, where = _poison(records, load_subset_counts(str(subset_file)), 5)
    args = ["train", SHARD_SPEC, "--subset", str(subset_file), "--scale", "tiny", "--batch-size", "8",
            "--samples-seen", "160", "--save-every", "5", "--keep-checkpoints", "0", "--log-every", "5",
            "--data-workers", "2", "--shuffle-buffer", "16", "--local", "--no-progress"]
    cmd = [sys.executable, "-m", "curate.cli", *args]
    env = {k: v for k, v in os.environ.items() if k != "CURATE_FAULTS"}
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    runs = [subprocess.Popen(cmd + ["--out", str(out)], env=dict(env, **extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for out, extra in ((clean, {}), (faulty, {"CURATE_FAULTS": f"train:abort:{key}"}))]
    (_, clean_err), (out, err) = [run.communicate(timeout=600) for run in runs]
    assert runs[0].returncode == 0, clean_err[-2000:]
    assert runs[1].returncode == 0, err[-2000:]
    base = json.loads((clean / "train_summary.json").read_text())
    summary = json.loads((faulty / "train_summary.json").read_text())
    for s in (base, summary):
        assert (s["steps"], s["samples_seen"], s["samples_trained"]) == (20, 160, 160)
    assert "worker_died" not in base["skipped"] and base["worker_deaths"] == []
    assert summary["skipped"]["worker_died"] >= 1
    deaths = summary["worker_deaths"]
    assert deaths and all((d["key"], d["status"], d["how"]) == (key, "worker_died", "killed by SIGABRT")
                          for d in deaths)
    assert f"injected fault abort in train on sample '{key}'" in err
    assert "skipped" in out and "'worker_died'" in out and "DATA WORKER   data stream" in out and repr(key) in out
    # The death came before the first checkpoint, which holds the sample; a run resumed from it
    # with the same fault set never decodes it (no death) and ends with the same weights.
    assert all(d["step"] < 5 for d in deaths)
    first = faulty / "checkpoints" / "step_00000005.pt"
    assert torch.load(first, weights_only=True)["curate"]["skip"] == [[*where, "worker_died"]]
    whole = torch.load(faulty / "checkpoints" / "step_00000020.pt", weights_only=True)
    monkeypatch.setenv("CURATE_FAULTS", f"train:abort:{key}")
    assert main(args + ["--out", str(faulty), "--resume", str(first)]) == 0
    resumed = json.loads((faulty / "train_summary.json").read_text())
    assert resumed["worker_deaths"] == [] and resumed["skipped"]["worker_died"] >= 1 and resumed["steps"] == 20
    again = torch.load(faulty / "checkpoints" / "step_00000020.pt", weights_only=True)
    for name, tensor in whole["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_step(tiny):
    import open_clip

    batch = _take(_stream(tiny, None, batch=8, shuffle_buffer=0), 1)[0]
    results = []
    for ckpt in (False, True):
        cfg = train_config("tiny", overrides={"grad_checkpointing": ckpt, "warmup": 0})
        model, _, _ = build_model(cfg)
        model.train()
        optimizer = build_optimizer(model, cfg)
        loss_fn = open_clip.loss.ClipLoss()
        losses = [train_step(model, loss_fn, optimizer, batch["images"], batch["texts"], cfg) for _ in range(2)]
        results.append((losses, model.visual.conv1.weight.detach().clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_a_run_the_cluster_cannot_place_is_refused(ray_cluster, tmp_path, capsys):
    assert _train(tmp_path / "big", "--num-workers", "4") == 2  # 4 workers x 1 CPU on a 2-CPU cluster
    assert "curate train needs 4 CPUs" in capsys.readouterr().err
    assert _train(tmp_path / "gpu", "--use-gpu") == 2
    assert "drop --use-gpu" in capsys.readouterr().err
    assert _train(tmp_path / "none", "--model", "nosuchmodel") == 2


def test_bad_subsets_checkpoints_and_values_fail_before_any_worker(tmp_path, subset_file):
    from curate.train.checkpoints import load_checkpoint
    from curate.train.run import data_identity, run_train

    nulls = tmp_path / "null.parquet"
    pq.write_table(pa.table({S.UID: ["a" * 32, None]}), nulls)
    with pytest.raises(ValueError, match="1 null uid"):
        load_subset_counts(str(nulls))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPYgarbage")
    with pytest.raises(ValueError, match="corrupt.npy is not a readable .npy"):
        load_subset_counts(str(corrupt))
    junk = tmp_path / "junk.pt"
    junk.write_text("junk")
    with pytest.raises(ValueError, match="not a curate train checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        train_config("tiny", overrides={"lr": float("nan")})
    with pytest.raises(FileNotFoundError, match="1 of 1 shards do not exist"):
        run_train([str(tmp_path / "nosuch.tar")], tmp_path / "o", train_config("tiny"))
    # Resuming with another subset would change the batches: refused before Ray starts.
    cfg = train_config("tiny", overrides={"batch_size": 8, "samples_seen": 64})
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    model, _, _ = build_model(cfg)
    torch.save({"state_dict": model.state_dict(), "curate": {
        "step": 4, "config": cfg.to_dict(), "cursors": [[0]], "run_id": "x",
        "data": data_identity(URLS, str(subset_file))}}, out / "checkpoints" / "step_00000004.pt")
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({S.UID: pq.read_table(subset_file).column(S.UID).to_pylist()[:3]}), other)
    with pytest.raises(ValueError, match="subset: another file or other contents"):
        run_train(URLS, out, cfg, subset=str(other), resume="latest")
    with pytest.raises(ValueError, match="shards: checkpoint 3"):
        run_train(URLS[:2], out, cfg, subset=str(subset_file), resume="latest")
