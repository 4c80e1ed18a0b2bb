"""Issue 13: no sample can stop a pool. Each case of ``tests/data/robustness/CASES.md`` (copied
from ``shared/cases/robustness``) is checked for its right value: scores, pixels, rows, messages."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import schema as S
from curate.cli import main
from curate.io.index import read_index
from curate.io.samples import MAX_CAPTION_CHARS, clean_caption, sample_to_record
from curate.io.shards import expand_shards, read_shard
from curate.stages.base import Stage, run_isolated
from curate.stages.decode import decode_image
from tests.conftest import DATA, REPO

CASES = DATA / "robustness"
EDGE = CASES / "edge-000000.tar"
SURR = CASES / "surr-000000.tar"
TRANSPARENT = ["t01_rgba", "t02_rgb_trns", "t03_p_trns", "t04_la", "t05_l_trns"]


def members(shard) -> dict[str, bytes]:
    with tarfile.open(shard) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def edge_rows():
    """The edge shard through the whole stage chain (no Ray), DBNet and the tiny CLIP."""
    from curate.io.index import records_to_table
    from curate.models import resolve_pretrained
    from curate.scoring.config import load_config
    from curate.scoring.plan import StageChain
    from curate.scoring.records import records_to_batch, shard_record_list

    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.detect.detector = "dbnet"
    chain = StageChain(cfg, resolve_pretrained(cfg.score.clip_model, cfg.score.pretrained, cfg.score.cache_dir))
    table = records_to_table(chain(records_to_batch(shard_record_list(str(EDGE)))))
    return {r[S.KEY]: r for r in table.to_pylist()}


# --------------------------------------------------------------------------- images


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


def test_one_row_per_key_of_the_edge_shard(edge_rows):
    keys = {name.split(".", 1)[0] for name in members(EDGE)} | {"h01_hardlink"}
    assert set(edge_rows) == keys and len(edge_rows) == 14  # CASES.md says 15; the tar holds 14 keys
    assert all(r[S.STATUS] in S.STATUSES for r in edge_rows.values())


# --------------------------------------------------------------------------- captions


def test_a_nan_json_caption_says_it_is_not_a_string(edge_rows):
    r = edge_rows["c01_nan"]
    assert r[S.STATUS] == S.STATUS_MISSING_CAPTION
    assert r[S.ERROR] == "the .json 'caption' is NaN, not a string"


@pytest.mark.parametrize("value, message", [
    (3, "a number"), ([1, 2], "a list"), ({"a": 1}, "an object"), (True, "a boolean"), (None, "null"),
    (float("inf"), "Infinity"),
])
def test_every_non_string_json_caption_is_named(value, message):
    rec = sample_to_record({"__key__": "k", "__url__": "/x/s.tar", "jpg": b"x",
                            "json": json.dumps({"caption": value}).encode()})
    assert rec[S.STATUS] == S.STATUS_MISSING_CAPTION
    assert rec[S.ERROR] == f"the .json 'caption' is {message}, not a string"


def test_caption_policy():
    assert clean_caption(b"caf\xe9 au lait") == ("caf\ufffd au lait", ["invalid UTF-8 replaced by U+FFFD"])
    assert clean_caption("a cat \ud83d") == ("a cat \ufffd", ["lone surrogate replaced by U+FFFD"])
    assert clean_caption("a\x00b\x07c\td\ne\x85") == ("abc\td\ne", ["control characters removed"])
    assert clean_caption("\ufeffa dog".encode("utf-8")) == ("a dog", [])  # a BOM in bytes is dropped
    long, fixes = clean_caption("word " * 30_000)
    assert len(long) <= MAX_CAPTION_CHARS and fixes == [f"cut from 149999 to {MAX_CAPTION_CHARS} characters"]
    long.encode("utf-8")
    empty = sample_to_record({"__key__": "k", "__url__": "/x/s.tar", "jpg": b"x", "txt": b"\x00\x01 "})
    assert empty[S.STATUS] == S.STATUS_MISSING_CAPTION and "empty caption after cleaning" in empty[S.ERROR]
    bad_json = sample_to_record({"__key__": "k", "__url__": "/x/s.tar", "jpg": b"x", "json": b"{\xff"})
    assert "(.json is not valid JSON" in bad_json[S.ERROR]


# --------------------------------------------------------------------------- identity


def test_samples_sharing_a_uid_in_a_shard_are_both_flagged(edge_rows):
    d1, d2 = edge_rows["d01_dupuid"], edge_rows["d02_dupuid"]
    assert d1[S.UID] == d2[S.UID] == "0123456789abcdef0123456789abcdef"
    assert d1[S.STATUS] == d2[S.STATUS] == S.STATUS_DUPLICATE_UID
    assert "'d02_dupuid'" in d1[S.ERROR] and "'d01_dupuid'" in d2[S.ERROR]
    assert d1[S.CLIP_SCORE] is None


def test_reshard_never_writes_one_sample_in_place_of_another(tmp_path):
    from curate.io.reshard import reshard
    from curate.io.subset import uids_to_datacomp

    # The subset names the shared uid twice (as a filter over both rows would) and t01_rgba.
    rgba_uid = sample_to_record(next(s for s in read_shard(str(EDGE)).samples if s["__key__"] == "t01_rgba"))[S.UID]
    uid = "0123456789abcdef0123456789abcdef"
    np.save(tmp_path / "subset.npy", uids_to_datacomp([uid, uid, rgba_uid]))
    summary = reshard(tmp_path / "subset.npy", str(EDGE), tmp_path / "out")
    assert summary.written_samples == 1
    assert sorted(summary.shared_uid_samples) == ["edge-000000.tar/d01_dupuid", "edge-000000.tar/d02_dupuid"]
    written = members(tmp_path / "out" / "00000000.tar")
    assert written["000000000.png"] == members(EDGE)["t01_rgba.png"]


def test_a_broken_sample_sharing_a_uid_is_never_written_for_it(tmp_path):
    """One sample is ok, another with the same uid has no caption: the uid names neither."""
    from curate.io.reshard import reshard
    from curate.io.subset import uids_to_datacomp

    uid = "fedcba9876543210fedcba9876543210"
    image = members(EDGE)["k01_upper.JPG"]
    p = tmp_path / "pair.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (("a.jpg", image), ("a.txt", b"a caption"), ("a.json", json.dumps({"uid": uid}).encode()),
                           ("b.jpg", image[:-10]), ("b.json", json.dumps({"uid": uid}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    from curate.scoring.records import shard_record_list

    statuses = [(r[S.KEY], r[S.STATUS]) for r in shard_record_list(str(p))]
    assert statuses == [("a", "duplicate_uid"), ("b", "duplicate_uid")]
    b = shard_record_list(str(p))[1]
    assert "also missing_caption" in b[S.ERROR]
    np.save(tmp_path / "subset.npy", uids_to_datacomp([uid]))
    summary = reshard(tmp_path / "subset.npy", str(p), tmp_path / "out")
    assert summary.written_samples == 0 and sorted(summary.shared_uid_samples) == ["pair.tar/a", "pair.tar/b"]


def test_filter_never_keeps_a_uid_shared_across_shards(tmp_path):
    from curate.filters import run_filter
    from tests.filters.test_filters import ROWS, make_index

    index = make_index(tmp_path / "index", ROWS, "a-000000.tar")
    other = [("01", "ok", "another sample entirely", "en", 640, 480, 0.0, 0.3, 0.3),  # uid 01, other caption
             ("07",) + ROWS[7][1:],  # uid 07 on a decode_error row of another sample
             ("05",) + ROWS[4][1:]]  # uid 05: a copy of the same sample (upweighted)
    make_index(index, other, "b-000000.tar")
    summary = run_filter(index, "tmars(threshold=0.26)", tmp_path / "subset")
    kept = pq.read_table(tmp_path / "subset" / "subset.parquet").to_pylist()
    # 01 (both rows) and 07 are dropped; 05's two copies are kept, so its uid is listed twice.
    assert sorted((r[S.KEY], r[S.SHARD]) for r in kept) == [
        ("05", "a-000000.tar"), ("05", "b-000000.tar"), ("06", "a-000000.tar")]
    assert summary.shared_uid_rows == 3
    assert "shared uid    3 row(s)" in summary.format()


def test_non_adjacent_and_repeated_members_give_one_row_per_key(tmp_path):
    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    jpg = (DATA / "robustness" / "edge-000000.tar")
    image = members(jpg)["k01_upper.JPG"]
    p = tmp_path / "order.tar"
    with tarfile.open(p, "w") as tf:
        add(tf, "a.jpg", image)
        add(tf, "b.jpg", image)
        add(tf, "a.txt", b"caption of a")  # not adjacent to a.jpg
        add(tf, "b.txt", b"caption of b")
        add(tf, "b.txt", b"caption of b")  # repeated, same bytes
        add(tf, "c.jpg", image)
        add(tf, "c.txt", b"one")
        add(tf, "c.txt", b"two")  # repeated, other bytes: which is c's caption is unknown
    recs = [sample_to_record(s) for s in read_shard(str(p)).samples]
    assert [(r[S.KEY], r[S.STATUS], r[S.TEXT]) for r in recs] == [
        ("a", "ok", "caption of a"), ("b", "ok", "caption of b"), ("c", "invalid_sample", "one")]
    assert "'c.txt' appears more than once" in recs[2][S.ERROR]


# --------------------------------------------------------------------------- isolation


class _Explodes(Stage):
    """A stage that raises on any batch holding the caption "boom" (the mechanism under test)."""

    name = "explodes"
    error_status = S.STATUS_SCORE_ERROR
    calls = 0

    def process(self, batch, rows):
        self.calls += 1
        out = np.full(len(batch[S.STATUS]), -1, dtype=np.int64)
        for i in rows:
            if batch[S.TEXT][i] == "boom":
                raise RuntimeError("bad sample")
            out[i] = len(batch[S.TEXT][i])
        batch["length"] = out
        return batch


def test_a_row_that_raises_fails_alone():
    batch = {S.TEXT: np.array(["ab", "boom", "abc", "x"], dtype=object),
             S.STATUS: np.array(["ok", "ok", "ok", "decode_error"], dtype=object),
             S.ERROR: np.array(["", "", "", "broken"], dtype=object),
             "image": np.zeros((4, 2, 2, 3), np.uint8)}
    out = run_isolated(_Explodes(), batch)
    assert out["length"].tolist() == [2, -1, 3, -1]
    assert out[S.STATUS].tolist() == ["ok", "score_error", "ok", "decode_error"]
    assert out[S.ERROR][1] == "explodes: RuntimeError: bad sample" and out[S.ERROR][3] == "broken"
    assert out["image"].shape[0] == 4


def test_one_bad_row_costs_a_bisection_not_a_row_by_row_rerun():
    n = 64
    texts = np.array(["ok"] * n, dtype=object)
    texts[37] = "boom"
    stage = _Explodes()
    out = run_isolated(stage, {S.TEXT: texts, S.STATUS: np.array(["ok"] * n, dtype=object),
                               S.ERROR: np.array([""] * n, dtype=object)})
    assert out[S.STATUS].tolist().count("score_error") == 1 and out[S.STATUS][37] == "score_error"
    assert (out["length"] == 2).sum() == n - 1
    assert stage.calls <= 2 * 6 + 2  # whole batch, two halves per level of log2(64) = 6, the default fill


def test_the_real_language_stage_isolates_a_caption_it_raises_on():
    from curate.stages.language import CaptionLanguage

    # A lone surrogate that reached the stage without the boundary's cleaning: fastText raises.
    batch = {S.TEXT: np.array(["a dog on a beach", "a cat \ud83d", ""], dtype=object),
             S.STATUS: np.array(["ok", "ok", "missing_caption"], dtype=object),
             S.ERROR: np.array(["", "", "empty caption"], dtype=object)}
    out = CaptionLanguage()(batch)
    assert (out[S.CAPTION_LANG].tolist()[0] == "en"
            and out[S.STATUS].tolist() == ["ok", "language_error", "missing_caption"])
    assert out[S.ERROR][1].startswith("language: ")


def test_a_shard_whose_writer_fails_is_named_and_the_others_are_written(tmp_path):
    from curate.scoring.records import records_to_batch, shard_record_list
    from curate.scoring.writer import ShardTracker, write_parts

    done = []
    tracker = ShardTracker(tmp_path, {}, done.append, finalize="local")
    good = shard_record_list(str(SURR))
    bad = shard_record_list(str(EDGE))[:2]
    for r in bad:
        r["_shard_n"] = 2
    bad[1]["_seq"] = 8  # rows that do not add up (positions 0 and 8 of 2): an internal fault
    tracker.add(write_parts(records_to_batch(bad + good), str(tmp_path)))
    results = {r.url: r for r in done}
    assert results[str(SURR)].status == "complete" and (tmp_path / "surr-000000.parquet").is_file()
    assert results[str(EDGE)].status == "failed" and "internal error" in results[str(EDGE)].error


def test_a_part_that_cannot_be_written_fails_its_shard_only(tmp_path):
    from curate.scoring.records import records_to_batch, shard_record_list
    from curate.scoring.writer import ShardTracker, write_parts

    (tmp_path / "_parts").mkdir()
    (tmp_path / "_parts" / "edge-000000.parquet").write_text("a file where the shard's part folder goes")
    done = []
    tracker = ShardTracker(tmp_path, {}, done.append, finalize="local")
    records = shard_record_list(str(EDGE)) + shard_record_list(str(SURR))
    tracker.add(write_parts(records_to_batch(records), str(tmp_path)))
    results = {r.url: r for r in done}
    assert results[str(SURR)].status == "complete"
    assert results[str(EDGE)].status == "failed" and "could not be written" in results[str(EDGE)].error


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def hostile_index(ray_cluster, tmp_path_factory):
    """``curate score`` (CLI, in process) over the edge shard, the surrogate shard under names
    with glob, brace, quote and space characters, and a decoy that a glob would also match."""
    d = tmp_path_factory.mktemp("hostile pool")
    shutil.copy(EDGE, d / "edge-000000.tar")
    shutil.copy(SURR, d / "pool[1].tar")
    shutil.copy(SURR, d / "it's {a,b} *x?.tar")
    with tarfile.open(d / "pool1.tar", "w") as tf:  # what "pool[1].tar" matches as a glob
        for name in ("decoy.jpg", "decoy.txt"):
            data = members(EDGE)["k01_upper.JPG"] if name.endswith("jpg") else b"a decoy sample"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = d / "index [x]"
    shards = [str(d / "edge-000000.tar"), str(d / "pool[1].tar"), str(d / "it's {a,b} *x?.tar"), str(d / "pool1.tar")]
    rc = main(["score", *shards, "--out", str(out), "--config", str(REPO / "pipelines" / "tiny_cpu.yaml"),
               "--detector", "dbnet", "--num-cpus", "2", "--no-progress"])
    return d, out, rc


def test_a_lone_surrogate_never_stops_the_job(hostile_index):
    d, out, rc = hostile_index
    assert rc == 0
    rows = read_index(out).to_pylist()
    surr = [r for r in rows if r[S.KEY] == "s02_surrogate"]
    assert len(surr) == 2  # once from each of its two copies
    for r in surr:
        assert r[S.STATUS] == S.STATUS_OK and r[S.TEXT] == "a photo of a cat on a sofa \ufffd"
        assert np.isfinite(r[S.CLIP_SCORE])
    assert all(r[S.STATUS] == S.STATUS_OK for r in rows if r[S.KEY] == "s01_plain")
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards_by_status"] == {"complete": 4} and summary["num_samples"] == 14 + 2 + 2 + 1


def test_every_command_reads_a_literal_path_exactly_once(hostile_index, tmp_path, capsys):
    from curate.query import query

    d, out, _ = hostile_index
    rows = query("SELECT shard, count(*) AS n FROM scores GROUP BY shard", out).to_pylist()
    per_shard = {r["shard"].rsplit("/", 1)[-1]: r["n"] for r in rows}
    assert per_shard == {"edge-000000.tar": 14, "pool[1].tar": 2, "it's {a,b} *x?.tar": 2, "pool1.tar": 1}
    assert expand_shards(str(d / "pool[1].tar")) == [str(d / "pool[1].tar")]
    assert expand_shards(str(d / "it's {a,b} *x?.tar")) == [str(d / "it's {a,b} *x?.tar")]
    # filter + reshard from the literal name: the two samples of pool[1].tar, never the decoy's.
    assert main(["filter", "--index", str(out), "--rule", "clip_score(fraction=1.0)", "--out", str(tmp_path / "s"),
                 "--where", "shard LIKE '%pool[1].tar'"]) == 0
    assert main(["reshard", str(d / "pool[1].tar"), "--subset", str(tmp_path / "s" / "subset.npy"),
                 "--out", str(tmp_path / "r")]) == 0
    assert len(members(tmp_path / "r" / "00000000.tar")) == 4  # 2 samples x (jpg + txt or json)
    # train's data stream reads the literal shard: two samples an epoch, the surrogate one cleaned.
    from curate.io.subset import load_subset_counts
    from curate.train.data import SubsetStream

    stream = SubsetStream(expand_shards(str(d / "pool[1].tar")), load_subset_counts(str(tmp_path / "s" / "subset.npy")),
                          None, None, local_batch_size=1)
    first_epoch = []
    for rec, epoch in stream._records(0, []):
        if epoch:
            break
        first_epoch.append(rec[S.KEY])
    assert sorted(first_epoch) == ["s01_plain", "s02_surrogate"]
    # report reads the images back from each literal shard name.
    assert main(["report", "--index", str(out), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()


def test_where_is_one_expression_and_nothing_else_runs(hostile_index, tmp_path, capsys):
    _, out, _ = hostile_index
    target = tmp_path / "x.csv"
    where = (f"TRUE), FALSE); COPY (SELECT 42 AS x) TO '{target}'; SELECT uid, shard, key FROM scores "
             "WHERE coalesce((TRUE")
    assert main(["filter", "--index", str(out), "--rule", "tmars(fraction=1.0)", "--where", where,
                 "--out", str(tmp_path / "o")]) == 2
    assert "not one SQL expression" in capsys.readouterr().err and not target.exists()
    for where in ("FALSE), FALSE) OR coalesce((TRUE", "TRUE UNION SELECT TRUE", "1 FROM scores", "x AS y"):
        assert main(["filter", "--index", str(out), "--where", where, "--out", str(tmp_path / "o")]) == 2
    # Whatever --where says, a row whose status is not ok is never kept.
    assert main(["filter", "--index", str(out), "--where", "status <> 'ok' OR TRUE",
                 "--out", str(tmp_path / "all")]) == 0
    statuses = set(query_statuses(out, tmp_path / "all"))
    assert statuses == {"ok"}
    # The summary is strict JSON: a keep-all threshold is "-inf", never -Infinity.
    assert main(["filter", "--index", str(out), "--rule", "tmars(fraction=1.0)", "--out", str(tmp_path / "f1")]) == 0
    summary = json.loads((tmp_path / "f1" / "filter_summary.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert list(summary["thresholds"].values()) == ["-inf"]
    capsys.readouterr()


def query_statuses(index, subset_dir):
    from curate.query import query

    keys = set(pq.read_table(subset_dir / "subset.parquet").column(S.UID).to_pylist())
    return [r["status"] for r in query("SELECT uid, status FROM scores", index).to_pylist() if r["uid"] in keys]


def test_query_cannot_touch_files(hostile_index, tmp_path, capsys):
    from curate.query import QueryError, query

    _, out, _ = hostile_index
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM '{EDGE}'",
                "SELECT * FROM read_parquet('/tmp/*.parquet')", "SELECT current_setting('enable_external_access') AND "
                "(SELECT count(*) FROM glob('/etc/*')) > 0"):
        with pytest.raises(QueryError):
            query(sql, out)
    assert main(["query", f"COPY (SELECT 1) TO '{tmp_path / 'y.csv'}'", "--index", str(out)]) == 2
    assert not (tmp_path / "y.csv").exists()
    capsys.readouterr()


def test_copies_of_one_sample_are_one_sample_for_reshard(tmp_path):
    """Resharding an upweighted reshard again: the copies (same bytes, same uid) are one sample,
    written as often as the subset lists it, and never reported as a shared uid."""
    from curate.io.reshard import reshard
    from curate.io.subset import uids_to_datacomp

    shard = str(DATA / "shards" / "sample-000000.tar")  # samples with a DataComp uid in their .json
    uid = sample_to_record(read_shard(shard).samples[0])[S.UID]
    np.save(tmp_path / "twice.npy", uids_to_datacomp([uid, uid]))
    assert reshard(tmp_path / "twice.npy", shard, tmp_path / "a").written_samples == 2
    again = reshard(tmp_path / "twice.npy", str(tmp_path / "a" / "00000000.tar"), tmp_path / "b")
    assert again.written_samples == 2 and again.shared_uid_samples == []
