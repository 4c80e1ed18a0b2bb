"""`curate reshard` on the real sample shards: exactly the subset, byte-identical, upweighted."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.cli import main
from curate.io.reshard import reshard
from curate.io.samples import sample_to_record
from curate.io.shards import read_shard
from curate.io.subset import uids_to_datacomp
from tests.conftest import DATA, EDGE, SHARD_SPEC, SHARDS, members


def all_samples():
    out = {}
    for shard in SHARDS:
        for s in read_shard(str(shard)).samples:
            out[sample_to_record(s)["uid"]] = s
    return out


def read_out(folder):
    samples = []
    for tar in sorted(folder.glob("*.tar")):
        samples += read_shard(str(tar)).samples
    return samples


def test_reshard_keeps_exactly_the_subset_with_upweighting(tmp_path):
    pool = all_samples()
    uids = sorted(pool)
    chosen = uids[::3]
    doubled = chosen[:2]
    missing = "f" * 32
    subset = tmp_path / "subset.npy"
    np.save(subset, uids_to_datacomp(chosen + doubled + [missing]))
    s = reshard(subset, SHARD_SPEC, tmp_path / "out", shard_size=5)
    assert s.found_uids == len(chosen) and s.missing_uids == 1
    assert s.written_samples == len(chosen) + len(doubled)
    written = read_out(tmp_path / "out")
    assert len(written) == s.written_samples
    sizes = [len(read_shard(str(t)).samples) for t in sorted((tmp_path / "out").glob("*.tar"))]
    assert all(n == 5 for n in sizes[:-1]) and 0 < sizes[-1] <= 5
    assert [t.name for t in sorted((tmp_path / "out").glob("*.tar"))][0] == "00000000.tar"
    assert (tmp_path / "out" / "00000000_stats.json").exists()
    got = {}
    for w in written:
        uid = sample_to_record(w)["uid"]
        got[uid] = got.get(uid, 0) + 1
        original = pool[uid]
        for ext in (k for k in original if not k.startswith("__")):
            assert w[ext] == original[ext]  # byte-identical members, every extension kept
        assert set(k for k in w if not k.startswith("__")) == set(k for k in original if not k.startswith("__"))
    assert got == {u: (2 if u in doubled else 1) for u in chosen}


def test_reshard_from_parquet_subset_via_cli(tmp_path, capsys):
    pool = all_samples()
    chosen = sorted(pool)[:4]
    pq.write_table(pa.table({"uid": chosen}), tmp_path / "subset.parquet")
    code = main(["reshard", SHARD_SPEC, "--subset", str(tmp_path / "subset.parquet"), "--out", str(tmp_path / "o")])
    assert code == 0 and "written       4 samples in 1 shards" in capsys.readouterr().out
    with tarfile.open(tmp_path / "o" / "00000000.tar") as tf:
        assert len({m.name.split(".")[0] for m in tf.getmembers()}) == 4
    assert main(["reshard", SHARD_SPEC, "--subset", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "p")]) == 2


def test_a_full_disk_leaves_the_previous_shards_and_a_rerun_replaces_them_all(tmp_path, full_disk, capsys):
    """A reshard that runs out of disk: exit 1 with the disk error, the previous run's shards and
    summary byte for byte, nothing half-written. With space, a run of fewer shards replaces every
    file of the previous run (no stale shard beyond the new count)."""
    disk, fill = full_disk
    uids = sorted(all_samples())
    small, large = tmp_path / "small.npy", tmp_path / "large.npy"
    np.save(small, uids_to_datacomp(uids[:6]))
    np.save(large, uids_to_datacomp(uids[:30]))
    out = disk / "out"
    assert main(["reshard", SHARD_SPEC, "--subset", str(small), "--out", str(out), "--shard-size", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["00000000.tar", "00000000_stats.json", "00000001.tar", "00000001_stats.json",
                              "00000002.tar", "00000002_stats.json", "reshard_summary.json"]
    fill()
    capsys.readouterr()
    assert main(["reshard", SHARD_SPEC, "--subset", str(large), "--out", str(out), "--shard-size", "5"]) == 1
    assert capsys.readouterr().err.startswith("curate reshard: error: no space left on device (")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (disk / "filler").unlink()
    np.save(small, uids_to_datacomp(uids[:3]))
    assert main(["reshard", SHARD_SPEC, "--subset", str(small), "--out", str(out), "--shard-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000000.tar", "00000000_stats.json", "00000001.tar",
                                                      "00000001_stats.json", "reshard_summary.json"]
    assert len(read_out(out)) == 3


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
