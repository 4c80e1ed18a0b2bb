"""The HTML page of ``curate report``, drawn from a ``ReportData`` (``curate.report.data``).

``render_report`` reads the shown samples' images back from their shards (once per shard),
draws the text polygons and re-makes the masked image with ``curate.stages.mask``, writes JPEG
thumbnails and matplotlib plots under ``images/``, and fills the Jinja2 template (autoescaped).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate import schema as S
from curate.io.atomic import atomic_path, inside, refuse_foreign, write_text_atomically
from curate.report.data import SCORES, ReportData


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
    extra: str | None = None  # more scores of the sample (DataComp's, on a DataComp pool)


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
    note: str = ""  # what the page could not show, for the command's line


def _float(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


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

    Each image is decoded alone at about twice the thumbnail's size (its longer side at least
    ``2 * thumb`` pixels: a JPEG drafted, another format reduced right after decoding) after the
    header checks of ``curate.limits.DEFAULT_LIMITS`` for the thumbnail's long-side resize; one
    over them is shown as its ``too_large`` reason. ``rows`` and the result are keyed by index
    row number: a uid can sit in two shards."""
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
            uid=r[S.UID], caption=r[S.TEXT] or "", clip_score=_float(r[S.CLIP_SCORE]),
            masked_clip_score=_float(r[S.MASKED_CLIP_SCORE]), num_text_boxes=int(r[S.NUM_TEXT_BOXES] or 0),
            text_area_frac=_float(r[S.TEXT_AREA_FRAC]), shard=r[S.SHARD], key=r[S.KEY])
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
            if rec is None or not rec[S.IMAGE_BYTES]:
                ex.problem = (f"sample {key} not found in {locate(url)}" + (f" ({read.error})" if read.error else "")
                              if rec is None else f"no image in the sample ({rec[S.STATUS]})")
                continue
            try:
                image = decode_image(rec[S.IMAGE_BYTES], min_long_side=2 * thumb, resize_long=thumb, reduce=True)
            except DecodeError as e:
                ex.problem = S.cap_error(f"{e.status}: {e}")
                continue
            h, w = image.shape[:2]
            polys = polygons_to_pixels(r[S.TEXT_BOXES], w, h)
            masked, _ = mask_text(image, polys, method=mask_method)
            scale = min(1.0, thumb / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            orig = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
            draw = ImageDraw.Draw(orig)
            for p in polys:
                pts = [(float(x) * scale, float(y) * scale) for x, y in p]
                draw.polygon(pts, outline=(255, 0, 0), width=3)
            stem = _stem(i, r)
            with atomic_path(inside(img_dir, f"{stem}.jpg")) as tmp:
                orig.save(tmp, format="JPEG", quality=90, subsampling=0)  # 4:4:4 keeps thin red lines red
            with atomic_path(inside(img_dir, f"{stem}.masked.jpg")) as tmp:
                Image.fromarray(masked).resize(size, Image.Resampling.BILINEAR).save(tmp, format="JPEG", quality=85)
            ex.original, ex.masked = f"images/{stem}.jpg", f"images/{stem}.masked.jpg"
    return examples


def _stem(i: int, row: dict) -> str:
    """The file name stem of an example's thumbnails in ``images/``: its row number (of the
    index, or of the hits), zero-padded. Never anything of the row's data: a uid ``../../evil``
    (an edited index) or one with a newline would otherwise name a file outside the folder or
    one the page cannot load."""
    return f"{i:07d}"


PLOTS = ("hist_scores.png", "scatter_scores.png", "hist_subset.png")  # what ``_plots`` may write
PAGE_MARK = "Written by <code>curate "  # in the footer of every page curate writes


def _is_curate_page(path: Path) -> bool:
    """Whether ``path`` is a page that ``curate report`` or ``curate search`` wrote (a regular
    file of at most 64 MiB with curate's footer)."""
    try:
        return (not path.is_symlink() and path.is_file() and path.stat().st_size <= 64 << 20
                and PAGE_MARK in path.read_text(errors="replace"))
    except OSError:
        return False


def check_page_out(page: Path, rows: dict[int, dict], plots: tuple[str, ...] = ()) -> None:
    """Refuse to write the page ``page`` and its images (``images/`` beside it: the thumbnails
    of ``rows``, then ``plots``) where that would replace a file curate did not write: ``page``
    must be absent or a page of curate's, and an image file already there is replaced only when
    a page of curate's sits in the same folder (the images are that page's).

    Raises:
        curate.io.atomic.ForeignOutput: one is in the way; nothing is written.
    """
    refuse_foreign([page], _is_curate_page)
    images = page.parent / "images"
    names = [f"{_stem(i, r)}{ext}" for i, r in rows.items() for ext in (".jpg", ".masked.jpg")] + list(plots)
    taken = [images / n for n in names if (images / n).exists() or (images / n).is_symlink()] if images.is_dir() else []
    if taken and not any(_is_curate_page(p) for p in page.parent.glob("*.html")):
        refuse_foreign(taken[:1])


# --------------------------------------------------------------------------- plots


def _save(fig, img_dir: Path, name: str) -> str:
    """Write a matplotlib figure as ``images/NAME`` and close it; return its path in the page."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(inside(img_dir, name)) as tmp:
        fig.savefig(tmp, format=Path(name).suffix.lstrip("."))
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

        both = np.isfinite(scores[S.CLIP_SCORE]) & np.isfinite(scores[S.MASKED_CLIP_SCORE])
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        for sel, label, colour in ((both & has_text, "text detected", "tab:red"),
                                   (both & ~has_text, "no text", "tab:blue")):
            ax.scatter(scores[S.CLIP_SCORE][sel], scores[S.MASKED_CLIP_SCORE][sel], s=12, alpha=0.7,
                       label=f"{label} (n={int(sel.sum())})", color=colour)
        lims = [min(lo, hi), max(lo, hi)]
        ax.plot(lims, lims, color="grey", lw=1, ls="--", label="masked = original")
        ax.set_xlabel(S.CLIP_SCORE)
        ax.set_ylabel(S.MASKED_CLIP_SCORE)
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
{% if not pretrained %}<p class="warn">The index was scored with a random-init CLIP: its scores are not meaningful \
CLIP scores.</p>{% endif %}
{% if bad_uids %}<p class="warn">{{ bad_uids }} row(s) have a uid that is not 32 lower-case hex characters (an old or \
edited index): left out of the bands, never kept by a filter.</p>{% endif %}

<h2>Scores</h2>
{% for p in plots %}<img src="{{ p }}" alt="{{ p }}"> {% endfor %}

{% if subset %}
<h2>Subset <code>{{ subset.path }}</code></h2>
<p>Kept {{ subset.kept_text }} (as <code>curate filter</code> counts), dropped {{ subset.dropped }}.
{% if subset.repeats %}{{ subset.repeats }} uid(s) are listed more than once \
(kept with repeats by <code>curate train</code>).{% endif %}
{% if subset.unknown %}{{ subset.unknown }} uid(s) of the subset are not in this index.{% endif %}</p>
<table><tr><th>status</th><th class="n">kept</th><th class="n">dropped</th></tr>
{% for s, k, d in subset.by_status %}<tr><td>{{ s }}</td><td class="n">{{ k }}</td><td class="n">{{ d }}</td></tr>
{% endfor %}</table>
{% if subset.plot %}<img src="{{ subset.plot }}" alt="kept vs dropped">{% endif %}
<h3>Dropped, highest clip_score first (a CLIP-score filter would have kept these)</h3>
{{ grid(subset.dropped_examples) }}
<h3>Kept, lowest clip_score first</h3>
{{ grid(subset.kept_examples) }}
{% if subset.groups %}<h3>Duplicate groups (dedup): the kept sample first, then the ones dropped</h3>
{% for g in subset.groups %}{{ grid(g) }}{% endfor %}{% endif %}
{% if subset.matches %}<h3>Test-set matches (decontaminate): pool samples dropped as copies of test images</h3>
<table><tr><th>uid</th><th>test image</th><th>method</th><th class="n">phash bits</th><th class="n">similarity</th></tr>
{% for e, name, method, bits, sim in subset.matches %}<tr><td><code>{{ e.uid }}</code></td>\
<td><code>{{ name }}</code></td>
<td>{{ method }}</td><td class="n">{{ bits }}</td><td class="n">{{ "%.4f"|format(sim) }}</td></tr>
{% endfor %}</table>
{{ grid(subset.matches|map(attribute=0)|list) }}{% endif %}
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
{% for s in shards %}<tr><td><code>{{ s.shard }}</code></td><td>\
{{ s.status }}{% if s.error %}: {{ s.error }}{% endif %}</td>
<td class="n">{{ s.samples }}</td><td class="n">{{ s.ok }}</td><td>{{ s.errors }}</td></tr>
{% endfor %}<tr><th>total</th><th></th><th class="n">{{ num_samples }}</th><th class="n">{{ num_ok }}</th>\
<th>{{ total_errors }}</th></tr>
</table>
<p><small>Written by <code>curate report</code> {{ version }}.</small></p>
</body></html>
"""

_GRID = """<div class="grid">{% for e in examples %}<div class="card">
{% if e.original %}<img src="{{ e.original }}" alt="original {{ e.uid }}">\
 <img src="{{ e.masked }}" alt="masked {{ e.uid }}">
{% else %}<div class="problem">image not shown: {{ e.problem }}</div>{% endif %}
<div class="caption">{{ e.caption if e.caption else "(no caption)" }}</div>
<div>clip {{ fmt(e.clip_score) }} &middot; masked {{ fmt(e.masked_clip_score) }} &middot; {{ e.num_text_boxes }} \
box(es){% if e.text_area_frac is not none %}, text {{ "%.0f"|format(100 * e.text_area_frac) }}% of area{% endif %}</div>
{% if e.extra %}<div>{{ e.extra }}</div>{% endif %}
<div><small><code>{{ e.uid }}</code></small></div></div>{% else %}<p>(none)</p>{% endfor %}</div>"""


def _environment():
    """The Jinja2 environment of curate's pages: autoescaped, ``fmt`` for scores, ``grid`` for
    a list of ``Example`` cards."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["fmt"] = lambda v: "-" if v is None else f"{v:.4f}"
    grid_t = env.from_string(_GRID)
    env.globals["grid"] = lambda exs: jinja2.filters.Markup(grid_t.render(examples=exs))
    return env


_SEARCH_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>curate search: {{ query }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 280px; border: 1px solid #ccc; border-radius: 4px; padding: 6px; font-size: 85%; }
.card img { max-width: 136px; max-height: 136px; vertical-align: top; }
.caption { margin: 4px 0; overflow-wrap: anywhere; }
.problem { color: #a00; }
.warn { color: #a00; font-weight: bold; }
img.query { max-width: 256px; max-height: 256px; border: 1px solid #888; }
</style></head><body>
<h1>curate search</h1>
{% if warning %}<p class="warn">WARNING: {{ warning }}</p>{% endif %}
<p>Query <code>{{ query }}</code>: the {{ n }} nearest samples of <code>{{ index }}</code>, most similar first
(cosine similarity {{ sims }}).</p>
{% if query_src %}<p><img class="query" src="{{ query_src }}" alt="the query image"></p>{% endif %}
{{ grid(examples) }}
<p><small>Written by <code>curate search</code> {{ version }}.</small></p>
</body></html>
"""


def render_search(result, html: str | Path, index: str | Path = "", shards: list[str] | None = None,
                  mask_method: str = "mean", thumb: int = 256) -> Path:
    """Write a page of a search's hits (``curate.report.search.SearchResult``) to ``html``, with
    thumbnails in ``images/`` beside it (original with text polygons, and masked, as the report).

    Returns:
        The page's path.

    Raises:
        curate.io.atomic.ForeignOutput: ``html`` (or an image beside it) is a file curate did not
            write (``check_page_out``); nothing is written.
    """
    import curate

    html = Path(html)
    query_name = "query.jpg" if result.query_image is not None else None
    check_page_out(html, dict(enumerate(result.rows)), (query_name,) if query_name else ())
    html.parent.mkdir(parents=True, exist_ok=True)
    examples = _render_examples(dict(enumerate(result.rows)), html.parent, _shard_locator(shards), mask_method, thumb)
    from curate.report.pool import _extra

    for i, e in examples.items():  # rank and similarity first; DataComp's scores when the metadata was given
        extra = _extra(result.rows[i])
        e.extra = f"rank {i + 1} · similarity {result.similarity[i]:.4f}" + (f" · {extra}" if extra else "")
    query_src = None
    if query_name:
        from PIL import Image

        picture = Image.fromarray(result.query_image)
        picture.thumbnail((thumb, thumb))
        (html.parent / "images").mkdir(parents=True, exist_ok=True)
        with atomic_path(inside(html.parent / "images", query_name)) as tmp:
            picture.save(tmp, format="JPEG", quality=90)
        query_src = f"images/{query_name}"
    page = _environment().from_string(_SEARCH_TEMPLATE).render(
        query=result.query, n=len(result.rows), index=str(index), query_src=query_src, warning=result.warning,
        sims=", ".join(f"{s:.3f}" for s in result.similarity[:10]) + (" ..." if len(result.rows) > 10 else ""),
        examples=[examples[i] for i in range(len(result.rows))], version=getattr(curate, "__version__", "?"))
    write_text_atomically(html, page)
    return html


def render_report(data: ReportData, out: str | Path, shards: list[str] | None = None,
                  thumb: int = 256) -> ReportSummary:
    """Write ``out/index.html`` and ``out/images/`` for gathered ``data``.

    Args:
        data: from ``curate.report.data.gather_report``.
        out: output folder (created).
        shards: where the shards are now, when not at the index's ``shard`` URLs (matched by name).
        thumb: long side of the example thumbnails, pixels.

    Returns:
        ``ReportSummary``.

    Raises:
        curate.io.atomic.ForeignOutput: ``out/index.html`` or an image file in ``out/images`` is a
            file curate did not write (``check_page_out``); nothing is written.
    """
    import curate

    out_dir = Path(out)
    check_page_out(out_dir / "index.html", data.examples, PLOTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = _render_examples(data.examples, out_dir, _shard_locator(shards), data.mask_method, thumb)
    plots = _plots(data.scores, data.has_text, out_dir, None if data.subset is None else data.subset.kept)

    env = _environment()
    subset_info = None
    if data.subset is not None:
        from curate.filters.summary import kept_text

        v = data.subset
        subset_info = {
            "path": v.path, "kept": int(v.kept.sum()), "dropped": int((~v.kept).sum()), "repeats": v.repeats,
            "kept_text": kept_text(int(v.kept.sum()), data.num_samples, data.num_ok),
            "unknown": v.unknown, "by_status": v.by_status, "plot": plots.get("subset"),
            "dropped_examples": [examples[i] for i in v.dropped_rows],
            "kept_examples": [examples[i] for i in v.kept_rows],
            "groups": [[examples[i] for i, _ in g] for g in v.duplicate_groups],
            "matches": [(examples[m[0]], *m[1:]) for m in v.test_matches],
        }
    page = env.from_string(_TEMPLATE).render(
        index=data.index, num_samples=data.num_samples, num_ok=data.num_ok, provenance=data.provenance,
        pretrained=data.is_pretrained, plots=[p for k, p in plots.items() if k != "subset"], subset=subset_info,
        band_by=data.band_by, per_band=data.per_band, seed=data.seed, mask_method=data.mask_method,
        bands=[{"lo": b.lo, "hi": b.hi, "count": b.count, "examples": [examples[i] for i in b.rows]}
               for b in data.bands],
        shards=data.accounting, total_errors=", ".join(f"{k} {v}" for k, v in data.total_errors.items()),
        version=getattr(curate, "__version__", "?"), bad_uids=data.bad_uids,
    )
    html_path = out_dir / "index.html"
    write_text_atomically(html_path, page)
    shown = list(examples.values())
    missing = [e for e in shown if e.original is None]
    return ReportSummary(html=html_path, num_samples=data.num_samples, num_examples=len(shown),
                         num_images=2 * (len(shown) - len(missing)) + len(plots), missing=len(missing),
                         subset_kept=None if data.subset is None else int(data.subset.kept.sum()),
                         problems=[f"{e.uid}: {e.problem}" for e in missing])
