"""What a filter run reports and owns: ``FilterSummary`` (printed, and written to
``filter_summary.json`` by ``write_summary``), ``kept_text`` (the one way a subset's size is
stated) and ``check_filter_out`` (which files in ``--out`` a run may replace)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from curate.filters.rules import Leaf
from curate.io.atomic import ForeignOutput, read_own_json, refuse_foreign, write_json_atomically
from curate.query import pool_files


def kept_text(kept: int, pool_rows: int, pool_ok: int) -> str:
    """The one way curate states a subset's size (filter summary, report):
    ``15 of 41 samples (36.59% of the pool; 38.46% of its 39 ok samples)``. The pool is every
    row, as DataComp states subset sizes; the ok share is the base of curate's ``fraction=``."""
    of_pool = kept / pool_rows if pool_rows else 0.0
    of_ok = kept / pool_ok if pool_ok else 0.0
    return f"{kept} of {pool_rows} samples ({of_pool:.2%} of the pool; {of_ok:.2%} of its {pool_ok} ok samples)"


@dataclass
class FilterSummary:
    """What ``run_filter`` did; ``format()`` is the printed summary."""

    rule: str
    where: str | None
    pool_rows: int
    pool_ok: int
    kept: int
    removed_by: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    shared_uid_rows: int = 0
    details: dict[str, dict] = field(default_factory=dict)
    bad_uid_rows: int = 0
    not_scored: int = 0  # rows of DataComp metadata joined with a score index that the index lacks

    def format(self) -> str:
        lines = [
            "curate filter: summary",
            f"  rule          {self.rule or '-'}" + (f"  WHERE {self.where}" if self.where else ""),
            f"  pool          {self.pool_rows} rows, {self.pool_ok} ok "
            f"({self.pool_rows - self.pool_ok} not ok, never kept)",
            f"  kept          {kept_text(self.kept, self.pool_rows, self.pool_ok)}",
        ]
        if self.not_scored:
            lines.append(f"  not scored    {self.not_scored} row(s) of the DataComp metadata have no row in the score "
                         "index (images that failed to download, or shards not scored): never kept")
        for part, n in self.removed_by.items():
            lines.append(f"  removed by    {part}: {n} ok rows fail it")
        if self.shared_uid_rows:
            lines.append(f"  shared uid    {self.shared_uid_rows} row(s) pass the rule but share their uid with "
                         "another row of the pool: not kept (a uid must name one sample)")
        if self.bad_uid_rows:
            lines.append(f"  bad uid       {self.bad_uid_rows} row(s) pass the rule but their uid is not a uid (32 "
                         "lower-case hex characters; an old or edited index): not kept")
        for name, thr in self.thresholds.items():
            lines.append(f"  threshold     {name} >= {thr:.6g}")
        for name, found in self.details.items():
            shown = {k: v for k, v in found.items() if k != "warning"}
            if shown:
                lines.append(f"  found         {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
            if found.get("warning"):
                lines.append(f"  WARNING       {name}: {found['warning']}")
        for path in self.outputs.values():
            lines.append(f"  wrote         {path}")
        return "\n".join(lines)


SUMMARY_FILE = "filter_summary.json"
SUBSET_FILES = ("subset.parquet", "subset.npy")


def check_filter_out(out: Path, index: str | Path) -> set[str]:
    """The names of the files in ``out`` that a filter run may replace: those the previous
    run's ``filter_summary.json`` lists (its subset files and what its pool rules wrote) and the
    summary itself; none when ``out`` holds no summary of curate's.

    Raises:
        ForeignOutput: ``out`` is the folder of an index file (the subset would join or replace
            the index), or holds a subset file or a summary that no filter run wrote.
        FileNotFoundError: no index files.
    """
    target = out.resolve()
    index_list, meta_list = pool_files(index)
    if any(Path(f).parent == target for f in [*index_list, *meta_list]):
        raise ForeignOutput(f"--out {out} is the score index's folder (or the metadata's: --index); "
                            "write the subset to another folder")
    summary = read_own_json(out / SUMMARY_FILE, "rule", "pool_rows", "kept", "outputs")
    outputs = summary["outputs"] if summary is not None and isinstance(summary["outputs"], dict) else {}
    owned = {Path(v).name for v in outputs.values() if isinstance(v, str)} | ({SUMMARY_FILE} if summary else set())
    refuse_foreign([out / name for name in (*SUBSET_FILES, SUMMARY_FILE)], lambda path: path.name in owned)
    return owned


def write_summary(out: Path, rule: str | None, where: str | None, parts: list[Leaf], pool_rows: int, pool_ok: int,
                  kept: int, removed: dict[str, int], shared_uid_rows: int, bad_uid_rows: int = 0,
                  not_scored: int = 0) -> FilterSummary:
    """The ``FilterSummary`` of a filter run, also written to ``out/filter_summary.json`` (strict
    JSON: a "keep all" threshold is the string ``"-inf"``)."""
    thresholds = {f"{leaf} on {col}": thr for leaf in parts for col, thr in leaf.thresholds.items()}
    summary = FilterSummary(rule or "", where, pool_rows, pool_ok, kept, removed, thresholds,
                            {"parquet": str(out / "subset.parquet"), "npy": str(out / "subset.npy")},
                            shared_uid_rows, {str(leaf): leaf.details for leaf in parts if leaf.details},
                            bad_uid_rows, not_scored)
    for leaf in parts:
        summary.outputs.update({f"{leaf.name} {k}": str(v) for k, v in leaf.details.pop("files", {}).items()})
    record = dict(summary.__dict__, thresholds={k: v if math.isfinite(v) else str(v) for k, v in thresholds.items()})
    write_json_atomically(out / SUMMARY_FILE, record, indent=2, default=str, allow_nan=False)
    return summary
