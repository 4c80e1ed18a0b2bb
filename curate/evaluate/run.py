"""``curate evaluate``: zero-shot classification and retrieval over a task list, DataComp style.

Metrics come from clip_benchmark: ``zero_shot_classifier`` and ``run_classification`` for
classification, scored with scikit-learn as clip_benchmark's ``evaluate`` scores them (acc1;
acc5 with at least 5 classes, ``top_k_accuracy_score``; mean per-class recall,
``balanced_accuracy_score``), and
``zeroshot_retrieval.evaluate`` for retrieval (image and text recall@1/5/10; DataComp's
``mean_recall@1`` is their mean at k=1).

Results: one JSON line per task appended to ``OUT/eval_results.jsonl`` (a rerun with the same
model and weights skips tasks already there), ``OUT/eval_summary.json`` (also lists missing
tasks and where they were looked for), and a printed table built from the JSONL lines.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.evaluate.datasets import open_evalset
from curate.evaluate.tasks import DATACOMP_TASKS, GROUPS, NUM_AVERAGED, folder_candidates, task_for
from curate.io.atomic import append_line, read_own_json, refuse_foreign, write_json_atomically

RESULTS_FILE = "eval_results.jsonl"
SUMMARY_FILE = "eval_summary.json"


def resolve_train_dir(train_dir: str | Path) -> tuple[str, str]:
    """``(model, checkpoint)`` of a ``curate train`` output folder: the model from
    ``train_config.json`` and the newest checkpoint.

    Raises:
        FileNotFoundError: no such folder, not a ``curate train`` folder, or no checkpoint in it.
    """
    from curate.train.checkpoints import latest_checkpoint

    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise FileNotFoundError(f"--train-dir {train_dir}: no such folder")
    cfg_file = train_dir / "train_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"--train-dir {train_dir}: no train_config.json (not a curate train output folder)")
    model = json.loads(cfg_file.read_text())["config"]["model"]
    ckpt = latest_checkpoint(train_dir)
    if ckpt is None:
        raise FileNotFoundError(f"--train-dir {train_dir}: no checkpoint in {train_dir / 'checkpoints'}")
    return model, str(ckpt)


def classification_metrics(model, evalset, transform, tokenizer, device: str, batch_size: int,
                           num_workers: int) -> dict[str, Any]:
    """Zero-shot classification metrics of one test set (clip_benchmark functions).

    Returns:
        ``{"acc1", "acc5" (NaN under 5 classes), "mean_per_class_recall", "num_samples"}``.
    """
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

    amp = device.startswith("cuda")
    classifier = zero_shot_classifier(model, tokenizer, evalset.classnames, evalset.templates, device, amp=amp)
    logits, target = run_classification(model, classifier, evalset.dataloader(transform, batch_size, num_workers),
                                        device, amp=amp)
    if len(target) == 0:
        raise ValueError(f"{evalset.path} holds no test samples")
    # clip_benchmark's own `accuracy` calls float() on a 1-element array, which NumPy >= 2.4
    # refuses; scikit-learn computes the same top-k accuracies.
    pred = logits.argmax(dim=1)
    acc1 = accuracy_score(target, pred)
    labels = list(range(logits.shape[1]))
    acc5 = top_k_accuracy_score(target, logits, k=5, labels=labels) if len(evalset.classnames) >= 5 else float("nan")
    return {"acc1": float(acc1), "acc5": float(acc5),
            "mean_per_class_recall": float(balanced_accuracy_score(target, pred)), "num_samples": int(len(target))}


def retrieval_metrics(model, evalset, transform, tokenizer, device: str, batch_size: int,
                      num_workers: int) -> dict[str, Any]:
    """Zero-shot retrieval metrics (clip_benchmark ``zeroshot_retrieval.evaluate``, k = 1, 5, 10 where
    the set has at least k images),
    plus ``mean_recall@1`` (DataComp) and the number of images and captions. The test set's
    captions are tokenized by ``tokenizer``, ``create_clip``'s ``curate.models.BoundedTokenizer``
    (each caption's cost bounded by ``DEFAULT_LIMITS``; ordinary captions give open_clip's tokens)."""
    from clip_benchmark.metrics import zeroshot_retrieval

    counts = {"images": 0, "captions": 0}

    def counted(loader):
        for images, texts in loader:
            counts["images"] += len(images)
            counts["captions"] += sum(len(t) for t in texts)
            yield images, texts

    # recall@k needs at least k images; a small set reports the k it can.
    ks = [k for k in (1, 5, 10) if k <= evalset.count()] or [1]
    metrics = zeroshot_retrieval.evaluate(model, counted(evalset.dataloader(transform, batch_size, num_workers)),
                                          tokenizer, device, amp=device.startswith("cuda"), recall_k_list=ks)
    metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    metrics["num_samples"] = counts["images"]
    metrics["num_captions"] = counts["captions"]
    return metrics


@dataclass
class EvalConfig:
    """Settings of ``curate evaluate`` (the model and the tasks are its arguments).

    Attributes:
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes (0: load in the main process).
        device: torch device; None (auto): cuda when available, else cpu.
        cache_dir: open_clip / Hugging Face cache folder for pretrained tags.
    """

    batch_size: int = field(default=256, metadata={"min": 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    device: str | None = None
    cache_dir: str | None = None


@dataclass
class EvalSummary:
    """What ``run_evaluate`` did; ``format()`` is the printed table."""

    model: str
    pretrained: str
    out: str
    results: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped_done: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when a task failed or no task could be evaluated at all (a typo in --tasks), else 0."""
        return 1 if self.failed or not self.results else 0

    def aggregates(self) -> dict[str, Any]:
        """Group means over the tasks present, and the average over the present tasks of the 38."""
        score = {r["task"]: r["score"] for r in self.results}
        out: dict[str, Any] = {}
        for group, keys in GROUPS.items():
            have = [score[k] for k in keys if k in score and not math.isnan(score[k])]
            out[group] = {"score": sum(have) / len(have) if have else None, "present": len(have), "of": len(keys)}
        averaged = [score[k] for k, t in DATACOMP_TASKS.items() if t.in_average and k in score
                    and not math.isnan(score[k])]
        out["Average"] = {"score": sum(averaged) / len(averaged) if averaged else None, "present": len(averaged),
                          "of": NUM_AVERAGED}
        return out

    def format(self) -> str:
        lines = [f"curate evaluate: {self.model}, weights {self.pretrained}", ""]
        lines.append(f"{'task':<48}{'metric':<24}{'score':>8}{'samples':>10}")
        own = False
        for r in self.results:
            name = r["task"] if r.get("in_datacomp_average", True) else r["task"] + " *"
            own = own or not r.get("in_datacomp_average", True)
            lines.append(f"{name:<48}{r['main_metric']:<24}{r['score']:>8.4f}{r['num_samples']:>10}")
        if own:
            lines.append("* not one of DataComp's 38 tasks: shown, not in the groups or the average")
        lines.append("")
        agg = self.aggregates()
        for group, a in agg.items():
            value = f"{a['score']:.4f}" if a["score"] is not None else "-"
            present = f"{a['present']} of {a['of']} tasks"
            lines.append(f"{group:<48}{present:<24}{value:>8}")
        lines.append("")
        lines.append(f"{agg['Average']['present']} of {NUM_AVERAGED} DataComp tasks present; the average above is over "
                     f"those only, not DataComp's 38-task average.")
        for key, paths in self.missing.items():
            lines.append(f"  MISSING      {key}: looked for {', '.join(str(p) for p in paths)}")
        for key in self.unsupported:
            lines.append(f"  UNSUPPORTED  {key}: needs metadata beyond labels (WILDS, fairness, WinoGAViL)")
        for key, error in self.failed.items():
            lines.append(f"  FAILED       {key}: {error}")
        if not self.results:
            lines.append("  NOTHING EVALUATED: no requested task has data in --data-dir")
        if self.skipped_done:
            lines.append(f"  already done {len(self.skipped_done)} task(s) in {Path(self.out) / RESULTS_FILE}: "
                         f"{', '.join(self.skipped_done)}")
        return "\n".join(lines)


def check_evaluate_out(out: Path) -> None:
    """Refuse an output folder where a run would append to or replace a file that ``curate
    evaluate`` did not write: ``eval_results.jsonl`` must hold result lines only (JSON objects
    with a ``task``; a last line a killed run cut short starts as one), and
    ``eval_summary.json`` must be a JSON object with curate's keys.

    Raises:
        ForeignOutput: one is in the way; nothing is changed.
    """
    refuse_foreign([out / RESULTS_FILE], _is_results_log)
    refuse_foreign([out / SUMMARY_FILE], lambda path: read_own_json(path, "model", "aggregates", "tasks") is not None)


def _is_results_log(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    lines = text.split("\n")
    cut = lines.pop()  # "" when the file ends in a newline, else a line a killed run cut short
    for line in filter(str.strip, lines):
        try:
            rec = json.loads(line)
        except ValueError:
            return False
        if not isinstance(rec, dict) or "task" not in rec:
            return False
    return not cut or cut.startswith('{"task": ')


def _load_done(path: Path, model: str, pretrained: str) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if not text.endswith("\n") and n == len(text.splitlines()):
                    continue  # the last line of a killed run, cut short: that task runs again
                raise ValueError(f"{path}: line {n} is not a JSON result") from None
            if rec.get("model") == model and rec.get("pretrained") == pretrained:
                done[rec["task"]] = rec
    return done


def run_evaluate(tasks: list[str], data_dir: str | Path, out: str | Path, model: str | None = None,
                 pretrained: str | None = None, train_dir: str | Path | None = None, batch_size: int = 256,
                 num_workers: int = 0, device: str | None = None, cache_dir: str | None = None) -> EvalSummary:
    """Evaluate a CLIP model on ``tasks`` read from ``data_dir``.

    Args:
        tasks: task keys (``parse_tasks``).
        data_dir: folder holding the test sets (``wds_<task>_test/`` or ImageFolder trees).
        out: output folder for ``eval_results.jsonl`` and ``eval_summary.json``.
        model, pretrained: open_clip model name and pretrained tag or checkpoint path (offline).
        train_dir: a ``curate train`` output folder instead of ``model``/``pretrained``.
        batch_size, num_workers: DataLoader settings. device: ``cuda`` when available, else ``cpu``.

    Raises:
        ValueError, FileNotFoundError, curate.models.PretrainedNotAvailable: bad arguments,
            reported before any task runs; a ``data_dir`` that is not a local path (webdataset's
            ``pipe:``, any URL scheme: ``curate.io.shards.check_shard_spec``) is a ``ValueError``
            before anything is opened; ``curate.io.atomic.ForeignOutput``: ``out`` holds a
            results log or summary that ``curate evaluate`` did not write (``check_evaluate_out``).
    """
    from curate.io.shards import check_shard_spec
    from curate.models import create_clip, resolve_device, resolve_pretrained

    check_shard_spec(data_dir, "--data-dir", schemes=())

    if train_dir is not None:
        if model is not None or pretrained is not None:
            raise ValueError("give either --train-dir or --model/--pretrained, not both")
        model, pretrained = resolve_train_dir(train_dir)
    if model is None:
        raise ValueError("--model is required (or --train-dir)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder")
    out = Path(out)
    check_evaluate_out(out)
    weights = resolve_pretrained(model, pretrained, cache_dir)
    label = str(Path(weights.path).resolve()) if weights.path else "none (random init)"
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    done = _load_done(results_path, model, label)
    summary = EvalSummary(model, label, str(out))
    device = resolve_device(device)
    clip = transform = tokenizer = None
    for key in tasks:
        task = task_for(key)
        if key in done:
            summary.results.append(done[key])
            summary.skipped_done.append(key)
            continue
        candidates = folder_candidates(data_dir, key)
        path = next((p for p in candidates if p.is_dir()), None)
        if path is None:
            summary.missing[key] = candidates
            continue
        if task.kind == "unsupported":
            summary.unsupported.append(key)
            continue
        try:
            evalset = open_evalset(key, path)
            if clip is None:
                clip, transform, tokenizer = create_clip(model, weights, device=device)
            t0 = time.perf_counter()
            if evalset.kind == "retrieval":
                metrics = retrieval_metrics(clip, evalset, transform, tokenizer, device, batch_size, num_workers)
                main = "mean_recall@1"
            else:
                metrics = classification_metrics(clip, evalset, transform, tokenizer, device, batch_size, num_workers)
                main = task.main_metric if task.key in DATACOMP_TASKS else "acc1"
        except Exception as e:  # one broken test set never stops the others
            summary.failed[key] = S.cap_error(f"{type(e).__name__}: {e}")
            continue
        record = {
            "task": key, "name": task.name, "kind": evalset.kind, "main_metric": main, "score": metrics[main],
            "metrics": metrics, "num_samples": metrics["num_samples"], "dataset": str(path.resolve()),
            "layout": evalset.layout, "templates_source": evalset.templates_source,
            "num_templates": len(evalset.templates or []), "model": model, "pretrained": label,
            "in_datacomp_average": task.in_average, "seconds": round(time.perf_counter() - t0, 2),
            "time": time.time(),
        }
        append_line(results_path, json.dumps(record))
        summary.results.append(record)
    write_json_atomically(out / SUMMARY_FILE, {
        "model": model, "pretrained": label, "aggregates": summary.aggregates(),
        "tasks": {r["task"]: r["score"] for r in summary.results},
        "missing": {k: [str(p) for p in v] for k, v in summary.missing.items()},
        "unsupported": summary.unsupported, "failed": summary.failed,
    }, indent=2)
    return summary
