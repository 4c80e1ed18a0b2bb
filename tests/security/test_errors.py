"""Every error text that curate stores is capped, in one helper (issue 28).

The attack: data that makes an error message huge. A sample whose members all share one key but
none is an image was ``missing_image`` with a message listing every member: 200,000 members, a
2.2 MB message in its index row, in every part file, summary and report that carries it. A
member name can be made as long as the tar's extended header allows (256 MiB), so a 1 MB shard
does the same with one member. A shard URL (an index's ``shard`` column) of 100,000 characters
gave an ``unreadable`` shard error quoting it whole. Other paths cut at 1,000 or 500 characters
each in its own way. ``curate.schema.cap_error`` now keeps the head of each, says how much was
cut, and holds it to ``ERROR_CHARS`` (1,000) characters.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np

from curate import schema as S
from curate.io.index import records_to_table
from curate.io.samples import sample_to_record
from curate.scoring.records import SHARD_ERROR, records_to_batch, shard_record_list
from curate.stages.base import Stage

CAP = S.ERROR_CHARS


def test_cap_error_keeps_the_head_and_says_what_was_cut():
    """Short texts pass unchanged, ``None`` stays ``None``; a long one keeps its head and ends
    with how many characters were cut, within the limit, whatever the limit."""
    assert S.cap_error("no image") == "no image" and S.cap_error(None) is None and CAP == 1000
    assert S.cap_error(ValueError("bad")) == "bad"
    text = "members: " + "x" * 2_200_000
    capped = S.cap_error(text)
    assert len(capped) <= CAP and capped.startswith("members: xxx")
    cut = int(capped.rsplit("[", 1)[1].split()[0])
    assert (capped.endswith(f"... [{cut} characters cut]")
            and len(capped) - len(f"... [{cut} characters cut]") + cut == len(text))
    for limit in (20, 64, 500, 2000):
        assert len(S.cap_error(text, limit)) <= limit
    assert S.cap_error("y" * CAP) == "y" * CAP


def test_a_key_with_200000_members_gives_a_capped_missing_image():
    """Attack: one key, 200,000 members, none an image (the sample as ``read_shard`` gives it).
    Its row is ``missing_image`` with a message that starts by naming members and stays within
    the cap. Before: 2.2 MB listing all 200,000."""
    sample = {"__key__": "k", "__url__": "pool-000000.tar", **{f"m{i:06d}": b"" for i in range(200_000)}}
    rec = sample_to_record(sample)
    assert rec[S.STATUS] == S.STATUS_MISSING_IMAGE
    assert len(rec[S.ERROR]) <= CAP and rec[S.ERROR].startswith("no image member") and "characters cut" in rec[S.ERROR]


def test_a_member_name_of_a_megabyte_gives_a_capped_index_row(tmp_path):
    """Attack, the cheapest shard: one member ``k.xxx...`` with a 1,000,000-character extension
    (a GNU long-name header) and a caption. Streamed as ``curate score`` reads it, its row is
    ``missing_image`` and its stored ``error`` stays within the cap, up to the index table.
    Before: the row's message was 1 MB."""
    shard = tmp_path / "long-000000.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("k." + "x" * 1_000_000, b"1"), ("k.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (rec,) = shard_record_list(str(shard))
    assert rec[S.STATUS] == S.STATUS_MISSING_IMAGE and len(rec[S.ERROR]) <= CAP
    table = records_to_table({c: v for c, v in records_to_batch([rec]).items() if not c.startswith("_")})
    assert max(len(e) for e in table.column(S.ERROR).to_pylist()) <= CAP


def test_a_shard_url_of_100000_characters_gives_a_capped_shard_error(tmp_path):
    """Attack: a shard URL (an index's ``shard`` column, a spec) of 100,000 characters that
    cannot be opened. The shard record's error and the shard error that reaches the index
    metadata and the summary stay within the cap. Before: the OS error quoted the whole path."""
    url = str(tmp_path / ("a" * 100_000 + ".tar"))
    (rec,) = shard_record_list(url)
    assert 0 < len(rec[S.ERROR]) <= CAP and 0 < len(rec[SHARD_ERROR]) <= CAP


class _Raises(Stage):
    """A stage that computes every row, whatever its status (as caption language does), and
    raises with a message of a megabyte."""

    name = "loud"
    error_status = S.STATUS_LANGUAGE_ERROR

    def rows_of(self, batch):
        return np.arange(len(batch[S.STATUS]))

    def process(self, batch, rows):
        if len(rows):
            raise ValueError("z" * 1_000_000)
        return batch


def test_a_stage_error_added_to_an_earlier_one_stays_within_the_cap():
    """A row already failed with a full-length message, then a stage that raises on it: the
    stage's message is added to the row's and the whole stays within the cap (the ``ok`` row
    gets the stage's status, capped too). Before: 1,000 + 2 + 500 characters."""
    batch = {S.STATUS: np.array([S.STATUS_OK, S.STATUS_MISSING_CAPTION], dtype=object),
             S.ERROR: np.array(["", "e" * CAP], dtype=object)}
    out = _Raises()(batch)
    assert list(out[S.STATUS]) == [S.STATUS_LANGUAGE_ERROR, S.STATUS_MISSING_CAPTION]
    assert out[S.ERROR][0].startswith("loud: ValueError: zzz") and all(len(e) <= CAP for e in out[S.ERROR])
