"""What ``curate report`` shows, gathered from the score index and a subset: no image is read and
nothing is drawn here (``curate.report.render`` does that).

``gather_report`` reads the index (``curate.io.index.read_index``) and each file's ``curate.*``
metadata, and returns a ``ReportData``: the provenance, the score arrays, the quantile bands of
the ``band_by`` score with the rows sampled from each, the subset's kept and dropped counts and
examples, and the per-shard accounting.
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate import schema as S
from curate.io.datacomp import SCORE_COLUMNS

log = logging.getLogger("curate")

SCORES = (S.CLIP_SCORE, S.MASKED_CLIP_SCORE)


@dataclass
class ReportConfig:
    """Settings of ``curate report``.

    Attributes:
        band_by: score whose quantile bands group the examples (clip_score or masked_clip_score; on a
            DataComp pool also clip_b32_similarity_score or clip_l14_similarity_score, which the
            metadata alone is banded by).
        bands: number of score bands.
        per_band: examples shown per band.
        seed: seed of the example sampling.
        thumb: long side of the example thumbnails, pixels.
    """

    band_by: str = field(default=S.MASKED_CLIP_SCORE, metadata={"choices": (*SCORES, *SCORE_COLUMNS)})
    bands: int = field(default=5, metadata={"min": 1})
    per_band: int = field(default=8, metadata={"min": 1})
    seed: int = 0
    thumb: int = field(default=256, metadata={"min": 16})


def _index_table(index: str | Path) -> tuple[pa.Table, dict[str, dict[str, str]]]:
    """The index (``read_index``) and each file's ``curate.*`` metadata, by file path."""
    from curate.io.index import index_files, read_index, read_index_metadata

    return read_index(index), {str(f): read_index_metadata(f) for f in index_files(index)}


def score_bands(scores: np.ndarray, bands: int) -> np.ndarray:
    """Band edges: ``bands + 1`` quantiles of the finite ``scores`` (``np.quantile``), ascending.

    Raises:
        ValueError: ``bands < 1`` or no finite score.
    """
    if bands < 1:
        raise ValueError(f"--bands must be at least 1, got {bands}")
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        raise ValueError("no sample has a score to band by")
    return np.quantile(finite, np.linspace(0.0, 1.0, bands + 1))


def shard_accounting(table: pa.Table, meta: dict[str, dict[str, str]], summary_path: Path | None) -> list[dict]:
    """One row per shard: samples, ok, errors by kind and the shard's read status.

    Shards without an index file (unreadable, or failed) come from ``_summary.json`` when the
    index folder has one, so they are counted too.
    """
    counts: dict[str, collections.Counter] = {}
    for shard, status in zip(table.column(S.SHARD).to_pylist(), table.column(S.STATUS).to_pylist()):
        counts.setdefault(shard, collections.Counter())[status] += 1
    return accounting_rows(counts, meta, summary_path)


def accounting_rows(counts: dict[str, dict[str, int]], meta: dict[str, dict[str, str]],
                    summary_path: Path | None) -> list[dict]:
    """``shard_accounting`` from rows counted by shard and status (``{shard: {status: rows}}``,
    as a ``GROUP BY`` gives them), each index file's ``curate.*`` metadata and ``_summary.json``."""
    per: dict[str, dict[str, Any]] = {}

    def row_of(shard: str) -> dict[str, Any]:
        return per.setdefault(shard, {"shard": shard, "samples": 0, "ok": 0, "errors": collections.Counter(),
                                      "status": "", "error": ""})

    for shard, by_status in counts.items():
        row = row_of(shard)
        for status, n in by_status.items():
            row["samples"] += n
            if status == S.STATUS_OK:
                row["ok"] += n
            else:
                row["errors"][status] += n
    for md in meta.values():
        shard = md.get(S.META_SHARD)
        if shard is None:
            continue
        row = row_of(shard)
        row["status"] = md.get(S.META_SHARD_STATUS, "")
        row["error"] = S.cap_error(md.get(S.META_SHARD_ERROR, ""))  # an old index's may be long
    if summary_path is not None and summary_path.is_file():
        try:
            for s in json.loads(summary_path.read_text()).get("shards", []):
                row = row_of(s["url"])
                if not row["status"] or s["status"] not in ("skipped", "complete"):
                    row["status"] = s["status"] if s["status"] != "skipped" else row["status"] or "complete"
                    row["error"] = row["error"] or S.cap_error(s.get("error") or "")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s: %s", summary_path, e)
    out = []
    for shard in sorted(per):
        row = per[shard]
        row["errors"] = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or ""
        out.append(row)
    return out




@dataclass
class Band:
    """One quantile band of the ``band_by`` score.

    Attributes:
        lo, hi: score bounds (``lo <= score < hi``; the top band includes ``hi``).
        count: ok samples in the band.
        rows: index row numbers sampled from the band, highest score first.
    """

    lo: float
    hi: float
    count: int
    rows: list[int]


@dataclass
class SubsetView:
    """What a subset file kept of the index.

    Attributes:
        path: the subset file.
        kept: ``(N,) bool``, index rows whose uid is in the subset.
        repeats: rows whose uid the subset lists more than once (upweighted by ``curate train``).
        unknown: uids of the subset that are not in this index.
        by_status: ``(status, kept, dropped)`` per status, sorted by status.
        dropped_rows: dropped rows with the highest ``clip_score`` first (what a CLIP-score filter
            would have kept), at most ``per_band``.
        kept_rows: kept rows with the lowest ``clip_score`` first, at most ``per_band``.
        duplicate_groups: from ``dedup_groups.parquet`` beside the subset (``dedup()``): up to
            ``per_band`` groups, each a list of ``(row, kept)``, the kept row first.
        test_matches: from ``decontamination.parquet`` beside the subset (``decontaminate()``):
            up to ``4 * per_band`` ``(row, eval image, method, phash distance, similarity)``.
    """

    path: str
    kept: np.ndarray
    repeats: int
    unknown: int
    by_status: list[tuple[str, int, int]]
    dropped_rows: list[int]
    kept_rows: list[int]
    duplicate_groups: list[list[tuple[int, bool]]] = field(default_factory=list)
    test_matches: list[tuple[int, str, str, int, float]] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything ``curate report`` shows, before any image is read.

    Attributes:
        index: the index folder or file.
        num_samples, num_ok: index rows, and those with status ``ok``.
        scores: ``{clip_score, masked_clip_score} -> (N,) float64``, NaN where not ok.
        has_text: ``(N,) bool``, at least one text box.
        band_by, per_band, seed: the banding settings.
        bands: the quantile bands, highest first.
        subset: the subset view, or ``None``.
        examples: index row number -> row (``dict`` of the index columns) of every sample shown.
        accounting: one row per shard (``shard_accounting``).
        total_errors: not-ok rows by status.
        provenance: ``(label, value)`` pairs from the Parquet metadata (model, weights, detector).
        mask_method: the fill the masked images are re-made with (``mean``, ``inpaint``, ``none``).
        is_pretrained: ``False`` when the index was scored with a random-init CLIP.
        bad_uids: rows whose uid is not a uid (``curate.schema.is_uid``: an index written by an
            old version or edited by hand): counted and shown, left out of the bands (as a
            filter never keeps them).
    """

    index: str
    num_samples: int
    num_ok: int
    scores: dict[str, np.ndarray]
    has_text: np.ndarray
    band_by: str
    per_band: int
    seed: int
    bands: list[Band]
    subset: SubsetView | None
    examples: dict[int, dict[str, Any]]
    accounting: list[dict]
    total_errors: dict[str, int]
    provenance: list[tuple[str, str]]
    mask_method: str
    is_pretrained: bool
    bad_uids: int = 0


def _filter_findings(view: SubsetView, folder: Path, table: pa.Table, per_band: int) -> None:
    """Fill ``view``'s duplicate groups and test-set matches from the files ``curate filter``
    wrote beside the subset (``dedup_groups.parquet``, ``decontamination.parquet``), if any.
    Rows are matched to the index by ``(shard, key)``."""
    import pyarrow.parquet as pq

    where = {(s, k): i for i, (s, k) in enumerate(zip(table.column(S.SHARD).to_pylist(),
                                                      table.column(S.KEY).to_pylist()))}
    groups_file, matches_file = folder / "dedup_groups.parquet", folder / "decontamination.parquet"
    if groups_file.is_file():
        groups: dict[str, list[tuple[int, bool]]] = {}
        for r in pq.read_table(groups_file).to_pylist():
            row = where.get((r[S.SHARD], r[S.KEY]))
            if row is not None:
                groups.setdefault(r["group"], []).append((row, bool(r["kept"])))
        view.duplicate_groups = [sorted(g, key=lambda x: not x[1]) for g in list(groups.values())[:per_band]]
    if matches_file.is_file():
        for r in pq.read_table(matches_file).to_pylist()[: 4 * per_band]:
            row = where.get((r[S.SHARD], r[S.KEY]))
            if row is not None:
                view.test_matches.append((row, r["eval_image"], r["method"], int(r["phash_distance"]),
                                          float(r["similarity"])))


def gather_report(index: str | Path, subset: str | None = None, band_by: str = S.MASKED_CLIP_SCORE,
                  bands: int = 5, per_band: int = 8, seed: int = 0) -> ReportData:
    """Read the index (and the subset) and choose the samples the report shows.

    Args:
        index: a score index folder (or one index file) written by ``curate score``.
        subset: a subset file (``subset.parquet`` or DataComp ``.npy``), or ``None``.
        band_by: score column whose quantile bands (``score_bands``) group the examples.
        bands: number of bands. per_band: examples per band. seed: example sampling seed
            (``numpy.random.default_rng``).

    Raises:
        FileNotFoundError: no index file. ValueError: bad ``band_by``, ``bands`` or ``per_band``,
            or a bad subset file.
    """
    from curate.io.subset import load_subset_counts

    if band_by not in SCORES:
        raise ValueError(f"--band-by must be one of {', '.join(SCORES)} on a score index (DataComp's score columns "
                         f"need its metadata folder as --index too), got {band_by!r}")
    if per_band < 1:
        raise ValueError(f"--per-band must be at least 1, got {per_band}")
    if bands < 1:
        raise ValueError(f"--bands must be at least 1, got {bands}")
    table, meta = _index_table(index)
    status = np.asarray(table.column(S.STATUS).to_pylist(), dtype=object)
    ok = status == S.STATUS_OK
    scores = {k: table.column(k).to_numpy(zero_copy_only=False).astype(np.float64) for k in SCORES}
    good_uid = S.uid_mask(table.column(S.UID))
    for k in SCORES:
        scores[k][~(ok & good_uid)] = np.nan
    has_text = np.nan_to_num(table.column(S.NUM_TEXT_BOXES).to_numpy(zero_copy_only=False).astype(np.float64)) > 0
    rng = np.random.default_rng(seed)

    chosen: list[int] = []
    band_list: list[Band] = []
    band_scores = scores[band_by]
    if np.isfinite(band_scores).any():
        edges = score_bands(band_scores, bands)
        for b in reversed(range(bands)):
            lo, hi = edges[b], edges[b + 1]
            sel = np.flatnonzero((band_scores >= lo) & ((band_scores < hi) if b < bands - 1 else (band_scores <= hi)))
            pick = np.sort(rng.choice(sel, size=min(per_band, len(sel)), replace=False)) if len(sel) else sel
            pick = pick[np.argsort(-band_scores[pick], kind="stable")]
            band_list.append(Band(float(lo), float(hi), len(sel), [int(i) for i in pick]))
            chosen += [int(i) for i in pick]

    view = None
    if subset is not None:
        counts = load_subset_counts(subset)
        uids = table.column(S.UID).to_pylist()
        mult = np.array([counts.get(u) for u in uids], dtype=np.int64)  # 0: not in the subset
        kept = mult > 0
        unknown = len(counts) - len(set(u for u, k in zip(uids, kept) if k))
        by_status = collections.Counter(zip(status.tolist(), kept.tolist()))
        clip = scores[S.CLIP_SCORE]
        dropped_idx = np.flatnonzero(~kept & np.isfinite(clip))
        dropped_idx = dropped_idx[np.argsort(-clip[dropped_idx], kind="stable")][:per_band]
        kept_idx = np.flatnonzero(kept & np.isfinite(clip))
        kept_idx = kept_idx[np.argsort(clip[kept_idx], kind="stable")][:per_band]
        chosen += [int(i) for i in dropped_idx] + [int(i) for i in kept_idx]
        view = SubsetView(str(subset), kept, int((mult > 1).sum()), int(unknown),
                          [(s, by_status[(s, True)], by_status[(s, False)]) for s in sorted(set(status.tolist()))],
                          [int(i) for i in dropped_idx], [int(i) for i in kept_idx])
        _filter_findings(view, Path(subset).parent, table, per_band)
        chosen += [i for g in view.duplicate_groups for i, _ in g] + [m[0] for m in view.test_matches]

    uniq = sorted(set(chosen))
    examples = dict(zip(uniq, table.take(pa.array(uniq, pa.int64())).to_pylist())) if uniq else {}
    md0 = next(iter(meta.values()), {})
    mask_method = md0.get(S.META_MASK_METHOD, "mean")
    provenance = [
        ("CLIP model", md0.get(S.META_CLIP_MODEL, "?")),
        ("CLIP weights", md0.get(S.META_CLIP_PRETRAINED, "?")),
        ("text detector", f"{md0.get(S.META_DETECTOR, '?')}, long side {md0.get(S.META_DETECT_LONG_SIDE, '?')} px"),
        ("mask method", mask_method),
        ("code version", md0.get(S.META_CODE_VERSION, "?")),
    ]
    accounting = shard_accounting(table, meta, Path(index) / "_summary.json" if Path(index).is_dir() else None)
    return ReportData(
        index=str(index), num_samples=table.num_rows, num_ok=int(ok.sum()), scores=scores, has_text=has_text,
        band_by=band_by, per_band=per_band, seed=seed, bands=band_list, subset=view, examples=examples,
        accounting=accounting, total_errors=dict(sorted(collections.Counter(status[~ok].tolist()).items())),
        provenance=provenance, mask_method=mask_method,
        is_pretrained=md0.get(S.META_CLIP_IS_PRETRAINED, "true") == "true", bad_uids=int((~good_uid).sum()),
    )
