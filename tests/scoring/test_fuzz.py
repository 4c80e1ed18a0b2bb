"""Fuzz the score path with hostile shards (``tests/fuzz_shards.py``), at two levels: the stage
chain without Ray (Hypothesis, bounded examples), and ``curate score`` end to end over a few
shards. Properties: nothing raises, exit 0 unless a shard is unreadable, one row per
``(shard, key)``, every status is one of the schema's, the index is readable by pyarrow, pandas
and DuckDB, and a uid carried by several rows is flagged (no such row is ``ok``)."""

from __future__ import annotations

import collections
import json

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate import schema as S
from curate.cli import main
from curate.io.index import read_index, records_to_table
from tests.conftest import REPO
from tests.fuzz_shards import HypothesisDriver, RandomDriver, build_tar, expected_keys, shard_members

# Bounded for CI: examples and time (each example is one shard of up to 8 samples).
FUZZ_EXAMPLES = 40


@pytest.fixture(scope="module")
def chain():
    from curate.models import resolve_pretrained
    from curate.scoring.config import load_config
    from curate.scoring.plan import StageChain

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    return StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir))


@st.composite
def fuzzed_shard(draw):
    d = HypothesisDriver(draw)
    members = shard_members(d)
    cut = draw(st.one_of(st.none(), st.floats(0, 1)))  # keep this fraction of the tar's bytes
    return members, cut


def check_index_rows(rows: list[dict], keys_by_shard: dict[str, set[str]] | None = None) -> None:
    """The properties every set of index rows must have (see the module docstring)."""
    per = collections.Counter((r[S.SHARD], r[S.KEY]) for r in rows)
    assert all(n == 1 for n in per.values()), [k for k, n in per.items() if n > 1]
    assert all(r[S.STATUS] in S.STATUSES for r in rows)
    by_uid = collections.defaultdict(list)
    for r in rows:
        by_uid[r[S.UID]].append(r[S.STATUS])
    for uid, statuses in by_uid.items():
        assert len(statuses) == 1 or S.STATUS_OK not in statuses, (uid, statuses)
    if keys_by_shard is not None:
        for shard, keys in keys_by_shard.items():
            assert {k for (s, k) in per if s == shard} == keys


def check_readable(path) -> int:
    """Rows of a Parquet file or folder as pyarrow, pandas and DuckDB read it (all equal)."""
    n_arrow = pq.read_table(path).num_rows
    import pandas as pd

    n_pandas = len(pd.read_parquet(path))
    glob = str(path / "*.parquet") if path.is_dir() else str(path)
    n_duck = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [glob]).fetchall()[0][0]
    assert n_arrow == n_pandas == n_duck
    return n_arrow


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(shard=fuzzed_shard())
def test_stage_chain_on_fuzzed_shards(chain, tmp_path_factory, shard):
    from curate.scoring.records import SHARD_RECORD, records_to_batch, shard_record_list

    members, cut = shard
    data = build_tar(members)
    intact = cut is None
    path = tmp_path_factory.mktemp("fuzz") / "fuzz-000000.tar"
    path.write_bytes(data if intact else data[: int(len(data) * cut)])
    records = shard_record_list(str(path))
    samples = [r for r in records if r[S.STATUS] != SHARD_RECORD]
    if not samples:
        assert len(records) == 1
        if intact:
            assert expected_keys(members) == set()
        return
    out = chain(records_to_batch(samples))
    table = records_to_table(out)
    rows = table.to_pylist()
    assert len(rows) == len(samples)
    check_index_rows(rows, {str(path): expected_keys(members)} if intact else None)
    pq.write_table(table, path.with_suffix(".parquet"))
    assert check_readable(path.with_suffix(".parquet")) == len(rows)


@pytest.mark.slow
def test_curate_score_end_to_end_on_fuzzed_shards(ray_cluster, tmp_path):
    d = RandomDriver(13)
    pool = tmp_path / "pool"
    pool.mkdir()
    keys = {}
    for i in range(3):
        members = shard_members(d, max_samples=12)
        path = pool / f"fuzz-{i:06d}.tar"
        path.write_bytes(build_tar(members))
        keys[str(path)] = expected_keys(members)
    cut_members = shard_members(d, max_samples=12)
    cut_data = build_tar(cut_members)
    (pool / "fuzz-cut.tar").write_bytes(cut_data[: len(cut_data) * 2 // 3])
    out = tmp_path / "index"
    rc = main(["score", str(pool / "*.tar"), "--out", str(out), "--config", str(REPO / "pipelines" / "tiny_cpu.yaml"),
               "--detector", "dbnet", "--num-cpus", "2", "--no-progress"])
    summary = json.loads((out / "_summary.json").read_text())
    unreadable = summary["shards_by_status"].get("unreadable", 0)
    assert rc == (1 if unreadable else 0)
    assert "failed" not in summary["shards_by_status"]
    rows = read_index(out).to_pylist()
    check_index_rows(rows, keys)
    assert check_readable(out) == len(rows) == summary["num_samples"]
