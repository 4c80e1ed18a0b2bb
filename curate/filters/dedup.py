"""Near-duplicate groups over image embeddings, SemDeDup style, and exact duplicates by image hash.

SemDeDup (Abbas et al., 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication", Sec. 3): cluster the L2-normalised embeddings with k-means, then compare samples
only within their cluster, so the work is about ``N^2 / K * D`` instead of ``N^2 * D``. curate
keeps the clusters ("leaves") at about ``LEAF`` rows, so the within-leaf work, one matrix
product a leaf, grows linearly with ``N``; the ``N / LEAF`` centroids come from a two-level
k-means (``leaf_centroids``) so that training and assignment stay cheap as well. Rows are
visited from the highest priority down (curate: the highest ``masked_clip_score``, the T-MARS
score, then the lowest row number); a row whose cosine similarity to an already kept row is at
least ``threshold`` joins that row's group and is dropped. Each group therefore keeps exactly one
sample: its highest-priority member. (SemDeDup itself keeps the member farthest from the
cluster centre.)

A near-copy that k-means puts in a neighbouring leaf is still found: each row is compared with
the rows stored in its ``NPROBE`` nearest leaves, as an inverted-file index probes several
lists. Exact copies (same image bytes) are grouped by their hash first, whatever their leaves.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK = 65_536  # rows converted to float32 at a time (bounded memory for float16 inputs)
LEAF = 1024  # target rows per leaf cluster: the within-cluster products are about N * LEAF * D
NPROBE = 4  # leaves each row is compared with: its own and the next nearest ones
SAMPLE = 40  # k-means training points per leaf centroid (faiss warns below 39)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def leaf_centroids(
    emb: np.ndarray, leaves: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Spherical k-means centroids of ``emb``, two-level when there are many.

    Up to 256 leaves, one ``faiss.Kmeans`` run; beyond, ``ceil(sqrt(leaves))`` coarse clusters,
    each split into leaves in proportion to its share of the training sample (as
    ``faiss.contrib.clustering.two_level_clustering``, with at least one leaf per coarse
    cluster), so training and assignment cost about ``sqrt(leaves)`` instead of ``leaves``
    distance computations a point. Trained on ``SAMPLE`` rows a leaf, drawn with ``seed``.

    Args:
        emb: ``(N, D)`` float16 or float32 embeddings.
        leaves: wanted number of centroids, >= 1.

    Returns:
        ``(centroids, coarse, parent)``: ``(K, D)`` float32 unit-norm leaf centroids
        (``K <= leaves``: fewer when the sample is small); for two levels the ``(C, D)`` coarse
        centroids and the ``(K,)`` int64 coarse cluster of each leaf, else ``None, None``.
    """
    import faiss

    n, d = emb.shape
    rng = np.random.default_rng(seed)
    m = min(n, max(1, leaves) * SAMPLE)
    xs = _normalised(emb[np.sort(rng.choice(n, size=m, replace=False))])
    leaves = max(1, min(leaves, m))
    if leaves == 1:
        return _normalised(xs.mean(axis=0, keepdims=True)), None, None

    def kmeans(x, k):
        if k >= len(x):
            return x
        km = faiss.Kmeans(d, k, niter=20, seed=seed, spherical=True, max_points_per_centroid=256)
        km.train(x)
        return km.centroids

    if leaves <= 256:
        return _normalised(kmeans(xs, leaves)), None, None
    coarse = _normalised(kmeans(xs, math.ceil(math.sqrt(leaves))))
    top = np.argmax(xs @ coarse.T, axis=1)
    parts, parent = [], []
    for c in range(len(coarse)):
        members = xs[top == c]
        if len(members):
            parts.append(kmeans(members, max(1, min(round(leaves * len(members) / m), len(members) // 39))))
            parent.append(np.full(len(parts[-1]), c, dtype=np.int64))
    return _normalised(np.vstack(parts)), coarse, np.concatenate(parent)


COARSE_PROBE = 6  # coarse clusters whose leaves are searched for a row's nearest leaves


def _nearest_leaves(tree, x: np.ndarray, k: int) -> np.ndarray:
    """``(len(x), k)`` int64 ids of the ``k`` leaf centroids nearest each row of ``x`` (unit
    vectors), nearest first (``-1`` where fewer exist). One level: exact (``faiss.IndexFlatIP``).
    Two levels: the leaves of the row's ``COARSE_PROBE`` nearest coarse clusters, one matrix
    product a coarse cluster (BLAS)."""
    import faiss

    centroids, coarse, parent = tree
    if coarse is None:
        index = faiss.IndexFlatIP(centroids.shape[1])
        index.add(centroids)
        return index.search(x, min(k, len(centroids)))[1].astype(np.int64)
    c = min(COARSE_PROBE, len(coarse))
    near = np.argpartition(-(x @ coarse.T), c - 1, axis=1)[:, :c] if c < len(coarse) else \
        np.tile(np.arange(len(coarse)), (len(x), 1))
    cand_leaf = np.full((len(x), c * k), -1, dtype=np.int64)
    cand_sim = np.full((len(x), c * k), -np.inf, dtype=np.float32)
    children = [np.flatnonzero(parent == j) for j in range(len(coarse))]
    for slot in range(c):
        for j in np.unique(near[:, slot]):
            rows = np.flatnonzero(near[:, slot] == j)
            kids = children[j]
            if not len(kids):
                continue
            sim = x[rows] @ centroids[kids].T
            kk = min(k, len(kids))
            best = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < len(kids) else \
                np.tile(np.arange(len(kids)), (len(rows), 1))
            cand_leaf[rows, slot * k : slot * k + kk] = kids[best]
            cand_sim[rows, slot * k : slot * k + kk] = np.take_along_axis(sim, best, axis=1)
    order = np.argsort(-cand_sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_leaf, order, axis=1)


def neighbour_lists(emb: np.ndarray, threshold: float, clusters: int | None = None, nprobe: int = NPROBE,
                    seed: int = 0, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows with cosine similarity >= ``threshold``, found within k-means leaves.

    The rows are clustered into ``clusters`` leaves (``leaf_centroids``; default
    ``ceil(N / LEAF)``). Each row is stored in its nearest leaf and compared, by one matrix
    product a leaf (BLAS), with the rows stored in its ``nprobe`` nearest leaves, so a
    near-copy that k-means put in a neighbouring leaf is still found; pairs found from either
    side count. The work is about ``N * nprobe * LEAF * D`` multiply-adds, linear in ``N``.
    Below ``LEAF`` rows there is one leaf, and the search is exact.

    Args:
        emb: ``(N, D)`` float16 or float32 embeddings (normalised here, a leaf at a time; a
            ``numpy.memmap`` is read a leaf at a time).
        order: ``(N,)`` visiting position of each row (``None``: row number). Only pairs whose
            neighbour comes earlier are returned: all that the greedy grouping reads.

    Returns:
        ``(lims, nbr, sim)``: the neighbours of row ``i`` are ``nbr[lims[i]:lims[i + 1]]``
        (``int64``, itself excluded, each once) with similarities ``sim[...]`` (``float32``).
    """
    n, d = emb.shape
    pos = np.arange(n) if order is None else np.asarray(order)
    leaves = max(1, int(clusters) if clusters else math.ceil(n / LEAF))
    tree = leaf_centroids(emb, leaves, seed)
    centroids = tree[0]
    probes = np.concatenate([_nearest_leaves(tree, _normalised(emb[s : s + CHUNK]), nprobe)
                             for s in range(0, n, CHUNK)]) if len(centroids) > 1 else np.zeros((n, 1), np.int64)
    home = probes[:, 0]
    stored = np.argsort(home, kind="stable")
    stored_at = np.searchsorted(home[stored], np.arange(len(centroids) + 1))
    q_rows = np.repeat(np.arange(n), probes.shape[1])
    q_leaf = probes.ravel()
    valid = q_leaf >= 0
    q_rows, q_leaf = q_rows[valid], q_leaf[valid]
    by_leaf = np.argsort(q_leaf, kind="stable")
    q_rows = q_rows[by_leaf]
    q_at = np.searchsorted(q_leaf[by_leaf], np.arange(len(centroids) + 1))
    rows, nbrs, sims = [], [], []
    for c in range(len(centroids)):
        db, q = stored[stored_at[c] : stored_at[c + 1]], q_rows[q_at[c] : q_at[c + 1]]
        if not len(db) or not len(q):
            continue
        sim = _normalised(emb[q]) @ _normalised(emb[db]).T
        i, j = np.nonzero(sim >= threshold - 1e-6)
        a, b = q[i], db[j]
        keep = a != b
        rows += [a[keep], b[keep]]
        nbrs += [b[keep], a[keep]]
        sims += [sim[i, j][keep]] * 2
    if not rows:
        return np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    row, nbr, sim = np.concatenate(rows), np.concatenate(nbrs), np.concatenate(sims).astype(np.float32)
    earlier = pos[nbr] < pos[row]
    row, nbr, sim = row[earlier], nbr[earlier], sim[earlier]
    _, first = np.unique(row * n + nbr, return_index=True)  # sorted by row, each pair once
    row, nbr, sim = row[first], nbr[first], sim[first]
    return np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))]).astype(np.int64), nbr, sim


PHASH_MIN_BITS = 9  # set bits below which a 64-bit perceptual hash encodes no 2-D structure


def phash_has_structure(phash: np.ndarray) -> np.ndarray:
    """``(N,) bool``: which 64-bit perceptual hashes (int64, ``curate.stages.decode
    .perceptual_hash``) may match another. The others never match on their own (a byte-identical
    copy is still found by ``image_hash``, a near one by its embedding).

    ``imagehash.phash`` sets the bits of the 64 low-frequency DCT coefficients strictly above
    their median, so the hash of any image whose coefficients differ has exactly 32 bits set
    (so have all 8,000 CIFAR-10 images of ``benchmarks/dedup_pool_bench.py`` and all the bundled
    sample images). Fewer means coefficients tied at the median, which in floating point happens
    when they are exactly 0: the image is constant along an axis or everywhere. A hash with fewer
    than ``PHASH_MIN_BITS`` (9) bits set has none: ``NO_PHASH`` (0: near-constant or undecoded
    images), ``0x8000000000000000`` (any flat image but black, as indexes scored before
    ``NO_PHASH`` hold it), and the hashes of images that vary along one axis only (a gradient or
    stripes: only the 8 coefficients of the first DCT row or column are non-zero, so at most 8
    bits are set). Such hashes say "flat" or "a ramp", not which picture: measured on
    horizontal ramps over random colours (40 a contrast, standard deviations 0.5 to 16 grey
    levels), 34% to 89% of the pairs of different ramps were within 2 bits of each other.
    """
    h = np.asarray(phash, dtype=np.int64)
    return np.bitwise_count(h.view(np.uint64)) >= PHASH_MIN_BITS


def phash_range(query: np.ndarray, base: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``(query, base)`` pair of 64-bit perceptual hashes (int64) that differ in at most
    ``bits`` bits (0 to 16), found with multi-index hashing (``faiss.IndexBinaryMultiHash``:
    ``bits + 1`` sub-hashes, so by the pigeonhole principle every such pair shares one sub-hash
    exactly; Norouzi et al., 2012), without comparing all pairs. A hash without structure
    (``phash_has_structure``: near-constant images, ``NO_PHASH``) is in no pair, on either side.

    Returns:
        ``(lims, dist, ids)`` as faiss's ``range_search``: the hits of query ``i`` are
        ``ids[lims[i]:lims[i + 1]]`` (rows of ``base``) at Hamming distances ``dist[...]``.
    """
    import faiss

    def codes(h):
        return np.ascontiguousarray(np.asarray(h, dtype=np.int64)).view(np.uint8).reshape(len(h), 8)

    if not 0 <= bits <= 16:
        raise ValueError(f"bits must be in [0, 16], got {bits}")
    query, base = np.asarray(query, dtype=np.int64), np.asarray(base, dtype=np.int64)
    usable = np.flatnonzero(phash_has_structure(base))  # rows of base in the index
    asked = phash_has_structure(query)
    if not len(usable) or not asked.any():
        return np.zeros(len(query) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    tables = int(bits) + 1
    index = faiss.IndexBinaryMultiHash(64, tables, 64 // tables)
    index.add(codes(base[usable]))
    lims, dist, ids = index.range_search(codes(query), int(bits) + 1)  # distance < radius
    found = np.diff(lims.astype(np.int64))
    counts = np.where(asked, found, 0)
    keep = np.repeat(asked, found)
    return (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.asarray(dist, dtype=np.int64)[keep],
            usable[np.asarray(ids, dtype=np.int64)[keep]])


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
    copies; a hash without structure, ``phash_has_structure``, matches none: a near-constant
    image is a duplicate only by its bytes or its embedding), or when their image embeddings
    have cosine similarity >= ``threshold``
    (SemDeDup). Rows are visited from the highest ``priority`` down; a row with a duplicate
    among the rows already kept joins the most similar one's group, else it is kept.

    Args:
        emb: ``(N, D)`` image embeddings (float16 or float32; normalised here), or ``None``
            (no embedding comparison).
        priority: ``(N,)`` higher is kept first (NaN lowest); ties go to the lower row.
        threshold: cosine similarity at or above which two embeddings are duplicates, (0, 1].
        clusters: k-means leaves of the embedding search; ``None``: ``ceil(N / LEAF)``.
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
    pos_in_rank = np.empty(n, dtype=np.int64)
    pos_in_rank[rank] = np.arange(n)
    lists = []
    if emb is not None:
        lists.append(neighbour_lists(emb[alive] if len(alive) < n else emb, threshold, clusters, seed=seed,
                                     order=pos_in_rank[alive]))
    if phash is not None and phash_bits > 0:
        lists.append(phash_neighbours(np.asarray(phash)[alive], phash_bits))
    if not lists:
        return leader
    lims, nbr, sim = _merge(*lists) if len(lists) > 1 else lists[0]
    kept = np.diff(lims) == 0  # a row without a duplicate is kept; the others are visited in order
    visit = np.flatnonzero(~kept)
    for j in visit[np.argsort(pos_in_rank[alive][visit], kind="stable")]:  # highest priority first
        lo, hi = lims[j], lims[j + 1]
        hits = kept[nbr[lo:hi]]
        if hits.any():  # the most similar kept row leads the group
            best = np.flatnonzero(hits)[np.argmax(sim[lo:hi][hits])]
            leader[alive[j]] = alive[nbr[lo + best]]
        else:
            kept[j] = True
    # rows that joined a hash leader follow that leader if it joined a group itself
    return leader[leader]
