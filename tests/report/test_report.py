"""`curate report` on a real scored index, rendered in a real headless Chromium (Debian `chromium`,
driven by Selenium through `chromedriver`): the page is not blank and every image in it loads."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.filters import run_filter
from curate.io.index import index_files, read_index
from curate.report import build_report, score_bands

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def indexed(scored, tmp_path_factory):
    """The session's scored index (3 sample shards: photos, text images, a broken JPEG, no
    caption; plus a truncated, an empty and an unreadable shard; CRAFT and the tiny CLIP) and a
    T-MARS subset of it."""
    out, _, summary = scored
    d = tmp_path_factory.mktemp("subset")
    run_filter(out, "tmars(fraction=0.5)", d)
    return out, d / "subset.parquet", summary


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        assert Path(exe).exists(), f"{exe} missing: `make test` installs Debian's chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def render(browser, page: Path) -> tuple[list[dict], np.ndarray, str]:
    """Load the page; return its images' load state, a screenshot as an array, and the page text."""
    from PIL import Image

    browser.get(page.resolve().as_uri())
    browser.execute_async_script(  # wait for every image to load or fail
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.complete ? 0 :"
        " new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => done(0));")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
        " width: i.naturalWidth}))")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    return images, shot, browser.execute_script("return document.body.innerText")


@pytest.mark.slow
def test_report_renders_with_every_image_loaded(indexed, browser, tmp_path):
    index_dir, subset, scored_summary = indexed
    out = tmp_path / "report"
    summary = build_report(index_dir, out, subset=str(subset), per_band=4)
    index = read_index(index_dir)
    assert summary.num_samples == index.num_rows
    images, shot, text = render(browser, summary.html)
    # every image in the page loads, from files beside it (self-contained, no URL outside out/)
    srcs = {i["src"] for i in images}
    assert srcs == {f"images/{f.name}" for f in (out / "images").iterdir()}
    assert len(srcs) == summary.num_images > 10
    bad = [i for i in images if not i["complete"] or i["width"] == 0]
    assert not bad, bad
    for i in images:
        assert (out / i["src"]).resolve().is_relative_to(out.resolve())
    # the screenshot is a page, not a blank canvas
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500
    # what the page says is what the index holds
    ok = int(np.sum(np.asarray(index.column(S.STATUS).to_pylist()) == S.STATUS_OK))
    # every shard of the job, also the unreadable one that has no index file (from _summary.json)
    assert f"{index.num_rows} samples in {len(scored_summary.shards)} shards, {ok} ok" in text
    assert "zzz-broken.tar" in text and "unreadable" in text
    kept = pq.read_table(subset).num_rows
    assert summary.subset_kept == kept and f"Kept {kept} of {index.num_rows} samples" in text
    assert "truncated" in text and "decode_error" in text and "missing_caption" in text
    assert "random-init CLIP" in text
    # the bands: highest first, 5 quantile bands of masked_clip_score over ok rows
    scores = index.column("masked_clip_score").to_numpy(zero_copy_only=False).astype(float)
    edges = score_bands(scores[np.asarray(index.column(S.STATUS).to_pylist()) == S.STATUS_OK], 5)
    assert f"masked_clip_score in [{edges[4]:.4f}, {edges[5]:.4f}]" in text
    assert text.index(f"[{edges[4]:.4f}") < text.index(f"[{edges[0]:.4f}")


@pytest.mark.slow
def test_text_boxes_are_drawn_and_masked(indexed, tmp_path):
    """An example with detected text: the thumbnail has red box pixels the masked one lacks."""
    from PIL import Image

    summary = build_report(indexed[0], tmp_path / "r", band_by="clip_score", bands=1, per_band=100)
    index = read_index(indexed[0]).to_pylist()
    with_text = [r for r in index if r[S.STATUS] == S.STATUS_OK and (r["text_area_frac"] or 0) > 0.02]
    shown = [r for r in index if r[S.STATUS] == S.STATUS_OK and r["clip_score"] is not None]
    assert with_text and summary.num_examples == len(shown)
    for i, r in enumerate(index):
        if r not in with_text[:5]:
            continue
        stem = tmp_path / "r" / "images" / f"{i:07d}"
        orig = np.asarray(Image.open(f"{stem}.jpg").convert("RGB")).astype(int)
        masked = np.asarray(Image.open(f"{stem}.masked.jpg").convert("RGB")).astype(int)
        red = (orig[..., 0] > 200) & (orig[..., 1] < 60) & (orig[..., 2] < 60)
        red_masked = (masked[..., 0] > 200) & (masked[..., 1] < 60) & (masked[..., 2] < 60)
        assert red.sum() > red_masked.sum() + 20, r[S.UID]


@pytest.mark.slow
def test_captions_are_escaped_and_unreadable_images_explained(indexed, pool, browser, tmp_path):
    """A caption holding HTML is shown as text, never run; a moved shard gives a reason, not a
    broken image; `--shards` finds moved shards by name."""
    idx = tmp_path / "index"
    idx.mkdir()
    hostile = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b>'
    hostile_done = False
    for f in index_files(indexed[0]):
        t = pq.read_table(f)
        texts = t.column(S.TEXT).to_pylist()
        if texts and not hostile_done:  # (the empty shard's index file has no row)
            texts[0], hostile_done = hostile, True
        t = t.set_column(t.schema.get_field_index(S.TEXT), S.TEXT, pa.array(texts, pa.string()))
        pq.write_table(t.replace_schema_metadata(t.schema.metadata), idx / f.name)
    summary = build_report(idx, tmp_path / "r", band_by="clip_score", bands=1, per_band=100)
    images, _, text = render(browser, summary.html)
    assert browser.title != "pwned" and hostile in text
    assert all(i["complete"] and i["width"] > 0 for i in images)
    # the shards move: images cannot be read back, and each example says why
    moved = tmp_path / "moved"
    shutil.copytree(pool, moved)
    gone = tmp_path / "gone-index"
    shutil.copytree(idx, gone)
    for f in index_files(gone):
        t = pq.read_table(f)
        urls = [str(tmp_path / "nowhere" / Path(u).name) for u in t.column(S.SHARD).to_pylist()]
        t = t.set_column(t.schema.get_field_index(S.SHARD), S.SHARD, pa.array(urls, pa.string()))
        pq.write_table(t.replace_schema_metadata(t.schema.metadata), f)
    lost = build_report(gone, tmp_path / "lost", band_by="clip_score", bands=1, per_band=5)
    images, _, text = render(browser, lost.html)
    assert lost.missing == lost.num_examples and "image not shown" in text
    assert all(i["complete"] and i["width"] > 0 for i in images)  # only the plots remain
    found = build_report(gone, tmp_path / "found", shards=[str(moved / "*.tar")], band_by="clip_score", bands=1,
                         per_band=5)
    assert found.missing == 0


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", "--index", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "curate report: error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--index", str(tmp_path), "--out", str(tmp_path / "r"), "--band-by", "width"])


@pytest.mark.slow
def test_cli_report_on_the_index(indexed, tmp_path, capsys):
    rc = main(["report", "--index", str(indexed[0]), "--subset", str(indexed[1].with_suffix(".npy")),
               "--out", str(tmp_path / "r"), "--per-band", "2"])
    assert rc == 0
    assert "subset kept" in capsys.readouterr().out
    assert (tmp_path / "r" / "index.html").is_file()
    assert main(["report", "--index", str(indexed[0]), "--subset", str(tmp_path / "nope.npy"),
                 "--out", str(tmp_path / "r2")]) == 2
