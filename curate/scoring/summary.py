"""What a ``curate score`` run did: per-shard results and the summary the CLI prints."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from curate import schema as S
from curate.io.samples import MAX_CAPTION_CHARS
from curate.io.shards import SHARD_COMPLETE, SHARD_DAMAGED, SHARD_TRUNCATED, SHARD_UNREADABLE
from curate.models import ResolvedWeights

SHARD_SKIPPED = "skipped"  # index file already complete from an earlier run
SHARD_FAILED = "failed"  # the job stopped (internal error) before this shard was written


@dataclass
class ShardResult:
    """What happened to one shard.

    Attributes:
        url: shard URL.
        status: ``complete``, ``truncated``, ``damaged``, ``unreadable``, ``skipped`` (already
            indexed) or ``failed`` (the job stopped before the shard was written).
        error: why a shard is not complete.
        num_samples: samples (= index rows) of the shard.
        statuses: row count per ``status`` value.
        index_file: the index file written (or found, for ``skipped``), if any.
        ignored_members: tar members that belong to no sample (no extension).
        captions_repaired: captions changed by the caption policy (invalid UTF-8, lone
            surrogates, control characters, cut to ``MAX_CAPTION_CHARS``), still ``ok``.
    """

    url: str
    status: str
    error: str | None = None
    num_samples: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    index_file: str | None = None
    ignored_members: int = 0
    captions_repaired: int = 0


_SHARD_ORDER = (SHARD_COMPLETE, SHARD_TRUNCATED, SHARD_DAMAGED, SHARD_UNREADABLE, SHARD_FAILED, SHARD_SKIPPED)


@dataclass
class ScoreSummary:
    """The outcome of ``run_score``; ``format()`` gives the table the CLI prints.

    Attributes:
        shards: one ``ShardResult`` per shard, in the order given.
        wall_s: seconds from the command's start (``run_score``'s ``started_at``) to the summary.
        weights: the CLIP weights used.
        out_dir: the score-index folder.
        duplicates_dropped: rows Ray delivered twice (task retries), written once.
        stage_stats: per stage of the plan, ``{"samples": rows processed, "busy_s": seconds its
            workers spent in the stage}``, summed over workers; ``samples / busy_s`` is one
            worker's throughput and ``busy_s / wall`` the mean number of busy workers.
        plan: the stages as run (``StageSpec.describe()``): compute, resources, pool sizes.
        startup_s: seconds from the command's start (``run_score``'s ``started_at``) until the
            first samples left the last stage.
        startup_phases: where ``startup_s`` went, seconds per step in order: ``before_call``
            (imports, argument parsing), ``checks`` (shard list, weights, output folder),
            ``ray_init`` (``ray.init``: starting or joining the cluster), ``plan`` (sizing the
            plan, building the Ray Data dataset), ``first_batch`` (Ray Data starts the actors,
            which load their models, while the first shards are read; the first batch passes
            every stage). Empty when no row was scored.
        steady_samples_per_s: samples/s after start-up: the rows that left the last stage after
            the first batch, over the seconds between the first and the last batch (``None``
            with fewer than two batches).
        first_samples: samples in that first batch (the plan's first block: the first shard's
            first sample alone when it can be streamed, ``curate.scoring.records.shard_items``;
            0 when no sample was scored).
        driver_cpu_s: CPU seconds the driver process used while the plan ran (its share of the
            machine: ``driver_cpu_s / wall_s``).
        isolation: ``curate.scoring.isolate.IsolationResult`` (``None`` when no worker died):
            the samples run alone after their batch's worker died, and how they ended.
    """

    shards: list[ShardResult]
    wall_s: float
    weights: ResolvedWeights
    out_dir: str
    duplicates_dropped: int = 0
    stage_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)
    startup_s: float = 0.0
    driver_cpu_s: float = 0.0
    isolation: Any = None
    startup_phases: dict[str, float] = field(default_factory=dict)
    steady_samples_per_s: float | None = None
    first_samples: int = 0

    @property
    def processed(self) -> list[ShardResult]:
        return [s for s in self.shards if s.status != SHARD_SKIPPED]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def statuses(self, processed_only: bool = False) -> dict[str, int]:
        c: collections.Counter = collections.Counter()
        for s in self.processed if processed_only else self.shards:
            c.update(s.statuses)
        return dict(sorted(c.items()))

    @property
    def samples_per_s(self) -> float:
        n = sum(s.num_samples for s in self.processed)
        return n / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every shard was read (bad samples are not failures); 1 if a shard was
        unreadable or the job failed before writing it."""
        return 1 if any(s.status in (SHARD_UNREADABLE, SHARD_FAILED) for s in self.shards) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "clip_model": self.weights.model,
            "clip_pretrained": self.weights.describe(),
            "clip_is_pretrained": self.weights.is_pretrained,
            "num_shards": len(self.shards),
            "shards_by_status": dict(collections.Counter(s.status for s in self.shards)),
            "num_samples": self.num_samples,
            "statuses": self.statuses(),
            "wall_s": round(self.wall_s, 3),
            "startup_s": round(self.startup_s, 3),
            "startup_phases": {k: round(v, 3) for k, v in self.startup_phases.items()},
            "steady_samples_per_s": round(self.steady_samples_per_s, 3) if self.steady_samples_per_s else None,
            "first_samples": self.first_samples,
            "driver_cpu_s": round(self.driver_cpu_s, 3),
            "samples_per_s_processed": round(self.samples_per_s, 3),
            "duplicates_dropped": self.duplicates_dropped,
            "isolation": dataclasses.asdict(self.isolation) if self.isolation is not None else None,
            "plan": self.plan,
            "stage_stats": {k: {"samples": int(v["samples"]), "busy_s": round(v["busy_s"], 3)}
                            for k, v in self.stage_stats.items()},
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    def format(self) -> str:
        by = collections.Counter(s.status for s in self.shards)
        statuses = self.statuses()
        ok = statuses.get(S.STATUS_OK, 0)
        errors = {k: v for k, v in statuses.items() if k != S.STATUS_OK}
        processed = sum(s.num_samples for s in self.processed)
        lines = [
            "curate score: summary",
            f"  score index   {self.out_dir}",
            f"  CLIP          {self.weights.model}, weights: {self.weights.describe()}",
            f"  shards        {len(self.shards)} ("
            + ", ".join(f"{k} {by[k]}" for k in _SHARD_ORDER if by[k])
            + ")",
            f"  samples       {self.num_samples}",
            f"  ok            {ok}",
            "  errors        " + (", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "none"),
            f"  time          {self.wall_s:.1f} s, {self.samples_per_s:.2f} samples/s "
            f"({processed} samples scored this run"
            + (f"; first samples scored after {self.startup_s:.1f} s" if self.startup_s else "") + ")",
        ]
        if self.startup_phases:
            first = (f"models + first batch ({self.first_samples} sample{'' if self.first_samples == 1 else 's'})"
                     if self.first_samples else "models + first batch")
            names = {"before_call": "imports", "checks": "checks", "ray_init": "Ray start", "plan": "plan",
                     "first_batch": first}
            lines.append("  start-up      " + ", ".join(f"{names.get(k, k)} {v:.1f} s"
                                                      for k, v in self.startup_phases.items())
                         + (f"; then {self.steady_samples_per_s:.1f} samples/s" if self.steady_samples_per_s else ""))
        lines += self._stage_lines()
        iso = self.isolation
        if iso is not None and (iso.samples or iso.shard_errors):
            lines.append(f"  isolated      {iso.samples} sample(s) run alone after their batch's worker died or hung "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(iso.statuses.items()))}; "
                         f"{iso.deaths} worker(s) lost alone; {iso.seconds:.1f} s)")
        if self.duplicates_dropped:
            lines.append(f"  re-delivered  {self.duplicates_dropped} row(s) Ray sent twice (task retries), dropped")
        repaired = sum(s.captions_repaired for s in self.processed)
        if repaired:
            lines.append(f"  captions      {repaired} repaired (invalid UTF-8, lone surrogates, control characters or "
                         f"over {MAX_CAPTION_CHARS} characters; kept, see curate.io.samples)")
        ignored = sum(s.ignored_members for s in self.shards)
        if ignored:
            lines.append(f"  ignored       {ignored} tar member(s) with no extension (not part of any sample)")
        bad = [s for s in self.shards if s.status in (SHARD_TRUNCATED, SHARD_DAMAGED, SHARD_UNREADABLE, SHARD_FAILED)]
        for s in bad:
            lines.append(f"  {s.status.upper():<13} {s.url}: {s.error}")
        if not self.weights.is_pretrained:
            lines.append("  WARNING       random-init CLIP: these are NOT meaningful CLIP scores (pass --pretrained)")
        return "\n".join(lines)

    def _stage_lines(self) -> list[str]:
        """Per stage: where it ran, one worker's samples/s, and the mean number of busy workers
        (busy seconds / wall seconds); the stage with the most busy seconds per worker it may
        use is the bottleneck."""
        if not self.stage_stats:
            return []
        lines = ["  stages        " + f"{'':10}{'runs on':<26}{'samples/s/worker':>17}{'busy workers':>14}"]
        plan = {p["name"]: p for p in self.plan}
        load = {}
        for name, st in self.stage_stats.items():
            p = plan.get(name, {})
            rate = st["samples"] / st["busy_s"] if st["busy_s"] > 0 else float("nan")
            busy = st["busy_s"] / self.wall_s if self.wall_s > 0 else 0.0
            load[name] = busy / max(1.0, float(p.get("max_actors") or 1))
            lines.append(f"  {'':14}{name:<10}{p.get('runs_on', ''):<26}{rate:>17.1f}{busy:>14.2f}")
        if load:
            lines.append(f"  bottleneck    {max(load, key=load.get)} (busiest for the workers it may use)")
        return lines
