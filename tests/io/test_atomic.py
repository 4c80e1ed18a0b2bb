"""Output files are written whole or not at all (``curate.io.atomic``)."""

from __future__ import annotations

import errno
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.io.atomic import write_json_atomically
from curate.io.index import write_parquet_atomically


def test_a_failed_json_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomically(path, {"kept": 1})
    with pytest.raises(ValueError):
        write_json_atomically(path, {"kept": math.nan}, allow_nan=False)
    assert path.read_text() == '{"kept": 1}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary(full_disk):
    """A Parquet file and a JSON summary that no longer fit: ENOSPC, the previous versions byte
    for byte, and no temporary left to take the space."""
    disk, fill = full_disk
    small = pa.table({"x": np.arange(10)})
    write_parquet_atomically(disk / "a.parquet", small, {"k": "v"})
    write_json_atomically(disk / "a.json", {"rows": 10})
    before = {p.name: p.read_bytes() for p in disk.iterdir()}
    fill()
    big = pa.table({"x": np.random.default_rng(0).random(1 << 20)})  # 8 MiB: more than the disk holds
    with pytest.raises(OSError) as e:
        write_parquet_atomically(disk / "a.parquet", big, {"k": "v"})
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:
        write_json_atomically(disk / "a.json", {"rows": list(range(1 << 20))})
    assert e.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == before
    assert pq.read_table(disk / "a.parquet").num_rows == 10
