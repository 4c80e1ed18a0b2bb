"""A synthetic DataComp pool in the exact on-disk format of DataComp's ``download_upstream.py``.

DataComp participants get the pool's metadata as one flat folder of ``<32 hex>.parquet`` files
and, with ``--download_npz``, a ``<same name>.npz`` beside each. This command writes such a
folder, deterministically from ``--seed``, so that curate's filters and DataComp's own
``baselines.py`` (run in its own environment, see ``benchmarks/datacomp_ref/README.md``) can be
compared on the same input at any size up to tens of millions of rows.

Parquet columns (in this order; one row group per 4,096 rows):

========================== ======================== =========================================
column                     Arrow type               content
========================== ======================== =========================================
``uid``                    string                   32 lower-case hex digits, unique
``url``                    string                   image URL
``text``                   string                   caption, never null (DataComp's code calls
                                                    ``str`` methods on every caption)
``original_width``         int64                    pixels, 16 to 8,000
``original_height``        int64                    pixels, 16 to 8,000
``clip_b32_similarity_score`` float (float32)       cosine of the B/32 image and text embeddings
``clip_l14_similarity_score`` float (float32)       cosine of the L/14 image and text embeddings
``face_bboxes``            list<list<double>>       boxes ``[x0, y0, x1, y1]`` in [0, 1] of the
                                                    image size; ``[]`` for most rows
``sha256``                 string                   64 lower-case hex digits (image bytes' hash)
========================== ======================== =========================================

NPZ arrays (row ``i`` is the parquet's row ``i``; all float16, each row L2-normalised in float32
before the cast, so norms are 1 within about 1e-3):

============ ============ ==========================================================
array        shape        content
============ ============ ==========================================================
``b32_img``  (N, 512)     image embedding, clustered (``CLUSTERS`` centroids)
``b32_txt``  (N, 512)     text embedding; ``b32_img[i] @ b32_txt[i]`` equals
                          ``clip_b32_similarity_score[i]`` within float16 rounding
``l14_img``  (N, 768)     as ``b32_img``, L/14 space
``l14_txt``  (N, 768)     as ``b32_txt``; dot product with ``l14_img`` is the L/14 score
``dedup``    (N, 256)     copy-detection embedding; near-duplicates of a row are close
============ ============ ==========================================================

What the rows look like (measured on the first 100,000 rows of seed 0):

- captions: 51% real web alt-texts (``shared/data/captions``, 1,000 LAION captions, used
  as they are, cut to their first words, suffixed or joined), 25% alt-text-like captions in
  14 other languages, 10% short or degenerate ones (file names, one or two words, numbers,
  the empty string: 0.5% of rows), 9% real captions with unusual whitespace (``\\n``,
  ``\\r\\n``, tab, vertical tab, U+001C, no-break, thin and ideographic spaces, doubled,
  leading or trailing spaces) that make ``str.split`` and fastText's tokenizer disagree, and
  5% upper-cased, emoji-suffixed or mixed-language captions;
- sizes: common web sizes and a log-normal spread: 31% of rows under 200 pixels on the short
  side, 7% with an aspect ratio over 3;
- scores: B/32 mean 0.243, sd 0.057 (26% at or above LAION's 0.28); L/14 mean 0.220, sd
  0.063 (top-30% threshold 0.253); correlation 0.85; both higher for the English captions;
- duplicates: 3% of rows copy an earlier row of their 4,096-row block (same ``sha256``,
  near-identical embeddings; half of them also the same caption and then exactly the same
  scores, so a pool has exact score ties);
- faces: 15% of rows have 1 to 4 boxes.

Row ``i`` of the pool depends only on ``--seed`` and ``i`` (rows are made in blocks of 4,096),
so the first rows of a large pool are the rows of a smaller one whatever ``--rows-per-file``
is; file names depend on ``--seed`` and the file's index. Memory stays bounded whatever
``--rows`` and ``--rows-per-file`` are: parquet files are written a row group at a time and
each npz member a block at a time (uncompressed, as ``numpy.savez``). Measured on the 2-core
machine: 2M rows in one file without npz, 24 s and 172 MB peak RSS; 60,000 rows with npz in
one file, 11 s and 231 MB. A row's npz arrays take 5,632 bytes (2,816 float16 values), so
10M rows with npz are 56 GB on disk.

    .venv/bin/python benchmarks/datacomp_pool.py --rows 100000 --rows-per-file 10000 --out out/pool
    .venv/bin/python benchmarks/datacomp_pool.py --rows 12800000 --rows-per-file 492308 --no-npz --out out/pool_small

(DataComp's small pool is 12.8M rows in 26 parquet files, about 492,000 rows a file; the default
``--rows-per-file`` of 10,000 gives more, smaller files for quick tests.)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BLOCK = 4096
"""Rows per generation block (and per parquet row group); fixed so output is reproducible."""

CLUSTERS = 512
"""Centroids per embedding space; the image embeddings cluster around them."""

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "captions" / "laion_sample_1000.parquet"
"""Real web alt-texts (``URL``, ``TEXT``) in the ``shared/`` folder beside the checkout, used
when present; a built-in list of 8 captions otherwise."""

SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("url", pa.string()),
    ("text", pa.string()),
    ("original_width", pa.int64()),
    ("original_height", pa.int64()),
    ("clip_b32_similarity_score", pa.float32()),
    ("clip_l14_similarity_score", pa.float32()),
    ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ("sha256", pa.string()),
])
"""The parquet schema of DataComp's pool metadata."""

NPZ_ARRAYS = (("b32_img", 512), ("b32_txt", 512), ("l14_img", 768), ("l14_txt", 768), ("dedup", 256))
"""NPZ members in write order, with their widths."""

# Stream ids for numpy's SeedSequence: (seed, stream, block) names one independent stream.
_ROWS, _B32, _L14, _DEDUP, _CENTROIDS, _FILES = range(6)

_FALLBACK_CAPTIONS = [
    "Vintage wooden chair with red cushion in a bright living room",
    "Aerial view of the city skyline at sunset",
    "Men's Classic Cotton T-Shirt - Navy Blue",
    "A golden retriever puppy playing in the grass",
    "Handmade ceramic coffee mug with blue glaze",
    "Mountain lake reflecting snowy peaks in early morning light",
    "Stainless Steel Kitchen Sink 30 inch Undermount",
    "Wedding bouquet of white roses and eucalyptus",
]

# Alt-text-like captions in other languages: (language, phrases). Written for this generator.
_FOREIGN = {
    "de": ["Schöne Aussicht auf die Berge im Sommer", "Damen Winterjacke mit Kapuze schwarz",
           "Frisches Brot aus der Bäckerei am Morgen", "Gemütliches Wohnzimmer mit Kamin und Sofa",
           "Hochzeitsfeier im Garten bei Sonnenuntergang", "Kinderzimmer Ideen für kleine Räume",
           "Rezept für einen einfachen Apfelkuchen", "Ferienwohnung mit Blick auf den See"],
    "fr": ["Robe d'été fleurie pour femme", "Vue panoramique sur la mer depuis la terrasse",
           "Recette facile de tarte aux pommes maison", "Chambre d'hôtel avec lit double et balcon",
           "Affiche vintage du Tour de France", "Chaussures de randonnée imperméables pour homme",
           "Le marché de Noël de Strasbourg", "Décoration de table pour un mariage champêtre"],
    "es": ["Casa en venta con piscina y jardín", "Vestido de fiesta largo color rojo",
           "Receta de paella valenciana tradicional", "Playa de arena blanca en la costa de Cádiz",
           "Zapatillas deportivas para correr de hombre", "Cocina moderna con isla central",
           "Concierto al aire libre en la plaza mayor", "Perro jugando en el parque con una pelota"],
    "it": ["Villa con vista mare in Sardegna", "Ricetta della pizza napoletana fatta in casa",
           "Borsa in pelle da donna colore marrone", "Tramonto sul lago di Como",
           "Scarpe eleganti da uomo in vera pelle", "Arredamento soggiorno in stile moderno"],
    "pt": ["Apartamento à venda no centro de Lisboa", "Bolo de chocolate com cobertura de morango",
           "Vestido de noiva com renda e manga longa", "Praia deserta no litoral do Nordeste",
           "Tênis masculino para corrida e caminhada", "Decoração de quarto infantil simples"],
    "nl": ["Mooi huis met tuin te koop in Utrecht", "Fietsen langs de grachten van Amsterdam",
           "Heerlijke appeltaart met slagroom", "Dames winterjas met bontkraag"],
    "pl": ["Mieszkanie na sprzedaż w centrum Krakowa", "Sukienka letnia w kwiaty damska",
           "Przepis na domowe pierogi z mięsem", "Widok na góry Tatry zimą"],
    "ru": ["Красивый вид на горы летом", "Женское платье с длинным рукавом",
           "Рецепт домашнего борща со сметаной", "Квартира с ремонтом в центре Москвы",
           "Свадебный букет из белых роз", "Детская комната в скандинавском стиле"],
    "tr": ["Deniz manzaralı satılık villa", "Kadın kışlık mont siyah renk",
           "Ev yapımı baklava tarifi", "İstanbul Boğazı'nda gün batımı"],
    "ja": ["夏の海辺の風景写真", "レディース 花柄 ワンピース 春夏", "手作りチョコレートケーキのレシピ",
           "東京タワーと夜景", "かわいい子猫の写真", "北欧風インテリアのリビング"],
    "zh": ["夏天海边的风景照片", "女士长袖连衣裙 新款", "家常红烧肉的做法", "北京故宫的雪景",
           "可爱的小狗在草地上玩耍", "现代简约风格客厅装修效果图"],
    "ko": ["여름 바다 풍경 사진", "여성 겨울 롱패딩 블랙", "집에서 만드는 김치찌개 레시피", "서울 야경 남산타워"],
    "vi": ["Cảnh đẹp biển Nha Trang mùa hè", "Váy đầm nữ dự tiệc sang trọng", "Cách làm bánh mì tại nhà"],
    "id": ["Pemandangan pantai di Bali saat matahari terbenam", "Baju muslim wanita terbaru",
           "Resep nasi goreng spesial"],
}

_SHORT = ["IMG_{n}.JPG", "DSC{n}", "image", "photo", "{n}", "", " ", "untitled", "Home", "logo",
          "banner-{n}", "img{n}.png", "thumbnail", "Product {n}", "new", "Click here", "P{n}",
          "a", "foto", "Bild {n}"]

_SUFFIXES = [" | Free Shipping", " - Stock Photo", " 2019", " (Set of 2)", " | eBay", " - YouTube",
             " #{n}", " - Page {n}", " - Vector", " [HD]", " by John Smith", " in Blue"]

# Whitespace edge cases: each is a function of a real caption's words.
_ODD_SPACE = ["\n", "\r\n", "\t", "\u00a0", "\u3000", "  ", "\u2009", "\x0b", "\x1c"]

_DOMAINS = ["cdn.shopify.com/s/files", "i.pinimg.com/736x", "images.example-store.com/media",
            "upload.wikimedia.org/wikipedia/commons", "img.alicdn.com/imgextra", "i.ebayimg.com/images",
            "static.photos-blog.net/uploads", "media.newsportal.de/bilder"]

# Common web image sizes (width, height).
_SIZES = [(500, 500), (640, 480), (800, 600), (1024, 768), (1200, 800), (1920, 1080), (300, 300),
          (150, 150), (250, 250), (100, 100), (600, 400), (400, 600), (1280, 720), (728, 90),
          (468, 60), (1000, 1000), (170, 170), (300, 200), (2048, 1365), (960, 640)]


@dataclass
class Meta:
    """The numeric draws of one block of ``BLOCK`` rows, from which its rows and embeddings
    are made. Arrays have ``BLOCK`` rows: ``words`` (uint64, 7 a row: uid, sha256, url),
    ``kind`` (float64, which caption recipe), ``pick`` (int64, 4 a row), ``num`` (int64),
    ``is_dup`` / ``same_text`` / ``english`` (bool), ``source`` (int32, the row of the block
    that a duplicate copies, else itself), ``width`` / ``height`` (int64, pixels), ``b32`` /
    ``l14`` (float32 scores), ``cluster`` (int32, image cluster); ``faces`` a list of boxes a row.
    """

    words: np.ndarray
    kind: np.ndarray
    pick: np.ndarray
    num: np.ndarray
    is_dup: np.ndarray
    source: np.ndarray
    same_text: np.ndarray
    english: np.ndarray
    width: np.ndarray
    height: np.ndarray
    b32: np.ndarray
    l14: np.ndarray
    cluster: np.ndarray
    faces: list[list[list[float]]]


@dataclass
class Block:
    """The parquet rows of one block: lists of ``n`` strings (``uid``, ``url``, ``text``,
    ``sha256``), int64 arrays ``width`` and ``height`` (pixels), float32 arrays ``b32`` and
    ``l14`` (scores), and ``faces`` (a list of ``[x0, y0, x1, y1]`` boxes a row)."""

    uid: list[str]
    url: list[str]
    text: list[str]
    width: np.ndarray
    height: np.ndarray
    b32: np.ndarray
    l14: np.ndarray
    faces: list[list[list[float]]]
    sha256: list[str]

    def table(self) -> pa.Table:
        """The block's rows as an Arrow table with ``SCHEMA``."""
        return pa.Table.from_arrays([
            pa.array(self.uid, pa.string()),
            pa.array(self.url, pa.string()),
            pa.array(self.text, pa.string()),
            pa.array(self.width, pa.int64()),
            pa.array(self.height, pa.int64()),
            pa.array(self.b32, pa.float32()),
            pa.array(self.l14, pa.float32()),
            pa.array(self.faces, SCHEMA.field("face_bboxes").type),
            pa.array(self.sha256, pa.string()),
        ], schema=SCHEMA)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def load_captions(path: Path = CAPTIONS) -> tuple[list[str], list[str]]:
    """The real captions and their URLs from ``path`` (a built-in list when it is missing).

    Returns two lists of equal length: captions (str, as written, never null) and URLs.
    """
    if path.exists():
        table = pq.read_table(path, columns=["URL", "TEXT"])
        texts = table.column("TEXT").to_pylist()
        urls = table.column("URL").to_pylist()
        pairs = [(t, u or "") for t, u in zip(texts, urls) if t is not None]
        return [t for t, _ in pairs], [u for _, u in pairs]
    return list(_FALLBACK_CAPTIONS), [""] * len(_FALLBACK_CAPTIONS)


class PoolGenerator:
    """Makes the pool's rows block by block; ``block(b)`` is the same for one ``seed``.

    ``captions`` and ``urls`` are the real captions to draw from (``load_captions``).
    """

    def __init__(self, seed: int, captions: list[str], urls: list[str]):
        self.seed = seed
        self.captions = captions
        self.urls = urls
        self.foreign = [(lang, p) for lang, ps in _FOREIGN.items() for p in ps]
        crng = _rng(seed, _CENTROIDS, 0)
        self.centroids = {
            name: _normalise(crng.standard_normal((CLUSTERS, width), dtype=np.float32))
            for name, width in NPZ_ARRAYS
        }
        # Cluster popularity: a Zipf-like law, as web image topics are.
        weights = 1.0 / np.arange(1, CLUSTERS + 1) ** 0.8
        self.cluster_p = weights / weights.sum()

    # ---- rows ---------------------------------------------------------------------------

    def meta(self, b: int) -> Meta:
        """The numeric draws of block ``b`` (always a full block of ``BLOCK`` rows)."""
        rng = _rng(self.seed, _ROWS, b)
        m = BLOCK
        words = rng.integers(0, 2**64, size=(m, 7), dtype=np.uint64)
        kind = rng.random(m)
        pick = rng.integers(0, 1 << 30, size=(m, 4))
        num = rng.integers(0, 100000, size=m)
        # duplicates: ~3% of rows (not the first of a block) copy an earlier row of the block
        is_dup = (rng.random(m) < 0.03) & (np.arange(m) > 0)
        src = np.arange(m)
        src[is_dup] = (rng.random(int(is_dup.sum())) * np.nonzero(is_dup)[0]).astype(np.int64)
        while True:  # point at the original, not at a copy
            nxt = src[src]
            if np.array_equal(nxt, src):
                break
            src = nxt
        same_text = is_dup & (rng.random(m) < 0.5)
        english = (kind < 0.51) | (kind >= 0.86)
        english[same_text] = english[src[same_text]]
        width, height = self._sizes(rng, m)
        width[is_dup], height[is_dup] = width[src[is_dup]], height[src[is_dup]]
        b32, l14 = self._scores(rng, english)
        b32[same_text], l14[same_text] = b32[src[same_text]], l14[src[same_text]]
        cluster = rng.choice(CLUSTERS, size=m, p=self.cluster_p).astype(np.int32)
        cluster[is_dup] = cluster[src[is_dup]]
        faces = self._faces(rng, m)
        return Meta(words, kind, pick, num, is_dup, src.astype(np.int32), same_text, english,
                    width, height, b32, l14, cluster, faces)

    def block(self, b: int, n: int = BLOCK, meta: Meta | None = None) -> Block:
        """Rows ``b * BLOCK`` to ``b * BLOCK + n - 1`` (``n <= BLOCK``): the first ``n`` rows of
        the full block, so a short last block is a prefix of a longer pool's block."""
        mt = meta if meta is not None else self.meta(b)
        texts: list[str] = []
        urls: list[str] = []
        for i in range(n):
            k = mt.kind[i]
            p0, p1, p2, p3 = (int(x) for x in mt.pick[i])
            nn = str(int(mt.num[i]))
            real = self.captions[p0 % len(self.captions)]
            url = self.urls[p0 % len(self.urls)]
            if k < 0.34:  # a real caption as it is
                text = real
            elif k < 0.42:  # cut to its first words
                ws = real.split(" ")
                text = " ".join(ws[: 1 + p1 % max(1, len(ws))])
            elif k < 0.47:  # with a shop-like suffix
                text = real + _SUFFIXES[p1 % len(_SUFFIXES)].replace("{n}", nn)
            elif k < 0.51:  # two captions joined
                text = real + ". " + self.captions[p1 % len(self.captions)]
            elif k < 0.76:  # another language, sometimes with a number or a size
                phrase = self.foreign[p1 % len(self.foreign)][1]
                extra = ["", "", f" {nn}", f" {20 + p2 % 80}x{30 + p3 % 90} cm", " - " + real.split(" ")[0]]
                text = phrase + extra[p2 % len(extra)]
                url = ""
            elif k < 0.86:  # short or degenerate
                text = _SHORT[p1 % len(_SHORT)].replace("{n}", nn)
                url = ""
            elif k < 0.95:  # unusual whitespace inside a real caption
                ws = real.split(" ")
                sp = _ODD_SPACE[p1 % len(_ODD_SPACE)]
                at = p2 % max(1, len(ws))
                text = " ".join(ws[:at]) + (sp if at else "") + " ".join(ws[at:])
                if p3 % 4 == 0:
                    text = text + sp
                if p3 % 7 == 0:
                    text = " " + text
            else:  # upper case, emoji, or a mixed-language caption
                style = p1 % 3
                if style == 0:
                    text = real.upper()
                elif style == 1:
                    text = real + " \U0001F60D\U0001F525"
                else:
                    text = real + " " + self.foreign[p2 % len(self.foreign)][1]
            if mt.same_text[i]:
                text = texts[mt.source[i]]
            texts.append(text)
            if not url:
                url = f"https://{_DOMAINS[p3 % len(_DOMAINS)]}/{int(mt.words[i, 6]):016x}.jpg"
            urls.append(url)
        w = mt.words
        uid = [f"{int(w[i, 0]):016x}{int(w[i, 1]):016x}" for i in range(n)]
        sha = [f"{int(w[j, 2]):016x}{int(w[j, 3]):016x}{int(w[j, 4]):016x}{int(w[j, 5]):016x}"
               for j in (int(mt.source[i]) for i in range(n))]
        faces = [mt.faces[int(mt.source[i])] for i in range(n)]
        return Block(uid, urls, texts, mt.width[:n].copy(), mt.height[:n].copy(), mt.b32[:n].copy(),
                     mt.l14[:n].copy(), faces, sha)

    @staticmethod
    def _sizes(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        common = rng.random(m) < 0.45
        idx = rng.integers(0, len(_SIZES), size=m)
        table = np.array(_SIZES, dtype=np.int64)
        short = np.exp(rng.normal(np.log(260), 0.75, size=m))
        ratio = np.exp(np.abs(rng.normal(0, 0.45, size=m)))
        ratio[rng.random(m) < 0.03] *= 3.0  # banners, strips
        long = short * ratio
        portrait = rng.random(m) < 0.35
        w = np.where(portrait, short, long)
        h = np.where(portrait, long, short)
        w = np.clip(np.rint(w), 16, 8000).astype(np.int64)
        h = np.clip(np.rint(h), 16, 8000).astype(np.int64)
        w[common], h[common] = table[idx[common], 0], table[idx[common], 1]
        return w, h

    @staticmethod
    def _scores(rng: np.random.Generator, english: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = len(english)
        z1 = rng.standard_normal(m)
        z2 = 0.8 * z1 + 0.6 * rng.standard_normal(m)
        shift = np.where(english, 0.02, -0.03)
        b32 = 0.243 + shift + 0.05 * z1
        l14 = 0.22 + shift + 0.055 * z2
        low = rng.random(m) < 0.02  # unrelated image and text
        b32[low] = rng.normal(0.12, 0.03, size=int(low.sum()))
        l14[low] = rng.normal(0.08, 0.03, size=int(low.sum()))
        return (np.clip(b32, -0.2, 0.6).astype(np.float32), np.clip(l14, -0.2, 0.6).astype(np.float32))

    @staticmethod
    def _faces(rng: np.random.Generator, m: int) -> list[list[list[float]]]:
        count = np.where(rng.random(m) < 0.15, rng.integers(1, 5, size=m), 0)
        total = int(count.sum())
        x0 = rng.random(total) * 0.8
        y0 = rng.random(total) * 0.8
        wd = 0.02 + rng.random(total) * np.minimum(0.4, 1 - x0 - 0.02)
        ht = 0.02 + rng.random(total) * np.minimum(0.4, 1 - y0 - 0.02)
        boxes = np.stack([x0, y0, np.minimum(x0 + wd, 1.0), np.minimum(y0 + ht, 1.0)], axis=1).tolist()
        out, at = [], 0
        for c in count:
            out.append(boxes[at: at + c])
            at += c
        return out

    # ---- embeddings -----------------------------------------------------------------------

    def embeddings(self, b: int, mt: Meta, name: str, n: int = BLOCK) -> np.ndarray:
        """The npz array ``name`` for the first ``n`` rows of block ``b`` (``mt = meta(b)``):
        (n, width) float16, unit rows.

        Image embeddings are ``0.55 * centroid[cluster] + noise``, normalised; a duplicate row
        takes its source's noise plus 2% fresh noise. A text embedding is ``s * img + sqrt(1 -
        s^2) * w``, with ``w`` a unit vector orthogonal to ``img`` and ``s`` the row's score, so
        their cosine is the score (before the float16 cast).
        """
        cluster, source = mt.cluster[:n], mt.source[:n]
        if name == "dedup":
            rng = _rng(self.seed, _DEDUP, b)
            noise = _normalise(rng.standard_normal((BLOCK, 256), dtype=np.float32))[:n]
            fresh = _normalise(rng.standard_normal((BLOCK, 256), dtype=np.float32))[:n]
            v = 0.3 * self.centroids["dedup"][cluster] + noise[source] + 0.02 * fresh
            return _normalise(v).astype(np.float16)
        space = name[:3]
        img = self._image(b, mt, space, n)
        if name.endswith("_img"):
            return img.astype(np.float16)
        rng = _rng(self.seed, _B32 if space == "b32" else _L14, (b << 1) | 1)
        w = _normalise(rng.standard_normal((BLOCK, img.shape[1]), dtype=np.float32))[:n]
        w = 0.5 * self.centroids[f"{space}_txt"][cluster] + w
        w -= np.sum(w * img, axis=1, keepdims=True) * img
        w = _normalise(w)
        s = (mt.b32 if space == "b32" else mt.l14)[:n, None].astype(np.float32)
        txt = s * img + np.sqrt(np.maximum(0.0, 1.0 - s * s)) * w
        return _normalise(txt).astype(np.float16)

    def _image(self, b: int, mt: Meta, space: str, n: int) -> np.ndarray:
        rng = _rng(self.seed, _B32 if space == "b32" else _L14, b << 1)
        width = self.centroids[f"{space}_img"].shape[1]
        noise = _normalise(rng.standard_normal((BLOCK, width), dtype=np.float32))[:n]
        fresh = _normalise(rng.standard_normal((BLOCK, width), dtype=np.float32))[:n]
        v = 0.55 * self.centroids[f"{space}_img"][mt.cluster[:n]] + noise[mt.source[:n]] + 0.02 * fresh
        return _normalise(v)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float32) scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def file_names(seed: int, count: int) -> list[str]:
    """The pool's file stems: ``count`` distinct 32-hex-digit names, fixed by ``seed``."""
    names = []
    for f in range(count):
        names.append(hashlib.md5(f"datacomp-pool-{seed}-{f}".encode()).hexdigest())
    return names


def _write_npz_streaming(path: Path, gen: PoolGenerator, spans: list[tuple[int, int, int]],
                         rows: int) -> None:
    """Write ``path`` as ``numpy.savez`` would (stored, not compressed), a block at a time.

    ``spans`` are ``(block, start, stop)``: rows ``start:stop`` of block ``block``, in file
    order; ``rows`` is their total.
    """
    tmp = path.with_name(f".{path.stem}-npz.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, width in NPZ_ARRAYS:
            with zf.open(name + ".npy", "w", force_zip64=True) as fp:
                np.lib.format.write_array_header_1_0(
                    fp, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")),
                         "fortran_order": False, "shape": (rows, width)})
                for b, start, stop in spans:
                    arr = gen.embeddings(b, gen.meta(b), name, stop)[start:stop]
                    fp.write(np.ascontiguousarray(arr, dtype="<f2").tobytes())
    tmp.replace(path)


def write_pool(out: Path, rows: int, rows_per_file: int, seed: int = 0, npz: bool = True,
               captions: Path = CAPTIONS, progress: bool = True) -> list[Path]:
    """Write ``rows`` rows to ``out`` in files of ``rows_per_file`` rows (the last may be
    shorter): ``<stem>.parquet`` and, when ``npz``, ``<stem>.npz``. Returns the parquet paths.

    Files are written to a hidden temporary name and renamed, so a folder never holds half a
    file under a pool name. The temporary names do not contain ``.parquet``: DataComp lists a
    pool with ``".parquet" in path`` and would read a leftover ``x.parquet.tmp``.
    """
    if rows < 0 or rows_per_file <= 0:
        raise ValueError("rows must be >= 0 and rows_per_file > 0")
    out.mkdir(parents=True, exist_ok=True)
    texts, urls = load_captions(captions)
    gen = PoolGenerator(seed, texts, urls)
    n_files = (rows + rows_per_file - 1) // rows_per_file
    paths = []
    t0 = time.monotonic()
    for f, stem in enumerate(file_names(seed, n_files)):
        lo, hi = f * rows_per_file, min(rows, (f + 1) * rows_per_file)
        spans = []
        for b in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
            start = max(lo, b * BLOCK) - b * BLOCK
            stop = min(hi, (b + 1) * BLOCK) - b * BLOCK
            spans.append((b, start, stop))
        path = out / f"{stem}.parquet"
        tmp = out / f".{stem}-parquet.partial"
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            for b, start, stop in spans:
                writer.write_table(gen.block(b, stop).table().slice(start, stop - start))
        tmp.replace(path)
        if npz:
            _write_npz_streaming(out / f"{stem}.npz", gen, spans, hi - lo)
        paths.append(path)
        if progress:
            print(f"[{f + 1}/{n_files}] {path.name} rows {lo}..{hi - 1} "
                  f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="rows in the pool")
    parser.add_argument("--rows-per-file", type=int, default=10000,
                        help="rows per parquet/npz pair (default 10000; the last file may be shorter)")
    parser.add_argument("--no-npz", action="store_true", help="write the parquet files only")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--captions", type=Path, default=CAPTIONS,
                        help=f"parquet of real captions (URL, TEXT) (default {CAPTIONS})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    paths = write_pool(args.out, args.rows, args.rows_per_file, args.seed, not args.no_npz,
                       args.captions, progress=not args.quiet)
    print(f"wrote {args.rows} rows in {len(paths)} files to {args.out} "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
