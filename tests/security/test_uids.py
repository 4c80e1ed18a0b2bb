"""One uid rule everywhere (issue 28): a uid is exactly 32 lower-case hex characters, the whole
string (``curate.schema.is_uid``, ``uid_mask``).

The attack: a shard whose sample carries ``"uid": "<32 hex>\\n"`` in its ``.json``. The old check,
``re.match(r"^[0-9a-f]{32}$")``, lets ``$`` match before the final newline, so the 33-character
string became the sample's uid with status ``ok``. Its twin with the plain uid was then no
``duplicate_uid``, ``curate reshard`` of a subset naming the plain uid wrote both samples (the
subset lookup reads the first 32 characters) and counted two uids found of one asked, and
``curate filter`` over the whole index stopped with exit 2 on that one row. A row whose uid is no
uid (an index written by an old version or edited by hand) must be one bad row to every reader,
never a failed command.
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.cli import main
from curate.filters import run_filter
from curate.io.index import index_files
from curate.io.reshard import reshard
from curate.io.samples import shard_records
from curate.io.shards import read_shard, stable_uid
from curate.io.subset import UidCounts, load_subset_counts, uids_to_datacomp
from curate.scoring.records import shard_record_list
from tests.conftest import sample_members
from tests.filters.test_filters import make_index

TWIN = "77e6ead94d550e31d7a5cf8fe6896bf7"  # a real DataComp-style uid of the bundled shards

ODD = [TWIN + "\n", "\n" + TWIN, TWIN.upper(), TWIN[:31], TWIN + "0", " " + TWIN[1:], "٣" * 32, "../../evil",
       TWIN[:31] + "\x00", None, 7, b"77e6ead94d550e31d7a5cf8fe6896bf7"]


def test_the_rule_is_a_full_match_and_its_two_forms_agree():
    """``is_uid`` (one value) and ``uid_mask`` (an Arrow column) accept exactly the 32 lower-case
    hex strings: a trailing or leading newline, upper case, 31 or 33 characters, Arabic-Indic
    digits, a NUL, ``None``, a number or bytes all fail, as ``re.fullmatch`` says."""
    assert S.is_uid(TWIN) and S.is_uid("0" * 32)
    assert [v for v in ODD if S.is_uid(v)] == []
    strings = [TWIN, "f" * 32] + [v for v in ODD if isinstance(v, str) or v is None]
    want = [isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v) is not None for v in strings]
    assert S.uid_mask(pa.array(strings, pa.string())).tolist() == want
    assert S.uid_mask(pa.chunked_array([pa.array(strings[:3]), pa.array(strings[3:])])).tolist() == want
    assert S.uid_mask(strings).tolist() == want


def _twins_shard(path) -> tuple[str, str]:
    """A shard of two different real samples: ``a`` whose ``.json`` uid is ``TWIN + "\\n"`` and
    ``b`` whose ``.json`` uid is ``TWIN``. Returns the two keys."""
    (_, _, first), (_, _, second) = sample_members()[:2]
    with tarfile.open(path, "w") as tf:
        for key, members, uid in (("a", first, TWIN + "\n"), ("b", second, TWIN)):
            meta = dict(json.loads(members["json"]), uid=uid, key=key)
            for ext, data in (("jpg", members["jpg"]), ("txt", members["txt"]), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return "a", "b"


def test_json_uid_with_a_trailing_newline_is_never_stored(tmp_path):
    """Attack: ``"uid": "<32 hex>\\n"`` in a sample's ``.json``, beside a different sample with
    the plain uid. Read as every command reads a shard (``shard_records``) and as ``curate
    score`` streams it (``shard_record_list``), the odd uid falls back to curate's md5 uid of
    shard and key (as a ``.json`` without a uid does), the sample stays ``ok``, and its twin
    keeps the plain uid, ``ok`` and no ``duplicate_uid``: the two samples have different uids.
    Before: the index held the 33-character uid with status ``ok``."""
    shard = tmp_path / "twins-000000.tar"
    a, b = _twins_shard(shard)
    url = str(shard)
    for records in (shard_records(read_shard(url).samples), shard_record_list(url)):
        by_key = {r[S.KEY]: r for r in records}
        assert set(by_key) == {a, b}
        assert by_key[a][S.UID] == stable_uid(url, a) and by_key[a][S.STATUS] == S.STATUS_OK
        assert by_key[b][S.UID] == TWIN and by_key[b][S.STATUS] == S.STATUS_OK
        assert all(S.is_uid(r[S.UID]) for r in records)


def test_reshard_of_the_plain_uid_writes_only_its_sample(tmp_path):
    """Attack, continued: a subset that names the plain uid (the filter dropped the odd one).
    ``curate reshard`` writes the twin once, counts one uid found and none missing; the subset
    lookup never takes ``"<32 hex>\\n"`` for its first 32 characters. Before: both samples were
    written under one uid and the summary said 2 found, -1 missing."""
    shard = tmp_path / "twins-000000.tar"
    _, b = _twins_shard(shard)
    np.save(tmp_path / "subset.npy", uids_to_datacomp([TWIN]))
    counts = load_subset_counts(str(tmp_path / "subset.npy"))
    assert counts.get(TWIN) == 1 and counts.get(TWIN + "\n") == 0 and counts.get(TWIN.upper()) == 0
    summary = reshard(tmp_path / "subset.npy", str(shard), tmp_path / "out", shard_size=10)
    assert (summary.found_uids, summary.missing_uids, summary.written_samples) == (1, 0, 1)
    (written,) = read_shard(str(tmp_path / "out" / "00000000.tar")).samples
    assert json.loads(written["json"])["uid"] == TWIN and json.loads(written["json"])["key"] == b


def test_a_subset_file_with_a_value_that_is_no_uid_is_refused_by_name(tmp_path):
    """A subset file is checked whole as it is read: a hand-edited ``subset.parquet`` holding
    ``"<32 hex>\\n"`` or upper case is a usage error naming the value (never read as the uid of
    its first 32 characters)."""
    for bad in (TWIN + "\n", TWIN.upper()):
        pq.write_table(pa.table({S.UID: ["0" * 32, bad]}), tmp_path / "subset.parquet")
        with pytest.raises(ValueError, match="not a uid"):
            load_subset_counts(str(tmp_path / "subset.parquet"))
    with pytest.raises(ValueError, match="not a uid"):
        UidCounts(uids_to_datacomp(["0" * 32, TWIN + "\n"]))


def _index_with_bad_uids(path):
    """The hand-checked pool of ``tests/filters`` with two of the rows ``basic()`` keeps given a
    uid that is no uid: ``07`` its uid plus a newline (an index scored by the old check), ``10``
    ``../../evil`` (edited by hand)."""
    idx = make_index(path)
    f = next(idx.glob("*.parquet"))
    t = pq.read_table(f)
    uids = [u + "\n" if k == "07" else "../../evil" if k == "10" else u
            for u, k in zip(t.column(S.UID).to_pylist(), t.column(S.KEY).to_pylist())]
    t = t.set_column(t.schema.get_field_index(S.UID), t.schema.field(S.UID), pa.array(uids, pa.string()))
    pq.write_table(t, f)
    return idx


def test_filter_over_an_index_with_bad_uid_rows_filters_the_rest(tmp_path, capsys):
    """Attack: an index holding rows whose uid is no uid. ``curate filter`` over the whole pool
    keeps the other rows as before, leaves those two out and counts them (summary line and
    ``filter_summary.json``), and exits 0. Before: ``uids_to_datacomp`` raised and one row
    blocked every filter (exit 2)."""
    idx = _index_with_bad_uids(tmp_path / "index")
    s = run_filter(idx, "basic()", tmp_path / "subset")
    kept = pq.read_table(tmp_path / "subset" / "subset.parquet")
    assert sorted(kept.column(S.KEY).to_pylist()) == ["01", "02"]
    assert all(S.is_uid(u) for u in kept.column(S.UID).to_pylist())
    assert len(np.load(tmp_path / "subset" / "subset.npy")) == 2
    assert s.bad_uid_rows == 2 and "bad uid       2 row(s)" in s.format()
    assert json.loads((tmp_path / "subset" / "filter_summary.json").read_text())["bad_uid_rows"] == 2
    capsys.readouterr()
    assert main(["filter", "--index", str(idx), "--rule", "basic()", "--out", str(tmp_path / "cli")]) == 0
    assert "bad uid" in capsys.readouterr().out


def test_distributed_filter_task_never_keeps_a_bad_uid_row(tmp_path):
    """The same index through the round-2 task of ``curate filter --address`` (``_select``,
    called as a plain function: no Ray): the two rows are written as not kept and counted last
    in the task's counts; the pool counts before them are unchanged."""
    from curate.filters.distributed import _select
    from curate.filters.run import IndexPool, plan_filter, uid_bounds
    from curate.query import connect

    idx = _index_with_bad_uids(tmp_path / "index")
    con = connect(idx)
    try:
        plan = plan_filter("basic()", None, None, IndexPool(con, idx, tmp_path / "o"))
    finally:
        con.close()
    parts = tmp_path / "parts"
    counts = _select([str(f.resolve()) for f in index_files(idx)], 0, plan.predicate, plan.counts_sql, plan.columns,
                     uid_bounds(2), str(parts), None)
    assert counts[:2] == [10, 8] and counts[-1] == 2
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(parts.rglob("*.parquet"))])
    kept = rows.filter(rows.column("_kept"))
    assert sorted(kept.column(S.UID).to_pylist()) == ["0" * 30 + "01", "0" * 30 + "02"]
