"""``curate search``: the pool samples nearest to a text or an image, over the stored embeddings.

The query is embedded with the index's own CLIP model (its metadata names the model and weights;
``curate.filters.pool_rules.index_weights``): a caption-like text with the text tower, an image
with the image tower. Each index file's embedding file (``curate score --embeddings``) is then
searched in turn with an exact inner-product index (``faiss.IndexFlatIP``) and the best ``top_k``
kept across files, so memory holds one file's vectors at a time and the result is exact (cosine
similarity: the stored vectors are L2-normalised). With ``--html`` the hits are shown as a grid
of thumbnails read back from their shards, as in ``curate report``.

On a DataComp pool (issue 29): with a DataComp metadata folder given beside the score index
(``--index SCORE_INDEX --index METADATA_DIR``) the score index's embeddings are searched as
above and each hit gets DataComp's columns (``clip_b32``/``clip_l14`` scores, ``url``) from the
metadata, looked up by uid for the hits only (``curate.query.connect_files``, one streaming
semi-join); a hit whose uid the metadata lacks is counted. The metadata folder alone cannot be
searched: it holds no curate embeddings and names no shard, and DataComp's ``.npz`` embeddings
are not read here, so it is refused with what to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S


@dataclass
class SearchConfig:
    """Settings of ``curate search``.

    Attributes:
        top_k: samples returned, most similar first.
        column: which stored image embedding to search: image_embedding (the image as it is) or
            masked_image_embedding (with its text masked: finds what the picture shows, not what
            is written in it).
    """

    top_k: int = field(default=20, metadata={"min": 1})
    column: str = field(default=S.IMAGE_EMBEDDING, metadata={"choices": (S.IMAGE_EMBEDDING, S.MASKED_IMAGE_EMBEDDING)})


@dataclass
class SearchResult:
    """The hits of one query.

    Attributes:
        query: the text, or ``image:PATH``.
        rows: index rows of the hits (``dict`` of the index columns), most similar first.
        similarity: ``(K,) float32`` cosine similarity of each hit to the query.
        html: the page written with ``--html``, else ``None``.
        bad_uids: rows passed over because their uid is not a uid (``curate.schema.is_uid``: an
            index written by an old version or edited by hand).
    """

    query: str
    rows: list[dict]
    similarity: np.ndarray
    html: Path | None = None
    bad_uids: int = 0
    metadata: str | None = None  # the DataComp metadata folder the hits' DataComp columns come from
    not_in_metadata: int = 0  # hits whose uid the metadata lacks
    warning: str | None = None  # e.g. the index was scored with a random-init CLIP
    query_image: np.ndarray | None = None  # (H, W, 3) uint8: the decoded query image, for the page

    def format(self) -> str:
        from curate.io.datacomp import ARCHS, SCORE_COLUMNS

        dc = self.metadata is not None
        lines = [f"curate search: {self.query!r}: {len(self.rows)} nearest samples",
                 f"{'rank':>4}  {'sim':>6}  {'clip':>6}  {'masked':>6}  "
                 + "".join(f"{a:>6}  " for a in ARCHS if dc) + "uid                               caption"]
        for i, (r, s) in enumerate(zip(self.rows, self.similarity), 1):
            clip = "-" if r[S.CLIP_SCORE] is None else f"{r[S.CLIP_SCORE]:.4f}"
            masked = "-" if r[S.MASKED_CLIP_SCORE] is None else f"{r[S.MASKED_CLIP_SCORE]:.4f}"
            more = "".join(f"{'-' if r.get(c) is None else format(r[c], '.4f'):>6}  " for c in SCORE_COLUMNS if dc)
            caption = " ".join((r[S.TEXT] or "").split())[:80]
            lines.append(f"{i:>4}  {s:6.4f}  {clip:>6}  {masked:>6}  {more}{r[S.UID]}  {caption}")
        if self.not_in_metadata:
            lines.append(f"{self.not_in_metadata} hit(s) have no row in the DataComp metadata {self.metadata}")
        if self.bad_uids:
            lines.append(f"passed over {self.bad_uids} row(s) whose uid is not a uid (32 lower-case hex characters)")
        if self.warning:
            lines.append(f"WARNING: {self.warning}")
        if self.html:
            lines.append(f"wrote {self.html}")
        return "\n".join(lines)


def search(index: str | Path, text: str | None = None, image: str | Path | None = None, top_k: int = 20,
           column: str = S.IMAGE_EMBEDDING, html: str | Path | None = None,
           shards: list[str] | None = None) -> SearchResult:
    """The ``top_k`` pool samples whose stored image embedding is nearest to the query.

    Args:
        index: score-index folder scored with ``--embeddings``; or a list of it and a DataComp
            metadata folder (``--index`` twice): the hits get DataComp's columns.
        text: a text query (e.g. ``"a red double-decker bus"``); or
        image: the path of a query image.
        top_k: how many hits.
        column: ``image_embedding`` or ``masked_image_embedding``.
        html: write a page of the hits' thumbnails here (images read back from the shards).
        shards: where the shards are now, if moved since scoring (as ``curate report --shards``).

    Raises:
        ValueError: neither or both of ``text`` and ``image``, a bad ``top_k`` or ``column``, an
            index without embedding files (``curate.io.embeddings.NoEmbeddings``), or a query
            image that cannot be decoded or is over ``curate.limits.DEFAULT_LIMITS`` (the
            message says which), or a ``shards`` spec with a scheme curate does not read
            (``curate.io.shards.check_shard_spec``: ``pipe:``, ...), found before any work;
            ``curate.io.atomic.ForeignOutput``: ``html`` (or an image beside it) is a file curate
            did not write (``curate.report.render.check_page_out``; nothing is written);
            ``NoEmbeddings`` too for a DataComp metadata folder without a score index.
        FileNotFoundError: no index files, or no such query image.
    """
    import faiss

    from curate.filters.pool_rules import index_weights
    from curate.io.embeddings import NoEmbeddings, embeddings_path
    from curate.io.index import index_files
    from curate.io.shards import check_shard_spec
    from curate.stages.decode import DecodeError, decode_image
    from curate.stages.score import Score

    if (text is None) == (image is None):
        raise ValueError("give a text query or --image, not both")
    for spec in shards or []:
        check_shard_spec(spec, "--shards")
    if top_k < 1 or column not in (S.IMAGE_EMBEDDING, S.MASKED_IMAGE_EMBEDDING):
        raise ValueError(f"top_k must be >= 1 and column an image embedding, got {top_k}, {column!r}")
    from curate.query import pool_files, score_index_of

    idx_files, meta_files = pool_files(index)
    if not idx_files:
        raise NoEmbeddings("a DataComp metadata folder alone cannot be searched (it holds no curate embeddings and "
                           "names no shard; its .npz embeddings are not read): give the score index of its shards, "
                           "scored with `curate score --embeddings`, as --index, with the metadata folder as a "
                           "second --index for DataComp's scores")
    index = score_index_of(index)
    files = index_files(index)
    missing = [f for f in files if not embeddings_path(f).is_file()]
    if missing:
        raise NoEmbeddings(f"{missing[0]} has no embedding file: score the pool with --embeddings to search it")
    model, weights = index_weights(index)
    scorer = Score(clip_model=model, weights=weights, device="cpu")
    if text is not None:
        query = scorer.embed([], [text])[1]
    else:
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"--image {image}: no such file")
        # Decoded at the size CLIP needs (shorter side at least its input size, as the pool's
        # images were), after the header checks of DEFAULT_LIMITS for CLIP's resize.
        try:
            picture = decode_image(path.read_bytes(), min_side=scorer.input_size, resize_short=scorer.input_size,
                                   reduce=True)
        except DecodeError as e:
            raise ValueError(f"--image {image}: {e.status}: {e}") from None
        query = scorer.embed([picture], [])[0]
    query = np.ascontiguousarray(query, dtype=np.float32)

    best: list[tuple[float, int, int]] = []  # (similarity, file number, row)
    bad_uids = 0
    for n, f in enumerate(files):
        emb = pq.read_table(embeddings_path(f), columns=[column]).column(column).combine_chunks()
        good_uid = S.uid_mask(pq.read_table(f, columns=[S.UID]).column(S.UID))  # a bad uid: passed over, counted
        bad_uids += int((~good_uid).sum())
        valid = np.flatnonzero(~np.asarray(emb.is_null()) & good_uid)
        if not len(valid):
            continue
        vecs = emb.take(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        flat = faiss.IndexFlatIP(emb.type.list_size)
        flat.add(np.ascontiguousarray(vecs.astype(np.float32).reshape(len(valid), -1)))
        sims, idx = flat.search(query, min(top_k, len(valid)))
        best += [(float(s), n, int(valid[i])) for s, i in zip(sims[0], idx[0]) if i >= 0]
        best = sorted(best, key=lambda t: (-t[0], t[1], t[2]))[:top_k]
    rows_of: dict[tuple[int, int], dict] = {}
    for n in sorted({n for _, n, _ in best}):  # each file with hits read once, only its hit rows
        picked = sorted(row for _, m, row in best if m == n)
        for row, values in zip(picked, pq.read_table(files[n]).take(pa.array(picked)).to_pylist()):
            rows_of[(n, row)] = values
    rows = [rows_of[(n, row)] for _, n, row in best]
    result = SearchResult(text if text is not None else f"image:{image}", rows,
                          np.asarray([b[0] for b in best], dtype=np.float32), bad_uids=bad_uids,
                          query_image=picture if image is not None else None)
    if not weights.is_pretrained:  # as `curate score` and `curate report` say (issue 30)
        result.warning = ("the index was scored with a random-init CLIP: these similarities are not meaningful "
                          "(score with --pretrained)")
    if meta_files:
        result.metadata = str(Path(meta_files[0]).parent)
        result.not_in_metadata = _add_datacomp_columns(rows, meta_files)
    if html is not None:
        from curate.io.index import read_index_metadata
        from curate.report.render import render_search

        mask_method = read_index_metadata(files[0]).get(S.META_MASK_METHOD, "mean")
        result.html = render_search(result, html, index=index, shards=shards,
                                    mask_method=mask_method if mask_method != "none" else "mean")
    return result


def _add_datacomp_columns(rows: list[dict], meta_files: list[str]) -> int:
    """Give each hit row DataComp's columns (``url``, ``clip_b32``/``clip_l14`` scores) from the
    metadata files, looked up by uid for these rows only (the hits' uids are a bound parameter);
    ``None`` where the metadata has no row for the uid. Returns how many hits it lacks."""
    from curate.io.datacomp import DC_URL, SCORE_COLUMNS
    from curate.query import VIEW, connect_files

    cols = [DC_URL, *SCORE_COLUMNS]
    con = connect_files([], metadata=meta_files)
    try:
        names = {r[0] for r in con.execute(f"DESCRIBE {VIEW}").fetchall()}
        cols = [c for c in cols if c in names]
        found = {}
        for r in con.execute(f"SELECT {S.UID}, {', '.join(cols)} FROM {VIEW} WHERE {S.UID} IN "
                             f"(SELECT unnest($uids))", {"uids": sorted({r[S.UID] for r in rows})}).fetchall():
            found.setdefault(r[0], dict(zip(cols, r[1:])))
    finally:
        con.close()
    for r in rows:
        r.update(found.get(r[S.UID], dict.fromkeys(cols)))
    return sum(r[S.UID] not in found for r in rows)
