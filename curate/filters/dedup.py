"""Near-duplicate groups over image embeddings, SemDeDup style, and exact duplicates by image hash.

SemDeDup (Abbas et al., 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication", Sec. 3): cluster the L2-normalised embeddings with k-means, then compare samples
only within their cluster, so the work is ``N * K * D`` for the assignment plus about
``N^2 / K * D`` within clusters instead of ``N^2 * D``; with ``K = sqrt(N)`` both are
``N^1.5 * D``. Inside a cluster, samples are visited from the highest priority down (curate: the
highest ``masked_clip_score``, the T-MARS score, then the lowest row number); a sample whose
cosine similarity to an already kept sample of its cluster is at least ``threshold`` joins that
sample's group and is dropped. Each group therefore keeps exactly one sample: its
highest-priority member. (SemDeDup itself keeps the member farthest from the cluster centre.)

A near-copy that k-means puts in a neighbouring cluster is still found: each sample is compared
with the samples of its ``nprobe`` nearest clusters (an inverted-file index, ``faiss``). Exact
copies (same image bytes) are grouped by their hash first, whatever their clusters.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK = 65_536  # rows converted to float32 at a time (bounded memory for float16 inputs)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def neighbour_lists(emb: np.ndarray, threshold: float, clusters: int, nprobe: int = 4, seed: int = 0,
                    sample: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows with cosine similarity >= ``threshold``, found within k-means clusters.

    An inverted-file index (``faiss.IndexIVFScalarQuantizer``, float16 storage, inner product)
    with ``clusters`` lists is trained on at most ``sample`` points per list; each row is then
    compared with the rows of its ``nprobe`` nearest lists (``range_search``), so a near-copy that
    k-means put in a neighbouring cluster is still found.

    Args:
        emb: ``(N, D)`` float16 or float32 embeddings (normalised here, ``CHUNK`` rows at a time).

    Returns:
        ``(lims, nbr, sim)``: the neighbours of row ``i`` are ``nbr[lims[i]:lims[i + 1]]``
        (``int64``, itself excluded) with similarities ``sim[...]`` (``float32``).
    """
    import faiss

    n, d = emb.shape
    k = max(1, min(int(clusters), n // 4 or 1))
    rng = np.random.default_rng(seed)
    train = _normalised(emb[np.sort(rng.choice(n, size=min(n, k * sample), replace=False))])
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, k, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(train)
    for start in range(0, n, CHUNK):
        index.add(_normalised(emb[start : start + CHUNK]))
    index.nprobe = min(nprobe, k)
    lims, nbrs, sims = [np.zeros(1, dtype=np.int64)], [], []
    for start in range(0, n, CHUNK):
        q = _normalised(emb[start : start + CHUNK])
        lim, dist, ids = index.range_search(q, float(threshold) - 1e-6)
        lim = lim.astype(np.int64)
        rows = np.repeat(np.arange(start, start + len(q)), np.diff(lim))
        keep = ids != rows  # not itself
        counts = np.add.reduceat(keep, lim[:-1]) if len(keep) else np.zeros(len(q), dtype=np.int64)
        counts = np.where(np.diff(lim) > 0, counts, 0)
        lims.append(lims[-1][-1] + np.cumsum(counts))
        nbrs.append(ids[keep].astype(np.int64))
        sims.append(dist[keep].astype(np.float32))
    return (np.concatenate(lims), np.concatenate(nbrs) if nbrs else np.zeros(0, np.int64),
            np.concatenate(sims) if sims else np.zeros(0, np.float32))


def phash_range(query: np.ndarray, base: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``(query, base)`` pair of 64-bit perceptual hashes (int64) that differ in at most
    ``bits`` bits (0 to 16), found with multi-index hashing (``faiss.IndexBinaryMultiHash``:
    ``bits + 1`` sub-hashes, so by the pigeonhole principle every such pair shares one sub-hash
    exactly; Norouzi et al., 2012), without comparing all pairs.

    Returns:
        ``(lims, dist, ids)`` as faiss's ``range_search``: the hits of query ``i`` are
        ``ids[lims[i]:lims[i + 1]]`` (rows of ``base``) at Hamming distances ``dist[...]``.
    """
    import faiss

    def codes(h):
        return np.ascontiguousarray(np.asarray(h, dtype=np.int64)).view(np.uint8).reshape(len(h), 8)

    if not 0 <= bits <= 16:
        raise ValueError(f"bits must be in [0, 16], got {bits}")
    tables = int(bits) + 1
    index = faiss.IndexBinaryMultiHash(64, tables, 64 // tables)
    index.add(codes(base))
    lims, dist, ids = index.range_search(codes(query), int(bits) + 1)  # distance < radius
    return lims.astype(np.int64), np.asarray(dist, dtype=np.int64), np.asarray(ids, dtype=np.int64)


def phash_neighbours(phash: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows whose perceptual hashes differ in at most ``bits`` bits (``phash_range``
    of the rows against themselves). Returns ``(lims, nbr, sim)`` as ``neighbour_lists``,
    ``sim = 1 - distance / 64``."""
    n = len(phash)
    lims, dist, ids = phash_range(phash, phash, bits)
    rows = np.repeat(np.arange(n), np.diff(lims))
    keep = ids != rows
    counts = np.bincount(rows[keep], minlength=n)
    return (np.concatenate([[0], np.cumsum(counts)]), ids[keep].astype(np.int64),
            (1.0 - dist[keep] / 64.0).astype(np.float32))


def _merge(*lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One neighbour list (``lims, nbr, sim``) from several over the same rows."""
    n = len(lists[0][0]) - 1
    rows = np.concatenate([np.repeat(np.arange(n), np.diff(lims)) for lims, _, _ in lists])
    nbr = np.concatenate([x[1] for x in lists])
    sim = np.concatenate([x[2] for x in lists])
    order = np.argsort(rows, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), nbr[order], sim[order]


def dedup_groups(emb: np.ndarray | None, priority: np.ndarray, threshold: float, clusters: int | None = None,
                 image_hash: np.ndarray | None = None, phash: np.ndarray | None = None, phash_bits: int = 0,
                 seed: int = 0) -> np.ndarray:
    """Group duplicate rows and name each group's kept row.

    Two rows are duplicates when their image hashes are equal (byte-identical images), when
    their perceptual hashes differ in at most ``phash_bits`` bits (resized or re-encoded
    copies), or when their image embeddings have cosine similarity >= ``threshold``
    (SemDeDup). Rows are visited from the highest ``priority`` down; a row with a duplicate
    among the rows already kept joins the most similar one's group, else it is kept.

    Args:
        emb: ``(N, D)`` image embeddings (float16 or float32; normalised here), or ``None``
            (no embedding comparison).
        priority: ``(N,)`` higher is kept first (NaN lowest); ties go to the lower row.
        threshold: cosine similarity at or above which two embeddings are duplicates, (0, 1].
        clusters: k-means clusters of the embedding search; ``None``: ``ceil(sqrt(N))``.
        image_hash: ``(N,)`` hashes of the image bytes (empty or ``None``: never equal), or ``None``.
        phash: ``(N,)`` int64 perceptual hashes (``curate.stages.decode.perceptual_hash``), or
            ``None``; compared only when ``phash_bits > 0``.
        seed: k-means seed.

    Returns:
        ``(N,) int64``: the row kept for each row's group (the row itself when it is kept).

    Raises:
        ValueError: ``threshold`` outside (0, 1], or lengths that disagree.
    """
    n = len(priority)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if any(x is not None and len(x) != n for x in (emb, image_hash, phash)):
        raise ValueError("emb, priority, image_hash and phash must have one entry per row")
    prio = np.nan_to_num(np.asarray(priority, dtype=np.float64), nan=-np.inf)
    rank = np.lexsort((np.arange(n), -prio))  # visiting order: priority desc, then row asc
    leader = np.arange(n, dtype=np.int64)
    if image_hash is not None:  # exact copies: the first row of each hash in visiting order leads
        first: dict = {}
        for i in rank:
            h = image_hash[i]
            if h is None or (isinstance(h, (bytes, str)) and not h):
                continue
            leader[i] = first.setdefault(h, i)
    alive = np.flatnonzero(leader == np.arange(n))  # hash leaders go on to the near-duplicate step
    if len(alive) < 2:
        return leader
    lists = []
    if emb is not None:
        lists.append(neighbour_lists(emb[alive], threshold, clusters or math.ceil(math.sqrt(len(alive))), seed=seed))
    if phash is not None and phash_bits > 0:
        lists.append(phash_neighbours(np.asarray(phash)[alive], phash_bits))
    if not lists:
        return leader
    lims, nbr, sim = _merge(*lists) if len(lists) > 1 else lists[0]
    kept = np.zeros(len(alive), dtype=bool)
    pos_in_rank = np.empty(n, dtype=np.int64)
    pos_in_rank[rank] = np.arange(n)
    for j in np.argsort(pos_in_rank[alive], kind="stable"):  # alive rows, highest priority first
        lo, hi = lims[j], lims[j + 1]
        if hi > lo:
            hits = kept[nbr[lo:hi]]
            if hits.any():  # the most similar kept row leads the group
                best = np.flatnonzero(hits)[np.argmax(sim[lo:hi][hits])]
                leader[alive[j]] = alive[nbr[lo + best]]
                continue
        kept[j] = True
    # rows that joined a hash leader follow that leader if it joined a group itself
    return leader[leader]
