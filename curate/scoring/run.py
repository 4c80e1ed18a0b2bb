"""``curate score`` end to end: plan the shards, size the plan to the cluster, run it, summarise."""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.io.atomic import read_own_json, refuse_foreign, write_json_atomically
from curate.io.shards import expand_shards, stats_sample_count
from curate.models import resolve_pretrained
from curate.runtime import cluster_resources, init_ray, joins_existing_cluster, quiet_ray_data, root_cause
from curate.scoring.config import PipelineConfig, apply_settings, config_from_dict, load_config
from curate.scoring.plan import build_dataset, check_resources, fit_to_cluster, operators, stage_specs
from curate.scoring.provenance import index_metadata, plan_shards
from curate.scoring.summary import SHARD_FAILED, ScoreSummary, ShardResult
from curate.scoring.writer import ShardTracker

log = logging.getLogger("curate")
RAY_SESSION_BYTES = 100 * 2**20  # below this much free disk a local Ray cannot write its session (logs, sockets)


def isolation_resources(specs) -> dict[str, float]:
    """Ray resources of one isolation actor (``curate.scoring.isolate``), which holds every stage
    of the plan: the most CPUs and GPUs any one stage's worker reserves."""
    return {"num_cpus": max(s.resources.cpus for s in specs), "num_gpus": max(s.resources.gpus for s in specs)}


def isolation_parallelism(specs, cluster) -> int:
    """Isolation actors at once: one more than the plan's smallest actor pool (each isolation
    actor holds every model, so the pass needs about the plan's memory plus one actor; the extra
    one keeps the pass going while a dead one's replacement loads its models), no more than the
    cluster holds, at most 8 (the pass runs the few samples whose worker died)."""
    r = isolation_resources(specs)
    fits = cluster.cpus / max(r["num_cpus"], 1e-9)
    if r["num_gpus"]:
        fits = min(fits, cluster.gpus / r["num_gpus"])
    pools = [s.max_actors if s.max_actors is not None else s.min_actors for s in specs if s.resources.actor]
    return int(max(1, min(8, fits, (min(pools) if pools else 1) + 1)))


def run_score(
    shards: list[str] | str,
    out_dir: str | Path,
    cfg: PipelineConfig,
    num_cpus: int | None = None,
    address: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    started_at: float | None = None,
) -> ScoreSummary:
    """Score shards into a score index (one Parquet file per shard in ``out_dir``).

    Args:
        shards: shard specs (brace ranges, globs, fsspec URLs).
        out_dir: folder for the index files; on a cluster of several nodes, a folder every node
            sees at the same path (shared filesystem), since workers write the files.
        cfg: pipeline configuration; resources left ``None`` (auto) are sized to the cluster
            (``curate.scoring.plan.fit_to_cluster``).
        num_cpus: CPUs for a local Ray cluster (``None``: all).
        address: Ray cluster address (``None``: local, or ``RAY_ADDRESS``).
        progress: show a progress bar on stderr.
        overwrite: recompute shards whose index file is already complete.
        started_at: when the command started (Unix seconds; the CLI passes the time its module
            was imported), so that the start-up the summary reports includes the imports and
            argument parsing before this call; ``None``: the call itself.

    Returns:
        ``ScoreSummary``; also written to ``out_dir/_summary.json``.

    Raises:
        PretrainedNotAvailable: weights asked for are not on this machine (before any shard
            is read).
        ValueError: bad shard specs or config, or a plan the local cluster cannot start.
        FileNotFoundError: a glob matched nothing.
        IndexConfigMismatch: see ``plan_shards``.
        ForeignOutput (a ValueError): a file curate did not write is where an output goes
            (``_summary.json``, or see ``plan_shards``); found before any shard is read.
    """
    from tqdm import tqdm

    t0, t0_wall = time.perf_counter(), time.time()
    started_at = min(started_at or t0_wall, t0_wall)
    phases = {"before_call": t0_wall - started_at}  # seconds of each step before the first row
    urls = expand_shards(shards)  # first: a typo in the spec is the cheapest mistake to name
    if not urls:
        raise ValueError("no shards given")
    weights = resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir)
    if "://" in str(out_dir):
        raise ValueError(f"--out must be a local folder (or a mounted shared filesystem), got {out_dir}")
    out_dir = Path(out_dir).absolute()  # workers on other nodes write here
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the index folder {out_dir}: {e}") from None
    metadata = index_metadata(cfg, weights)
    refuse_foreign([out_dir / "_summary.json"],
                   lambda path: read_own_json(path, "out_dir", "num_shards", "shards") is not None)
    todo, skipped = plan_shards(urls, out_dir, metadata[S.META_CONFIG], overwrite=overwrite)

    results: dict[str, ShardResult] = {s.url: s for s in skipped}
    duplicates, stage_stats, plan, startup, driver_cpu, steady, first_samples = 0, {}, [], 0.0, 0.0, None, 0
    isolation = None
    if todo:
        t_ray = time.time()
        phases["checks"] = t_ray - t0_wall  # shard list, weights, output folder, resume plan
        try:
            init_ray(num_cpus=num_cpus, address=address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            tmp = tempfile.gettempdir()  # where a local Ray writes its session (TMPDIR, else /tmp)
            if not address and shutil.disk_usage(tmp).free < RAY_SESSION_BYTES:
                raise OSError(errno.ENOSPC, f"No space left on device for a local Ray cluster's files in {tmp} "
                                            f"({shutil.disk_usage(tmp).free / 1e6:.1f} MB free; TMPDIR moves them): {e}"
                              ) from e
            raise ValueError(f"cannot start or reach the Ray cluster ({address or 'local'}): {e}") from None
        t_plan = time.time()
        phases["ray_init"] = t_plan - t_ray
        cluster = cluster_resources(fixed=not joins_existing_cluster(address))
        sized = fit_to_cluster(cfg, cluster)
        specs = stage_specs(sized, weights)
        check_resources(specs, max(sized.read.num_cpus, sized.decode.num_cpus, sized.mask.num_cpus), cluster)
        plan = [d for op in operators(specs) for d in op.describe()]
        quiet_ray_data()

        known = {u: stats_sample_count(u) for u in todo}
        bar = tqdm(unit="sample", desc="curate score", disable=not progress, dynamic_ncols=True,
                   total=sum(known.values()) if all(v is not None for v in known.values()) else None)
        exact_total = bar.total is not None
        shards_done = [0]

        def on_done(r: ShardResult) -> None:
            shards_done[0] += 1
            bar.set_postfix(shards=f"{shards_done[0]}/{len(todo)}", last=f"{Path(r.url).name}:{r.status}")

        tracker = ShardTracker(out_dir, metadata, on_done)

        def estimate_total() -> None:
            # No stats files: the shards whose size is known so far (their first rows arrived)
            # give the mean, which stands in for the others.
            sizes = tracker.shard_sizes
            if sizes:
                mean = sum(sizes.values()) / len(sizes)
                bar.total = max(bar.n, sum(sizes.values()) + round((len(todo) - len(sizes)) * mean))

        from curate.guard import faults_from_env

        faults = faults_from_env()
        ds = build_dataset(todo, specs, sized.read.num_cpus, out_dir=out_dir, limits=sized.limits, faults=faults)
        failure = None
        t_run = time.time()
        phases["plan"] = t_run - t_plan
        cpu0 = time.process_time()
        try:
            for records in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(tracker.add(records))
                tracker.poll()
                if not exact_total:
                    estimate_total()
        except Exception as e:  # keep what was written; report the rest as failed, by name
            failure = root_cause(e)
            log.error("curate score stopped: %s", S.cap_error(e))
        if failure is None:  # the samples whose worker died (or hung, or blew up), run alone
            try:
                from curate.scoring.isolate import isolate_missing

                isolation = isolate_missing(tracker, todo, specs, sized.limits, faults, str(out_dir),
                                            isolation_resources(specs), parallel=isolation_parallelism(specs, cluster))
                bar.update(isolation.samples)
            except Exception as e:  # the shards it could not finish are reported failed below
                failure = f"the isolation pass stopped: {root_cause(e)}"
                log.error("curate score: %s", failure)
        tracker.drain()
        tracker.cleanup()
        driver_cpu = time.process_time() - cpu0
        if tracker.first_done_at != float("inf"):
            startup = max(0.0, tracker.first_done_at - started_at)
            # Ray Data starts the actors (loading their models), the reads and the first
            # batches through every stage
            phases["first_batch"] = max(0.0, tracker.first_done_at - t_run)
            steady, first_samples = tracker.steady_rate, tracker.first_rows
        bar.close()
        results.update(tracker.results)
        duplicates = tracker.duplicates
        stage_stats = {name: {"samples": tracker.samples[name], "busy_s": busy} for name, busy in tracker.busy.items()}
        for url in todo:
            if url not in results:
                results[url] = ShardResult(url, SHARD_FAILED, failure or "internal error: rows missing")
    if duplicates:
        log.warning("curate score: %d row(s) arrived twice (Ray task retries) and were written once", duplicates)
    wall = time.perf_counter() - t0 + (t0_wall - started_at)  # from the command's start
    summary = ScoreSummary([results[u] for u in urls], wall, weights, str(out_dir), duplicates,
                           stage_stats, plan, startup, driver_cpu, isolation=isolation,
                           startup_phases=phases if startup else {}, steady_samples_per_s=steady,
                           first_samples=first_samples)
    write_json_atomically(out_dir / "_summary.json", summary.to_dict(), indent=2, default=str)
    return summary


def score(
    shards: list[str] | str,
    out: str | Path,
    config: PipelineConfig | dict[str, Any] | str | Path | None = None,
    *,
    num_cpus: int | None = None,
    address: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> ScoreSummary:
    """Score webdataset shards into a score index: the Python API of ``curate score``.

    Example::

        import curate
        summary = curate.score("pool/{00000000..00000099}.tar", "index/",
                               clip_model="ViT-B-32", pretrained="/models/vit-b-32.pt",
                               detector="dbnet")
        print(summary.format()); print(summary.exit_code)

    From a script that already called ``ray.init(...)``, the job runs on that cluster.

    Args:
        shards: shard specs (brace ranges, globs, fsspec URLs).
        out: score-index folder (see ``run_score``).
        config: a ``PipelineConfig``, a nested mapping (the YAML's sections), a YAML path, or
            ``None`` for the defaults (T-MARS settings, resources sized to the cluster).
        num_cpus, address, progress, overwrite: see ``run_score``.
        **settings: ``section__key=value`` for any config key (``detect__long_side=1280``, the
            CLI's ``--detect-long-side``), or a bare ``clip_model``, ``pretrained`` (with
            ``clip_model`` alone: random init, as open_clip does), ``cache_dir``, ``detector``
            (``curate.scoring.config.apply_settings``).

    Returns:
        The run's ``ScoreSummary`` (``exit_code`` 0 when every shard was read).

    Raises:
        ValueError: unknown setting or bad value; plus everything ``run_score`` raises.
    """
    if isinstance(config, PipelineConfig):
        import copy

        cfg = copy.deepcopy(config)
    elif isinstance(config, dict):
        cfg = config_from_dict(config)
    else:
        cfg = load_config(config)
    apply_settings(cfg, settings)
    return run_score(shards, out, cfg, num_cpus=num_cpus, address=address, progress=progress, overwrite=overwrite)
