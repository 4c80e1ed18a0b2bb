"""Shard listing, reading, truncation and sample records, on the real bundled shards."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from curate import schema as S
from curate.cli import main
from curate.io.samples import sample_to_record
from curate.io.shards import (
    SHARD_COMPLETE,
    SHARD_DAMAGED,
    SHARD_TRUNCATED,
    SHARD_UNREADABLE,
    expand_shards,
    read_shard,
    stable_uid,
)
from tests.conftest import DATA, EDGE, NEMO_SHARD, SHARD_SPEC, SHARDS, members, samples_per_shard


def test_expand_brace_range_and_glob():
    urls = expand_shards(SHARD_SPEC)
    assert urls == [str(p.resolve()) for p in SHARDS]
    assert expand_shards(str(DATA / "shards" / "*.tar")) == urls
    assert expand_shards([SHARD_SPEC, str(SHARDS[0])]) == urls  # de-duplicated
    assert expand_shards("file://" + str(DATA / "shards" / "sample-00000[01].tar")) == [
        str(p.resolve()) for p in SHARDS[:2]
    ]
    # One shard, three spellings: one shard.
    rel = os.path.relpath(SHARDS[0])
    assert expand_shards([rel, str(SHARDS[0].resolve()), "file://" + str(SHARDS[0].resolve())]) == urls[:1]
    with pytest.raises(FileNotFoundError):
        expand_shards(str(DATA / "shards" / "nothing-*.tar"))


def test_a_typo_in_a_shard_spec_fails_before_any_job(tmp_path):
    """A local path or brace range that names no file is an error naming it (issue 30), not a job
    that starts Ray and reports ``unreadable`` shards after a minute."""
    typo = str(DATA / "shards" / "sampel-{000000..000002}.tar")
    with pytest.raises(FileNotFoundError, match=r"3 of 3 shards do not exist: .*sampel-000000\.tar"):
        expand_shards(typo)
    with pytest.raises(FileNotFoundError, match=r"1 of 4 shards do not exist: .*sample-000009\.tar"):
        expand_shards([SHARD_SPEC, str(DATA / "shards" / "sample-000009.tar")])
    # Remote URLs are not looked up before the job (no request is made here).
    assert expand_shards("s3://bucket/pool/{0..1}.tar") == ["s3://bucket/pool/0.tar", "s3://bucket/pool/1.tar"]
    subset = tmp_path / "s.npy"
    np.save(subset, np.array([(1, 2)], np.dtype("u8,u8")))
    for argv in (["score", typo, "--out", str(tmp_path / "idx"), "--config", "pipelines/tiny_cpu.yaml"],
                 ["reshard", typo, "--subset", str(subset), "--out", str(tmp_path / "r")],
                 ["train", typo, "--out", str(tmp_path / "t")]):
        r = subprocess.run([sys.executable, "-m", "curate.cli", *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (argv[0], r.stdout, r.stderr)
        assert "shards do not exist" in r.stderr and "sampel-000000.tar" in r.stderr, (argv[0], r.stderr)
        assert "Traceback" not in r.stderr and "ray" not in r.stderr.lower(), (argv[0], r.stderr)


@pytest.mark.parametrize("shard", SHARDS, ids=lambda p: p.name)
def test_read_bundled_shards(shard):
    r = read_shard(str(shard))
    assert r.status == SHARD_COMPLETE and r.error is None
    assert len(r.samples) == samples_per_shard(shard)
    for s in r.samples:
        assert "json" in s and s["__url__"] == str(shard)


def test_nemo_curator_shard_reads_as_it_is():
    r = read_shard(str(NEMO_SHARD))
    assert r.status == SHARD_COMPLETE
    assert [s["__key__"] for s in r.samples] == ["0"]
    rec = sample_to_record(r.samples[0])
    assert rec[S.STATUS] == S.STATUS_OK
    assert rec[S.TEXT].startswith("A wine bottle outfitted with two forks")
    assert rec[S.UID] == stable_uid(str(NEMO_SHARD), "0")  # its json has no DataComp uid
    assert len(rec[S.UID]) == 32
    assert rec["image_bytes"][:2] == b"\xff\xd8"


def test_records_use_datacomp_uid_and_flag_bad_samples():
    recs = [sample_to_record(s) for shard in SHARDS for s in read_shard(str(shard)).samples]
    assert len({r[S.UID] for r in recs}) == len(recs)
    for r in recs:
        assert len(r[S.UID]) == 32 and int(r[S.UID], 16) >= 0
    by_status = {}
    for r in recs:
        by_status.setdefault(r[S.STATUS], []).append(r)
    assert len(by_status[S.STATUS_MISSING_CAPTION]) == 1
    assert set(by_status) == {S.STATUS_OK, S.STATUS_MISSING_CAPTION}  # broken JPEG fails later, at decode


def test_caption_from_json_when_no_txt_and_missing_image():
    sample = {"__key__": "k", "__url__": "x.tar", "json": json.dumps({"caption": " a dog "}).encode(), "jpg": b"..."}
    assert sample_to_record(sample)[S.TEXT] == "a dog"
    rec = sample_to_record({"__key__": "k", "__url__": "x.tar", "txt": b"a cat"})
    assert rec[S.STATUS] == S.STATUS_MISSING_IMAGE and "txt" in rec[S.ERROR]
    rec = sample_to_record({"__key__": "k", "__url__": "x.tar", "jpg": b"...", "json": b"{not json"})
    assert rec[S.STATUS] == S.STATUS_MISSING_CAPTION


def _cut(src, dst, nbytes):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:nbytes])
    return data


def test_truncated_inside_member(tmp_path):
    shard = SHARDS[1]
    offsets = []
    with tarfile.open(shard) as tf:
        for m in tf.getmembers():
            offsets.append((m.name, m.offset_data, m.size))
    # Cut in the middle of the 4th sample's image.
    name, off, size = next(o for o in offsets if o[0].startswith("000010003.") and o[0].endswith(".jpg"))
    cut = tmp_path / "cut.tar"
    _cut(shard, cut, off + size // 2)
    r = read_shard(str(cut))
    assert r.status == SHARD_TRUNCATED and r.error
    assert [s["__key__"] for s in r.samples] == ["000010000", "000010001", "000010002", "000010003"]
    assert r.samples[-1].get("__truncated__") is True
    assert not any(s.get("__truncated__") for s in r.samples[:-1])
    assert sample_to_record(r.samples[-1])[S.STATUS] == S.STATUS_TRUNCATED


def test_truncated_at_header_boundary(tmp_path):
    shard = SHARDS[1]
    with tarfile.open(shard) as tf:
        m = [m for m in tf.getmembers() if m.name.startswith("000010005.")][0]
    cut = tmp_path / "cut.tar"
    _cut(shard, cut, m.offset)  # ends exactly before a header: tarfile alone would not notice
    r = read_shard(str(cut))
    assert r.status == SHARD_TRUNCATED
    assert len(r.samples) == 5


def test_empty_zero_byte_and_garbage_shards(tmp_path):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    r = read_shard(str(empty))
    assert r.status == SHARD_COMPLETE and r.samples == []
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    assert read_shard(str(zero)).status == SHARD_UNREADABLE
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(3000))
    assert read_shard(str(garbage)).status == SHARD_UNREADABLE
    r = read_shard(str(tmp_path / "missing.tar"))
    assert r.status == SHARD_UNREADABLE and "missing.tar" in r.error


def test_webdataset_agrees_on_keys():
    """Our reader groups members exactly as webdataset's own tar iterator does."""
    import webdataset as wds

    for shard in SHARDS:
        theirs = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
        ours = [s["__key__"] for s in read_shard(str(shard)).samples]
        assert ours == theirs


def _tar(members, fmt=tarfile.USTAR_FORMAT, encoding="utf-8") -> bytes:
    """A tar built from ``(name, bytes | None, type)`` members (type: REGTYPE / LNKTYPE / DIRTYPE)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding=encoding) as tf:
        for m in members:
            name, data = m[0], m[1]
            info = tarfile.TarInfo(name)
            info.type = m[2] if len(m) > 2 else tarfile.REGTYPE
            if info.type == tarfile.LNKTYPE:
                info.linkname = "s0.jpg"
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _six_samples() -> bytes:
    return _tar([(f"m{i}.{ext}", f"{ext}{i}".encode() * 300) for i in range(6) for ext in ("jpg", "txt")])


def test_corrupt_header_mid_shard_is_damaged_not_silent(tmp_path):
    data = bytearray(_six_samples())
    off = data.find(b"m2.jpg")
    data[off : off + 512] = b"X" * 512
    p = tmp_path / "d.tar"
    p.write_bytes(bytes(data))
    r = read_shard(str(p))
    assert r.status == SHARD_DAMAGED and "invalid tar header" in r.error
    keys = [s["__key__"] for s in r.samples]
    assert keys[:2] == ["m0", "m1"] and keys[-3:] == ["m3", "m4", "m5"]  # read through the damage
    m2 = [s for s in r.samples if s["__key__"] == "m2"]
    assert all(s.get("__truncated__") for s in m2) and "jpg" not in m2[0]
    assert sample_to_record(m2[0])[S.STATUS] == S.STATUS_TRUNCATED


def test_corrupt_gzip_shard_is_reported(tmp_path):
    import gzip

    data = bytearray(gzip.compress(_six_samples()))
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    p = tmp_path / "c.tar.gz"
    p.write_bytes(bytes(data))
    r = read_shard(str(p))
    assert r.status in (SHARD_TRUNCATED, SHARD_DAMAGED) and r.error


def test_concatenated_tars_are_read_through(tmp_path):
    p = tmp_path / "cat.tar"
    p.write_bytes(_tar([("a.jpg", b"1"), ("a.txt", b"x")]) + _tar([("b.jpg", b"2"), ("b.txt", b"y")]))
    r = read_shard(str(p))
    assert r.status == SHARD_COMPLETE and [s["__key__"] for s in r.samples] == ["a", "b"]


def test_cut_inside_a_header_flags_the_last_sample(tmp_path):
    data = _six_samples()
    off = data.find(b"m2.txt")  # header of the second member of sample m2
    p = tmp_path / "h.tar"
    p.write_bytes(data[: off + 100])
    r = read_shard(str(p))
    assert r.status == SHARD_TRUNCATED and "header" in r.error
    assert r.samples[-1]["__key__"] == "m2" and r.samples[-1]["__truncated__"]


def test_odd_members_and_keys(tmp_path):
    members = [
        ("s0.jpg", b"img0"), ("s0.txt", b"\xef\xbb\xbf"),  # caption is only a byte-order mark
        ("s1.jpg", b"img1"), ("s1.txt", b""), ("s1.json", json.dumps({"caption": "from json"}).encode()),
        ("s2.jpg", b"img2"), ("s2.jpg", b"again"), ("s2.txt", b"dup"),  # duplicate member
        ("s3.jpg", b"img3"), ("s3.txt", b"ok"),
        ("s2.txt", b"reused key"),  # key s2 again, not adjacent
        ("s4.jpg", None, tarfile.LNKTYPE), ("s4.txt", b"link"),  # hard link: cannot be read in a stream
        ("README", b"no extension"), ("dir", None, tarfile.DIRTYPE),
        ("s5.json", b"[" * 100000 + b"]" * 100000), ("s5.jpg", b"img5"), ("s5.txt", b"deep json"),
    ]
    p = tmp_path / "odd.tar"
    p.write_bytes(_tar(members))
    r = read_shard(str(p))
    assert r.status == SHARD_COMPLETE and r.ignored_members == 1
    recs = {(i, s["__key__"]): sample_to_record(s) for i, s in enumerate(r.samples)}
    by = [(k[1], v[S.STATUS]) for k, v in recs.items()]
    # One row per key: the non-adjacent s2.txt joins s2, whose two different s2.jpg make it invalid.
    assert by == [("s0", "missing_caption"), ("s1", "ok"), ("s2", "invalid_sample"), ("s3", "ok"),
                  ("s4", "missing_image"), ("s5", "ok")]
    assert recs[(1, "s1")][S.TEXT] == "from json"
    assert "'s2.jpg' appears more than once" in recs[(2, "s2")][S.ERROR]
    assert "'s2.txt' appears more than once" in recs[(2, "s2")][S.ERROR]
    assert "not adjacent" in recs[(2, "s2")][S.ERROR]
    assert "not a regular file" in recs[(4, "s4")][S.ERROR]
    assert recs[(5, "s5")][S.UID] == stable_uid(str(p), "s5")


def test_non_utf8_member_names(tmp_path):
    p = tmp_path / "latin.tar"
    p.write_bytes(_tar([("caf\xe9.jpg", b"x"), ("caf\xe9.txt", b"y")], fmt=tarfile.GNU_FORMAT, encoding="latin-1"))
    r = read_shard(str(p))
    rec = sample_to_record(r.samples[0])
    assert rec[S.STATUS] == S.STATUS_OK and rec[S.KEY] == "caf\\xe9" and len(rec[S.UID]) == 32
    rec[S.KEY].encode("utf-8")  # storable


def test_glob_characters_in_an_existing_name(tmp_path):
    p = tmp_path / "shard[1].tar"
    p.write_bytes(_tar([("a.jpg", b"1")]))
    assert expand_shards(str(p)) == [str(p)]


def test_a_glob_in_a_folder_with_glob_characters(tmp_path):
    folder = tmp_path / "pool [1]"
    folder.mkdir()
    (folder / "a.tar").write_bytes(_tar([("a.jpg", b"1")]))
    (tmp_path / "pool 1").mkdir()  # what "pool [1]" matches as a pattern
    (tmp_path / "pool 1" / "b.tar").write_bytes(_tar([("b.jpg", b"1")]))
    assert expand_shards(str(folder / "*.tar")) == [str(folder / "a.tar")]
    braces = tmp_path / "x{1,2}.tar"
    braces.write_bytes(_tar([("a.jpg", b"1")]))
    assert expand_shards(str(braces)) == [str(braces)]  # an existing name is never brace-expanded


def _all_test_shards():
    data = Path(__file__).resolve().parents[1] / "data"
    return sorted(str(p) for p in data.rglob("*.tar"))


def test_streaming_reads_the_same_samples_as_a_whole_read():
    """``iter_shard`` with a header plan (one sample held at a time) gives exactly the samples,
    flags and shard status of ``read_shard`` for every test shard; shards it cannot plan
    (damaged, truncated, compressed) are read whole."""
    from curate.io.shards import drain, iter_shard, plan_members

    planned = 0
    for url in _all_test_shards():
        whole = read_shard(url)
        plan = plan_members(url)
        if plan is None:
            continue
        planned += 1
        streamed, ending = drain(iter_shard(url, plan))
        assert (ending.status, ending.error, ending.ignored_members) == (
            whole.status, whole.error, whole.ignored_members), url
        assert len(plan.keys) == len(whole.samples) == len(streamed), url
        by_key = {s["__key__"]: s for s in whole.samples}
        assert {s["__key__"]: s for s in streamed} == by_key, url
    assert planned >= 3


def test_a_stream_holds_one_sample_at_a_time(tmp_path):
    """With a plan, a sample is yielded before the next one's data is read: the reader never
    holds the shard."""
    import io

    from curate.io.shards import iter_shard, plan_members

    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(50):
            for ext, data in (("jpg", bytes([i]) * 100_000), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    gen = iter_shard(str(path), plan_members(str(path)))
    for i in range(50):
        sample = next(gen)
        assert sample["__key__"] == f"{i:06d}"
        reader = gen.gi_yieldfrom  # the generator behind iter_shard: its samples not yet yielded
        assert len(reader.gi_frame.f_locals["by_key"]) + len(reader.gi_frame.f_locals["done"]) <= 1


# --- Member sizes: a member over limits.max_member_bytes is never read (issue 27) ---------------


def _sized_members(big: int) -> list[tuple[str, bytes]]:
    """Three samples a, b, c; b's caption is ``big`` bytes."""
    return [("a.jpg", b"img a"), ("a.txt", b"caption a"), ("b.jpg", b"img b"), ("b.txt", b"x" * big),
            ("c.jpg", b"img c"), ("c.txt", b"caption c")]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_an_over_large_member_is_not_read_and_its_sample_is_too_large(tmp_path, suffix):
    import gzip

    from curate.io.shards import drain, iter_shard, plan_members
    from curate.scoring.records import shard_record_list

    data = _tar(_sized_members(5000))
    p = tmp_path / f"big{suffix}"
    p.write_bytes(gzip.compress(data) if suffix == ".tar.gz" else data)
    r = read_shard(str(p), max_member_bytes=1000)
    assert r.status == SHARD_COMPLETE
    b = r.samples[1]
    assert "txt" not in b and "jpg" in b  # never read, not cut
    recs = [sample_to_record(s) for s in r.samples]
    assert [x[S.STATUS] for x in recs] == [S.STATUS_OK, S.STATUS_TOO_LARGE, S.STATUS_OK]
    assert recs[1][S.ERROR] == "member 'b.txt' is 5000 bytes, over limits.max_member_bytes 1000; not read"
    # Streamed with a header plan (the gzip one too): the same samples and statuses.
    plan = plan_members(str(p), max_member_bytes=1000)
    assert plan is not None and plan.keys == ["a", "b", "c"]
    streamed, ending = drain(iter_shard(str(p), plan, max_member_bytes=1000))
    assert streamed == r.samples and ending.status == SHARD_COMPLETE
    rows = shard_record_list(str(p), max_member_bytes=1000)
    assert [(x[S.KEY], x[S.STATUS]) for x in rows] == [("a", "ok"), ("b", "too_large"), ("c", "ok")]
    assert rows[1][S.TEXT] == "" and "5000 bytes" in rows[1][S.ERROR]
    # Under the default limit (256 MiB) the same shard is whole and ok.
    assert {x[S.STATUS] for x in shard_record_list(str(p))} == {S.STATUS_OK}


def test_a_gzip_shard_is_streamed_one_sample_at_a_time(tmp_path):
    """A ``.tar.gz`` gets a header plan (one pass through the stream, data dropped) and is then
    read one sample at a time, with the samples, flags and status of a whole read."""
    import gzip

    from curate.io.shards import drain, iter_shard, plan_members

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for i in range(30):
            for ext, data in (("jpg", os.urandom(20_000)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    path = tmp_path / "s.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    whole = read_shard(str(path))
    plan = plan_members(str(path))
    assert plan is not None and len(plan.keys) == len(whole.samples) == 30
    streamed, ending = drain(iter_shard(str(path), plan))
    assert streamed == whole.samples and (ending.status, ending.error) == (whole.status, whole.error)
    gen = iter_shard(str(path), plan)
    for i in range(30):
        assert next(gen)["__key__"] == f"{i:06d}"
        reader = gen.gi_yieldfrom
        assert len(reader.gi_frame.f_locals["by_key"]) + len(reader.gi_frame.f_locals["done"]) <= 1


def test_a_cut_gzip_shard_is_read_whole_and_still_size_checked(tmp_path):
    import gzip

    members = [("a.jpg", os.urandom(3000)), ("a.txt", b"caption a"), ("b.jpg", os.urandom(3000)),
               ("b.txt", os.urandom(50_000)), ("c.jpg", os.urandom(30_000)), ("c.txt", b"caption c")]
    packed = gzip.compress(_tar(members))
    p = tmp_path / "cut.tar.gz"
    p.write_bytes(packed[: len(packed) * 3 // 4])  # ends inside c.jpg
    from curate.io.shards import plan_members

    assert plan_members(str(p), max_member_bytes=40_000) is None
    r = read_shard(str(p), max_member_bytes=40_000)
    assert r.status == SHARD_TRUNCATED
    statuses = [sample_to_record(s)[S.STATUS] for s in r.samples]
    assert statuses == [S.STATUS_OK, S.STATUS_TOO_LARGE, S.STATUS_TRUNCATED]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_an_over_large_extended_header_ends_the_read(tmp_path, fmt):
    """``tarfile`` reads a GNU long name or a pax header whole while parsing the header: one
    over the limit is not read, and the shard is reported truncated there (unreadable when it
    is the first header)."""
    long_name = "n" * 3000 + ".txt"
    over = r"extended header .* holds \d+ bytes, over limits\.max_member_bytes 2000; not read"
    p = tmp_path / "long.tar"
    p.write_bytes(_tar([("a.jpg", b"1"), ("a.txt", b"x"), (long_name, b"y"), ("c.jpg", b"2")], fmt=fmt))
    r = read_shard(str(p), max_member_bytes=2000)
    assert r.status == SHARD_TRUNCATED and re.search(over, r.error), r.error
    assert [s["__key__"] for s in r.samples] == ["a"]
    assert read_shard(str(p)).status == SHARD_COMPLETE  # under the default limit: read whole
    first = tmp_path / "first.tar"
    first.write_bytes(_tar([(long_name, b"y"), ("c.jpg", b"2")], fmt=fmt))
    r = read_shard(str(first), max_member_bytes=2000)
    assert r.status == SHARD_UNREADABLE and re.search(over, r.error), r.error


_BOMB_SCRIPT = r"""
import io, resource, sys, tarfile

class Zeros(io.RawIOBase):
    def __init__(self, n):
        self.n = n
    def readable(self):
        return True
    def readinto(self, b):
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k

path, size = sys.argv[1], int(sys.argv[2])
with tarfile.open(path, "w:gz", compresslevel=1) as tf:
    def add(name, data=None, n=None):
        info = tarfile.TarInfo(name)
        info.size = len(data) if data is not None else n
        tf.addfile(info, io.BytesIO(data) if data is not None else io.BufferedReader(Zeros(n), 2**20))
    add("a.jpg", b"img a"); add("a.txt", b"caption a")
    add("b.jpg", b"img b"); add("b.txt", n=size)  # the bomb: zeros, never held here either
    add("c.jpg", b"img c"); add("c.txt", b"caption c")

from curate.scoring.records import shard_record_list  # imports (torch, ...) before the baseline

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rows = shard_record_list(path)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print([(r["key"], r["status"]) for r in rows])
print("GROWTH", after - before)
"""


def test_a_gzip_bomb_member_is_skipped_without_holding_it(tmp_path):
    """A 512 MiB member of zeros in a 2 MB ``.tar.gz``: ``read_shard_records`` (plan pass and
    streamed read) never holds it. Peak resident memory of a fresh process grows by far less
    than the member (a read that held it would grow by 512 MiB or more)."""
    import subprocess
    import sys

    path = tmp_path / "bomb.tar.gz"
    size = 512 * 2**20  # over the default limits.max_member_bytes, 256 MiB
    out = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(path), str(size)], capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert path.stat().st_size < 4 * 2**20
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == str([("a", "ok"), ("b", "too_large"), ("c", "ok")])
    growth = int(lines[-1].split()[1])
    assert growth < 100 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB reading a shard with a 512 MiB member"


def test_one_row_per_key_of_the_edge_shard(edge_rows):
    keys = {name.split(".", 1)[0] for name in members(EDGE)} | {"h01_hardlink"}
    assert set(edge_rows) == keys and len(edge_rows) == 14  # CASES.md says 15; the tar holds 14 keys
    assert all(r[S.STATUS] in S.STATUSES for r in edge_rows.values())


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


def test_the_key_rule_is_webdatasets_and_a_read_imports_no_torch():
    """Members group into samples by webdataset's own rule (``base_plus_ext``), written out as
    ``WDS_KEY_EXT`` so that reading a shard does not import webdataset, and with it torch, in
    every read task's worker (issue 31)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from webdataset.tariterators import base_plus_ext

    from curate.io.shards import WDS_KEY_EXT

    def ours(name):
        m = WDS_KEY_EXT.match(name)
        return (m.group(1), m.group(2)) if m else (None, None)

    names = ["a.jpg", "a.b.c", "dir/x.y.z", ".hidden", "dir.d/x", "x.", "./a.jpg", "a/b/c.seg.png", "noext",
             "sub/.dot.txt", "000000001.JSON", "a..b", "dir/", "é/ü.tXt"]
    for name in names:
        assert ours(name) == base_plus_ext(name), name

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.text(alphabet="ab./_-\n é", max_size=12))
    def same(name):
        assert ours(name) == base_plus_ext(name)

    same()
    code = ("import sys; from curate.scoring.records import read_shard_records; "
            f"rows = list(read_shard_records({{'url': {str(SHARDS[0])!r}}})); "
            "assert rows, 'no rows'; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
