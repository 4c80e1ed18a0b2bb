"""Rules computed over the whole pool in Python, then handed to the SQL filter as the set of rows
they keep (``Pool.keep_rows``): DataComp's other baselines, dedup and decontamination. All but
``text_based`` read the embedding files of a score index (``curate score --embeddings``).

- ``text_based(classes=FILE)``: DataComp's text-based filter (Gadre et al., 2023, Sec. 4.2 and
  App. "Text-based filtering"): keep samples whose caption mentions one of the class names in
  ``FILE`` (one per line; DataComp used the ImageNet-1k class names), as a whole word or phrase,
  case-insensitive. The names are matched by Python's ``re`` (escaped), never put into SQL.
- ``image_based(target=DIR, clusters=K)``: DataComp's image-based filter (same section): k-means
  the pool's image embeddings into ``K`` clusters, embed the target images (DataComp: ImageNet-1k
  train; here any test or train folder, read as ``decontaminate`` reads one) with the index's own
  model, and keep the pool samples whose cluster is the nearest cluster of at least one target
  image.

- ``dedup(threshold=0.95, phash_bits=2)``: one sample per group of duplicate images
  (``curate.filters.dedup.dedup_groups``: byte-identical images by ``image_hash``; resized and
  re-encoded copies by perceptual hashes within ``phash_bits`` bits (on the bundled sample pool,
  half-size and JPEG-quality-40 copies stay within 2 bits of their original, while the closest
  two different pictures, two illustrations with the same layout, are 4 bits apart; a hash
  without structure, that of a near-constant image or of one that varies along one axis only,
  matches nothing: ``curate.filters.dedup.phash_has_structure``); near-duplicates by image
  embeddings with cosine similarity >= ``threshold``, which assumes a trained CLIP: a random-init
  model maps all images close together, so there give ``threshold=1``). A group keeps its sample with the highest
  ``masked_clip_score`` (the T-MARS score; the lowest row on ties). The groups are written to
  ``OUT/dedup_groups.parquet``: ``uid``, ``shard``, ``key``, ``group`` (the kept sample's uid),
  ``kept``.
- ``decontaminate(evalset=DIR, threshold=0.95, phash_bits=2)`` (``phash_bits`` 0 to 16): drop every pool sample whose
  image matches an image of the test set in ``DIR``. DataComp removed such near-duplicates of its
  evaluation images from its pool (Gadre et al., 2023, Sec. 3.2 and App. F); users who build
  their own pools need the same. A match is exact (the same image bytes: ``image_hash``),
  exact-ish (the 64-bit perceptual hashes, ``imagehash.phash``, differ in at most ``phash_bits``
  bits: resized and re-encoded copies; hashes without structure, those of near-constant images,
  match nothing, so one flat test image no longer matches every flat pool image) or semantic
  (cosine similarity of the CLIP image embeddings >= ``threshold``: crops and edits). The
  test images are embedded with the index's own model (its metadata names the model and weights).
  Matches go to ``OUT/decontamination.parquet``: ``uid``, ``shard``, ``key``, ``eval_image``,
  ``method`` (the first that matched: ``image_hash``, ``phash`` or ``embedding``),
  ``phash_distance`` (bits to the nearest test hash; 65: none within ``phash_bits``, or a hash
  without structure), ``similarity``.

``DIR`` is a folder written by ``curate make-evalset`` (``wds_<name>_test/`` with ``.tar``
shards, or the data folder holding several), any folder of webdataset tars, or an image tree
(ImageFolder); it is read as a literal path, never as a pattern. Its images are read and decoded
one at a time, each at the size its use needs (``curate.stages.decode.decode_image`` with the
header checks of ``curate.limits.DEFAULT_LIMITS``; shorter side at least the model's input size,
as the pool's images were decoded for their hashes), and only their hashes and embeddings are
kept: a test set of any size costs the memory of one image. An image that cannot be decoded or is
over the limits is skipped and reported (``test images skipped``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate import schema as S
from curate.filters.rules import Leaf, Pool, RuleError


def _number(leaf: Leaf, name: str, default: float, lo: float, hi: float) -> float:
    value = leaf.kwargs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RuleError(f"{leaf.name}({name}=...) must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _embeddings(pool: Pool, leaf: Leaf, index_columns):
    from curate.io.embeddings import NoEmbeddings, read_embeddings

    pool.need_whole_pool(leaf, "the score index's embedding files")
    try:
        return read_embeddings(pool.index, S.IMAGE_EMBEDDING, index_columns)
    except NoEmbeddings as e:
        raise RuleError(f"{leaf.name}(): {e}") from None


def _similarity_threshold(leaf: Leaf, pool: Pool) -> float:
    """``threshold=`` of ``dedup`` / ``decontaminate`` (cosine similarity, default 0.95), checked
    against the index's weights (issue 30): a random-init CLIP maps unrelated images close
    together (on the sample pool, ``dedup()`` kept 6 of 485 samples and ``decontaminate()``
    removed all of them). On such an index the default becomes 1 (image hashes only) and an
    explicit threshold below 1 is kept; either way ``leaf.details["warning"]`` says so, and the
    filter's summary prints it as a ``WARNING`` line."""
    given = "threshold" in leaf.kwargs
    threshold = _number(leaf, "threshold", 0.95, 1e-6, 1.0)
    if threshold >= 1 or _index_model(pool.index)[1] is not None:
        return threshold
    if given:
        leaf.details["warning"] = (f"the index was scored with a random-init CLIP, whose embeddings put unrelated "
                                   f"images close together: threshold={threshold:g} compares them anyway")
        return threshold
    leaf.details["warning"] = ("the index was scored with a random-init CLIP, whose embeddings put unrelated images "
                               "close together: matched by image hashes only (threshold=1); give threshold= to "
                               "compare the embeddings anyway")
    return 1.0


def dedup_rule(leaf: Leaf, pool: Pool) -> None:
    """Resolve ``dedup(threshold=...)`` (see the module docstring).

    Raises:
        RuleError: a bad threshold, or an index without embedding files.
    """
    from curate.filters.dedup import dedup_groups

    bits = int(_number(leaf, "phash_bits", 2, 0, 16))
    rows, vectors, hashes = _embeddings(pool, leaf, (S.UID, S.SHARD, S.KEY, S.MASKED_CLIP_SCORE))
    threshold = _similarity_threshold(leaf, pool)
    n = rows.num_rows
    priority = rows.column(S.MASKED_CLIP_SCORE).to_numpy(zero_copy_only=False).astype(np.float64)
    leader = dedup_groups(vectors if threshold < 1 else None, priority, threshold,
                          image_hash=np.asarray(hashes.column(S.IMAGE_HASH).to_pylist(), dtype=object),
                          phash=hashes.column(S.IMAGE_PHASH).to_numpy(zero_copy_only=False), phash_bits=bits) \
        if n else np.zeros(0, dtype=np.int64)
    kept = leader == np.arange(n)
    sizes = np.bincount(leader, minlength=n) if n else np.zeros(0, dtype=np.int64)
    in_group = sizes[leader] > 1
    uids = np.asarray(rows.column(S.UID).to_pylist(), dtype=object)
    groups = pa.table({S.UID: rows.column(S.UID).filter(pa.array(in_group)),
                       S.SHARD: rows.column(S.SHARD).filter(pa.array(in_group)),
                       S.KEY: rows.column(S.KEY).filter(pa.array(in_group)),
                       "group": pa.array(uids[leader[in_group]].tolist(), pa.string()),
                       "kept": pa.array(kept[in_group])})
    path = pool.artifact("dedup_groups.parquet")
    pool.write_artifact(path, groups.sort_by([("group", "ascending"), ("kept", "descending")]))
    leaf.sql = pool.keep_rows(leaf, rows.filter(pa.array(kept)))
    leaf.details.update({"groups": int((sizes > 1).sum()), "duplicates removed": int(n - kept.sum()),
                         **_no_structure(hashes, bits), "files": {"groups": path}})


def _no_structure(hashes: pa.Table, bits: int) -> dict[str, int]:
    """For a rule's ``details``: how many pool images have a perceptual hash without structure
    (``curate.filters.dedup.phash_has_structure``), matched by bytes or embeddings only; nothing
    when none has, or when hashes are not compared (``phash_bits=0``)."""
    from curate.filters.dedup import phash_has_structure

    if not bits or not hashes.num_rows:
        return {}
    flat = int((~phash_has_structure(hashes.column(S.IMAGE_PHASH).to_numpy(zero_copy_only=False))).sum())
    return {"images without a usable perceptual hash": flat} if flat else {}


def text_based_rule(leaf: Leaf, pool: Pool) -> None:
    """Resolve ``text_based(classes=FILE)`` (see the module docstring).

    Raises:
        RuleError: no ``classes`` file, or an empty one.
    """
    import re

    path = leaf.kwargs.get("classes")
    if not isinstance(path, str) or not Path(path).is_file():
        raise RuleError(f"text_based() needs classes='FILE' (class names, one per line), got {path!r}")
    names = sorted({ln.strip().lower() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()},
                   key=len, reverse=True)
    if not names:
        raise RuleError(f"text_based(): {path} holds no class names")
    pool.need_whole_pool(leaf, "the captions of the pool")
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
    from curate.query import VIEW

    # The captions stream by in batches; only the (shard, key) of the rows that match are kept.
    reader = pool.con.sql(f"SELECT {S.SHARD}, {S.KEY}, {S.TEXT} FROM {VIEW} WHERE {S.STATUS} = '{S.STATUS_OK}'"
                          ).to_arrow_reader(1 << 16)
    found = [pa.table({S.SHARD: pa.array([], pa.string()), S.KEY: pa.array([], pa.string())})]
    for batch in reader:
        texts = batch.column(S.TEXT).to_pylist()
        hit = np.asarray([bool(t) and pattern.search(t.lower()) is not None for t in texts], dtype=bool)
        if hit.any():
            found.append(pa.Table.from_batches([batch]).select([S.SHARD, S.KEY]).filter(pa.array(hit)))
    rows = pa.concat_tables(found, promote_options="permissive")
    leaf.sql = pool.keep_rows(leaf, rows)
    leaf.columns = (S.TEXT,)
    leaf.details = {"class names": len(names), "captions that mention one": rows.num_rows}


def image_based_rule(leaf: Leaf, pool: Pool) -> None:
    """Resolve ``image_based(target=DIR, clusters=K)`` (see the module docstring).

    Raises:
        RuleError: no ``target`` folder or no image in it, bad ``clusters``, or an index without
            embedding files.
    """
    import faiss

    target = leaf.kwargs.get("target")
    if not isinstance(target, str) or not target:
        raise RuleError("image_based() needs target='DIR' (a folder of target images, e.g. from curate make-evalset)")
    k = leaf.kwargs.get("clusters", 1000)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RuleError(f"image_based(clusters=...) must be a positive integer, got {k!r}")
    _check_local_folder(leaf, target, "target")
    rows, vectors, _ = _embeddings(pool, leaf, (S.UID, S.SHARD, S.KEY))
    found = _read_test_images(pool, target, leaf, embed=True, phash=False)
    targets = found.vectors
    n, d = vectors.shape
    k = min(k, n)
    pool_vecs = vectors.astype(np.float32)
    pool_vecs /= np.maximum(np.linalg.norm(pool_vecs, axis=1, keepdims=True), 1e-12)
    km = faiss.Kmeans(d, k, niter=20, seed=0, spherical=True, verbose=False)
    km.train(pool_vecs)
    _, pool_cluster = km.index.search(pool_vecs, 1)
    _, target_cluster = km.index.search(targets, 1)
    chosen = np.unique(target_cluster[:, 0])
    hit = np.isin(pool_cluster[:, 0], chosen)
    leaf.sql = pool.keep_rows(leaf, rows.filter(pa.array(hit)))
    leaf.details = {"clusters": k, "target images": len(targets), "clusters chosen": len(chosen), **found.report()}
    if _index_model(pool.index)[1] is None:
        leaf.details["warning"] = ("the index was scored with a random-init CLIP: its clusters do not group images "
                                   "by content, so this subset is not DataComp's image-based selection")


EMBED_BATCH = 64  # test images per forward pass (their (3, S, S) model inputs, not the images, are held)


@dataclass
class EvalImages:
    """What is kept of a test folder's images (``_read_test_images``), in folder order.

    Attributes:
        names: the usable images' names (``read_evalset_images``).
        phash: ``(M,) int64`` perceptual hashes (``curate.stages.decode.perceptual_hash``), or
            ``None`` when not asked for.
        vectors: ``(M, D) float32`` L2-normalised image embeddings of the index's model, or
            ``None`` when not asked for.
        skipped: ``"name: status: message"`` of each image that could not be used.
        image_hash: the BLAKE2b-128 of each image's bytes (``curate.stages.decode.image_hash``,
            as the pool's ``image_hash``) when the perceptual hashes were asked for, else ``None``.
    """

    names: list[str]
    phash: np.ndarray | None
    vectors: np.ndarray | None
    skipped: list[str]
    image_hash: list[bytes] | None = None

    def report(self) -> dict[str, Any]:
        """The skipped images for a rule's ``details`` (nothing when none was skipped)."""
        if not self.skipped:
            return {}
        shown = "; ".join(self.skipped[:SKIPPED_SHOWN])
        more = len(self.skipped) - SKIPPED_SHOWN
        return {"test images skipped": len(self.skipped),
                "skipped": shown + (f"; and {more} more" if more > 0 else "")}


SKIPPED_SHOWN = 5  # skipped test images named in a rule's details


def _check_local_folder(leaf: Leaf, folder: str, what: str = "test folder") -> None:
    """Refuse a test-folder argument that is not a local path (``curate.io.shards
    .check_shard_spec`` with no scheme: webdataset's ``pipe:``, any URL), before the rule reads
    anything. ``what``: the argument's name, for the message.

    Raises:
        RuleError: naming the rule and the argument.
    """
    from curate.io.shards import check_shard_spec

    try:
        check_shard_spec(folder, what, schemes=())
    except ValueError as e:
        raise RuleError(f"{leaf.name}(): {e}") from None


def _read_test_images(pool: Pool, folder: str, leaf: Leaf, embed: bool, phash: bool) -> EvalImages:
    """Hash and/or embed the images of a test folder, one image at a time.

    Each image is decoded alone (``decode_image`` with ``DEFAULT_LIMITS``' header checks for
    CLIP's shortest-side resize to the model's input size ``S``: a JPEG is drafted and any
    other format reduced right after decoding, keeping the shorter side at least ``S``), hashed,
    turned into its ``(3, S, S)`` model input, and dropped; the inputs are embedded
    ``EMBED_BATCH`` at a time. So the memory is that of one decoded image plus the hashes and
    embeddings, whatever the number and size of the images.

    Raises:
        RuleError: not a folder, not a local path (``_check_local_folder``), no image in it, or
            no image that could be used.
    """
    from curate.models import clip_input_size

    _check_local_folder(leaf, folder)
    from curate.stages.decode import DecodeError, decode_image, image_hash, perceptual_hash
    from curate.stages.score import Score

    scorer = None
    if embed:
        model, weights = index_weights(pool.index)
        scorer = Score(clip_model=model, weights=weights, device="cpu")
        size = scorer.input_size
    else:  # hashes only: the model's weights are not needed (nor perhaps on this machine)
        try:
            size = clip_input_size(_index_model(pool.index)[0])
        except ValueError:  # a model this open_clip does not know: the common CLIP input size
            size = 224
    names: list[str] = []
    hashes: list[int] = []
    byte_hashes: list[bytes] = []
    inputs: list = []
    vectors: list[np.ndarray] = []
    skipped: list[str] = []
    try:
        for name, data in iter_evalset_images(folder):
            try:
                image = decode_image(data, min_side=size, resize_short=size, reduce=True)
                x = scorer.image_input(image) if scorer is not None else None
            except (DecodeError, ValueError) as e:
                status = e.status if isinstance(e, DecodeError) else S.STATUS_TOO_LARGE  # Score's guard
                skipped.append(S.cap_error(f"{name}: {status}: {e}"))
                continue
            names.append(name)
            if phash:
                hashes.append(perceptual_hash(image))
                byte_hashes.append(image_hash(data))
            del data
            del image
            if x is not None:
                inputs.append(x)
                if len(inputs) == EMBED_BATCH:
                    vectors.append(scorer.embed_inputs(inputs))
                    inputs = []
    except FileNotFoundError as e:
        raise RuleError(f"{leaf.name}(): {e}") from None
    if inputs:
        vectors.append(scorer.embed_inputs(inputs))
    if not names:
        raise RuleError(f"{leaf.name}(): no usable image in {folder} ({len(skipped)} skipped: "
                        + "; ".join(skipped[:SKIPPED_SHOWN]) + ")")
    return EvalImages(names, np.asarray(hashes, dtype=np.int64) if phash else None,
                      np.concatenate(vectors) if embed else None, skipped, byte_hashes if phash else None)


def iter_evalset_images(folder: str | Path) -> Iterator[tuple[str, bytes]]:
    """``(name, image bytes)`` of every image in a test folder, one at a time: the image members
    of its ``.tar`` files (webdataset, as ``curate make-evalset`` writes them; each shard
    streamed, ``curate.io.shards.iter_shard``) and its image files, in sorted path order.

    Raises:
        FileNotFoundError: not a folder, or no image in it (once the folder is read through).
        ValueError: ``folder`` is not a local path (``check_shard_spec``: ``pipe:``, any scheme).
    """
    from curate.io.formats import image_extensions, image_suffixes
    from curate.io.shards import check_shard_spec, iter_shard, plan_members

    root = Path(check_shard_spec(folder, "evalset", schemes=()))
    if not root.is_dir():
        raise FileNotFoundError(f"evalset {folder} is not a folder")
    exts = image_extensions()
    found = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".tar":
            for sample in iter_shard(str(path), plan_members(str(path))):
                ext = next((e for e in sample if e.lower() in exts), None)
                if ext is not None:
                    found += 1
                    yield f"{path.relative_to(root)}:{sample['__key__']}", sample[ext]
        elif path.suffix.lower() in image_suffixes():
            found += 1
            yield str(path.relative_to(root)), path.read_bytes()
    if not found:
        raise FileNotFoundError(f"no images in evalset {folder} (looked for .tar shards and image files)")


def read_evalset_images(folder: str | Path) -> list[tuple[str, bytes]]:
    """``(name, image bytes)`` of every image in a test folder (``iter_evalset_images``, all at
    once: for small folders; the rules read one image at a time).

    Raises:
        FileNotFoundError: not a folder, or no image in it.
    """
    return list(iter_evalset_images(folder))


def _index_model(index: str | Path) -> tuple[str, str | None]:
    """The CLIP model name an index was scored with and its weights' identity in the
    ``curate.config`` fingerprint (``None``: random init), read from the metadata only."""
    from curate.io.index import index_files, read_index_metadata

    md = read_index_metadata(index_files(index)[0])
    fingerprint = json.loads(md.get(S.META_CONFIG, "{}"))
    return fingerprint.get("clip_model") or md.get(S.META_CLIP_MODEL), fingerprint.get("clip_weights")


def index_weights(index: str | Path):
    """The CLIP model and weights an index was scored with (its ``curate.config`` fingerprint),
    resolved offline: ``(model name, curate.models.ResolvedWeights)``."""
    from curate.models import resolve_pretrained

    model, weights = _index_model(index)
    if weights is None:
        return model, resolve_pretrained(model, None)
    kind, _, rest = weights.partition(":")
    return model, resolve_pretrained(model, rest.rsplit(":", 1)[0] if kind == "file" else rest)


def decontaminate_rule(leaf: Leaf, pool: Pool) -> None:
    """Resolve ``decontaminate(evalset=DIR, threshold=..., phash_bits=...)`` (see the module docstring).

    Raises:
        RuleError: no ``evalset``, bad numbers, an index without embedding files, or an evalset
            folder without images.
    """
    import faiss
    import pyarrow.compute as pc

    from curate.filters.dedup import phash_has_structure, phash_range

    evalset = leaf.kwargs.get("evalset")
    if not isinstance(evalset, str) or not evalset:
        raise RuleError("decontaminate() needs evalset='DIR' (a test-set folder, e.g. from curate make-evalset)")
    bits = int(_number(leaf, "phash_bits", 2, 0, 16))
    _check_local_folder(leaf, evalset, "evalset")
    rows, vectors, hashes = _embeddings(pool, leaf, (S.UID, S.SHARD, S.KEY))
    threshold = _similarity_threshold(leaf, pool)
    # threshold=1: perceptual hashes only (e.g. a random-init model's index), no model is run
    found = _read_test_images(pool, evalset, leaf, embed=threshold < 1, phash=True)
    names, eval_phash = found.names, found.phash
    no_hash = int((~phash_has_structure(eval_phash)).sum()) if bits else 0
    eval_vecs = found.vectors if threshold < 1 else np.zeros((1, vectors.shape[1]), dtype=np.float32)

    n = rows.num_rows
    best_sim = np.full(n, -np.inf, dtype=np.float32)
    best_emb = np.zeros(n, dtype=np.int64)
    index = faiss.IndexFlatIP(eval_vecs.shape[1])
    index.add(eval_vecs.astype(np.float32))
    for start in range(0, n, 65_536):
        q = vectors[start:start + 65_536].astype(np.float32)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sim, idx = index.search(q, 1)
        best_sim[start:start + len(q)], best_emb[start:start + len(q)] = sim[:, 0], idx[:, 0]
    # each pool row's nearest test image within `bits` (65: none), by multi-index hashing
    pool_phash = hashes.column(S.IMAGE_PHASH).to_numpy(zero_copy_only=False).astype(np.int64)
    lims, dist, ids = phash_range(pool_phash, eval_phash, bits)
    owner = np.repeat(np.arange(n), np.diff(lims))  # the pool row of each hit
    first = np.lexsort((dist, owner))  # by pool row, nearest first
    first = first[np.r_[True, owner[first][1:] != owner[first][:-1]]] if len(first) else first
    best_bits = np.full(n, 65, dtype=np.int64)
    best_ph = np.zeros(n, dtype=np.int64)
    best_bits[owner[first]], best_ph[owner[first]] = dist[first], ids[first]
    by_phash = best_bits <= bits
    by_emb = (best_sim >= threshold) if threshold < 1 else np.zeros(n, dtype=bool)
    # the same bytes as a test image: the one match a near-constant image can have without embeddings
    first_with: dict[bytes, int] = {}  # test image bytes' hash -> its first test image
    for j, h in enumerate(found.image_hash):
        first_with.setdefault(h, j)
    at = pc.index_in(hashes.column(S.IMAGE_HASH).cast(pa.binary()), value_set=pa.array(list(first_with), pa.binary()))
    at = at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    by_bytes = at >= 0
    best_bytes = np.append(np.fromiter(first_with.values(), np.int64, len(first_with)), 0)[at]  # -1: unused
    hit = by_bytes | by_phash | by_emb
    method = np.where(by_bytes, "image_hash", np.where(by_phash, "phash", "embedding"))
    match = np.where(by_bytes, best_bytes, np.where(by_phash, best_ph, best_emb))
    matches = pa.table({
        S.UID: rows.column(S.UID).filter(pa.array(hit)), S.SHARD: rows.column(S.SHARD).filter(pa.array(hit)),
        S.KEY: rows.column(S.KEY).filter(pa.array(hit)),
        "eval_image": pa.array([names[j] for j in match[hit]], pa.string()),
        "method": pa.array(method[hit].tolist(), pa.string()),
        "phash_distance": pa.array(best_bits[hit], pa.int32()), "similarity": pa.array(best_sim[hit], pa.float32()),
    })
    path = pool.artifact("decontamination.parquet")
    pool.write_artifact(path, matches)
    leaf.sql = pool.keep_rows(leaf, rows.filter(pa.array(~hit)))
    leaf.details.update({"test images": len(names), "matched by image bytes": int(by_bytes.sum()),
                         "matched by phash": int((by_phash & ~by_bytes).sum()),
                         "by embedding only": int((by_emb & ~by_phash & ~by_bytes).sum()),
                         **({"test images without a usable perceptual hash": no_hash} if no_hash else {}),
                         **_no_structure(hashes, bits), **found.report(), "files": {"matches": path}})
