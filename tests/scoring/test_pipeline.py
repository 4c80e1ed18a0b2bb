"""`curate score` end to end on a real local Ray cluster, real shards, real CRAFT weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.io.index import index_path, read_index, read_index_metadata
from curate.scoring import IndexConfigMismatch, run_score
from curate.scoring.config import PipelineConfig, load_config
from curate.scoring.records import FIRST_BLOCK_SAMPLES
from tests.conftest import NEMO_SHARD, SHARDS, samples_per_shard

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "tiny_cpu.yaml"


def test_summary_and_exit_code(scored, pool):
    out, _, summary = scored
    by = {Path(s.url).name: s for s in summary.shards}
    assert by["zzz-broken.tar"].status == "unreadable"
    assert by["cut-000000.tar"].status == "truncated"
    assert by["empty-000000.tar"].status == "complete" and by["empty-000000.tar"].num_samples == 0
    assert summary.exit_code == 1  # a shard could not be read at all
    text = summary.format()
    assert "zzz-broken.tar" in text and "cut-000000.tar" in text and "NOT meaningful" in text
    assert not index_path(out, str(pool / "zzz-broken.tar")).exists()
    assert (out / "_summary.json").exists()


def test_the_summary_says_where_the_start_up_went(scored):
    """Issue 31: the seconds to the first row, split by step, add up to the start-up; the
    steady-state rate counts the rows after the first batch."""
    out, _, summary = scored
    phases = summary.startup_phases
    assert list(phases) == ["before_call", "checks", "ray_init", "plan", "first_batch"]
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) == pytest.approx(summary.startup_s, abs=0.05)
    assert 0 < summary.startup_s < summary.wall_s
    assert summary.steady_samples_per_s and summary.steady_samples_per_s > 0
    saved = json.loads((out / "_summary.json").read_text())
    assert list(saved["startup_phases"]) == list(phases) and saved["steady_samples_per_s"] > 0
    # Shard records (the empty and the unreadable shard) are not samples: they never count as
    # the first batch.
    assert saved["first_samples"] == summary.first_samples >= 1
    assert "start-up      imports " in summary.format()


@pytest.mark.parametrize("shard", SHARDS, ids=lambda p: p.name)
def test_rows_per_shard_equal_samples_per_shard(scored, pool, shard):
    out, _, _ = scored
    path = index_path(out, str(pool / shard.name))
    t = pq.read_table(path)
    assert t.schema.equals(S.SCHEMA, check_metadata=False)
    assert t.num_rows == samples_per_shard(shard)
    assert len(set(t.column(S.UID).to_pylist())) == t.num_rows
    md = read_index_metadata(path)
    assert md[S.META_SHARD_STATUS] == "complete" and md[S.META_NUM_SAMPLES] == str(t.num_rows)
    assert md[S.META_CLIP_MODEL] == "tiny" and md[S.META_CLIP_IS_PRETRAINED] == "false"
    assert md[S.META_SCHEMA_VERSION] == S.SCHEMA_VERSION and md[S.META_DETECT_LONG_SIDE] == "512"
    ok = t.filter(np.asarray(t.column(S.STATUS).to_pylist()) == "ok").to_pydict()
    for col in (S.CLIP_SCORE, S.MASKED_CLIP_SCORE, S.WIDTH, S.HEIGHT, S.NUM_TEXT_BOXES, S.TEXT_AREA_FRAC,
                S.CAPTION_LANG, S.CAPTION_LANG_SCORE):
        assert None not in ok[col], col
    for boxes, n, frac in zip(ok[S.TEXT_BOXES], ok[S.NUM_TEXT_BOXES], ok[S.TEXT_AREA_FRAC]):
        assert len(boxes) == n and (frac > 0) == (n > 0)
        assert all(len(p) == 8 and all(0 <= c <= 1 for c in p) for p in boxes)


def test_bad_samples_carry_their_status(scored, sources):
    out, _, _ = scored
    t = read_index(out).to_pylist()
    by_key = {r[S.KEY]: r for r in t}
    broken = by_key[sources["bad/broken.jpg"]["key"]]
    assert broken[S.STATUS] == S.STATUS_DECODE_ERROR and broken[S.ERROR]
    assert broken[S.WIDTH] is None and broken[S.CLIP_SCORE] is None
    nocap = [r for r in t if r[S.STATUS] == S.STATUS_MISSING_CAPTION]
    assert len(nocap) == 1 and nocap[0][S.TEXT] is None and nocap[0][S.CLIP_SCORE] is None


def test_caption_language_and_filter_on_the_real_index(scored, tmp_path):
    from curate.filters import run_filter
    from curate.query import query

    out, _, _ = scored
    langs = query("SELECT caption_lang, count(*) AS n FROM scores WHERE status = 'ok' GROUP BY ALL", out)
    counts = dict(zip(langs.column("caption_lang").to_pylist(), langs.column("n").to_pylist()))
    assert counts["en"] >= 25  # the sample captions are English, bar some ICDAR text-spotting ones
    s = run_filter(out, "tmars(fraction=0.5) & basic()", tmp_path / "subset")
    assert 0 < s.kept < s.pool_ok and (tmp_path / "subset" / "subset.npy").exists()


def test_ocr_text_rides_with_the_boxes_and_text_match_reads_it(scored, tmp_path):
    """``--ocr``: at most one text and one confidence per box on every ok row, none of them empty
    or below ``detect.ocr_min_confidence`` (issue 30: stray characters and blank reads are not
    text), the recognizer named in the metadata; ``text_match()`` drops the samples whose caption
    is the text read in the image and keeps every photo whose caption describes it."""
    from curate.filters import run_filter

    out, _, _ = scored
    rows = [r for f in sorted(out.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    ok = [r for r in rows if r[S.STATUS] == S.STATUS_OK]
    assert all(len(r[S.OCR_TEXT]) == len(r[S.OCR_CONFIDENCE]) <= r[S.NUM_TEXT_BOXES] for r in ok)
    assert all(0.3 <= c <= 1.0 for r in ok for c in r[S.OCR_CONFIDENCE])
    assert all(t.strip() for r in ok for t in r[S.OCR_TEXT])
    assert all(r[S.OCR_TEXT] is None for r in rows if r[S.STATUS] != S.STATUS_OK)
    assert "english_g2" in read_index_metadata(index_path(out, str(SHARDS[0])))[S.META_RECOGNIZER]
    by_text = {r[S.TEXT]: r for r in ok}
    assert {"PAY", "FOR", "NOTHING?"} <= set(by_text["WHY PAY FOR NOTHING?"][S.OCR_TEXT])
    s = run_filter(out, "text_match()", tmp_path / "subset")
    kept = set(pq.read_table(tmp_path / "subset" / "subset.parquet").column(S.TEXT).to_pylist())
    # The EasyOCR example sign and the ICDAR poster: the caption is the text they show.
    assert {"WHY PAY FOR NOTHING?", "50 40 BASRURKAR MARKET SPEED LIMIT"}.isdisjoint(kept)
    photos = [r[S.TEXT] for r in ok if r[S.SHARD].endswith(SHARDS[0].name)]
    assert len(photos) >= 8 and set(photos) <= kept
    assert s.removed_by["text_match()"] >= 3


def test_truncated_and_empty_shards(scored, pool):
    out, _, _ = scored
    p = index_path(out, str(pool / "cut-000000.tar"))
    t = pq.read_table(p).to_pylist()
    assert [r[S.KEY] for r in t] == ["000010000", "000010001"]
    assert t[0][S.STATUS] == "ok" and t[1][S.STATUS] == S.STATUS_TRUNCATED
    assert read_index_metadata(p)[S.META_SHARD_STATUS] == "truncated"
    e = index_path(out, str(pool / "empty-000000.tar"))
    assert pq.read_table(e).num_rows == 0 and read_index_metadata(e)[S.META_SHARD_STATUS] == "complete"


def test_pipeline_boxes_match_the_stage(scored, pool, craft, sources):
    """The Ray plan wires the stages correctly: same boxes as CRAFT called directly on the image
    decoded as the pipeline decodes it (reduced-size JPEG decoding, ``decode.draft``)."""
    from curate.scoring.provenance import draft_sizes
    from curate.stages.decode import decode_image

    out, cfg, _ = scored
    t = pq.read_table(index_path(out, str(pool / SHARDS[1].name))).to_pylist()
    sizes = draft_sizes(cfg)
    assert sizes["min_long_side"] == 2 * cfg.detect.long_side
    imgs = {v["key"]: decode_image(v["image"], **sizes) for v in sources.values() if v["shard"] == str(SHARDS[1])}
    direct = craft([imgs[r[S.KEY]] for r in t])
    for r, b in zip(t, direct):
        assert r[S.NUM_TEXT_BOXES] == len(b)
        h, w = imgs[r[S.KEY]].shape[:2]
        if len(b):
            np.testing.assert_allclose(np.array(r[S.TEXT_BOXES]), (b / [w, h]).reshape(len(b), 8), atol=1e-6)


@pytest.mark.slow
def test_resume_skips_complete_shards_and_recomputes_deleted(scored, pool):
    out, cfg, first = scored
    complete = [index_path(out, str(pool / s.name)) for s in SHARDS]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in complete}
    again = run_score([str(pool / "*.tar")], out, cfg, progress=False)
    by = {Path(s.url).name: s.status for s in again.shards}
    assert all(by[s.name] == "skipped" for s in SHARDS) and by["empty-000000.tar"] == "skipped"
    assert by["cut-000000.tar"] == "truncated"  # never complete: read again on every run
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in complete} == before
    assert again.statuses() == first.statuses()

    old = pq.read_table(complete[0])
    complete[0].unlink()
    (out / f".{complete[0].name}.tmp-deadbeef").write_bytes(b"left by a killed writer")
    third = run_score([str(pool / "*.tar")], out, cfg, progress=False)
    by = {Path(s.url).name: s.status for s in third.shards}
    assert by[SHARDS[0].name] == "complete" and by[SHARDS[1].name] == "skipped" and by[SHARDS[2].name] == "skipped"
    assert {p: p.stat().st_mtime_ns for p in complete[1:]} == {p: before[p][0] for p in complete[1:]}
    new = pq.read_table(complete[0])
    for col in S.COLUMNS:
        if col in (S.CLIP_SCORE, S.MASKED_CLIP_SCORE, S.TEXT_AREA_FRAC):
            np.testing.assert_allclose(new.column(col).to_numpy(zero_copy_only=False),
                                       old.column(col).to_numpy(zero_copy_only=False), atol=1e-5)
        else:
            assert new.column(col).to_pylist() == old.column(col).to_pylist(), col
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_other_settings_never_mix_into_an_index(scored, pool):
    out, cfg, _ = scored
    other = load_config(TINY)
    other.mask.method = "inpaint"
    with pytest.raises(IndexConfigMismatch, match="other scoring settings") as e:
        run_score([str(SHARDS[0])], out, other, progress=False)
    # The message names each setting that differs with both values, not two blobs to compare.
    assert 'mask.method (folder: "mean", now: "inpaint")' in str(e.value), e.value
    assert "\n" not in str(e.value)
    # A shard the folder does not hold yet is refused too: the folder is one set of settings.
    other = load_config(TINY)
    other.detect.long_side = 256
    with pytest.raises(IndexConfigMismatch, match=r"detect\.long_side \(folder: \d+, now: 256\)"):
        run_score([str(NEMO_SHARD)], out, other, progress=False)
    # The same settings without --ocr (no text read) are other settings too.
    assert cfg.detect.ocr
    with pytest.raises(IndexConfigMismatch):
        run_score([str(SHARDS[0])], out, load_config(TINY), progress=False)


@pytest.mark.slow
def test_dbnet_end_to_end(ray_cluster, tmp_path):
    cfg = load_config(TINY)
    cfg.detect.detector = "dbnet"
    cfg.detect.ocr = True
    summary = run_score([str(SHARDS[1])], tmp_path / "idx", cfg, progress=False)
    assert summary.exit_code == 0 and summary.num_samples == 10
    # Issue 31: the first batch through every stage is the shard's first sample alone when its
    # block reaches the detect actor first (most runs; the blocks themselves are tested below).
    assert summary.first_samples in (FIRST_BLOCK_SAMPLES, 8)
    path = index_path(tmp_path / "idx", str(SHARDS[1]))
    assert "PP-OCRv4" in read_index_metadata(path)[S.META_DETECTOR]
    assert "PP-OCRv4" in read_index_metadata(path)[S.META_RECOGNIZER]
    t = pq.read_table(path)
    assert sum(n > 0 for n in t.column(S.NUM_TEXT_BOXES).to_pylist()) >= 5
    # PP-OCRv4 reads the ICDAR words DBNet finds at 512 px (measured: 7 boxes, these 3 exact).
    read = [w for texts in t.column(S.OCR_TEXT).to_pylist() for w in texts or []]
    assert 0 < len(read) <= sum(t.column(S.NUM_TEXT_BOXES).to_pylist()) and all(w.strip() for w in read)
    assert {"NOTHING?", "Reserve", "citi"} <= set(read)


def test_same_checkpoint_typed_two_ways_is_one_setting(tmp_path, monkeypatch):
    import open_clip
    import torch

    from curate.models import register_configs, resolve_pretrained
    from curate.scoring.provenance import scoring_fingerprint

    register_configs()
    (tmp_path / "ck").mkdir()
    torch.save({"state_dict": open_clip.create_model("tiny").state_dict()}, tmp_path / "ck" / "tiny.pt")
    cfg = load_config(TINY)
    monkeypatch.chdir(tmp_path)
    a = scoring_fingerprint(cfg, resolve_pretrained("tiny", "ck/tiny.pt"))
    b = scoring_fingerprint(cfg, resolve_pretrained("tiny", str(tmp_path / "ck" / "tiny.pt")))
    assert a == b
    cfg.score.precision = "bf16"
    assert scoring_fingerprint(cfg, resolve_pretrained("tiny", "ck/tiny.pt")) != a


def test_out_must_be_local(tmp_path, capsys):
    code = main(["score", str(SHARDS[0]), "--out", "s3://bucket/index", "--clip-model", "tiny"])
    assert code == 2 and "local folder" in capsys.readouterr().err


def test_cli_fails_fast_without_weights(tmp_path, capsys):
    out = tmp_path / "idx"
    code = main(["score", str(SHARDS[0]), "--out", str(out), "--clip-model", "ViT-B-32",
                 "--pretrained", "laion2b_s34b_b79k", "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "not in the local cache" in err and "--pretrained /path/to" in err
    assert not out.exists()


@pytest.mark.slow
def test_cli_end_to_end_on_the_nemo_curator_shard(ray_cluster, tmp_path, capsys):
    """`curate score` (the CLI's own code path, in this process and its cluster; the driver-kill
    test runs the CLI as a separate process that starts its own cluster)."""
    from curate.cli import main

    rc = main(["score", str(NEMO_SHARD), "--out", str(tmp_path / "idx"), "--config", str(TINY), "--detector", "dbnet",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "samples       1" in out and "ok            1" in out
    t = read_index(tmp_path / "idx")
    assert t.num_rows == 1 and t.column(S.STATUS)[0].as_py() == "ok"


def test_tmars_preset_is_the_default_config():
    assert load_config(REPO / "pipelines" / "tmars.yaml") == PipelineConfig()
    with pytest.raises(ValueError, match="unknown key"):
        from curate.scoring.config import config_from_dict

        config_from_dict({"detect": {"long_sid": 512}})


@pytest.mark.slow
def test_driver_killed_mid_job_resumes_to_the_same_index(dbnet_unique_pool, tmp_path):
    """SIGKILL on `curate score` after its first finished shard; the rerun skips the finished
    shards, recomputes the rest, and the index equals an uninterrupted run's (the session's
    single run over the same pool of unique uids)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import N_SHARDS, assert_same_scores, rows_by_uid

    pool, expected, reference = dbnet_unique_pool
    cmd = [sys.executable, "-m", "curate.cli", "score", str(pool / "*.tar"), "--config", str(TINY),
           "--detector", "dbnet", "--num-cpus", "2", "--no-progress"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + ["--out", str(cut)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cut.glob("*.parquet")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray's workers outlive the driver for a moment and may still finish a shard: wait until the
    # count of written shards has held for 3 s.
    finished, since = len(list(cut.glob("*.parquet"))), time.time()
    while time.time() - since < 3:
        time.sleep(0.2)
        if (now := len(list(cut.glob("*.parquet")))) != finished:
            finished, since = now, time.time()
    assert 1 <= finished < N_SHARDS, "killed too late to test anything"
    rerun = subprocess.run(cmd + ["--out", str(cut)], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"skipped {finished}" in rerun.stdout, rerun.stdout
    rows = read_index(cut).to_pylist()
    assert sorted((r["shard"], r["key"]) for r in rows) == sorted(expected), "not exactly one row per sample"
    assert_same_scores(reference, rows_by_uid(cut))


@pytest.mark.slow
def test_no_config_fits_two_cpus_and_the_python_api_returns_the_summary(ray_cluster, tmp_path):
    """The defaults (no config; resources auto) run on this 2-CPU cluster; ``curate.score`` is
    the Python API (the tiny CLIP stands in for ViT-L/14, DBNet for speed)."""
    import json

    import curate
    from tests.conftest import SHARD_SPEC

    summary = curate.score(SHARD_SPEC, tmp_path / "index", clip_model="tiny", detector="dbnet")
    assert summary.exit_code == 0 and summary.num_samples == sum(samples_per_shard(s) for s in SHARDS)
    plan = {p["name"]: p for p in json.loads((tmp_path / "index" / "_summary.json").read_text())["plan"]}
    assert plan["detect"]["actor"] and plan["score"]["actor"]
    assert plan["detect"]["cpus"] + plan["score"]["cpus"] + 0.25 <= 2 + 1e-9
    assert plan["detect"]["gpus"] == plan["score"]["gpus"] == 0  # no GPU on this cluster
    assert set(summary.stage_stats) == {"language", "decode", "detect", "mask", "score"}
    assert all(v["samples"] >= summary.num_samples for v in summary.stage_stats.values())
    assert "bottleneck" in summary.format()
    assert not (tmp_path / "index" / "_parts").exists()  # parts merged and removed


@pytest.mark.slow
def test_detector_none_end_to_end(ray_cluster, tmp_path):
    rc = main(["score", str(SHARDS[0]), "--out", str(tmp_path / "index"), "--clip-model", "tiny",
               "--detector", "none", "--num-cpus", "2", "--no-progress"])
    assert rc == 0
    table = read_index(tmp_path / "index")
    ok = [r for r in table.to_pylist() if r[S.STATUS] == S.STATUS_OK]
    assert ok and all(r[S.NUM_TEXT_BOXES] == 0 and r[S.CLIP_SCORE] == r[S.MASKED_CLIP_SCORE] for r in ok)
    md = read_index_metadata(index_path(tmp_path / "index", str(SHARDS[0])))
    assert md[S.META_DETECTOR].startswith("none") and '"detector": "none"' in md[S.META_CONFIG]


def test_a_lone_surrogate_never_stops_the_job(hostile_index):
    d, out, rc = hostile_index
    assert rc == 0
    rows = read_index(out).to_pylist()
    surr = [r for r in rows if r[S.KEY] == "s02_surrogate"]
    assert len(surr) == 2  # once from each of its two copies
    for r in surr:
        assert r[S.STATUS] == S.STATUS_OK and r[S.TEXT] == "a photo of a cat on a sofa \ufffd"
        assert np.isfinite(r[S.CLIP_SCORE])
    assert all(r[S.STATUS] == S.STATUS_OK for r in rows if r[S.KEY] == "s01_plain")
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards_by_status"] == {"complete": 4} and summary["num_samples"] == 14 + 2 + 2 + 1


def test_the_read_is_fused_with_the_cut_into_blocks(ray_cluster, tmp_path, capsys):
    """Issue 31: Ray Data fuses the cut into batch-sized blocks into the read's tasks (the same
    remote arguments), so no task of its own copies every image once more through the object
    store; the first shard is two work items (its first sample alone, then the rest)."""
    from curate.models import resolve_pretrained
    from curate.runtime import ClusterResources
    from curate.scoring.plan import build_dataset, fit_to_cluster, stage_specs

    cfg = fit_to_cluster(load_config(TINY), ClusterResources(cpus=2, gpus=0))
    ds = build_dataset([str(s) for s in SHARDS], stage_specs(cfg, resolve_pretrained("tiny", None)),
                       cfg.read.num_cpus, out_dir=str(tmp_path / "idx"))
    ds.explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
    assert "MapBatches(read_shard_batches)->StreamingRepartition" in physical, physical
    assert physical.count("StreamingRepartition") == 1, physical


def test_the_first_shards_first_sample_travels_in_a_block_of_its_own(ray_cluster):
    """Issue 31: the read's blocks, whatever order its tasks finish in: the first shard's first
    sample is a block of its own (the plan's first block, read by a task of its own), every
    other block holds at most the cut's rows, and together they hold each record once."""
    from curate.scoring.plan import read_dataset
    from curate.scoring.records import SEQ

    ds, blocks_cut = read_dataset([str(s) for s in SHARDS], 0.25, 8)
    assert blocks_cut
    blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    firsts = [b for b in blocks if len(b[SEQ]) == FIRST_BLOCK_SAMPLES and str(b[S.SHARD][0]) == str(SHARDS[0])
              and int(b[SEQ][0]) == 0]
    assert len(firsts) == 1, [(str(b[S.SHARD][0]), list(b[SEQ])) for b in blocks]
    assert max(len(b[SEQ]) for b in blocks) == 8
    rows = [(str(shard), int(seq)) for b in blocks for shard, seq in zip(b[S.SHARD], b[SEQ])]
    assert len(rows) == len(set(rows)) == sum(samples_per_shard(s) for s in SHARDS)
