"""The read of the score plan: a shard read as ranges of positions (the plan's small first block)
gives exactly the records of one whole read, and the batched read gives them in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curate import schema as S
from curate.scoring.records import (
    IGNORED,
    SEQ,
    SHARD_ERROR,
    SHARD_STATUS,
    _streamed_records,
    read_shard_batches,
    read_shard_records,
    shard_items,
)
from tests.conftest import DATA, EDGE, SHARDS, SURR

ENDING = (SHARD_STATUS, SHARD_ERROR, IGNORED)


def _all_test_shards() -> list[str]:
    return sorted(str(p) for p in DATA.rglob("*.tar")) + [str(EDGE), str(SURR)]


def _ending(records) -> tuple:
    """How the shard ended, merged over records as the driver's ShardTracker merges part records:
    a status other than complete wins, the most ignored members count."""
    status, error, ignored = "complete", "", 0
    for r in records:
        if r[SHARD_STATUS] != "complete":
            status, error = r[SHARD_STATUS], r[SHARD_ERROR]
        ignored = max(ignored, int(r[IGNORED]))
    return status, error, ignored


def _without_ending(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ENDING}


def _order(r: dict) -> tuple:
    return r[SEQ], r[S.KEY], r[S.STATUS]


def _ranges(url: str, cut: int) -> list[dict]:
    return (list(read_shard_records({"url": url, "start": 0, "stop": cut}))
            + list(read_shard_records({"url": url, "start": cut, "stop": -1})))


@pytest.mark.parametrize("cut", [1, 2, 5, 10_000])
def test_two_ranges_of_a_shard_give_the_records_of_one_whole_read(cut):
    """For every test shard (streamed or read whole, damaged ones included), the head range
    [0, cut) and the rest together yield each record of one whole read exactly once, with the
    same fields, and the same ending once merged."""
    split = 0
    for url in _all_test_shards():
        whole = list(read_shard_records({"url": url}))
        parts = _ranges(url, cut)
        assert sorted(map(_without_ending, parts), key=_order) == sorted(map(_without_ending, whole), key=_order), url
        assert _ending(parts) == _ending(whole), url
        head = list(read_shard_records({"url": url, "start": 0, "stop": cut}))
        if 0 < len(head) < len(whole):
            split += 1
            assert [r[SEQ] for r in head] == list(range(cut)), url
    assert split >= 3 or cut > 100  # the bundled sample shards, at least, were read as two ranges
    assert split == 0 or cut < 100  # a head longer than the shard reads it all, the rest nothing


def test_ranges_of_a_shard_that_changed_under_the_read_still_add_up(tmp_path):
    """A shard whose file lost its tail after the header pass (the plan promises samples the
    read never finds): the missing samples get their truncated rows from the range they fall
    in, whichever range that is, and the shard's ending says truncated."""
    from curate.io.shards import plan_members

    src = Path(SHARDS[1])
    plan = plan_members(str(src))
    n = len(plan.keys)
    data = src.read_bytes()
    cut = tmp_path / "changed.tar"
    for nbytes in (len(data) // 3, 2 * len(data) // 3):
        cut.write_bytes(data[:nbytes])
        whole = list(_streamed_records(str(cut), plan, 2**28, 10_000))
        assert sorted(r[SEQ] for r in whole) == list(range(n))
        assert _ending(whole)[0] == "truncated"
        for head in (1, 3, n - 1):
            parts = (list(_streamed_records(str(cut), plan, 2**28, 10_000, 0, head))
                     + list(_streamed_records(str(cut), plan, 2**28, 10_000, head, None)))
            assert sorted(map(_without_ending, parts), key=lambda r: r[SEQ]) == sorted(
                map(_without_ending, whole), key=lambda r: r[SEQ]), (nbytes, head)
            assert _ending(parts) == _ending(whole), (nbytes, head)


def test_a_shard_that_cannot_be_streamed_is_read_whole_by_the_range_at_0(tmp_path):
    """A gzip shard cut short cannot be planned: the range starting at 0 reads it whole (its
    status says how it ended), the other range yields nothing, so nothing is read twice."""
    import gzip

    src = Path(SHARDS[0])
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(gzip.compress(src.read_bytes())[:-200])
    head = list(read_shard_records({"url": str(gz), "start": 0, "stop": 1}))
    rest = list(read_shard_records({"url": str(gz), "start": 1, "stop": -1}))
    assert rest == [] and head == list(read_shard_records({"url": str(gz)}))
    assert [r[SEQ] for r in head] == list(range(len(head))) and len(head) > 1
    assert _ending(head)[0] != "complete"


def test_the_plans_first_block_is_the_first_sample_of_the_first_shard():
    items = shard_items(["a.tar", "b.tar"])
    assert items == [{"url": "a.tar", "start": 0, "stop": 1}, {"url": "a.tar", "start": 1, "stop": -1},
                     {"url": "b.tar", "start": 0, "stop": -1}]
    assert shard_items([]) == []
    assert shard_items(["a.tar"], first_block_samples=0) == [{"url": "a.tar", "start": 0, "stop": -1}]


def test_the_batched_read_yields_the_records_in_batches_of_the_cut(tmp_path):
    """``read_shard_batches`` over the plan's items: batches of at most ``rows_per_batch``
    records (one item's records never share a batch with another's), the same records in the
    same order as ``read_shard_records`` item by item, ints as int64 and the rest as objects."""
    urls = [str(p) for p in SHARDS] + [str(EDGE)]
    items = shard_items(urls)
    cols = {"url": np.array([i["url"] for i in items], dtype=object),
            "start": np.array([i["start"] for i in items], dtype=np.int64),
            "stop": np.array([i["stop"] for i in items], dtype=np.int64)}
    batches = list(read_shard_batches(cols, rows_per_batch=4))
    expected = [r for i in items for r in read_shard_records(i)]
    got = [{k: b[k][j] for k in b} for b in batches for j in range(len(b[SEQ]))]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert {k: (bytes(v) if isinstance(v, (bytes, np.bytes_)) else v) for k, v in g.items()} == e
    assert max(len(b[SEQ]) for b in batches) == 4
    assert len(batches[0][SEQ]) == 1  # the first item is the first shard's first sample alone
    assert all(b[SEQ].dtype == np.int64 and b[S.IMAGE_BYTES].dtype == object for b in batches)
    assert all(len(set(b[S.SHARD])) == 1 for b in batches)


def test_a_batch_of_the_read_is_yielded_short_once_its_images_reach_the_byte_bound():
    """Large samples are not held a batch at a time before the cut takes them: with a bound of
    one byte every record with an image is its own batch; the records are the same."""
    url = str(SHARDS[0])
    cols = {"url": np.array([url], dtype=object), "start": np.array([0]), "stop": np.array([-1])}
    small = list(read_shard_batches(cols, rows_per_batch=8, max_batch_bytes=1))
    whole = list(read_shard_records({"url": url}))
    assert [len(b[SEQ]) for b in small] == [1] * len(whole)
    assert [int(b[SEQ][0]) for b in small] == [r[SEQ] for r in whole]
    assert [len(b[SEQ]) for b in read_shard_batches(cols, rows_per_batch=8)][0] == 8
