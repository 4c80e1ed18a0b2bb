"""``curate.scoring.writer``: parts written per shard, one index file a shard, failures named
per shard, re-delivered parts counted once."""

from __future__ import annotations

import numpy as np
import pytest

from curate.io.index import read_index
from curate.models import resolve_pretrained
from curate.scoring.config import load_config
from tests.conftest import EDGE, REPO, SHARDS, SURR

TINY = REPO / "pipelines" / "tiny_cpu.yaml"


def test_a_shard_whose_writer_fails_is_named_and_the_others_are_written(tmp_path):
    from curate.scoring.records import records_to_batch, shard_record_list
    from curate.scoring.writer import ShardTracker, write_parts

    done = []
    tracker = ShardTracker(tmp_path, {}, done.append, finalize="local")
    good = shard_record_list(str(SURR))
    bad = shard_record_list(str(EDGE))[:2]
    for r in bad:
        r["_shard_n"] = 2
    bad[1]["_seq"] = 8  # rows that do not add up (positions 0 and 8 of 2): an internal fault
    tracker.add(write_parts(records_to_batch(bad + good), str(tmp_path)))
    results = {r.url: r for r in done}
    assert results[str(SURR)].status == "complete" and (tmp_path / "surr-000000.parquet").is_file()
    assert results[str(EDGE)].status == "failed" and "internal error" in results[str(EDGE)].error


def test_a_part_that_cannot_be_written_fails_its_shard_only(tmp_path):
    from curate.scoring.records import records_to_batch, shard_record_list
    from curate.scoring.writer import ShardTracker, write_parts

    (tmp_path / "_parts").mkdir()
    (tmp_path / "_parts" / "edge-000000.parquet").write_text("a file where the shard's part folder goes")
    done = []
    tracker = ShardTracker(tmp_path, {}, done.append, finalize="local")
    records = shard_record_list(str(EDGE)) + shard_record_list(str(SURR))
    tracker.add(write_parts(records_to_batch(records), str(tmp_path)))
    results = {r.url: r for r in done}
    assert results[str(SURR)].status == "complete"
    assert results[str(EDGE)].status == "failed" and "could not be written" in results[str(EDGE)].error


def test_the_books_time_the_first_batch_and_the_steady_rate_after_it(tmp_path):
    """Issue 31: the first rows out of the plan, and the rate of the rows after them, from the
    ``_done_at`` each part record carries."""
    from curate.scoring.plan import DONE_AT
    from curate.scoring.records import records_to_batch, shard_record_list
    from curate.scoring.writer import ShardTracker, write_parts

    tracker = ShardTracker(tmp_path, {}, lambda r: None, finalize="local")
    assert tracker.steady_rate is None
    for shard, done_at in ((EDGE, 100.0), (SURR, 104.0)):
        batch = records_to_batch(shard_record_list(str(shard)))
        batch[DONE_AT] = np.full(len(batch["uid"]), done_at)
        tracker.add(write_parts(batch, str(tmp_path)))
        if shard == EDGE:
            assert tracker.first_done_at == 100.0 and tracker.first_rows == len(batch["uid"])
            assert tracker.steady_rate is None  # one batch: no rate after it yet
    assert tracker.first_done_at == 100.0 and tracker.last_done_at == 104.0
    assert tracker.steady_rate == pytest.approx(2 / 4.0)  # surr's 2 rows in the 4 s after the first batch


@pytest.mark.slow
def test_parts_delivered_twice_are_written_once(ray_cluster, tmp_path):
    """Part records Ray delivers twice (a re-executed task) are counted once; the index file
    written from them is identical to the one written from a single delivery."""
    import shutil

    from curate.runtime import ClusterResources
    from curate.scoring.plan import build_dataset, fit_to_cluster, stage_specs
    from curate.scoring.writer import ShardTracker, finalize_shard

    cfg = load_config(TINY)
    cfg.detect.detector = "dbnet"
    cfg.decode.batch_size = cfg.detect.batch_size = cfg.score.batch_size = 4
    weights = resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained)
    specs = stage_specs(fit_to_cluster(cfg, ClusterResources(2, 0)), weights)
    once_dir, twice_dir = tmp_path / "once", tmp_path / "twice"
    once_dir.mkdir(), twice_dir.mkdir()
    # Small blocks, so that each shard arrives in several parts.
    batches = list(build_dataset([str(s) for s in SHARDS[:2]], specs, 0.25, out_dir=once_dir, block_bytes=2**16)
                   .iter_batches(batch_size=1, batch_format="numpy"))
    assert len(batches) >= 4
    shutil.copytree(once_dir / "_parts", tmp_path / "parts-backup")
    once, twice = (
        ShardTracker(once_dir, {}, lambda r: None, "local"),
        ShardTracker(twice_dir, {}, lambda r: None, "local"),
    )
    for b in batches:
        once.add(b)
    # the parts again, for the replay
    shutil.copytree(tmp_path / "parts-backup", once_dir / "_parts", dirs_exist_ok=True)
    # overlapping re-deliveries, also after a shard is written
    replay = batches[:2] + batches[:3] + batches[1:] + batches
    for b in replay:
        twice.add(b)
    rows = lambda bs: sum(len(np.frombuffer(s, dtype=np.int64)) for b in bs for s in b["seqs"])  # noqa: E731
    assert once.duplicates == 0
    assert twice.duplicates == rows(replay) - rows(batches)
    assert sorted(once.results) == sorted(twice.results) == sorted(str(s) for s in SHARDS[:2])
    a, b = read_index(once_dir), read_index(twice_dir)
    assert a.num_rows == b.num_rows == sum(r.num_samples for r in once.results.values())
    assert a.equals(b)
    # finalize is idempotent (Ray may retry it after it wrote the file and removed the parts)
    r = once.results[str(SHARDS[0])]
    again = finalize_shard(str(SHARDS[0]), ["/nonexistent/part.parquet"], r.num_samples, r.status, "", 0,
                           str(once_dir), {})
    assert (again.num_samples, again.statuses, again.index_file) == (r.num_samples, r.statuses, r.index_file)
