"""Decode stage on real images and real format variants made from them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from curate import schema as S
from curate.stages.decode import Decode, DecodeError, decode_image
from tests.conftest import EDGE, TRANSPARENT, members


@pytest.fixture(scope="module")
def photo(sources) -> np.ndarray:
    """A real photo (clip-retrieval's 524x316 building photo) as RGB."""
    return np.asarray(Image.open(io.BytesIO(sources["photos/524_316.jpg"]["image"])).convert("RGB"))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_jpeg_and_png(sources):
    arr = decode_image(sources["icdar2015_toy/img_1.jpg"]["image"])
    assert arr.shape == (720, 1280, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    png = decode_image(sources["dj_images/img1.png"]["image"])
    assert png.shape == (336, 336, 3)


def test_real_broken_jpeg_is_decode_error(sources):
    with pytest.raises(DecodeError) as e:
        decode_image(sources["bad/broken.jpg"]["image"])
    assert e.value.status == S.STATUS_DECODE_ERROR


def test_exif_orientation(photo):
    im = Image.fromarray(photo)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(im, "PNG", exif=exif)  # PNG is lossless: pixels can be compared exactly
    out = decode_image(data)
    assert out.shape == (photo.shape[1], photo.shape[0], 3)
    np.testing.assert_array_equal(out, np.rot90(photo, k=-1))


def test_grayscale_and_palette(photo):
    gray = Image.fromarray(photo).convert("L")
    out = decode_image(encode(gray, "PNG"))
    assert out.shape == photo.shape
    np.testing.assert_array_equal(out[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    pal = Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE, colors=64)
    np.testing.assert_array_equal(decode_image(encode(pal, "PNG")), np.asarray(pal.convert("RGB")))


def test_transparency_composited_on_background(photo):
    rgba = Image.fromarray(photo).convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:10, :, 3] = 0  # fully transparent band
    a[10:20, :, 3] = 128  # half transparent band
    data = encode(Image.fromarray(a, "RGBA"), "PNG")
    white = decode_image(data)
    assert (white[:10] == 255).all()
    np.testing.assert_array_equal(white[20:], photo[20:])
    half = white[10:20].astype(int)
    expected = (photo[10:20].astype(int) * 128 + 255 * 127) / 255
    assert np.abs(half - expected).max() <= 1
    black = decode_image(data, background=(0, 0, 0))
    assert (black[:10] == 0).all()
    la = Image.fromarray(a, "RGBA").convert("LA")
    assert (decode_image(encode(la, "PNG"))[:10] == 255).all()
    pal = Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE, colors=32)
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    out = decode_image(encode(pal, "PNG", transparency=pal.info["transparency"]))
    assert tuple(out[0, 0]) == (255, 255, 255)


def test_cmyk(photo):
    cmyk = Image.fromarray(photo).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == photo.shape
    assert np.abs(out.astype(int) - photo.astype(int)).mean() < 6  # JPEG loss only, no inversion


def test_sixteen_bit_is_rescaled_not_clamped():
    ramp = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)  # 0 .. 65532
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    out = decode_image(encode(im, "PNG"))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out.max() == 255 and 120 <= np.median(out) <= 135  # clamping would give a median of 255


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_too_large_without_allocating():
    bomb = _png_header_only(100_000, 100_000)  # 10 G pixels, 30 GB if decoded
    with pytest.raises(DecodeError) as e:
        decode_image(bomb)
    assert e.value.status == S.STATUS_TOO_LARGE
    with pytest.raises(DecodeError) as e:
        decode_image(bomb, max_pixels=10**11)  # over Pillow's own bomb limit too
    assert e.value.status in (S.STATUS_TOO_LARGE, S.STATUS_DECODE_ERROR)


def test_max_pixels_on_real_image(sources):
    data = sources["icdar2015_toy/img_1.jpg"]["image"]
    with pytest.raises(DecodeError) as e:
        decode_image(data, max_pixels=1280 * 720 - 1)
    assert e.value.status == S.STATUS_TOO_LARGE
    assert decode_image(data, max_pixels=1280 * 720).shape == (720, 1280, 3)


def test_decode_stage_keeps_every_row(sources):
    srcs = ["photos/389_535.jpg", "bad/broken.jpg", "icdar2015_toy/img_2.jpg"]
    batch = {
        "image_bytes": np.array([sources[s]["image"] for s in srcs] + [None], dtype=object),
        S.STATUS: np.array(["ok", "ok", "ok", "missing_image"]),  # fixed-width <U13, as Ray may hand it over
        S.ERROR: np.array([None] * 4, dtype=object),
    }
    out = Decode()(batch)
    assert list(out[S.STATUS]) == ["ok", "decode_error", "ok", "missing_image"]
    assert out["image"][0].shape == (535, 389, 3)
    assert out["image"][1].shape == (0, 0, 3)
    assert list(out[S.WIDTH]) == [389, -1, 1280, -1]
    assert "image_bytes" not in out


def test_draft_decode_keeps_min_side_and_matches_full_decode(sources):
    """JPEG draft mode (DCT scaling) shrinks large JPEGs, never below min_side, and the result
    resized to the model's input is close to the fully decoded image resized the same way."""
    from PIL import Image

    from curate.stages.decode import decode_image, decode_pil

    jpegs = [s["image"] for s in sources.values() if s["image"][:2] == b"\xff\xd8"]
    checked = 0
    for data in jpegs:
        try:
            full = decode_image(data)
        except Exception:
            continue  # the broken JPEG
        small = decode_image(data, min_side=128)
        assert min(small.shape[:2]) >= min(128, min(full.shape[:2]))
        if min(full.shape[:2]) >= 256:
            assert small.shape[0] < full.shape[0] and small.shape[1] < full.shape[1]
            a = np.asarray(Image.fromarray(full).resize((64, 64), Image.BICUBIC), dtype=np.float32)
            b = np.asarray(Image.fromarray(small).resize((64, 64), Image.BICUBIC), dtype=np.float32)
            assert np.abs(a - b).mean() < 4.0  # of 255
            checked += 1
        assert decode_pil(data, min_side=128).mode == "RGB"
    assert checked >= 5
    png = next(s["image"] for s in sources.values() if s["image"][:4] == b"\x89PNG")
    assert decode_image(png, min_side=8).shape == decode_image(png).shape  # only JPEG has draft mode


def test_decode_stage_in_draft_mode_keeps_the_full_size_in_the_index(sources):
    """The Decode stage with reduced-size decoding: width/height stay the full image size, the
    array shrinks but keeps the detector's long side and CLIP's short side."""
    from curate.stages.decode import Decode

    big = [s["image"] for name, s in sources.items() if name.startswith("dj_images/img1")]
    big += [s["image"] for name, s in sources.items() if name.startswith("icdar2015_toy/img_1.")]
    n = len(big)
    batch = {"image_bytes": np.array(big, dtype=object), "status": np.array(["ok"] * n, dtype=object),
             "error": np.array([""] * n, dtype=object)}
    full = Decode()(dict(batch))
    draft = Decode(min_side=64, min_long_side=512)(dict(batch))
    assert draft["width"].tolist() == full["width"].tolist()
    assert draft["height"].tolist() == full["height"].tolist()
    shrunk = 0
    for a, b in zip(full["image"], draft["image"]):
        assert max(b.shape[:2]) >= min(512, max(a.shape[:2])) and min(b.shape[:2]) >= min(64, min(a.shape[:2]))
        shrunk += b.shape[0] < a.shape[0]
    assert shrunk >= 1  # the 2048 px photo is decoded at 1/2 or 1/4; a 1280x720 one stays in full


# ---------------------------------------------------------------- shape limits (curate.limits)


def thin_png(mode: str = "1", size: tuple[int, int] = (1, 600_000)) -> bytes:
    """A real PNG of 1 x 600,000 pixels: about 1-2.4 KB, since one colour compresses to nothing."""
    return encode(Image.new(mode, size, 0), "PNG")


@pytest.mark.parametrize("mode", ["1", "L"])
def test_a_thin_png_is_too_large_before_it_is_decoded(mode):
    """A 1 x 600,000 PNG is tiny, but open_clip's shortest-side resize would make it 224 x 134M
    pixels: refused from its header, with a message naming its shape."""
    from curate.limits import Limits
    from curate.stages.decode import decode_sized

    data = thin_png(mode)
    assert len(data) < 2500
    with pytest.raises(DecodeError) as e:
        decode_sized(data, resize_short=224)
    assert e.value.status == S.STATUS_TOO_LARGE
    assert "1x600000 pixels: aspect ratio" in str(e.value) and "max_aspect_ratio 100" in str(e.value)
    with pytest.raises(DecodeError, match="aspect ratio"):
        decode_image(data)  # the aspect ratio is checked even without a resize
    # with the aspect ratio allowed, the size after CLIP's resize is what refuses it
    wide = Limits(max_aspect_ratio=1e6)
    with pytest.raises(DecodeError) as e:
        decode_sized(data, limits=wide, resize_short=224)
    assert e.value.status == S.STATUS_TOO_LARGE
    assert "resized to 224 px would be 30105600000 pixels" in str(e.value)  # 224 x 134,400,000
    # a long-side resize shrinks it: within the limits, and it decodes
    im, size = decode_sized(data, limits=wide, resize_long=512)
    assert size == (1, 600_000) and im.size == (1, 600_000) and im.mode == "RGB"


def test_the_decode_stage_makes_a_thin_png_a_too_large_row(sources):
    srcs = ["photos/389_535.jpg", "icdar2015_toy/img_2.jpg"]
    batch = {
        "image_bytes": np.array([sources[srcs[0]]["image"], thin_png(), sources[srcs[1]]["image"]], dtype=object),
        S.STATUS: np.array(["ok"] * 3, dtype=object),
        S.ERROR: np.array([None] * 3, dtype=object),
    }
    out = Decode(resize_short=224, resize_long=512)(batch)
    assert list(out[S.STATUS]) == ["ok", S.STATUS_TOO_LARGE, "ok"]
    assert "1x600000 pixels" in out[S.ERROR][1]
    assert out["image"][1].shape == (0, 0, 3) and out[S.WIDTH][1] == -1
    np.testing.assert_array_equal(out["image"][0], decode_image(sources[srcs[0]]["image"]))


def test_ordinary_images_are_unchanged_by_the_limits(sources):
    """Every image of the sample shards decodes to the same pixels with the score path's
    checks (CLIP's 224 px shortest-side resize, the detector's 512 px long side)."""
    from curate.stages.decode import decode_sized

    checked = 0
    for name, s in sources.items():
        try:
            full, size = decode_sized(s["image"])
        except DecodeError:
            continue  # the broken JPEG, as before
        checked_im, checked_size = decode_sized(s["image"], resize_short=224, resize_long=512)
        assert checked_size == size, name
        np.testing.assert_array_equal(np.asarray(checked_im), np.asarray(full), err_msg=name)
        checked += 1
    assert checked >= 20


def _rgba_photo(photo: np.ndarray) -> Image.Image:
    """The photo with a real alpha gradient, 4x its size (so that a reduction applies)."""
    big = Image.fromarray(photo).resize((photo.shape[1] * 4, photo.shape[0] * 4), Image.BICUBIC)
    alpha = np.tile(np.linspace(0, 255, big.width, dtype=np.uint8)[None, :], (big.height, 1))
    rgba = big.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def test_reduce_shrinks_other_formats_as_a_full_decode_then_a_reduction(photo):
    """``reduce``: a PNG (any mode), WebP or TIFF is shrunk right after decoding by the factor a
    JPEG would be drafted at; the pixels are those of the full decode reduced the same way (block
    means), within rounding, EXIF orientation and transparency included."""
    from curate.stages.decode import decode_sized

    rgba = _rgba_photo(photo)  # 2096 x 1264
    rgb = rgba.convert("RGB")
    pal = rgb.quantize(64)
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).convert("I;16")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise: width and height swap
    cases = {
        "png rgb": encode(rgb, "PNG"), "png rgba": encode(rgba, "PNG"), "png l": encode(rgb.convert("L"), "PNG"),
        "png la": encode(rgba.convert("LA"), "PNG"), "png p": encode(pal, "PNG"),
        "png p trns": encode(pal, "PNG", transparency=3), "png 1": encode(rgb.convert("1"), "PNG"),
        "png 16-bit": encode(grey16, "PNG"), "webp": encode(rgb, "WEBP", lossless=True),
        "tiff": encode(rgb, "TIFF"), "png exif 6": encode(rgb, "PNG", exif=exif.tobytes()),
    }
    for name, data in cases.items():
        full, size = decode_sized(data)
        small, small_size = decode_sized(data, min_side=300, reduce=True)
        assert small_size == size, name
        assert small.size == full.reduce(4).size, (name, small.size)  # 1264 / 4 = 316 >= 300
        assert min(small.size) >= 300
        diff = np.abs(np.asarray(small, dtype=int) - np.asarray(full.reduce(4), dtype=int))
        assert diff.max() <= 2, (name, diff.max())
    assert decode_sized(cases["png exif 6"])[1] == (1264, 2096)
    # without reduce, or too small to reduce, nothing changes
    data = cases["png rgb"]
    assert decode_sized(data, min_side=300)[0].size == (2096, 1264)
    assert decode_sized(data, min_side=600, reduce=True)[0].size == (1048, 632)  # 1/2 keeps 632 >= 600
    assert decode_sized(data, min_side=700, reduce=True)[0].size == (2096, 1264)  # 1/2 would not


def test_every_kind_of_transparency_gives_the_same_pixels():
    m = members(EDGE)
    rgba = decode_image(m["t01_rgba.png"])
    # The picture: a red/blue striped square on a transparent half, composited on white.
    assert (rgba == 255).all(axis=-1).sum() == 128 * 64
    for key in ("t02_rgb_trns", "t03_p_trns"):
        np.testing.assert_array_equal(decode_image(m[f"{key}.png"]), rgba, err_msg=key)
    grey = decode_image(m["t04_la.png"])
    np.testing.assert_array_equal(decode_image(m["t05_l_trns.png"]), grey)
    assert (grey == 255).all(axis=-1).sum() == 128 * 64 and not (grey == 0).all(axis=-1).any()


def test_one_picture_gives_the_same_scores_whatever_its_storage(edge_rows):
    for group in (TRANSPARENT[:3], TRANSPARENT[3:]):
        rows = [edge_rows[k] for k in group]
        assert all(r[S.STATUS] == S.STATUS_OK for r in rows)
        assert len({(r[S.CLIP_SCORE], r[S.MASKED_CLIP_SCORE], r[S.NUM_TEXT_BOXES]) for r in rows}) == 1, rows


def test_avif_is_an_image_member_and_is_scored(edge_rows):
    r = edge_rows["f01_avif"]
    assert r[S.STATUS] == S.STATUS_OK and (r[S.WIDTH], r[S.HEIGHT]) == (524, 316)
    assert np.isfinite(r[S.CLIP_SCORE])


def test_cmyk_bomb_zero_size_upper_case_and_hard_link(edge_rows):
    m = members(EDGE)
    expected = np.asarray(Image.open(io.BytesIO(m["f02_cmyk.jpg"])).convert("RGB"))
    np.testing.assert_array_equal(decode_image(m["f02_cmyk.jpg"]), expected)
    assert edge_rows["f02_cmyk"][S.STATUS] == S.STATUS_OK
    assert edge_rows["f03_bomb"][S.STATUS] == S.STATUS_TOO_LARGE
    zero = edge_rows["f04_zero"]
    assert zero[S.STATUS] == S.STATUS_DECODE_ERROR
    assert zero[S.ERROR] == "zero-size image: the PNG header says 0x16 pixels"
    assert edge_rows["k01_upper"][S.STATUS] == S.STATUS_OK
    link = edge_rows["h01_hardlink"]
    assert link[S.STATUS] == S.STATUS_MISSING_IMAGE and "'h01_hardlink.png': not a regular file" in link[S.ERROR]
