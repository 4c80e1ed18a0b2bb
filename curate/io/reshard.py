"""``curate reshard``: write the samples of a subset into new shards, as DataComp's resharder.

The subset is a DataComp ``.npy`` (structured ``u8,u8`` uid halves) or a ``subset.parquet``
with a ``uid`` column. Every input shard is streamed once; a sample whose uid is in the subset
is written with all of its members, their bytes unchanged, as many times as its uid appears in
the subset (upweighting, as DataComp's resharder does). A uid names one sample: when two samples
of one shard carry the same uid neither is written, and when a later shard holds another sample
with a uid already written, that sample is not written; both are counted and named in the
summary (``shared_uid_samples``), never written in another sample's place. Copies of one sample
(same image bytes and caption) are one sample: it is written as often as the subset lists it. Output shards are
``{:08d}.tar`` of ``shard_size`` samples each, with a ``{:08d}_stats.json`` beside each and
``reshard_summary.json`` for the whole run. Output keys are new and sequential (``{:09d}``):
an input key may repeat across shards, and a repeated uid needs distinct keys. The files are
written under ``out/.reshard-work`` and moved into ``out`` when the run is complete, replacing
every file of a previous run there (shards beyond the new count included) as that run's
``reshard_summary.json`` lists them; a run that fails (a full disk) leaves the previous run's
files as they were. No other file is ever replaced or removed: an ``out`` that holds an input
shard, or a file of an output's name that the previous summary does not list, is refused
before anything in ``out`` changes (``curate.io.atomic.ForeignOutput``).

With ``face_boxes`` (a DataComp metadata folder, ``--face-boxes``), the faces of each written
image are blurred as DataComp's resharder does with ``--blur-metadata-map ... --apply-blur``
(``curate.io.blur``): the boxes of one input shard's subset uids are looked up at a time (never
the pool's), a sample with boxes is written with its image as a blurred ``.webp`` member in place
of the original one, a sample without boxes byte for byte, and an image that cannot be blurred
(it does not decode) unchanged, counted in the summary.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from curate import schema as S
from curate.io.atomic import (
    ForeignOutput,
    make_work_folder,
    read_own_json,
    refuse_foreign,
    remove_work_folder,
    write_json_atomically,
)
from curate.io.blur import DEFAULT_WEBP_QUALITY, BlurFailed, FaceBoxes, blur_sample
from curate.io.samples import image_member, sample_digest, shard_records
from curate.io.shards import SHARD_COMPLETE, check_shard_spec, expand_shards, read_shard, shard_name
from curate.io.subset import load_subset_counts


@dataclass
class ReshardConfig:
    """Settings of ``curate reshard``.

    Attributes:
        shard_size: samples per output shard (DataComp's resharder writes 10,000).
        webp_quality: WebP quality of a face-blurred image, with --face-boxes (DataComp's
            --reencode-webp-quality; above 100: lossless WebP).
    """

    shard_size: int = field(default=10_000, metadata={"min": 1})
    webp_quality: int = field(default=DEFAULT_WEBP_QUALITY, metadata={"min": 1})


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
    face_boxes: str | None = None  # the metadata folder of --face-boxes
    blurred_images: int = 0  # samples whose image was blurred (each written as often as listed)
    blurred_boxes: int = 0  # face boxes blurred in them
    blur_failed: int = 0  # samples with boxes written unchanged: the image could not be blurred
    blur_failed_samples: list[str] = field(default_factory=list)  # "shard/key: why", the first 100
    face_boxes_missing_uids: int = 0  # written uids that the metadata folder lacks (not blurred)

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
        if self.face_boxes is not None:
            lines.append(f"  faces         {self.blurred_images} images blurred ({self.blurred_boxes} boxes) "
                         f"from {self.face_boxes}")
            if self.blur_failed:
                lines.append(f"  NOT BLURRED   {self.blur_failed} image(s) with face boxes written unchanged: "
                             f"{'; '.join(self.blur_failed_samples[:3])}" + ("; ..." if self.blur_failed > 3 else ""))
            if self.face_boxes_missing_uids:
                lines.append(f"  no boxes      {self.face_boxes_missing_uids} written uid(s) not in the metadata "
                             "folder (written unchanged)")
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


def reshard(subset: str | Path, shards: list[str] | str, out: str | Path, shard_size: int = 10_000,
            face_boxes: str | Path | None = None, webp_quality: int = DEFAULT_WEBP_QUALITY) -> ReshardSummary:
    """Write the subset's samples into new shards (see the module docstring).

    Args:
        subset: ``subset.npy`` or ``subset.parquet`` from ``curate filter``.
        shards: input shard specs (brace ranges, globs, fsspec URLs).
        out: output folder (created).
        shard_size: samples per output shard.
        face_boxes: a DataComp metadata folder (``uid``, ``face_bboxes``): blur the faces of
            each written image (``curate.io.blur``); ``None``: every member byte for byte.
        webp_quality: WebP quality of a blurred image (DataComp's default, 100).

    Raises:
        FileNotFoundError: ``face_boxes`` holds no ``<32 hex>.parquet`` file (before any work).
        ValueError: bad subset file, ``shard_size`` or ``webp_quality``, a metadata file without
            ``uid`` or ``face_bboxes``, or a shard spec with a scheme curate does
            not read (``check_shard_spec``: ``pipe:``, ...), found before any work.
        ForeignOutput (a ValueError): ``out`` is the folder of an input shard (before any work),
            or a file that the run would replace was not written by a previous run (its summary
            does not list it; nothing in ``out`` is changed).
    """
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    if webp_quality < 1:
        raise ValueError("--webp-quality must be at least 1")
    faces = FaceBoxes(face_boxes) if face_boxes is not None else None
    for spec in [shards] if isinstance(shards, str) else shards:
        check_shard_spec(spec)
    wanted = load_subset_counts(subset)
    out = Path(out)
    check_out_holds_no_input(out, expand_shards(shards))
    previous = previous_outputs(out)
    # Written under out/.reshard-work and moved into out when complete, replacing the previous
    # run's shards: a failed run (a full disk) leaves those as they were, and nothing else.
    work = make_work_folder(out / ".reshard-work")
    try:
        summary = _reshard(wanted, shards, work, shard_size, faces, webp_quality)
        written = [f for name in summary.output_shards for f in (name, _stats_name(name))] + [SUMMARY_NAME]
        refuse_foreign([out / name for name in written], lambda path: path.name in previous)
        for name in sorted(previous - set(written)):  # the previous run's shards beyond the new count
            (out / name).unlink(missing_ok=True)
        for name in written:  # the summary last
            os.replace(work / name, out / name)
    finally:
        remove_work_folder(work)
    return summary


SUMMARY_NAME = "reshard_summary.json"


def _stats_name(shard: str) -> str:
    """``00000000_stats.json`` for ``00000000.tar``."""
    return shard.removesuffix(".tar") + "_stats.json"


def previous_outputs(out: Path) -> set[str]:
    """The names of the files a previous ``reshard`` run wrote into ``out``, as its summary
    (``reshard_summary.json``) lists them: its shards, their stats files and the summary; empty
    when ``out`` holds no summary of curate's. Only these are ever replaced or removed."""
    summary = read_own_json(out / SUMMARY_NAME, "output_shards", "requested_uids", "written_samples")
    if summary is None or not isinstance(summary["output_shards"], list):
        return set()
    shards = {n for n in summary["output_shards"] if isinstance(n, str) and OUTPUT_SHARD.fullmatch(n)}
    return shards | {_stats_name(n) for n in shards} | {SUMMARY_NAME}


OUTPUT_SHARD = re.compile(r"\d{8}\.tar")  # the name of a shard a run writes


def check_out_holds_no_input(out: Path, urls: list[str]) -> None:
    """Refuse an output folder that holds an input shard (paths compared resolved, links
    followed): the inputs are never written over, whatever their names.

    Raises:
        ForeignOutput: ``out`` is the folder of one of the local ``urls``.
    """
    target = out.resolve()
    for url in urls:
        if "://" in url and not url.startswith("file://"):
            continue  # a remote shard is never in a local folder
        shard = Path(url.removeprefix("file://")).resolve()
        if shard.parent == target:
            raise ForeignOutput(f"--out {out} holds the input shard {url}; write the new shards to another folder")


def _reshard(wanted, shards, out: Path, shard_size: int, faces: FaceBoxes | None = None,
             webp_quality: int = DEFAULT_WEBP_QUALITY) -> ReshardSummary:
    summary = ReshardSummary(len(wanted), wanted.total, face_boxes=faces.folder if faces is not None else None)
    found: dict[str, bytes] = {}  # uid -> digest of the sample written for it (not its bytes)
    writer = _Writer(out, shard_size)
    try:
        _write_subset(wanted, shards, writer, summary, found, faces, webp_quality)
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


MAX_NAMED_FAILURES = 100  # blur failures named in the summary (all are counted)


def _write_subset(wanted, shards, writer: _Writer, summary: ReshardSummary, found: dict[str, bytes],
                  faces: FaceBoxes | None = None, webp_quality: int = DEFAULT_WEBP_QUALITY) -> None:
    for url in expand_shards(shards):
        result = read_shard(url)
        if result.status != SHARD_COMPLETE:
            summary.input_problems[url] = S.cap_error(f"{result.status}: {result.error}")
        records = shard_records(result.samples)
        # This shard's subset uids only: the boxes held are one shard's, never the pool's.
        boxes = faces.lookup(r[S.UID] for r in records if wanted.get(r[S.UID])) if faces is not None else {}
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
            if faces is not None:
                sample = _blurred(sample, uid, rec, boxes, summary, webp_quality)
            for _ in range(copies):
                writer.write(sample)


def _blurred(sample: dict, uid: str, rec: dict, boxes: dict, summary: ReshardSummary, quality: int) -> dict:
    """The sample to write with its face boxes blurred (``curate.io.blur.blur_sample``), counted in
    ``summary``; the sample itself when it has no boxes or its image cannot be blurred."""
    if uid not in boxes:
        summary.face_boxes_missing_uids += 1
        return sample
    faces = boxes[uid]
    if not faces:
        return sample
    ext = image_member(sample)
    try:
        if ext is None:
            raise BlurFailed("no image member")
        out = blur_sample(sample, ext, faces, quality)
    except BlurFailed as e:
        summary.blur_failed += 1
        if len(summary.blur_failed_samples) < MAX_NAMED_FAILURES:
            summary.blur_failed_samples.append(S.cap_error(f"{shard_name(rec[S.SHARD])}/{rec[S.KEY]}: {e}"))
        return sample
    summary.blurred_images += 1
    summary.blurred_boxes += len(faces)
    return out
