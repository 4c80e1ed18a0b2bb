"""Multi-node fault tolerance on one machine: a worker node dies mid-job (issue 7).

A real 2-node Ray cluster (``ray.cluster_utils.Cluster``: a head and a worker node, each with its
own raylet and object store) scores 20 shards; the worker node is SIGKILLed while it runs the
job's workers. The job must still finish, with exactly one index row per sample of the shards,
no duplicate uid, and the same scores as a single-node run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from curate import schema as S
from curate.io.index import read_index
from tests.conftest import N_SHARDS, assert_same_scores, rows_by_uid

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "pipelines" / "tiny_cpu.yaml"


def busy_job_workers(raylet_pid: int) -> list[str]:
    """Titles of the processes under one node's raylet that run this job's Ray Data work (actors
    and tasks; not idle workers, not the node's agents)."""
    out = []
    for p in psutil.Process(raylet_pid).children(recursive=True):
        try:
            title = p.cmdline()[0] if p.cmdline() else ""
        except psutil.Error:
            continue
        if title.startswith("ray::") and "Map" in title:  # MapWorker(...) actors, FlatMap/MapBatches tasks
            out.append(title.split()[0])
    return out


@pytest.mark.slow
def test_worker_node_killed_mid_job(dbnet_unique_pool, tmp_path):
    """The worker node dies mid-job, and one sample aborts its worker wherever it runs (issue 27,
    on two nodes): the job finishes, every other sample is scored as on one node, and the poison
    sample's row is ``worker_died``."""
    pool, expected, reference = dbnet_unique_pool
    poison_key = sorted(k for _, k in expected)[7]
    for attempt in range(3):  # the kill races the job: a kill after the last shard tests nothing, so rerun
        out = tmp_path / f"cluster-{attempt}"
        proc, killed_at, busy, stdout, stderr = _score_and_kill_worker(pool, out, faults=f"detect:abort:{poison_key}")
        assert proc.returncode == 0, stderr[-3000:]
        if killed_at < N_SHARDS:
            break
    assert killed_at < N_SHARDS, "in 3 attempts the node died after the last shard was written: nothing was tested"
    assert f"shards        {N_SHARDS} (complete {N_SHARDS})" in stdout, stdout
    got = rows_by_uid(out)
    rows = read_index(out).to_pylist()
    assert sorted((r[S.SHARD], r[S.KEY]) for r in rows) == sorted(expected), "not exactly one row per sample"
    assert {r[S.UID] for r in rows} == set(expected.values())
    poison = next(r for r in rows if r[S.KEY] == poison_key)
    assert poison[S.STATUS] == S.STATUS_WORKER_DIED, poison
    assert "isolated" in stdout, stdout
    assert_same_scores({u: r for u, r in reference.items() if u != poison[S.UID]},
                       {u: r for u, r in got.items() if u != poison[S.UID]})
    print(f"worker node killed while running {busy} with {killed_at}/{N_SHARDS} shards written")


def _score_and_kill_worker(pool, out, faults: str | None = None):
    """``curate score`` on a fresh 2-node cluster (head + worker, 2 CPUs each), submitted through
    ``RAY_ADDRESS``; the worker node is SIGKILLed once a shard is written and the node runs job
    workers. ``faults``: ``CURATE_FAULTS`` for the job. Returns ``(process, shards written at the
    kill, busy workers, stdout, stderr)``."""
    from ray.cluster_utils import Cluster

    mib = 2**20
    # Node death is noticed after health_check_failure_threshold missed checks (defaults: 3 x 3 s).
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 2, "object_store_memory": 200 * mib, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    try:
        worker = cluster.add_node(num_cpus=2, object_store_memory=200 * mib)
        cluster.wait_for_nodes()
        env = dict(os.environ, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="disabled", CURATE_FAULTS=faults or "")
        # Two detect actors of 1 CPU and a score actor of 0.5: more than the head's 2 CPUs, so the
        # worker node always hosts one of them and runs model work to the end (on CPUs the decode
        # and mask stages run inside the detect actors); the head alone can still finish the job.
        config = out.parent / f"{out.name}-config.yaml"
        config.write_text(TINY.read_text().replace("  num_actors: 1\n  num_cpus: 0.5\n",
                                                   "  num_actors: 2\n  num_cpus: 1.0\n", 1))
        assert "num_actors: 2" in config.read_text()
        cmd = [sys.executable, "-m", "curate.cli", "score", str(pool / "*.tar"), "--config", str(config),
               "--detector", "dbnet", "--no-progress", "--out", str(out)]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        raylet_pid = worker.all_processes["raylet"][0].process.pid
        deadline, busy = time.time() + 300, []
        while proc.poll() is None:
            assert time.time() < deadline, "the job neither ended nor gave a moment to kill the node"
            # Mid-job: scored rows have reached the index (a shard written, or parts of one).
            started = out.exists() and (any(out.glob("*.parquet")) or any((out / "_parts").rglob("*.parquet")))
            busy = busy_job_workers(raylet_pid) if started else []
            if busy:
                break
            time.sleep(0.1)
        if proc.poll() is None:
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILL raylet, object store and its workers
            killed_at = len(list(out.glob("*.parquet")))
        else:  # the job ended first: nothing was tested, the caller tries again
            killed_at = N_SHARDS
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        cluster.shutdown()
    return proc, killed_at, busy, stdout, stderr
