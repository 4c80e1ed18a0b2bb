"""A hash that encodes no structure is no match (issue 28).

Every flat image but black has the same ``imagehash.phash`` (``0x8000000000000000``: only the DC
coefficient is above the median), so ``dedup()`` dropped a flat blue card as a copy of a flat
red one, and ``decontaminate()`` with one flat test image dropped every flat pool image
(``phash_distance`` 0). A near-constant image now has no perceptual hash (``NO_PHASH``, when the
32x32 grey image the hash is computed from has a standard deviation below ``PHASH_MIN_STD``
grey levels) and a hash without structure matches nothing (``phash_has_structure``); such images
are matched by their bytes (``image_hash``) or embeddings only. Real photos and their re-encoded
copies still match.

The pools are hand-made score indexes (``tests.filters.test_filters.make_index``) whose
embedding files hold the hashes the ``Decode`` stage computes from the images' bytes, as
``curate score --embeddings`` writes them; the rules run at ``threshold=1`` (hashes only), so no
model is loaded.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import schema as S
from curate.filters import run_filter
from curate.filters.dedup import dedup_groups, phash_has_structure, phash_range
from curate.io.embeddings import write_embeddings_file
from curate.io.index import write_index_file
from curate.stages.common import object_array
from curate.stages.decode import NO_PHASH, PHASH_MIN_STD, Decode, perceptual_hash, phash_input_std
from tests.conftest import REPO, jpeg_bytes
from tests.filters.test_filters import make_index

PHOTOS = sorted((REPO.parent / "shared" / "data" / "photos").glob("*.jpg"))
OLD_FLAT_PHASH = np.uint64(0x8000000000000000).view(np.int64)  # what indexes scored before hold for a flat image


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def flat(colour, size=(96, 128)) -> np.ndarray:
    return np.tile(np.asarray(colour, dtype=np.uint8), (*size, 1))


def faint(colour, kind: str, size=(96, 128)) -> np.ndarray:
    """``colour`` plus the same faint pattern in each channel: a 6-grey-level horizontal
    gradient (standard deviation 1.8), or a smooth random texture (fixed seed) of standard
    deviation 2."""
    h, w = size
    if kind == "gradient":
        z = np.tile(np.linspace(-3, 3, w)[None, :], (h, 1))
    else:
        f = np.random.default_rng(7).standard_normal((6, 8)).astype(np.float32)
        z = np.asarray(Image.fromarray(f, "F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
        z = (z - z.mean()) / z.std() * 2.0
    return np.clip(np.asarray(colour, dtype=np.float64)[None, None, :] + z[:, :, None], 0, 255).round().astype(np.uint8)


def make_pool(path, images: list[tuple[str, bytes]]) -> dict[str, str]:
    """A score index of ``(name, image bytes)`` samples, all ``ok``, keyed ``00``, ``01``, ...
    in order (the first has the highest masked CLIP score, so dedup keeps it), with an embedding
    file whose ``image_hash`` and ``image_phash`` are the ``Decode`` stage's and whose image
    embeddings are orthogonal. Returns ``{key: name}``."""
    n = len(images)
    keys = [f"{i:02d}" for i in range(n)]
    rows = [(key, "ok", f"a card {name}", "en", 128, 96, 0.0, 0.3, 0.3 - 0.01 * i)
            for i, (key, (name, _)) in enumerate(zip(keys, images))]
    index_file = make_index(path, rows) / "pool-000000.parquet"
    write_index_file(index_file, pq.read_table(index_file), {S.META_CLIP_MODEL: "tiny"})  # the test images' input size
    decoded = Decode(hashes=True).process({S.IMAGE_BYTES: object_array([b for _, b in images]),
                                           S.STATUS: object_array([S.STATUS_OK] * n),
                                           S.ERROR: object_array([None] * n)}, np.arange(n))
    assert list(decoded[S.STATUS]) == [S.STATUS_OK] * n
    eye = np.eye(n, max(n, 8), dtype=np.float32)
    write_embeddings_file(index_file, {
        S.UID: [k.rjust(32, "0") for k in keys], S.KEY: keys, **{c: eye for c in S.EMBEDDING_COLUMNS},
        S.IMAGE_HASH: decoded[S.IMAGE_HASH], S.IMAGE_PHASH: decoded[S.IMAGE_PHASH]}, np.ones(n, bool), {})
    return dict(zip(keys, (name for name, _ in images)))


def dedup(tmp_path, images, name="d"):
    """``dedup(threshold=1.0)`` (exact bytes, perceptual hashes within 2 bits) over ``images``:
    ``(removed names, groups as sets of names)``."""
    index = tmp_path / f"{name}-index"
    names = make_pool(index, images)
    s = run_filter(index, "dedup(threshold=1.0)", tmp_path / name)
    groups: dict[str, set] = {}
    for r in pq.read_table(tmp_path / name / "dedup_groups.parquet").to_pylist():
        groups.setdefault(r["group"], set()).add(names[r[S.KEY]])
    kept = {names[k] for k in pq.read_table(tmp_path / name / "subset.parquet").column(S.KEY).to_pylist()}
    assert s.removed_by["dedup(threshold=1.0)"] == len(images) - len(kept)
    return set(names.values()) - kept, list(groups.values())


def decontaminate(tmp_path, images, test_images, name="x"):
    """``decontaminate(evalset=..., threshold=1.0)`` with ``test_images`` (``(file name, bytes)``):
    ``(removed names, decontamination.parquet rows with the names as keys)``."""
    index = tmp_path / f"{name}-index"
    names = make_pool(index, images)
    evalset = tmp_path / f"{name}-evalset"
    evalset.mkdir()
    for file, data in test_images:
        (evalset / file).write_bytes(data)
    rule = f"decontaminate(evalset={str(evalset)!r}, threshold=1.0)"
    s = run_filter(index, rule, tmp_path / name)
    kept = {names[k] for k in pq.read_table(tmp_path / name / "subset.parquet").column(S.KEY).to_pylist()}
    assert s.removed_by[rule] == len(images) - len(kept)
    matches = pq.read_table(tmp_path / name / "decontamination.parquet").to_pylist()
    return set(names.values()) - kept, [{**m, S.KEY: names[m[S.KEY]]} for m in matches]


COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0), "white": (255, 255, 255),
           "black": (0, 0, 0), "grey": (128, 128, 128)}


def test_flat_red_and_flat_blue_are_not_duplicates(tmp_path):
    """Attack: two flat cards of different colours had the same perceptual hash, and dedup
    dropped one as a copy of the other."""
    red, blue, green = flat(COLOURS["red"]), flat(COLOURS["blue"]), flat(COLOURS["green"])
    removed, groups = dedup(
        tmp_path, [("red", png(red)), ("blue", png(blue)), ("green", jpeg_bytes(Image.fromarray(green)))])
    assert removed == set() and groups == []
    assert phash_input_std(red) == phash_input_std(blue) == 0.0
    assert perceptual_hash(red) == perceptual_hash(blue) == NO_PHASH  # no hash, rather than a shared one


def test_hashes_without_structure_from_older_indexes_never_match():
    """Attack, on an index scored before ``NO_PHASH``: its flat images all hold
    ``0x8000000000000000`` (black: 0), and neither dedup nor the test-set search may pair them."""
    old = np.array([OLD_FLAT_PHASH, OLD_FLAT_PHASH, 0, 0], dtype=np.int64)
    leader = dedup_groups(None, np.arange(4.0), 1.0, image_hash=np.array([b"a", b"b", b"c", b"d"], dtype=object),
                          phash=old, phash_bits=2)
    assert (leader == np.arange(4)).all()
    lims, dist, ids = phash_range(old, old, 2)
    assert len(ids) == 0 and (lims == 0).all()
    assert not phash_has_structure(old).any()


def test_a_flat_test_image_does_not_remove_flat_pool_images_of_other_colours(tmp_path):
    """Attack: one flat grey test image matched every flat pool image at ``phash_distance`` 0 (and
    black at 1 bit), so decontamination dropped them all. Only the pool image with the test
    image's very bytes is dropped now, and ``method`` says why."""
    grey = png(flat(COLOURS["grey"]))
    pool = [(name, png(flat(c))) for name, c in COLOURS.items() if name != "grey"] + [("grey-copy", grey)]
    removed, matches = decontaminate(tmp_path, pool, [("grey.png", grey)])
    assert removed == {"grey-copy"}
    assert [(m[S.KEY], m["eval_image"], m["method"]) for m in matches] == [("grey-copy", "grey.png", "image_hash")]


def test_byte_identical_flat_images_are_still_duplicates(tmp_path):
    """Without a perceptual hash a flat image is still deduplicated by its bytes: two copies of
    the same flat red PNG are one group (the flat blue one stays)."""
    red = png(flat(COLOURS["red"]))
    removed, groups = dedup(tmp_path, [("red", red), ("blue", png(flat(COLOURS["blue"]))), ("red-again", red)])
    assert removed == {"red-again"} and groups == [{"red", "red-again"}]


@pytest.mark.parametrize("kind", ["gradient", "texture"])
def test_a_near_flat_image_behaves_like_flat(kind, tmp_path):
    """Attack: the same faint pattern (a 6-level gradient, a 2-level texture) over different
    colours gave the same perceptual hash (0 bits apart: the grey image is the colour's grey
    level plus the pattern), so the cards were "copies" and one red test card removed the blue
    and green pool cards. Below ``PHASH_MIN_STD`` they have no hash (the texture's hash has 32
    bits set, as a picture's: only the standard deviation tells it); a byte-identical copy is
    still a duplicate."""
    red, blue, green = (faint(c, kind) for c in ((200, 40, 40), (40, 40, 200), (40, 160, 40)))  # unclipped
    red_png = png(red)
    removed, groups = dedup(tmp_path, [("red", red_png), ("blue", png(blue)), ("green", png(green)),
                                       ("red-again", red_png)])
    assert removed == {"red-again"} and groups == [{"red", "red-again"}]
    removed, matches = decontaminate(tmp_path, [("blue", png(blue)), ("green", png(green))], [("red.png", red_png)])
    assert removed == set() and matches == []
    assert all(1 < phash_input_std(x) < PHASH_MIN_STD for x in (red, blue, green))
    assert perceptual_hash(red) == perceptual_hash(blue) == perceptual_hash(green) == NO_PHASH


@pytest.mark.skipif(not PHOTOS, reason="needs the real photos of shared/data/photos")
def test_a_real_photo_and_its_reencoded_jpeg_copy_still_match(tmp_path):
    """Recall is kept: each photo of ``shared/data/photos`` and its JPEG quality-50 re-encoding are
    one group and nothing else is, and a re-encoded copy in the test set removes its original
    (by perceptual hash: the bytes differ)."""
    photos = [(p.stem, p.read_bytes()) for p in PHOTOS]
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for _, b in photos]
    assert all(phash_input_std(x) > 4 * PHASH_MIN_STD for x in images)  # far from the threshold
    assert phash_has_structure(np.array([perceptual_hash(x) for x in images])).all()
    copies = [(f"{k}-q50", jpeg_bytes(Image.fromarray(x), quality=50)) for (k, _), x in zip(photos, images)]
    removed, groups = dedup(tmp_path, photos + copies)
    assert removed == {k for k, _ in copies}
    assert sorted(map(sorted, groups)) == sorted(sorted([k, f"{k}-q50"]) for k, _ in photos)
    first, test_copy = photos[0][0], copies[0][1]
    removed, matches = decontaminate(tmp_path, photos, [("copy.jpg", test_copy)])
    assert removed == {first}
    assert [(m[S.KEY], m["method"]) for m in matches] == [(first, "phash")] and matches[0]["phash_distance"] <= 2
