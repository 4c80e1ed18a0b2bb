"""``curate report``: a self-contained HTML page that shows what the scores and a filter did.

The page (``index.html`` with its images in ``images/`` beside it, no network needed) holds:

- the index's provenance (CLIP model and weights, detector, mask method from the Parquet metadata);
- histograms of ``clip_score`` and ``masked_clip_score`` and their scatter (matplotlib PNGs);
- a grid of examples per score band (quantile bands of ``--band-by``, highest first): the original
  image with its detected text polygons drawn, the masked image the masked CLIP score saw
  (re-made with the same ``curate.stages.mask`` code and method), the caption and both scores;
- per-shard accounting: samples, ``ok``, errors by kind, the shard's read status;
- with ``--subset``: kept and dropped counts (by status), score histograms of kept vs dropped, and
  the dropped samples with the highest CLIP score (what the filter removed that a CLIP-score filter
  would keep) next to the kept ones with the lowest.

Images are read back from the shards named in the index (``shard`` column); ``--shards`` points at
the shards when they have moved (matched by file name). A sample whose image cannot be read is
shown with its error text, never as a broken image. Captions are HTML-escaped (Jinja2 autoescape).
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

log = logging.getLogger("curate")

SCORES = ("clip_score", "masked_clip_score")


@dataclass
class Example:
    """One sample shown in the page (image paths relative to the page)."""

    uid: str
    caption: str
    clip_score: float | None
    masked_clip_score: float | None
    num_text_boxes: int
    text_area_frac: float | None
    shard: str
    key: str
    original: str | None = None
    masked: str | None = None
    problem: str | None = None


@dataclass
class ReportSummary:
    """What ``build_report`` wrote.

    Attributes:
        html: path of ``index.html``.
        num_samples: index rows.
        num_examples: examples shown (each with an original and a masked image, or a problem).
        num_images: image files written (examples plus plots).
        missing: examples whose image could not be read back (shown with the reason).
        subset_kept: rows kept by ``--subset`` (``None`` without one).
    """

    html: Path
    num_samples: int
    num_examples: int
    num_images: int
    missing: int = 0
    subset_kept: int | None = None
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def _index_table(index: str | Path) -> tuple[pa.Table, dict[str, dict[str, str]]]:
    """The index (``read_index``) and each file's ``curate.*`` metadata, by file path."""
    from curate.io.index import index_files, read_index, read_index_metadata

    return read_index(index), {str(f): read_index_metadata(f) for f in index_files(index)}


def _float(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


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
    per: dict[str, dict[str, Any]] = {}
    shards = table.column(S.SHARD).to_pylist()
    statuses = table.column(S.STATUS).to_pylist()
    for shard, status in zip(shards, statuses):
        row = per.setdefault(shard, {"shard": shard, "samples": 0, "ok": 0, "errors": collections.Counter(),
                                     "status": "", "error": ""})
        row["samples"] += 1
        if status == S.STATUS_OK:
            row["ok"] += 1
        else:
            row["errors"][status] += 1
    for md in meta.values():
        shard = md.get(S.META_SHARD)
        if shard is None:
            continue
        row = per.setdefault(shard, {"shard": shard, "samples": 0, "ok": 0, "errors": collections.Counter(),
                                     "status": "", "error": ""})
        row["status"] = md.get(S.META_SHARD_STATUS, "")
        row["error"] = md.get(S.META_SHARD_ERROR, "")
    if summary_path is not None and summary_path.is_file():
        try:
            for s in json.loads(summary_path.read_text()).get("shards", []):
                row = per.setdefault(s["url"], {"shard": s["url"], "samples": 0, "ok": 0,
                                                "errors": collections.Counter(), "status": "", "error": ""})
                if not row["status"] or s["status"] not in ("skipped", "complete"):
                    row["status"] = s["status"] if s["status"] != "skipped" else row["status"] or "complete"
                    row["error"] = row["error"] or (s.get("error") or "")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s: %s", summary_path, e)
    out = []
    for shard in sorted(per):
        row = per[shard]
        row["errors"] = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or ""
        out.append(row)
    return out


# --------------------------------------------------------------------------- images


def _shard_locator(shards: list[str] | None):
    """Map an index ``shard`` URL to where it is now: by file name among ``shards`` if given."""
    if not shards:
        return lambda url: url
    from curate.io.shards import expand_shards, shard_name

    by_name = {shard_name(u): u for u in expand_shards(shards)}
    return lambda url: by_name.get(shard_name(url), url)


def _render_examples(rows: dict[int, dict], out_dir: Path, locate, mask_method: str, thumb: int) -> dict[int, Example]:
    """Read each needed shard once, draw boxes and masks, write JPEG thumbnails.

    ``rows`` and the result are keyed by index row number: a uid can sit in two shards."""
    from PIL import Image, ImageDraw

    from curate.io.samples import sample_to_record
    from curate.io.shards import read_shard
    from curate.stages.decode import DecodeError, decode_image
    from curate.stages.mask import mask_text, polygons_to_pixels

    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    examples: dict[int, Example] = {}
    wanted: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for i, r in rows.items():
        examples[i] = Example(
            uid=r[S.UID], caption=r[S.TEXT] or "", clip_score=_float(r["clip_score"]),
            masked_clip_score=_float(r["masked_clip_score"]), num_text_boxes=int(r["num_text_boxes"] or 0),
            text_area_frac=_float(r["text_area_frac"]), shard=r[S.SHARD], key=r[S.KEY])
        wanted[r[S.SHARD]][r[S.KEY]] = i
    for url, by_key in wanted.items():
        read = read_shard(locate(url))
        found = {}
        for sample in read.samples:
            if sample["__key__"] in by_key:
                found[sample["__key__"]] = sample_to_record(sample)
        for key, i in by_key.items():
            r, ex = rows[i], examples[i]
            rec = found.get(key)
            if rec is None or not rec["image_bytes"]:
                ex.problem = (f"sample {key} not found in {locate(url)}" + (f" ({read.error})" if read.error else "")
                              if rec is None else f"no image in the sample ({rec[S.STATUS]})")
                continue
            try:
                image = decode_image(rec["image_bytes"])
            except DecodeError as e:
                ex.problem = f"{e.status}: {e}"
                continue
            h, w = image.shape[:2]
            polys = polygons_to_pixels(r["text_boxes"], w, h)
            masked, _ = mask_text(image, polys, method=mask_method)
            scale = min(1.0, thumb / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            orig = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
            draw = ImageDraw.Draw(orig)
            for p in polys:
                pts = [(float(x) * scale, float(y) * scale) for x, y in p]
                draw.polygon(pts, outline=(255, 0, 0), width=3)
            stem = f"{i:07d}-{r[S.UID]}"
            orig.save(img_dir / f"{stem}.jpg", quality=90, subsampling=0)  # 4:4:4 keeps thin red lines red
            Image.fromarray(masked).resize(size, Image.Resampling.BILINEAR).save(img_dir / f"{stem}.masked.jpg", quality=85)
            ex.original, ex.masked = f"images/{stem}.jpg", f"images/{stem}.masked.jpg"
    return examples


# --------------------------------------------------------------------------- plots


def _save(fig, img_dir: Path, name: str) -> str:
    """Write a matplotlib figure as ``images/NAME`` and close it; return its path in the page."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(img_dir / name)
    plt.close(fig)
    return f"images/{name}"


def _plots(scores: dict[str, np.ndarray], has_text: np.ndarray, out_dir: Path,
           kept: np.ndarray | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    finite = {k: v[np.isfinite(v)] for k, v in scores.items()}
    if any(len(v) for v in finite.values()):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        lo = min(v.min() for v in finite.values() if len(v))
        hi = max(v.max() for v in finite.values() if len(v))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41)
        for name, v in finite.items():
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (n={len(v)})")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("samples")
        ax.legend()
        ax.set_title("Score histograms")
        out["hist"] = _save(fig, img_dir, "hist_scores.png")

        both = np.isfinite(scores["clip_score"]) & np.isfinite(scores["masked_clip_score"])
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        for sel, label, colour in ((both & has_text, "text detected", "tab:red"),
                                   (both & ~has_text, "no text", "tab:blue")):
            ax.scatter(scores["clip_score"][sel], scores["masked_clip_score"][sel], s=12, alpha=0.7,
                       label=f"{label} (n={int(sel.sum())})", color=colour)
        lims = [min(lo, hi), max(lo, hi)]
        ax.plot(lims, lims, color="grey", lw=1, ls="--", label="masked = original")
        ax.set_xlabel("clip_score")
        ax.set_ylabel("masked_clip_score")
        ax.legend(loc="upper left")
        ax.set_title("Masked vs original CLIP score")
        out["scatter"] = _save(fig, img_dir, "scatter_scores.png")

        if kept is not None:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
            for ax, name in zip(axes, SCORES):
                v = scores[name]
                for sel, label in ((kept, "kept"), (~kept, "dropped")):
                    vals = v[sel & np.isfinite(v)]
                    if len(vals):
                        ax.hist(vals, bins=bins, alpha=0.55, label=f"{label} (n={len(vals)})")
                ax.set_xlabel(name)
                ax.legend()
            fig.suptitle("What the subset kept and dropped")
            out["subset"] = _save(fig, img_dir, "hist_subset.png")
    return out


# --------------------------------------------------------------------------- page

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>curate report: {{ index }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.n, th.n { text-align: right; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 1.5em; }
.card { width: 280px; border: 1px solid #ccc; border-radius: 4px; padding: 6px; font-size: 85%; }
.card img { max-width: 136px; max-height: 136px; vertical-align: top; }
.caption { margin: 4px 0; overflow-wrap: anywhere; }
.problem { color: #a00; }
.warn { background: #fff3cd; padding: 6px; border: 1px solid #e0c060; }
code { font-size: 90%; }
</style></head><body>
<h1>curate report</h1>
<p>Score index <code>{{ index }}</code>: {{ num_samples }} samples in {{ shards|length }} shards, {{ num_ok }} ok.</p>
<table>
{% for k, v in provenance %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% if not pretrained %}<p class="warn">The index was scored with a random-init CLIP: its scores are not meaningful CLIP scores.</p>{% endif %}

<h2>Scores</h2>
{% for p in plots %}<img src="{{ p }}" alt="{{ p }}"> {% endfor %}

{% if subset %}
<h2>Subset <code>{{ subset.path }}</code></h2>
<p>Kept {{ subset.kept }} of {{ num_samples }} samples ({{ "%.1f"|format(100 * subset.kept / num_samples) }}%), dropped {{ subset.dropped }}.
{% if subset.repeats %}{{ subset.repeats }} uid(s) are listed more than once (kept with repeats by <code>curate train</code>).{% endif %}
{% if subset.unknown %}{{ subset.unknown }} uid(s) of the subset are not in this index.{% endif %}</p>
<table><tr><th>status</th><th class="n">kept</th><th class="n">dropped</th></tr>
{% for s, k, d in subset.by_status %}<tr><td>{{ s }}</td><td class="n">{{ k }}</td><td class="n">{{ d }}</td></tr>
{% endfor %}</table>
{% if subset.plot %}<img src="{{ subset.plot }}" alt="kept vs dropped">{% endif %}
<h3>Dropped, highest clip_score first (a CLIP-score filter would have kept these)</h3>
{{ grid(subset.dropped_examples) }}
<h3>Kept, lowest clip_score first</h3>
{{ grid(subset.kept_examples) }}
{% endif %}

<h2>Examples by {{ band_by }} band</h2>
<p>{{ bands|length }} quantile bands of {{ band_by }} over the ok samples, highest first; up to {{ per_band }}
random samples per band (seed {{ seed }}). Left: the image with the detected text polygons in red; right: the
masked image the masked CLIP score saw ({{ mask_method }} fill).</p>
{% for b in bands %}
<h3>{{ band_by }} in [{{ "%.4f"|format(b.lo) }}, {{ "%.4f"|format(b.hi) }}] ({{ b.count }} samples)</h3>
{{ grid(b.examples) }}
{% endfor %}

<h2>Per-shard accounting</h2>
<table><tr><th>shard</th><th>read status</th><th class="n">samples</th><th class="n">ok</th><th>errors</th></tr>
{% for s in shards %}<tr><td><code>{{ s.shard }}</code></td><td>{{ s.status }}{% if s.error %}: {{ s.error }}{% endif %}</td>
<td class="n">{{ s.samples }}</td><td class="n">{{ s.ok }}</td><td>{{ s.errors }}</td></tr>
{% endfor %}<tr><th>total</th><th></th><th class="n">{{ num_samples }}</th><th class="n">{{ num_ok }}</th><th>{{ total_errors }}</th></tr>
</table>
<p><small>Written by <code>curate report</code> {{ version }}.</small></p>
</body></html>
"""

_GRID = """<div class="grid">{% for e in examples %}<div class="card">
{% if e.original %}<img src="{{ e.original }}" alt="original {{ e.uid }}"> <img src="{{ e.masked }}" alt="masked {{ e.uid }}">
{% else %}<div class="problem">image not shown: {{ e.problem }}</div>{% endif %}
<div class="caption">{{ e.caption if e.caption else "(no caption)" }}</div>
<div>clip {{ fmt(e.clip_score) }} &middot; masked {{ fmt(e.masked_clip_score) }} &middot; {{ e.num_text_boxes }} box(es){% if e.text_area_frac is not none %}, text {{ "%.0f"|format(100 * e.text_area_frac) }}% of area{% endif %}</div>
<div><small><code>{{ e.uid }}</code></small></div></div>{% else %}<p>(none)</p>{% endfor %}</div>"""


def build_report(index: str | Path, out: str | Path, subset: str | None = None, shards: list[str] | None = None,
                 band_by: str = "masked_clip_score", bands: int = 5, per_band: int = 8, seed: int = 0,
                 thumb: int = 256) -> ReportSummary:
    """Write ``out/index.html`` and ``out/images/`` for a score index.

    Args:
        index: a score index folder (or one index file) written by ``curate score``.
        out: output folder (created).
        subset: a subset file (``subset.parquet`` or DataComp ``.npy``) to show what it kept.
        shards: where the shards are now, when not at the index's ``shard`` URLs (matched by name).
        band_by: score column whose quantile bands group the examples.
        bands: number of bands. per_band: examples per band. seed: example sampling seed.
        thumb: long side of the example thumbnails, pixels.

    Raises:
        FileNotFoundError: no index file. ValueError: bad ``band_by``, ``bands`` or ``per_band``,
            or a bad subset file.
    """
    import jinja2

    import curate
    from curate.io.subset import load_subset_counts

    if band_by not in SCORES:
        raise ValueError(f"--band-by must be one of {', '.join(SCORES)}, got {band_by!r}")
    if per_band < 1:
        raise ValueError(f"--per-band must be at least 1, got {per_band}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, meta = _index_table(index)
    n = table.num_rows
    status = np.asarray(table.column(S.STATUS).to_pylist(), dtype=object)
    ok = status == S.STATUS_OK
    scores = {k: table.column(k).to_numpy(zero_copy_only=False).astype(np.float64) for k in SCORES}
    for k in SCORES:
        scores[k][~ok] = np.nan
    has_text = table.column("num_text_boxes").to_numpy(zero_copy_only=False)
    has_text = np.nan_to_num(has_text.astype(np.float64)) > 0
    rng = np.random.default_rng(seed)
    rows = table.to_pylist()

    chosen: list[int] = []
    band_rows = []
    band_scores = scores[band_by]
    if np.isfinite(band_scores).any():
        edges = score_bands(band_scores, bands)
        for b in reversed(range(bands)):
            lo, hi = edges[b], edges[b + 1]
            sel = np.flatnonzero((band_scores >= lo) & ((band_scores < hi) if b < bands - 1 else (band_scores <= hi)))
            pick = np.sort(rng.choice(sel, size=min(per_band, len(sel)), replace=False)) if len(sel) else sel
            pick = pick[np.argsort(-band_scores[pick], kind="stable")]
            band_rows.append((float(lo), float(hi), len(sel), [int(i) for i in pick]))
            chosen += [int(i) for i in pick]

    kept = None
    subset_info = None
    if subset is not None:
        counts = load_subset_counts(subset)
        uids = table.column(S.UID).to_pylist()
        mult = np.array([counts.get(u) for u in uids], dtype=np.int64)  # 0: not in the subset
        kept = mult > 0
        unique_subset = len(counts)
        unknown = unique_subset - len(set(u for u, k in zip(uids, kept) if k))
        by_status = collections.Counter(zip(status.tolist(), kept.tolist()))
        clip = scores["clip_score"]
        dropped_idx = np.flatnonzero(~kept & np.isfinite(clip))
        dropped_idx = dropped_idx[np.argsort(-clip[dropped_idx], kind="stable")][:per_band]
        kept_idx = np.flatnonzero(kept & np.isfinite(clip))
        kept_idx = kept_idx[np.argsort(clip[kept_idx], kind="stable")][:per_band]
        chosen += [int(i) for i in dropped_idx] + [int(i) for i in kept_idx]
        subset_info = {
            "path": str(subset), "kept": int(kept.sum()), "dropped": int((~kept).sum()),
            "repeats": int((mult > 1).sum()), "unknown": int(unknown),
            "by_status": [(s, by_status[(s, True)], by_status[(s, False)]) for s in sorted(set(status.tolist()))],
            "dropped_idx": [int(i) for i in dropped_idx], "kept_idx": [int(i) for i in kept_idx],
        }

    md0 = next(iter(meta.values()), {})
    mask_method = md0.get(S.META_MASK_METHOD, "mean")
    uniq = sorted(set(chosen))
    examples = _render_examples({i: rows[i] for i in uniq}, out_dir, _shard_locator(shards), mask_method, thumb)
    plots = _plots(scores, has_text, out_dir, kept)

    def ex(i: int) -> Example:
        return examples[i]

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["fmt"] = lambda v: "-" if v is None else f"{v:.4f}"
    grid_t = env.from_string(_GRID)
    env.globals["grid"] = lambda exs: jinja2.filters.Markup(grid_t.render(examples=exs))
    if subset_info is not None:
        subset_info["plot"] = plots.get("subset")
        subset_info["dropped_examples"] = [ex(i) for i in subset_info.pop("dropped_idx")]
        subset_info["kept_examples"] = [ex(i) for i in subset_info.pop("kept_idx")]
    accounting = shard_accounting(table, meta, Path(index) / "_summary.json" if Path(index).is_dir() else None)
    total_errors = collections.Counter(status[~ok].tolist())
    provenance = [
        ("CLIP model", md0.get(S.META_CLIP_MODEL, "?")),
        ("CLIP weights", md0.get(S.META_CLIP_PRETRAINED, "?")),
        ("text detector", f"{md0.get(S.META_DETECTOR, '?')}, long side {md0.get(S.META_DETECT_SIZE, '?')} px"),
        ("mask method", mask_method),
        ("code version", md0.get(S.META_CODE_VERSION, "?")),
    ]
    page = env.from_string(_TEMPLATE).render(
        index=str(index), num_samples=n, num_ok=int(ok.sum()), provenance=provenance,
        pretrained=md0.get(S.META_CLIP_IS_PRETRAINED, "true") == "true",
        plots=[p for k, p in plots.items() if k != "subset"], subset=subset_info,
        band_by=band_by, per_band=per_band, seed=seed, mask_method=mask_method,
        bands=[{"lo": lo, "hi": hi, "count": c, "examples": [ex(i) for i in idx]} for lo, hi, c, idx in band_rows],
        shards=accounting, total_errors=", ".join(f"{k} {v}" for k, v in sorted(total_errors.items())),
        version=getattr(curate, "__version__", "?"),
    )
    html_path = out_dir / "index.html"
    html_path.write_text(page, encoding="utf-8")
    shown = list(examples.values())
    missing = [e for e in shown if e.original is None]
    return ReportSummary(html=html_path, num_samples=n, num_examples=len(shown),
                         num_images=2 * (len(shown) - len(missing)) + len(plots), missing=len(missing),
                         subset_kept=None if kept is None else int(kept.sum()),
                         problems=[f"{e.uid}: {e.problem}" for e in missing])
