"""``curate train``: the driver. Checks everything it can before any worker starts, then runs
``worker_loop`` under Ray Train's ``TorchTrainer`` (gloo on CPU, NCCL on GPU) and follows the
JSONL log with a progress bar.

The output folder must be reachable by rank 0 and by the driver (local disk on one machine, a
shared file system on a cluster): it holds ``checkpoints/``, ``train_log.jsonl``,
``train_summary.json``, ``train_config.json`` and ``tensorboard/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.io.atomic import read_own_json, refuse_foreign, write_json_atomically
from curate.train.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, resume_mismatches
from curate.train.config import TrainConfig
from curate.train.loop import LOG_FILE, SUMMARY_FILE, worker_loop

log = logging.getLogger(__name__)


class TrainFailed(RuntimeError):
    """The Ray Train run ended with an error (the message holds the worker's error)."""


@dataclass
class TrainSummary:
    """What ``run_train`` did; ``format()`` is the printed summary."""

    out: str
    summary: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    subset: str = "none: every sample of the shards"
    exit_code: int = 0

    def format(self) -> str:
        s = self.summary
        lines = ["curate train: summary"]
        if self.resumed_from:
            lines.append(f"  resumed from  {self.resumed_from} (step {s.get('start_step')})")
        lines += [
            f"  model         {s.get('model')}, {s.get('num_workers')} worker(s), global batch {s.get('batch_size')}",
            f"  subset        {self.subset}",
            f"  steps         {s.get('steps')}  samples seen {s.get('samples_seen')} "
            f"({s.get('samples_trained')} trained this run)",
            f"  final loss    {s.get('final_loss', float('nan')):.4f}",
            f"  skipped       {sum(s.get('skipped', {}).values())} samples this run "
            f"{dict(sorted(s.get('skipped', {}).items())) or ''}".rstrip(),
            f"  checkpoint    {s.get('checkpoint')}",
            f"  log           {Path(self.out) / LOG_FILE}",
            f"  time          {s.get('seconds', 0):.1f} s",
        ]
        for problem in s.get("shard_problems", []):
            lines.append(f"  SHARD         {problem}")
        for death in s.get("worker_deaths", []):
            lines.append(f"  DATA WORKER   {death['message']}")
        return "\n".join(lines)


CONFIG_FILE = "train_config.json"


def check_train_out(out: Path) -> None:
    """Refuse an output folder where a run would replace or append to a file that ``curate
    train`` did not write: ``train_config.json`` and ``train_summary.json`` must be curate's
    (JSON objects with its keys), and ``train_log.jsonl`` is appended to only beside curate's
    ``train_config.json``. Checkpoints are checked by ``resolve_resume``.

    Raises:
        ForeignOutput: one is in the way; nothing is changed.
    """
    config = read_own_json(out / CONFIG_FILE, "run_id", "config")
    refuse_foreign([out / CONFIG_FILE], lambda path: config is not None)
    refuse_foreign([out / SUMMARY_FILE], lambda path: read_own_json(path, "run_id", "steps") is not None)
    refuse_foreign([out / LOG_FILE], lambda path: config is not None)


def resolve_resume(out: Path, resume: str | None) -> Path | None:
    """``--resume`` to a checkpoint file: ``latest`` (newest in ``out/checkpoints``) or a path.

    Raises:
        ValueError: ``out`` already holds checkpoints and no ``--resume`` was given, or
            ``latest`` finds none. FileNotFoundError: a path that does not exist.
    """
    if resume is None:
        if list_checkpoints(out):
            raise ValueError(f"{out} already holds checkpoints of an earlier run; pass --resume latest to continue "
                             f"it, or give a new --out")
        return None
    if resume == "latest":
        path = latest_checkpoint(out)
        if path is None:
            raise ValueError(f"--resume latest: no checkpoint in {out / 'checkpoints'}")
        return path
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return path


def _check_cluster(cfg: TrainConfig, strict: bool) -> None:
    from curate.runtime import require_resources

    require_resources(
        "curate train", cfg.num_workers * cfg.cpus_per_worker, cfg.num_workers if cfg.use_gpu else 0, strict,
        cpu_what=f"{cfg.num_workers} workers x {cfg.cpus_per_worker:g}",
        cpu_fix="lower --num-workers / --cpus-per-worker or raise --num-cpus",
        gpu_fix="drop --use-gpu to train on CPUs",
    )


def _follow(path: Path, total: int, initial: int, stop: threading.Event) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", desc="curate train", dynamic_ncols=True)
    offset = 0
    try:
        while True:
            done = stop.wait(1.0)
            if path.exists():
                with open(path) as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith("\n"):
                            break
                        offset += len(line)
                        rec = json.loads(line)
                        bar.update(max(0, rec["step"] - bar.n))
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", sps=f"{rec['samples_per_s']:.0f}")
            if done:
                break
    finally:
        bar.close()


def run_train(shards: list[str] | str, out: str | Path, cfg: TrainConfig, subset: str | None = None,
              resume: str | None = None, num_cpus: int | None = None, address: str | None = None,
              progress: bool = True, local: bool = False) -> TrainSummary:
    """Train ``cfg.model`` on the subset of ``shards`` (see ``curate.train``).

    Args:
        shards: shard specs (brace ranges, globs, fsspec URLs): the pool, or resharded shards.
        out: output folder.
        cfg: the run's ``TrainConfig`` (``train_config``).
        subset: ``subset.npy`` / ``subset.parquet`` from ``curate filter``; ``None`` trains on
            every sample of ``shards`` (e.g. shards written by ``curate reshard``).
        resume: ``None``, ``latest`` or a checkpoint path.
        num_cpus, address: the local Ray cluster's CPUs, or an existing cluster's address.
        local: run the loop in this process, without Ray Train (``curate.train.loop
            .LocalContext``): the same loop, data order and checkpoints for one worker, without
            Ray Train's start-up (about 15 s a run on 2 cores) and without restarts after a
            failure (``max_failures``); ``cfg.num_workers`` must be 1.
        progress: show a progress bar.

    Raises:
        ValueError, FileNotFoundError: bad arguments, found before any worker starts; among them
            ``curate.io.atomic.ForeignOutput``: ``out`` holds a file of an output's name that
            ``curate train`` did not write (``check_train_out``).
        TrainFailed: a worker raised (its message is included).
    """
    from curate.io.shards import expand_shards
    from curate.io.subset import load_subset_counts
    from curate.models import check_model_name
    from curate.runtime import init_ray

    check_model_name(cfg.model)
    if local and cfg.num_workers != 1:
        raise ValueError(f"--local trains in one process: num_workers must be 1, got {cfg.num_workers}")
    urls = expand_shards(shards)  # FileNotFoundError for a local shard that does not exist
    counts = load_subset_counts(subset)  # fail fast on a bad subset file
    data_id = data_identity(urls, subset)
    subset = str(Path(subset).absolute()) if subset is not None else None  # workers run elsewhere
    out = Path(out).absolute()
    check_train_out(out)
    resume_path = resolve_resume(out, resume)
    if resume_path is not None:
        saved = load_checkpoint(resume_path)["curate"]
        bad = resume_mismatches(saved["config"], cfg)
        if saved.get("data") is not None and saved["data"] != data_id:
            was, now = saved["data"], data_id
            if was["shards"] != now["shards"]:
                bad.append(f"shards: checkpoint {len(was['shards'])} ({', '.join(was['shards'][:3])}...), "
                           f"now {len(now['shards'])} ({', '.join(now['shards'][:3])}...)")
            if was["subset"] != now["subset"]:
                bad.append("subset: another file or other contents than the checkpoint's")
        if bad:
            raise ValueError(f"cannot resume {resume_path}: the schedule or data order would change ({'; '.join(bad)})")
        if saved["step"] >= cfg.steps:
            raise ValueError(f"{resume_path} is at step {saved['step']}, the end of this run ({cfg.steps} steps)")
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    write_json_atomically(out / CONFIG_FILE,
        {"run_id": run_id, "config": cfg.to_dict(), "shards": urls, "subset": subset,
         "resume": str(resume_path) if resume_path else None}, indent=2)
    summary_file = out / SUMMARY_FILE
    summary_file.unlink(missing_ok=True)

    config = {"train": cfg.to_dict(), "shards": urls, "subset": subset, "out": str(out), "run_id": run_id,
              "resume": str(resume_path) if resume_path else None, "data": data_id}
    start = int(saved["step"]) if resume_path is not None else 0
    stop = threading.Event()
    follower = None
    if progress:
        follower = threading.Thread(target=_follow, args=(out / LOG_FILE, cfg.steps, start, stop), daemon=True)
        follower.start()
    if local:
        from curate.train.data import NoTrainingData
        from curate.train.loop import LocalContext

        try:
            worker_loop(config, LocalContext(cfg.use_gpu))
        except NoTrainingData:
            raise
        except Exception as e:
            raise TrainFailed(S.cap_error(f"{type(e).__name__}: {e}", 2000)) from e
        finally:
            stop.set()
            if follower is not None:
                follower.join(timeout=5)
        return _summary(out, summary_file, resume_path, subset, counts)
    import ray.train  # the Ray path only: --local never pays for importing Ray Train
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(num_cpus=num_cpus, address=address)
    _check_cluster(cfg, strict=not (address or os.environ.get("RAY_ADDRESS")))
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(name=f"curate-train-{run_id}", storage_path=str(out / "ray_train"),
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
    )
    try:
        trainer.fit()
    except Exception as e:  # ray.train.TrainingFailedError and friends carry the worker's traceback
        raise TrainFailed(_worker_error(e)) from None
    finally:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
    return _summary(out, summary_file, resume_path, subset, counts)


def _summary(out: Path, summary_file: Path, resume_path, subset: str | None, counts) -> TrainSummary:
    if not summary_file.exists():
        raise TrainFailed(f"the run ended without writing {summary_file}")
    result = TrainSummary(str(out), json.loads(summary_file.read_text()),
                          resumed_from=str(resume_path) if resume_path else None)
    if counts is not None:
        result.subset = f"{subset}: {len(counts)} uids ({counts.total} samples with repeats)"
    return result


def data_identity(urls: list[str], subset: str | None) -> dict[str, Any]:
    """What a resumed run must read again to see the same batches: the shard names in order and
    the subset file's SHA-256 (``None`` without a subset)."""
    import hashlib

    from curate.io.shards import shard_name

    digest = None
    if subset is not None:
        h = hashlib.sha256()
        with open(subset, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"shards": [shard_name(u) for u in urls], "subset": digest}


_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|NoTrainingData))(: .*)?$")


def _worker_error(e: BaseException) -> str:
    """The worker's own exception line out of Ray's error text (which wraps the traceback)."""
    text = str(e)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    found = [ln.strip() for ln in lines if _EXC_LINE.match(ln) and not ln.strip().startswith(("ray.", "Worker"))]
    if found:
        return S.cap_error(found[-1], 2000)
    tail = [ln for ln in lines if not ln.startswith(" ")][-3:]
    return S.cap_error(f"{type(e).__name__}: " + (" | ".join(tail) if tail else text), 2000)
