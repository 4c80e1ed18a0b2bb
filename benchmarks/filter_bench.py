#!/usr/bin/env python
"""Filter throughput and memory: `curate filter` at growing pool sizes, against the one-query
DuckDB filter it replaced (issue 19) and a vectorised pyarrow + numpy baseline where that fits
in memory.

    python benchmarks/filter_bench.py [--rows 10000000 40000000 160000000] [--workdir /tmp/filter_bench]

Builds one synthetic score index of the largest ``--rows`` in the real schema (``curate.schema``),
``--rows-per-file`` rows a Parquet file like one file per shard, with real web captions from
``tests/data/captions/laion_sample_1000.parquet`` and random sizes, scores and languages; a
smaller size is a folder of links to the first of those files. The build is kept and reused.
Each size then runs ``tmars(fraction=0.3) & basic()`` with ``curate.filters.run_filter`` in its
own process (its peak RSS is its own), under ``--memory-limit``, and so does the one-query
filter (``one_query_subset``; ``--no-query-baseline`` skips it), which must write the same
``subset.npy`` byte for byte. Up to ``--baseline-max`` rows
the same rule is also run the way a user would with pyarrow.compute and numpy (whole columns
in memory), checking both keep the same uids. Printed: rows/s, peak RSS, the RSS ratio to the
smallest size (issue 19: within 1.2x from 10M to 160M), the speed-up over the one-query filter
and the rows/s of the pyarrow baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curate import schema as S  # noqa: E402
from curate.filters import run_filter  # noqa: E402


def hex_uids(rng: np.random.Generator, n: int) -> pa.Array:
    """``n`` random 32-hex uids (128 random bits each, as DataComp's uids are spread), built
    from bytes without Python strings."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    text = np.empty((n, 32), np.uint8)
    text[:, 0::2], text[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())])


def build(workdir: Path, rows: int, files: int, seed: int = 0, uids: str = "hex") -> Path:
    index = workdir / "index"
    if index.exists():
        shutil.rmtree(index)
    index.mkdir(parents=True)
    captions = [
        t for t in pq.read_table(REPO / "tests/data/captions/laion_sample_1000.parquet").column("TEXT").to_pylist() if t
    ]
    rng = np.random.default_rng(seed)
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        if n <= 0:
            break
        start = f * per
        uid = hex_uids(rng, n) if uids == "hex" else pa.array([f"{i:032x}" for i in range(start, start + n)])
        status = np.where(rng.random(n) < 0.02, "decode_error", "ok")
        ok = status == "ok"
        w = rng.integers(64, 2048, n).astype(np.int32)
        h = rng.integers(64, 2048, n).astype(np.int32)
        clip = rng.normal(0.25, 0.05, n).astype(np.float32)
        masked = (clip - np.abs(rng.normal(0, 0.03, n))).astype(np.float32)
        lang = np.where(rng.random(n) < 0.6, "en", "de")
        text = pa.array(np.array(captions, dtype=object)[rng.integers(0, len(captions), n)], pa.string())
        empty_lists = pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.list_(pa.float32())))
        table = pa.table(
            {
                S.UID: uid, S.KEY: pa.array(np.char.mod("%09d", np.arange(n)).astype(object)),
                S.SHARD: pa.array([f"pool-{f:06d}.tar"] * n), S.TEXT: text,
                S.WIDTH: pa.array(w, mask=~ok), S.HEIGHT: pa.array(h, mask=~ok),
                S.STATUS: pa.array(status.astype(object)), S.ERROR: pa.nulls(n, pa.string()),
                S.TEXT_BOXES: empty_lists, S.NUM_TEXT_BOXES: pa.array(np.zeros(n, np.int32), mask=~ok),
                S.TEXT_AREA_FRAC: pa.array(np.zeros(n, np.float32), mask=~ok),
                S.CLIP_SCORE: pa.array(clip, mask=~ok), S.MASKED_CLIP_SCORE: pa.array(masked, mask=~ok),
                S.CAPTION_LANG: pa.array(lang.astype(object)),
                S.CAPTION_LANG_SCORE: pa.array(np.full(n, 0.9, np.float32)),
                S.OCR_TEXT: pa.nulls(n, pa.list_(pa.string())), S.OCR_CONFIDENCE: pa.nulls(n, pa.list_(pa.float32())),
            },
            schema=S.SCHEMA,
        )
        pq.write_table(table, index / f"pool-{f:06d}.parquet", compression="zstd")
    return index


def baseline(index: Path, fraction: float) -> set[str]:
    """The same rule with pyarrow.compute + numpy, reading only the needed columns."""
    cols = [S.UID, S.STATUS, S.MASKED_CLIP_SCORE, S.CAPTION_LANG, S.TEXT, S.WIDTH, S.HEIGHT]
    t = pa.concat_tables(
        [pq.read_table(p, columns=cols) for p in sorted(index.glob("*.parquet"))])
    ok = pc.equal(t[S.STATUS], "ok")
    scores = pc.filter(t[S.MASKED_CLIP_SCORE], pc.and_(ok, pc.is_valid(t[S.MASKED_CLIP_SCORE]))).to_numpy()
    k = int(len(scores) * fraction)
    thr = -np.inf if k >= len(scores) else -np.sort(-scores)[k]
    words = pc.list_value_length(pc.split_pattern_regex(pc.utf8_trim_whitespace(t[S.TEXT]), r"\s+"))
    w, h = t[S.WIDTH], t[S.HEIGHT]
    short, long_ = pc.min_element_wise(w, h), pc.max_element_wise(w, h)
    keep = pc.and_kleene(ok, pc.greater_equal(t[S.MASKED_CLIP_SCORE], thr))
    keep = pc.and_kleene(keep, pc.equal(t[S.CAPTION_LANG], "en"))
    keep = pc.and_kleene(keep, pc.greater(words, 2))
    keep = pc.and_kleene(keep, pc.greater(pc.utf8_length(t[S.TEXT]), 5))
    keep = pc.and_kleene(keep, pc.greater_equal(short, 200))
    keep = pc.and_kleene(keep, pc.less_equal(long_, pc.multiply(short, 3)))
    keep = pc.fill_null(keep, False)
    return set(pc.filter(t[S.UID], keep).to_pylist())


def link_index(files: Path, index: Path, rows: int, rows_per_file: int) -> Path:
    """``index``: links to the first ``rows / rows_per_file`` files of ``files``."""
    if index.exists():
        shutil.rmtree(index)
    index.mkdir(parents=True)
    for f in sorted(files.glob("*.parquet"))[: -(-rows // rows_per_file)]:
        os.symlink(f, index / f.name)
    return index


RULE = "tmars(fraction=0.3) & basic()"


def run_one(index: Path, out: Path, memory_limit: str) -> dict:
    """``run_filter`` once, in this process: wall seconds, peak RSS, what it kept."""
    t0 = time.perf_counter()
    summary = run_filter(index, RULE, out, memory_limit=memory_limit)
    wall = time.perf_counter() - t0
    return {"rows": summary.pool_rows, "kept": summary.kept, "wall_s": wall, "peak_rss_gib": peak_rss_gib(),
            "thresholds": summary.thresholds}


def one_query_subset(index: Path, rule: str | None, out: Path, memory_limit: str | None = "2GiB",
                     where: str | None = None) -> dict:
    """``curate filter`` as it was before its streaming scan (issue 19), the reference the
    streaming path is checked and timed against: one DuckDB query selects the kept rows, checks
    their uids against the pool (a semi-join) and sorts them, out of core under the same memory
    limit; a second scan counts what each part removes. Same thresholds (``plan_filter``).
    Writes ``out/subset.parquet`` and ``out/subset.npy``.

    Returns:
        ``pool_rows``, ``pool_ok``, ``kept``, ``shared_uid_rows``, ``removed_by``.
    """
    from curate.filters.rules import OK, check_predicate
    from curate.filters.run import IndexPool, plan_filter, write_datacomp_subset, write_unshared
    from curate.query import VIEW, connect

    spill = out / ".duckdb-tmp"
    out.mkdir(parents=True, exist_ok=True)
    con = connect(index, memory_limit=memory_limit, temp_directory=spill if memory_limit else None)
    try:
        plan = plan_filter(rule, where, check_predicate(where) if where else None, IndexPool(con, index, out))
        cols = ", ".join(plan.columns)
        reader = con.sql(
            f"WITH kept AS (SELECT {cols} FROM {VIEW} WHERE {OK} AND ({plan.predicate}) "
            f"AND regexp_full_match({S.UID}, '{S.UID_PATTERN}')), "  # a bad uid is never kept (S.is_uid)
            f"repeated AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM kept) "
            f"GROUP BY {S.UID} HAVING count(*) > 1), "
            f"shared AS (SELECT {S.UID} FROM {VIEW} WHERE {S.UID} IN (SELECT {S.UID} FROM repeated) "
            f"GROUP BY {S.UID} HAVING NOT (bool_and({OK}) AND count(DISTINCT ({S.TEXT}, {S.WIDTH}, {S.HEIGHT}, "
            f"{S.NUM_TEXT_BOXES}, round({S.CLIP_SCORE}, 3))) = 1)) "
            f"SELECT {cols}, {S.UID} IN (SELECT {S.UID} FROM shared) AS _shared FROM kept "
            f"ORDER BY {S.UID}, {S.SHARD}, {S.KEY}").to_arrow_reader(1 << 20)
        kept, shared = write_unshared(reader, out / "subset.parquet")
        counts = con.execute(plan.counts_sql).fetchall()[0]
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    write_datacomp_subset(out / "subset.parquet", out / "subset.npy")
    return {"pool_rows": counts[0], "pool_ok": counts[1], "kept": kept, "shared_uid_rows": shared,
            "removed_by": dict(zip(plan.names, counts[2:]))}


def run_one_query(index: Path, out: Path, memory_limit: str) -> dict:
    """``one_query_subset`` once, in this process: wall seconds, peak RSS, what it kept."""
    t0 = time.perf_counter()
    res = one_query_subset(index, RULE, out, memory_limit)
    return {"kept": res["kept"], "wall_s": time.perf_counter() - t0, "peak_rss_gib": peak_rss_gib()}


def one(how: str, index: Path, out: Path, memory_limit: str) -> dict:
    """``run_one`` (``how="stream"``) or ``run_one_query`` in a fresh process: its peak RSS is
    its own."""
    r = subprocess.run([sys.executable, __file__, "--one", how, str(index), str(out), "--memory-limit", memory_limit],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"curate filter ({how}) failed on {index}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


BUILD_BYTES_PER_ROW = {"hex": 40, "sequential": 22}  # index on disk, measured: 35 and 18 B/row


def check_disk(workdir: Path, rows: int, uids: str) -> None:
    """Exit with a message before building when ``workdir``'s disk cannot hold the build of
    ``rows`` rows (``BUILD_BYTES_PER_ROW``, plus 2 GB for the subsets and DuckDB's spills)."""
    workdir.mkdir(parents=True, exist_ok=True)
    need = rows * BUILD_BYTES_PER_ROW[uids] + 2e9
    free = shutil.disk_usage(workdir).free
    if free < need:
        sys.exit(f"filter_bench: a {rows:,}-row index needs about {need / 1e9:.1f} GB in {workdir}, and "
                 f"{free / 1e9:.1f} GB are free there: give --workdir on a larger disk, or fewer --rows")


def peak_rss_gib() -> float:
    """This process's peak RSS: ``VmHWM`` of ``/proc/self/status`` (Linux). Not ``getrusage``:
    its ``ru_maxrss`` keeps the parent's RSS at the fork across ``exec``, so a child of a large
    parent (this script after its in-memory baseline) would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 40_000_000, 160_000_000])
    ap.add_argument("--rows-per-file", type=int, default=100_000)
    ap.add_argument("--uids", choices=["hex", "sequential"], default="hex",
                    help="random 32-hex uids, spread like DataComp's (default), or 0, 1, 2, ... in hex: every "
                         "kept row in the first uid range, which the filter must split")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/filter_bench"))
    ap.add_argument("--memory-limit", default="2GiB", help="curate filter --memory-limit")
    ap.add_argument("--baseline-max", type=int, default=10_000_000,
                    help="run the in-memory pyarrow baseline up to this many rows")
    ap.add_argument("--ray-nodes", type=int, default=0,
                    help="also run the Ray path (curate filter --address) on a local cluster of this many nodes")
    ap.add_argument("--ray-rows", type=int, default=40_000_000, help="pool size of the Ray run")
    ap.add_argument("--no-query-baseline", action="store_true",
                    help="skip the one-query baseline (curate filter before its streaming scan)")
    ap.add_argument("--one", nargs=3, metavar=("HOW", "INDEX", "OUT"), help=argparse.SUPPRESS)  # internal
    args = ap.parse_args()
    if args.one:
        how, index, out = args.one
        print(json.dumps((run_one if how == "stream" else run_one_query)(Path(index), Path(out), args.memory_limit)))
        return
    largest = max(args.rows)
    files = args.workdir / f"files-{args.uids}"
    stamp = files / f".built-{largest}-{args.rows_per_file}"
    built = [int(p.name.split("-")[1]) for p in files.glob(f".built-*-{args.rows_per_file}")] if files.exists() else []
    if not any(n >= largest for n in built):  # a larger build serves too: sizes link its first files
        check_disk(args.workdir, largest, args.uids)
        t0 = time.perf_counter()
        build(args.workdir / "build", largest, -(-largest // args.rows_per_file), uids=args.uids)
        if files.exists():
            shutil.rmtree(files)
        (args.workdir / "build" / "index").rename(files)
        stamp.touch()
        print(f"built {largest:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for rows in sorted(args.rows):
        index = link_index(files, args.workdir / f"index-{rows}", rows, args.rows_per_file)
        out = args.workdir / f"subset-{rows}"
        res = one("stream", index, out, args.memory_limit)
        if not args.no_query_baseline:
            q = one("query", index, args.workdir / f"subset-query-{rows}", args.memory_limit)
            res["query_s"], res["query_rss_gib"] = q["wall_s"], q["peak_rss_gib"]
            res["same_as_query"] = (out / "subset.npy").read_bytes() == \
                (args.workdir / f"subset-query-{rows}" / "subset.npy").read_bytes()
            if not res["same_as_query"]:
                sys.exit(f"curate filter and the one-query baseline disagree at {rows:,} rows")
        if rows <= args.baseline_max:
            t0 = time.perf_counter()
            base = baseline(index, 0.3)
            res["baseline_s"] = time.perf_counter() - t0
            ours = set(pq.read_table(out / "subset.parquet", columns=[S.UID]).column(S.UID).to_pylist())
            res["same_uids"] = ours == base
            if not res["same_uids"]:
                sys.exit(f"curate filter and the baseline disagree at {rows:,} rows")
        results.append(res)
        print(json.dumps(res), flush=True)
    ray_row = None
    if args.ray_nodes:
        ray_row = run_ray(args, files, results)
    first = results[0]
    print(f"\nrule: {RULE}; --memory-limit {args.memory_limit}; {os.cpu_count()} CPUs")
    print("| rows | index on disk | curate filter wall | rows/s | peak RSS | RSS vs smallest | one query wall | "
          "one query peak RSS | speed-up | same subset.npy | pyarrow rows/s | same uids as pyarrow |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        size = sum(f.stat().st_size for f in (args.workdir / f"index-{r['rows']}").iterdir())
        base = f"{r['rows'] / r['baseline_s']:,.0f}" if "baseline_s" in r else "-"
        query = (f"{r['query_s']:.1f} s | {r['query_rss_gib']:.2f} GiB | {r['query_s'] / r['wall_s']:.2f}x | "
                 f"{r['same_as_query']}") if "query_s" in r else "- | - | - | -"
        print(f"| {r['rows']:,} | {size / 1e6:,.0f} MB | {r['wall_s']:.1f} s | {r['rows'] / r['wall_s']:,.0f} | "
              f"{r['peak_rss_gib']:.2f} GiB | {r['peak_rss_gib'] / first['peak_rss_gib']:.2f}x | {query} | {base} | "
              f"{r.get('same_uids', '-')} |")
    used = sum(f.stat().st_size for f in files.iterdir())
    print(f"\nThe build ({used / 1e9:.1f} GB) is kept in {files} for the next run; delete {args.workdir} to free it.")
    if ray_row:
        print(f"\nRay path (curate filter --address) on a local {args.ray_nodes}-node cluster, 1 CPU a node:")
        print("| rows | single node wall | Ray path wall | same subset.npy bytes |")
        print("| --- | --- | --- | --- |")
        print(f"| {ray_row['rows']:,} | {ray_row['single_s']:.1f} s | {ray_row['ray_s']:.1f} s | {ray_row['same']} |")


def run_ray(args, files: Path, results: list[dict]) -> dict:
    """The Ray path on a fresh ``ray.cluster_utils.Cluster`` of ``--ray-nodes`` 1-CPU nodes over
    ``--ray-rows`` rows, against the single-node subset of the same size."""
    import ray
    from ray.cluster_utils import Cluster

    from curate.filters.distributed import run_filter_distributed

    rows = args.ray_rows
    single = next((r for r in results if r["rows"] == rows), None)
    if single is None:
        sys.exit(f"--ray-rows {rows} must be one of --rows")
    index = args.workdir / f"index-{rows}"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(args.ray_nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        t0 = time.perf_counter()
        run_filter_distributed(index, "tmars(fraction=0.3) & basic()", args.workdir / f"subset-ray-{rows}",
                               memory_limit=args.memory_limit, address=cluster.address)
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    same = (args.workdir / f"subset-ray-{rows}" / "subset.npy").read_bytes() == \
        (args.workdir / f"subset-{rows}" / "subset.npy").read_bytes()
    row = {"rows": rows, "single_s": single["wall_s"], "ray_s": ray_s, "same": same}
    print(json.dumps({"ray": row}), flush=True)
    if not same:
        sys.exit("the Ray path and the single-node path disagree")
    return row


if __name__ == "__main__":
    main()
