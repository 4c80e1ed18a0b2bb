"""``curate reshard``: write the samples of a subset into new shards, as DataComp's resharder.

The subset is a DataComp ``.npy`` (structured ``u8,u8`` uid halves) or a ``subset.parquet``
with a ``uid`` column. Every input shard is streamed once; a sample whose uid is in the subset
is written with all of its members, their bytes unchanged, as many times as its uid appears in
the subset (upweighting, as DataComp's resharder does). A uid names one sample: when two samples
of one shard carry the same uid neither is written, and when a later shard holds another sample
with a uid already written, that sample is not written; both are counted and named in the
summary (``shared_uid_samples``), never written in another sample's place. Copies of one sample
(same image bytes and caption) are one sample: it is written as often as the subset lists it. Output shards are ``{:08d}.tar`` of
``shard_size`` samples each, with a ``{:08d}_stats.json`` beside each and
``reshard_summary.json`` for the whole run. Output keys are new and sequential (``{:09d}``):
an input key may repeat across shards, and a repeated uid needs distinct keys. The files are
written under ``out/.reshard-work`` and moved into ``out`` when the run is complete, replacing
every file of a previous run there (shards beyond the new count included); a run that fails
(a full disk) leaves the previous run's files as they were.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path


from curate import schema as S
from curate.io.samples import sample_digest, shard_records
from curate.io.shards import SHARD_COMPLETE, expand_shards, read_shard, shard_name
from curate.io.subset import load_subset_counts
from curate.io.atomic import write_json_atomically


@dataclass
class ReshardConfig:
    """Settings of ``curate reshard``.

    Attributes:
        shard_size: samples per output shard (DataComp's resharder writes 10,000).
    """

    shard_size: int = field(default=10_000, metadata={"min": 1})


@dataclass
class ReshardSummary:
    """Counts of a reshard run; ``format()`` is the printed summary."""

    requested_uids: int
    requested_samples: int
    found_uids: int = 0
    written_samples: int = 0
    output_shards: list[str] = field(default_factory=list)
    input_problems: dict[str, str] = field(default_factory=dict)
    shared_uid_samples: list[str] = field(default_factory=list)

    @property
    def missing_uids(self) -> int:
        return self.requested_uids - self.found_uids

    def format(self) -> str:
        lines = [
            "curate reshard: summary",
            f"  subset        {self.requested_uids} uids ({self.requested_samples} with repeats)",
            f"  found         {self.found_uids} uids; {self.missing_uids} asked for but not found in the shards",
            f"  written       {self.written_samples} samples in {len(self.output_shards)} shards",
        ]
        if self.shared_uid_samples:
            lines.append(f"  shared uid    {len(self.shared_uid_samples)} sample(s) of the subset's uids not written: "
                         f"their uid is carried by another sample ({', '.join(self.shared_uid_samples[:3])}"
                         + (", ..." if len(self.shared_uid_samples) > 3 else "") + ")")
        for url, problem in self.input_problems.items():
            lines.append(f"  INPUT         {url}: {problem}")
        return "\n".join(lines)


class _Writer:
    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        self.index, self.count, self.tar, self.total = -1, 0, None, 0
        self.names: list[str] = []

    def _roll(self):
        self.close()
        self.index += 1
        name = f"{self.index:08d}.tar"
        self.tar = tarfile.open(self.out / name, "w", format=tarfile.GNU_FORMAT)
        self.names.append(name)

    def write(self, sample: dict):
        if self.tar is None or self.count == self.shard_size:
            self._roll()
        key = f"{self.total:09d}"
        for ext, data in sample.items():
            if ext.startswith("__"):
                continue
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.total += 1

    def close(self):
        if self.tar is not None:
            self.tar.close()
            stats = {"count": self.count, "shard": self.names[-1]}
            write_json_atomically(self.out / f"{self.index:08d}_stats.json", stats)
            self.tar, self.count = None, 0


def reshard(subset: str | Path, shards: list[str] | str, out: str | Path, shard_size: int = 10_000) -> ReshardSummary:
    """Write the subset's samples into new shards (see the module docstring).

    Args:
        subset: ``subset.npy`` or ``subset.parquet`` from ``curate filter``.
        shards: input shard specs (brace ranges, globs, fsspec URLs).
        out: output folder (created).
        shard_size: samples per output shard.

    Raises:
        ValueError: bad subset file or ``shard_size``.
    """
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    wanted = load_subset_counts(subset)
    out = Path(out)
    # Written under out/.reshard-work and moved into out when complete, replacing the previous
    # run's shards: a failed run (a full disk) leaves those as they were, and nothing else.
    work = out / ".reshard-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        summary = _reshard(wanted, shards, work, shard_size)
        for old in out.iterdir():
            if OUTPUT_NAME.fullmatch(old.name):
                old.unlink()
        for new in sorted(work.iterdir(), key=lambda f: f.name == SUMMARY_NAME):  # the summary last
            os.replace(new, out / new.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


SUMMARY_NAME = "reshard_summary.json"
OUTPUT_NAME = re.compile(r"\d{8}\.tar|\d{8}_stats\.json|" + re.escape(SUMMARY_NAME))  # what a run writes


def _reshard(wanted, shards, out: Path, shard_size: int) -> ReshardSummary:
    summary = ReshardSummary(len(wanted), wanted.total)
    found: dict[str, bytes] = {}  # uid -> digest of the sample written for it (not its bytes)
    writer = _Writer(out, shard_size)
    try:
        _write_subset(wanted, shards, writer, summary, found)
    except BaseException:
        if writer.tar is not None:
            with suppress(Exception):  # a tar that cannot flush (a full disk) would complain again when collected
                writer.tar.close()
        raise
    writer.close()
    summary.found_uids = len(found)
    summary.written_samples = writer.total
    summary.output_shards = writer.names
    write_json_atomically(out / SUMMARY_NAME, summary.__dict__ | {"missing_uids": summary.missing_uids}, indent=2)
    return summary


def _write_subset(wanted, shards, writer: _Writer, summary: ReshardSummary, found: dict[str, bytes]) -> None:
    for url in expand_shards(shards):
        result = read_shard(url)
        if result.status != SHARD_COMPLETE:
            summary.input_problems[url] = f"{result.status}: {result.error}"
        records = shard_records(result.samples)
        for sample, rec in zip(result.samples, records):
            uid = rec[S.UID]
            copies = wanted.get(uid)
            if not copies:
                continue
            if uid in found and found[uid] == sample_digest(rec):
                continue  # another copy of a sample already written as often as the subset asks
            if rec[S.STATUS] == S.STATUS_DUPLICATE_UID or uid in found:
                # Two samples with one uid: a uid subset cannot say which is meant, so the
                # second is never written in the first one's place (nor, in one shard, either).
                summary.shared_uid_samples.append(f"{shard_name(url)}/{rec[S.KEY]}")
                continue
            found[uid] = sample_digest(rec)
            for _ in range(copies):
                writer.write(sample)
