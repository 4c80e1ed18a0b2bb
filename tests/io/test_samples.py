"""``curate.io.samples``: a tar sample to a record: the caption policy, captions that are not
strings, samples of one shard sharing a uid."""

from __future__ import annotations

import json

import pytest

from curate import schema as S
from curate.io.samples import MAX_CAPTION_CHARS, clean_caption, sample_to_record


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


def test_samples_sharing_a_uid_in_a_shard_are_both_flagged(edge_rows):
    d1, d2 = edge_rows["d01_dupuid"], edge_rows["d02_dupuid"]
    assert d1[S.UID] == d2[S.UID] == "0123456789abcdef0123456789abcdef"
    assert d1[S.STATUS] == d2[S.STATUS] == S.STATUS_DUPLICATE_UID
    assert "'d02_dupuid'" in d1[S.ERROR] and "'d01_dupuid'" in d2[S.ERROR]
    assert d1[S.CLIP_SCORE] is None
