"""``curate report`` over a DataComp pool (issue 29): a DataComp metadata folder alone, or joined by
uid with a curate score index (``--index METADATA_DIR [--index SCORE_INDEX]``).

Everything is read through ``curate.query.connect_files`` (the locked-down view ``scores``) as
DuckDB aggregates over one streaming scan each, so memory stays flat in the pool's size: counts
by status (``not_scored`` included), per-score statistics and 40-bin histograms (DuckDB
``histogram`` over bin numbers), approximate quantiles (``approx_quantile``, a t-digest) for the
bands and the caption and image-size figures, the examples of each band as the rows with the
lowest ``hash(uid, seed)`` (``min_by(row, key, n)``: ``per_band`` rows held a band), a scatter of
at most ``SCATTER_POINTS`` rows picked the same way, and per-shard accounting from a ``GROUP BY``.
A subset (``--subset``) is joined as its sorted ``u8,u8`` uid halves (``curate.io.subset.UidCounts``,
16 bytes a subset uid, registered with DuckDB as an Arrow table), never as Python strings.

- **Metadata alone**: the pool holds no image (DataComp's metadata names URLs, not shards), so the
  page shows no thumbnail and says so: counts, the ``clip_b32``/``clip_l14`` score distributions,
  caption and image-size figures, face boxes, the subset's kept and dropped counts, and each
  band's captions as a table. Thumbnails need the score index (``curate score`` on the shards).
- **Joined**: as ``curate report`` on a score index (thumbnails with the text boxes and the masked
  image, bands of ``--band-by``, the scatter of ``clip_score`` vs ``masked_clip_score``,
  per-shard accounting with ``_summary.json``) plus DataComp's score columns (histograms, and on
  every card), and the metadata rows the index lacks counted as ``not_scored``.

Differences from the score-index report: band edges are approximate quantiles (t-digest) rather
than ``np.quantile``'s exact ones, the examples are picked by hash rather than by
``numpy.random``, and the dedup groups and test-set matches written beside a subset are not shown.
Nothing of the data becomes SQL: column names are curate's and DataComp's constants, and every
value (seed, bin edges, band edges) is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import schema as S
from curate.io import datacomp as dc
from curate.report.data import Band, accounting_rows

CURATE_SCORES = (S.CLIP_SCORE, S.MASKED_CLIP_SCORE)
BINS = 40  # histogram bins
SCATTER_POINTS = 5000  # rows in the scatter plot, at most
MEMORY_LIMIT = "2GiB"  # DuckDB's, spilling to OUT/.report-work beyond it
WORK = ".report-work"
_UID_OK = f"coalesce(regexp_full_match({S.UID}, '{S.UID_PATTERN}'), false)"
NO_IMAGES = ("This pool is DataComp's metadata alone: it names no shard, so no image is shown. For thumbnails, "
             "score the shards with `curate score` and give that score index too "
             "(--index METADATA_DIR --index SCORE_INDEX).")


@dataclass
class PoolSubset:
    """What a subset kept of a DataComp pool (``curate.report.data.SubsetView``'s counts).

    Attributes:
        path: the subset file. kept, dropped: pool rows in and not in the subset.
        repeats: kept rows whose uid the subset lists more than once.
        unknown: uids of the subset that are not in the pool.
        by_status: ``(status, kept, dropped)`` per status.
        rank_by: the score the example rows are ranked by.
        dropped_rows, kept_rows: example numbers (``PoolReportData.examples``) of the dropped rows
            with the highest ``rank_by`` and the kept rows with the lowest.
        hists: ``score -> (kept counts, dropped counts)`` over ``PoolReportData.edges``.
    """

    path: str
    kept: int
    dropped: int
    repeats: int
    unknown: int
    by_status: list[tuple[str, int, int]]
    rank_by: str
    dropped_rows: list[int] = field(default_factory=list)
    kept_rows: list[int] = field(default_factory=list)
    hists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class PoolReportData:
    """Everything the report of a DataComp pool shows, before any image is read.

    Attributes:
        index: the ``--index`` paths, as shown. metadata: the metadata folder.
        joined: whether a score index is joined (else the metadata alone: no images).
        num_files, npz_files: metadata files, and those with a ``.npz`` beside them.
        num_samples, num_ok: pool rows, and those ``ok``. by_status: ``(status, rows)``.
        bad_uids: rows whose uid is not a uid (never banded, never kept).
        score_stats: per score column, ``{name, n, min, p10, p50, p90, max, mean}``.
        edges: the histograms' bin edges (``BINS + 1``), ``None`` when no score is finite.
        hists: ``score -> counts``.
        scatter: ``(x name, y name, x, y, has_text)`` of at most ``SCATTER_POINTS`` rows, or ``None``.
        captions, images: caption and image-size figures, ``(label, value)`` pairs.
        band_by, band_note: the banded score, and why it is not the one asked for ("" if it is).
        bands: highest first; ``Band.rows`` are example numbers.
        examples: example number -> row (``dict`` of the view's columns).
        subset: ``PoolSubset`` or ``None``. accounting: one row per shard (or metadata file).
        provenance: ``(label, value)`` pairs. mask_method, is_pretrained: of the score index.
    """

    index: str
    metadata: str
    joined: bool
    num_files: int
    npz_files: int
    num_samples: int
    num_ok: int
    by_status: list[tuple[str, int]]
    bad_uids: int
    score_stats: list[dict[str, Any]]
    edges: np.ndarray | None
    hists: dict[str, np.ndarray]
    scatter: tuple | None
    captions: list[tuple[str, str]]
    images: list[tuple[str, str]]
    band_by: str
    band_note: str
    per_band: int
    seed: int
    bands: list[Band]
    examples: dict[int, dict[str, Any]]
    subset: PoolSubset | None
    accounting: list[dict]
    provenance: list[tuple[str, str]]
    mask_method: str = "mean"
    is_pretrained: bool = True


def is_datacomp_pool(index) -> bool:
    """Whether ``index`` (one path or ``--index``'s list) holds a DataComp metadata folder."""
    paths = [index] if isinstance(index, (str, Path)) else list(index)
    return any(dc.is_metadata_folder(p) for p in paths)


def _good(col: str) -> str:
    """The rows where ``col`` counts: a finite value of a row with a uid; curate's scores of ``ok``
    rows only (DataComp's are over every metadata row, as DataComp ranks them)."""
    cond = f"isfinite({col}) AND {_UID_OK}"
    return cond + (f" AND {S.STATUS} = '{S.STATUS_OK}'" if col in CURATE_SCORES else "")


def _dicts(cursor) -> list[dict[str, Any]]:
    """A (small) result's rows as dicts."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def _fmt(v: Any, digits: int = 4) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def gather_pool_report(index, subset: str | None = None, band_by: str = S.MASKED_CLIP_SCORE, bands: int = 5,
                       per_band: int = 8, seed: int = 0, spill: str | Path | None = None) -> PoolReportData:
    """Read a DataComp pool (and a subset) with DuckDB and choose the samples the report shows.

    Args:
        index: ``--index``'s paths: a DataComp metadata folder, alone or with a score index.
        subset: a subset file (``subset.parquet`` or DataComp ``.npy``), or ``None``.
        band_by: the score whose quantile bands group the examples: ``clip_score`` or
            ``masked_clip_score`` (a joined pool), or a DataComp score column. On the metadata
            alone curate's scores do not exist: ``clip_l14_similarity_score`` is banded instead,
            and the page says so.
        bands, per_band, seed: as ``curate.report.data.gather_report``.
        spill: DuckDB's spill folder (``MEMORY_LIMIT``).

    Raises:
        FileNotFoundError: no metadata or index files. ValueError: a bad setting or subset file,
            or a ``band_by`` the pool has no column for.
    """
    import pyarrow as pa

    from curate.io.index import read_index_metadata
    from curate.io.subset import load_subset_counts
    from curate.query import VIEW, connect_files, pool_files, score_index_of

    if per_band < 1 or bands < 1:
        raise ValueError(f"--bands and --per-band must be at least 1, got {bands}, {per_band}")
    idx_files, meta_files = pool_files(index)
    if not meta_files:
        raise ValueError("no DataComp metadata folder among --index")
    joined = bool(idx_files)
    counts = load_subset_counts(subset) if subset is not None else None  # a bad subset fails before any scan
    con = connect_files(idx_files, MEMORY_LIMIT, spill, metadata=meta_files)
    try:
        names = {r[0] for r in con.execute(f"DESCRIBE {VIEW}").fetchall()}
        score_cols = [c for c in (*CURATE_SCORES, *dc.SCORE_COLUMNS) if c in names]
        band_note = ""
        if band_by not in score_cols:
            if not joined and band_by in CURATE_SCORES:
                band_note = (f"banded by {dc.score_column('l14')}: the metadata alone has no {band_by} "
                             f"(curate's scores come with the score index)")
                band_by = dc.score_column("l14")
            else:
                raise ValueError(f"--band-by {band_by}: the pool has no such score (it has {', '.join(score_cols)})")
        pool = VIEW
        if counts is not None:
            con.register("subset_uids", pa.table({"hi": counts.hi, "lo": counts.lo, "n": counts.counts}))
            half = "CASE WHEN {ok} THEN TRY_CAST('0x' || {uid}[{a}:{b}] AS UBIGINT) END"
            pool = (f"(SELECT p.*, u.n AS _n FROM (SELECT *, {half.format(ok=_UID_OK, uid=S.UID, a=1, b=16)} AS _hi, "
                    f"{half.format(ok=_UID_OK, uid=S.UID, a=17, b=32)} AS _lo FROM {VIEW}) p "
                    f"LEFT JOIN subset_uids u ON p._hi = u.hi AND p._lo = u.lo)")

        by_status = [(s, int(n)) for s, n in con.execute(
            f"SELECT {S.STATUS}, count(*) FROM {VIEW} GROUP BY ALL ORDER BY 1").fetchall()]
        num_samples = sum(n for _, n in by_status)
        num_ok = sum(n for s, n in by_status if s == S.STATUS_OK)

        # One scan: every score's figures, the captions', the images', the bad uids.
        aggs = [f"count(*) FILTER (WHERE NOT {_UID_OK})"]
        for c in score_cols:
            g = _good(c)
            aggs += [f"count({c}) FILTER (WHERE {g})", f"min({c}) FILTER (WHERE {g})",
                     f"approx_quantile({c}, [0.1, 0.5, 0.9]) FILTER (WHERE {g})", f"max({c}) FILTER (WHERE {g})",
                     f"avg({c}) FILTER (WHERE {g})"]
        has_text = f"{S.STATUS} <> '{S.STATUS_NOT_SCORED}'"  # joined: a not_scored row's text is the index's (none)
        aggs += [f"count(*) FILTER (WHERE {has_text})",
                 f"count(*) FILTER (WHERE {has_text} AND ({S.TEXT} IS NULL OR trim({S.TEXT}) = ''))",
                 f"approx_quantile(length({S.TEXT}), [0.1, 0.5, 0.9]) FILTER (WHERE {has_text})",
                 f"avg(len(regexp_extract_all({S.TEXT}, '\\S+'))) FILTER (WHERE {has_text})"]
        if {dc.DC_WIDTH, dc.DC_HEIGHT} <= names:
            aggs += [f"approx_quantile({dc.DC_WIDTH}, [0.1, 0.5, 0.9])",
                     f"approx_quantile({dc.DC_HEIGHT}, [0.1, 0.5, 0.9])"]
        if dc.DC_FACES in names:
            aggs += [f"count(*) FILTER (WHERE len({dc.DC_FACES}) > 0)", f"sum(len({dc.DC_FACES}))"]
        row = list(con.execute(f"SELECT {', '.join(aggs)} FROM {VIEW}").fetchone())
        bad_uids = int(row.pop(0))
        score_stats = []
        for c in score_cols:
            n, lo, q, hi, mean = row[:5]
            del row[:5]
            q = q or [None] * 3
            score_stats.append({"name": c, "n": int(n), "min": lo, "p10": q[0], "p50": q[1], "p90": q[2], "max": hi,
                                "mean": mean})
        with_text, empty, lengths, words = row[:4]
        del row[:4]
        lengths = lengths or [None] * 3
        captions = [("captions", f"{with_text}" + ("" if not joined else " (of the scored rows)")),
                    ("missing or empty", f"{empty}"),
                    ("length in characters, p10 / p50 / p90", " / ".join(_fmt(v) for v in lengths)),
                    ("words per caption, mean (whitespace-split)", _fmt(words, 2))]
        images: list[tuple[str, str]] = []
        if {dc.DC_WIDTH, dc.DC_HEIGHT} <= names:
            w, h = row[:2]
            del row[:2]
            images += [(f"{dc.DC_WIDTH}, p10 / p50 / p90", " / ".join(_fmt(v) for v in (w or [None] * 3))),
                       (f"{dc.DC_HEIGHT}, p10 / p50 / p90", " / ".join(_fmt(v) for v in (h or [None] * 3)))]
        if dc.DC_FACES in names:
            images += [("rows with face boxes", str(row[0])), ("face boxes", str(row[1] or 0))]

        finite = [s for s in score_stats if s["n"]]
        edges = None
        hists: dict[str, np.ndarray] = {}
        if finite:
            lo = float(min(s["min"] for s in finite))
            hi = float(max(s["max"] for s in finite))
            edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, BINS + 1)
            width = float(edges[1] - edges[0])
            bin_of = "least(greatest(CAST(floor(({c} - $lo) / $w) AS INTEGER), 0), {last})"
            parts = [f"histogram({bin_of.format(c=c, last=BINS - 1)}) FILTER (WHERE {_good(c)})" for c in score_cols]
            group = ", _n IS NOT NULL AS _kept" if counts is not None else ", true AS _kept"
            res = con.execute(f"SELECT {', '.join(parts)}{group} FROM {pool} GROUP BY ALL",
                              {"lo": lo, "w": width}).fetchall()

            def dense(m) -> np.ndarray:
                out = np.zeros(BINS, np.int64)
                for b, n in (m or {}).items():
                    out[int(b)] += int(n)
                return out

            per_kept = {bool(r[-1]): [dense(m) for m in r[:-1]] for r in res}
            zero = [np.zeros(BINS, np.int64)] * len(score_cols)
            for i, c in enumerate(score_cols):
                hists[c] = per_kept.get(True, zero)[i] + per_kept.get(False, zero)[i]

        examples: dict[int, dict[str, Any]] = {}
        number: dict[tuple, int] = {}  # a row shown twice (a band's and the subset's) is one example

        def add(rows: list[dict]) -> list[int]:
            out = []
            for r in rows:
                i = number.setdefault((r.get(S.SHARD), r.get(S.KEY), r.get(S.UID)), len(number))
                examples[i] = {k: v for k, v in r.items() if not k.startswith("_")}
                out.append(i)
            return out

        # The bands: approximate quantiles of band_by; per band its rows with the lowest hash(uid, seed).
        band_list: list[Band] = []
        stat = next(s for s in score_stats if s["name"] == band_by)
        if stat["n"]:
            g = _good(band_by)
            inner = []
            if bands > 1:
                inner = con.execute(f"SELECT approx_quantile(CAST({band_by} AS DOUBLE), CAST($q AS FLOAT[])) "
                                    f"FROM {VIEW} WHERE {g}",
                                    {"q": [b / bands for b in range(1, bands)]}).fetchone()[0]
            band_edges = [float(stat["min"]), *map(float, inner), float(stat["max"])]
            band_edges = list(np.maximum.accumulate(band_edges))
            band_of = " + ".join([f"CAST({band_by} >= $e{i} AS INTEGER)" for i in range(len(inner))] or ["0"])
            params = {f"e{i}": e for i, e in enumerate(band_edges[1:-1])}
            params["seed"] = int(seed)
            res = con.execute(
                f"SELECT _band, count(*), min_by(s, hash({S.UID}, $seed), {int(per_band)}) FROM "
                f"(SELECT *, {band_of} AS _band FROM {VIEW} WHERE {g}) s GROUP BY _band", params).fetchall()
            by_band = {int(b): (int(n), list(rows)) for b, n, rows in res}
            for b in reversed(range(bands)):
                n, rows = by_band.get(b, (0, []))
                rows = sorted(rows, key=lambda r: -r[band_by])
                band_list.append(Band(band_edges[b], band_edges[b + 1], n, add(rows)))

        view = None
        if counts is not None:
            rank_by = S.CLIP_SCORE if S.CLIP_SCORE in score_cols else dc.score_column("l14")
            res = con.execute(f"SELECT {S.STATUS}, count(*) FILTER (WHERE _n IS NOT NULL), count(*) FILTER "
                              f"(WHERE _n IS NULL), count(*) FILTER (WHERE _n > 1) FROM {pool} GROUP BY ALL "
                              f"ORDER BY 1").fetchall()
            found = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT _hi, _lo FROM {pool} "
                                f"WHERE _n IS NOT NULL)").fetchone()[0]
            kept = sum(int(r[1]) for r in res)
            view = PoolSubset(str(subset), kept, sum(int(r[2]) for r in res), sum(int(r[3]) for r in res),
                              len(counts) - int(found), [(s, int(k), int(d)) for s, k, d, _ in res], rank_by)
            g = _good(rank_by)
            cols = "* EXCLUDE (_n, _hi, _lo)"
            dropped = _dicts(con.execute(f"SELECT {cols} FROM {pool} WHERE _n IS NULL AND {g} ORDER BY {rank_by} "
                                         f"DESC, {S.UID} LIMIT {int(per_band)}"))
            kept_rows = _dicts(con.execute(f"SELECT {cols} FROM {pool} WHERE _n IS NOT NULL AND {g} ORDER BY "
                                           f"{rank_by}, {S.UID} LIMIT {int(per_band)}"))
            view.dropped_rows, view.kept_rows = add(dropped), add(kept_rows)
            if edges is not None:
                zero = np.zeros(BINS, np.int64)
                view.hists = {c: (per_kept.get(True, [zero] * len(score_cols))[i],
                                  per_kept.get(False, [zero] * len(score_cols))[i]) for i, c in enumerate(score_cols)}

        scatter = None
        x, y = CURATE_SCORES if joined else dc.SCORE_COLUMNS
        if x in score_cols and y in score_cols:
            text = f"coalesce({S.NUM_TEXT_BOXES}, 0) > 0" if S.NUM_TEXT_BOXES in names else "false"
            t = con.execute(f"SELECT {x}, {y}, {text} FROM {VIEW} WHERE {_good(x)} AND {_good(y)} "
                            f"ORDER BY hash({S.UID}, $seed) LIMIT {SCATTER_POINTS}", {"seed": int(seed)}).fetchnumpy()
            scatter = (x, y, *(np.asarray(t[k]) for k in t))

        # Per-shard accounting: the score index's shards (with their files' read status and
        # _summary.json), or the metadata files.
        per: dict[str, dict[str, int]] = {}
        for shard, status, n in con.execute(f"SELECT {S.SHARD}, {S.STATUS}, count(*) FROM {VIEW} "
                                            f"WHERE {S.SHARD} IS NOT NULL GROUP BY ALL").fetchall():
            per.setdefault(shard, {})[status] = int(n)
    finally:
        con.close()

    meta_dir = str(Path(meta_files[0]).parent)
    npz = sum(dc.npz_path(f).is_file() for f in meta_files)
    provenance = [("DataComp metadata", f"{meta_dir}: {len(meta_files)} file(s), {npz} with .npz embeddings beside "
                                        f"them (not read by the report)")]
    mask_method, pretrained = "mean", True
    if joined:
        meta = {f: read_index_metadata(f) for f in idx_files}
        md0 = next(iter(meta.values()), {})
        mask_method = md0.get(S.META_MASK_METHOD, "mean")
        pretrained = md0.get(S.META_CLIP_IS_PRETRAINED, "true") == "true"
        provenance += [
            ("score index", str(score_index_of(index))),
            ("CLIP model", md0.get(S.META_CLIP_MODEL, "?")),
            ("CLIP weights", md0.get(S.META_CLIP_PRETRAINED, "?")),
            ("text detector", f"{md0.get(S.META_DETECTOR, '?')}, long side {md0.get(S.META_DETECT_LONG_SIDE, '?')} px"),
            ("mask method", mask_method),
            ("code version", md0.get(S.META_CODE_VERSION, "?")),
        ]
        folder = Path(score_index_of(index))
        accounting = accounting_rows(per, meta, folder / "_summary.json" if folder.is_dir() else None)
    else:
        accounting = accounting_rows({str(Path(f).name): c for f, c in
                                      ((f, per.get(f, {})) for f in meta_files)}, {}, None)
        for r in accounting:
            r["status"] = "DataComp metadata file"
    paths = [index] if isinstance(index, (str, Path)) else list(index)
    return PoolReportData(
        index=" + ".join(map(str, paths)), metadata=meta_dir, joined=joined, num_files=len(meta_files), npz_files=npz,
        num_samples=num_samples, num_ok=num_ok, by_status=by_status, bad_uids=bad_uids, score_stats=score_stats,
        edges=edges, hists=hists, scatter=scatter, captions=captions, images=images, band_by=band_by,
        band_note=band_note, per_band=per_band, seed=seed, bands=band_list, examples=examples, subset=view,
        accounting=accounting, provenance=provenance, mask_method=mask_method if mask_method != "none" else "mean",
        is_pretrained=pretrained)


# --------------------------------------------------------------------------- page


def _plots(data: PoolReportData, out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curate.report.render import _save

    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    if data.edges is None:
        return out
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    for name, counts in data.hists.items():
        if counts.sum():
            ax.stairs(counts, data.edges, fill=True, alpha=0.45, label=f"{name} (n={int(counts.sum())})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    ax.set_title("Score histograms")
    out["hist"] = _save(fig, img_dir, "hist_scores.png")
    if data.scatter is not None:
        xn, yn, x, y, text = data.scatter
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        groups = ((text, "text detected", "tab:red"), (~text, "no text", "tab:blue")) if data.joined else (
            (np.ones(len(x), bool), "samples", "tab:blue"),)
        for sel, label, colour in groups:
            ax.scatter(x[sel], y[sel], s=8, alpha=0.6, label=f"{label} (n={int(sel.sum())})", color=colour)
        ax.set_xlabel(xn)
        ax.set_ylabel(yn)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"{yn} vs {xn}" + (f" (a sample of {len(x)})" if len(x) >= SCATTER_POINTS else ""))
        out["scatter"] = _save(fig, img_dir, "scatter_scores.png")
    if data.subset is not None and data.subset.hists:
        cols = [c for c, (k, d) in data.subset.hists.items() if k.sum() + d.sum()]
        if cols:
            fig, axes = plt.subplots(1, len(cols), figsize=(4.5 * len(cols), 3.5), dpi=100, squeeze=False)
            for ax, name in zip(axes[0], cols):
                k, d = data.subset.hists[name]
                for counts, label in ((k, "kept"), (d, "dropped")):
                    if counts.sum():
                        ax.stairs(counts, data.edges, fill=True, alpha=0.5, label=f"{label} (n={int(counts.sum())})")
                ax.set_xlabel(name, fontsize=8)
                ax.legend(fontsize=8)
            fig.suptitle("What the subset kept and dropped")
            out["subset"] = _save(fig, img_dir, "hist_subset.png")
    return out


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>curate report: {{ index }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.n, th.n { text-align: right; }
td.cap { max-width: 60em; overflow-wrap: anywhere; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 1.5em; }
.card { width: 280px; border: 1px solid #ccc; border-radius: 4px; padding: 6px; font-size: 85%; }
.card img { max-width: 136px; max-height: 136px; vertical-align: top; }
.caption { margin: 4px 0; overflow-wrap: anywhere; }
.problem { color: #a00; }
.warn { background: #fff3cd; padding: 6px; border: 1px solid #e0c060; }
code { font-size: 90%; }
</style></head><body>
<h1>curate report</h1>
<p>DataComp pool <code>{{ index }}</code>: {{ num_samples }} samples from {{ num_files }} metadata file(s),
{{ num_ok }} ok{% if joined %}, joined by uid with the score index{% endif %}.</p>
{% if not joined %}<p class="warn">{{ no_images }}</p>{% endif %}
<table>
{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if not pretrained %}<p class="warn">The index was scored with a random-init CLIP: its scores are not meaningful \
CLIP scores.</p>{% endif %}
{% if bad_uids %}<p class="warn">{{ bad_uids }} row(s) have a uid that is not 32 lower-case hex characters: left out \
of the bands and scores, never kept by a filter.</p>{% endif %}

<h2>Samples by status</h2>
<table><tr><th>status</th><th class="n">samples</th></tr>
{% for s, n in by_status %}<tr><td>{{ s }}</td><td class="n">{{ n }}</td></tr>
{% endfor %}</table>
{% if joined %}<p><code>not_scored</code>: metadata rows the score index has no row for (images that failed to \
download, or shards not scored yet); a filter never keeps them.</p>{% endif %}

<h2>Scores</h2>
<table><tr><th>score</th><th class="n">samples</th><th class="n">min</th><th class="n">p10</th><th class="n">p50</th>\
<th class="n">p90</th><th class="n">max</th><th class="n">mean</th></tr>
{% for s in score_stats %}<tr><td>{{ s.name }}</td><td class="n">{{ s.n }}</td><td class="n">{{ fmt(s.min) }}</td>\
<td class="n">{{ fmt(s.p10) }}</td>
<td class="n">{{ fmt(s.p50) }}</td><td class="n">{{ fmt(s.p90) }}</td><td class="n">{{ fmt(s.max) }}</td>\
<td class="n">{{ fmt(s.mean) }}</td></tr>
{% endfor %}</table>
<p><small>Quantiles are approximate (DuckDB's t-digest); counts, min, max and mean are exact.</small></p>
{% for p in plots %}<img src="{{ p }}" alt="{{ p }}"> {% endfor %}

<h2>Captions and images</h2>
<table>{% for k, v in captions + images %}<tr><th>{{ k }}</th><td class="n">{{ v }}</td></tr>
{% endfor %}</table>

{% if subset %}
<h2>Subset <code>{{ subset.path }}</code></h2>
<p>Kept {{ subset.kept_text }} (as <code>curate filter</code> counts), dropped {{ subset.dropped }}.
{% if subset.repeats %}{{ subset.repeats }} uid(s) are listed more than once \
(kept with repeats by <code>curate train</code>).{% endif %}
{% if subset.unknown %}{{ subset.unknown }} uid(s) of the subset are not in this pool.{% endif %}</p>
<table><tr><th>status</th><th class="n">kept</th><th class="n">dropped</th></tr>
{% for s, k, d in subset.by_status %}<tr><td>{{ s }}</td><td class="n">{{ k }}</td><td class="n">{{ d }}</td></tr>
{% endfor %}</table>
{% if subset.plot %}<img src="{{ subset.plot }}" alt="kept vs dropped">{% endif %}
<h3>Dropped, highest {{ subset.rank_by }} first</h3>
{{ show(subset.dropped_examples) }}
<h3>Kept, lowest {{ subset.rank_by }} first</h3>
{{ show(subset.kept_examples) }}
{% endif %}

<h2>Examples by {{ band_by }} band</h2>
{% if band_note %}<p class="warn">{{ band_note }}</p>{% endif %}
<p>{{ bands|length }} approximate quantile bands of {{ band_by }}, highest first; up to {{ per_band }} samples per band
(those with the lowest hash of uid and seed {{ seed }}).{% if joined %}\
 Left: the image with the detected text polygons in
red; right: the masked image the masked CLIP score saw ({{ mask_method }} fill).{% endif %}</p>
{% for b in bands %}
<h3>{{ band_by }} in [{{ "%.4f"|format(b.lo) }}, {{ "%.4f"|format(b.hi) }}] ({{ b.count }} samples)</h3>
{{ show(b.examples) }}
{% endfor %}

<h2>Per-{% if joined %}shard{% else %}file{% endif %} accounting</h2>
<table><tr><th>{% if joined %}shard{% else %}metadata file{% endif %}</th><th>read status</th>\
<th class="n">samples</th><th class="n">ok</th><th>errors</th></tr>
{% for s in shards %}<tr><td><code>{{ s.shard }}</code></td><td>\
{{ s.status }}{% if s.error %}: {{ s.error }}{% endif %}</td>
<td class="n">{{ s.samples }}</td><td class="n">{{ s.ok }}</td><td>{{ s.errors }}</td></tr>
{% endfor %}<tr><th>total</th><th></th><th class="n">{{ num_samples }}</th><th class="n">{{ num_ok }}</th>\
<th>{{ total_errors }}</th></tr>
</table>
<p><small>Written by <code>curate report</code> {{ version }}.</small></p>
</body></html>
"""

_CAPTIONS = """<table><tr><th>uid</th><th>caption</th>{% for c in cols %}<th class="n">{{ c }}</th>{% endfor %}</tr>
{% for r in rows %}<tr><td><code>{{ r.uid }}</code></td><td class="cap">{{ r.text if r.text else "(no caption)" }}</td>
{% for c in cols %}<td class="n">{{ fmt(r[c]) }}</td>{% endfor %}</tr>
{% else %}<tr><td colspan="{{ 2 + cols|length }}">(none)</td></tr>{% endfor %}</table>"""


def _extra(row: dict) -> str | None:
    """DataComp's scores of a row, for its card."""
    parts = [f"{a} {row[c]:.4f}" for a, c in zip(dc.ARCHS, dc.SCORE_COLUMNS) if row.get(c) is not None]
    return "DataComp " + " · ".join(parts) if parts else None


def render_pool_report(data: PoolReportData, out: str | Path, shards: list[str] | None = None, thumb: int = 256):
    """Write ``out/index.html`` and ``out/images/`` for a DataComp pool's ``data``: thumbnails
    read back from the shards when a score index is joined (``curate.report.render``), the
    captions as tables when the metadata is alone.

    Returns:
        ``curate.report.render.ReportSummary`` (``note`` says when no image could be shown).

    Raises:
        curate.io.atomic.ForeignOutput: as ``render_report``; nothing is written.
    """
    import jinja2

    import curate
    from curate.io.atomic import write_text_atomically
    from curate.report.render import (
        PLOTS,
        ReportSummary,
        _environment,
        _render_examples,
        _shard_locator,
        check_page_out,
    )

    out_dir = Path(out)
    shown = data.examples if data.joined else {}
    check_page_out(out_dir / "index.html", shown, PLOTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = _render_examples(shown, out_dir, _shard_locator(shards), data.mask_method, thumb) if shown else {}
    for i, e in examples.items():
        e.extra = _extra(data.examples[i])
    plots = _plots(data, out_dir)
    env = _environment()
    cap_t = env.from_string(_CAPTIONS)
    cols = [s["name"] for s in data.score_stats]

    def show(items):
        if data.joined:
            return env.globals["grid"](items)
        return jinja2.filters.Markup(cap_t.render(rows=items, cols=cols))

    env.globals["show"] = show

    def pick(rows: list[int]):
        return [examples[i] for i in rows] if data.joined else [data.examples[i] for i in rows]

    subset_info = None
    if data.subset is not None:
        from curate.filters.summary import kept_text

        v = data.subset
        subset_info = {"path": v.path, "kept": v.kept, "dropped": v.dropped, "repeats": v.repeats,
                       "kept_text": kept_text(v.kept, data.num_samples, data.num_ok),
                       "unknown": v.unknown, "by_status": v.by_status, "plot": plots.get("subset"),
                       "rank_by": v.rank_by, "dropped_examples": pick(v.dropped_rows),
                       "kept_examples": pick(v.kept_rows)}
    total_errors = ", ".join(f"{s} {n}" for s, n in data.by_status if s != S.STATUS_OK)
    page = env.from_string(_TEMPLATE).render(
        index=data.index, num_samples=data.num_samples, num_files=data.num_files, num_ok=data.num_ok,
        joined=data.joined, no_images=NO_IMAGES, provenance=data.provenance, pretrained=data.is_pretrained,
        bad_uids=data.bad_uids, by_status=data.by_status, score_stats=data.score_stats,
        plots=[p for k, p in plots.items() if k != "subset"], captions=data.captions, images=data.images,
        subset=subset_info, band_by=data.band_by, band_note=data.band_note, per_band=data.per_band, seed=data.seed,
        mask_method=data.mask_method,
        bands=[{"lo": b.lo, "hi": b.hi, "count": b.count, "examples": pick(b.rows)} for b in data.bands],
        shards=data.accounting, total_errors=total_errors, version=getattr(curate, "__version__", "?"))
    html_path = out_dir / "index.html"
    write_text_atomically(html_path, page)
    missing = [e for e in examples.values() if e.original is None]
    return ReportSummary(
        html=html_path, num_samples=data.num_samples, num_examples=len(examples) if data.joined else len(data.examples),
        num_images=2 * (len(examples) - len(missing)) + len(plots), missing=len(missing),
        subset_kept=None if data.subset is None else data.subset.kept,
        problems=[f"{e.uid}: {e.problem}" for e in missing],
        note="" if data.joined else "DataComp metadata alone: no thumbnails (give the score index too)")
