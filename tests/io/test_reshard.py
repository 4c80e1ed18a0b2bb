"""`curate reshard` on the real sample shards: exactly the subset, byte-identical, upweighted."""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.cli import main
from curate.io.reshard import reshard
from curate.io.samples import sample_to_record
from curate.io.shards import read_shard
from curate.io.subset import uids_to_datacomp
from tests.conftest import SHARD_SPEC, SHARDS


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
