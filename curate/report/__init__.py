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

Two steps: ``curate.report.data.gather_report`` reads the index and chooses what to show (no image
is read); ``curate.report.render.render_report`` reads those samples' images back from the shards
named in the index (``shard`` column; ``--shards`` points at them when they have moved, matched by
file name), draws them and writes the page. A sample whose image cannot be read is shown with its
error text, never as a broken image. Captions are HTML-escaped (Jinja2 autoescape).
"""

from __future__ import annotations

from pathlib import Path

from curate import schema as S
from curate.report.data import ReportData, gather_report, score_bands, shard_accounting
from curate.report.render import ReportSummary, render_report

__all__ = ["ReportData", "ReportSummary", "build_report", "gather_report", "render_report", "score_bands",
           "shard_accounting"]


def build_report(index: str | Path, out: str | Path, subset: str | None = None, shards: list[str] | None = None,
                 band_by: str = S.MASKED_CLIP_SCORE, bands: int = 5, per_band: int = 8, seed: int = 0,
                 thumb: int = 256) -> ReportSummary:
    """Write ``out/index.html`` and ``out/images/`` for a score index: ``gather_report`` then
    ``render_report``.

    Args:
        index: a score index folder (or one index file) written by ``curate score``; or a
            DataComp metadata folder, alone or with a score index (a list, joined by uid):
            ``curate.report.pool`` (DuckDB aggregates, flat memory; no thumbnails from the
            metadata alone).
        out: output folder (created).
        subset: a subset file (``subset.parquet`` or DataComp ``.npy``) to show what it kept.
        shards: where the shards are now, when not at the index's ``shard`` URLs (matched by name).
        band_by: score column whose quantile bands group the examples.
        bands: number of bands. per_band: examples per band. seed: example sampling seed.
        thumb: long side of the example thumbnails, pixels.

    Raises:
        FileNotFoundError: no index file. ValueError: bad ``band_by``, ``bands`` or ``per_band``,
            a bad subset file, or a ``shards`` spec with a scheme curate does not read
            (``curate.io.shards.check_shard_spec``: ``pipe:``, ...), found before any work;
            ``curate.io.atomic.ForeignOutput``: ``out/index.html`` or an image in ``out/images``
            is a file curate did not write (``render.check_page_out``; nothing is written).
    """
    from curate.io.atomic import make_work_folder, remove_work_folder
    from curate.io.shards import check_shard_spec
    from curate.query import pool_files, score_index_of
    from curate.report.pool import WORK, gather_pool_report, is_datacomp_pool, render_pool_report

    for spec in shards or []:
        check_shard_spec(spec, "--shards")
    if is_datacomp_pool(index):  # DuckDB aggregates over the metadata (and the joined index): flat memory
        pool_files(index)  # two folders of one kind: refused before any work
        spill = make_work_folder(Path(out) / WORK)
        try:
            data = gather_pool_report(index, subset=subset, band_by=band_by, bands=bands, per_band=per_band,
                                      seed=seed, spill=spill)
        finally:
            remove_work_folder(spill)
        return render_pool_report(data, out, shards=shards, thumb=thumb)
    if not isinstance(index, (str, Path)):
        pool_files(index)  # two score indexes: refused
        index = score_index_of(index)
    data = gather_report(index, subset=subset, band_by=band_by, bands=bands, per_band=per_band, seed=seed)
    return render_report(data, out, shards=shards, thumb=thumb)
