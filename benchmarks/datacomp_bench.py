#!/usr/bin/env python
"""DataComp's own ``baselines.py`` and ``curate filter`` side by side on the same pool (issue 29).

Measures, for each pool size (``--rows``) and each DataComp baseline (``--baselines``):

- whether the two ``subset.npy`` files are the same, byte for byte (the exit status is 1 when any
  pair differs or any run fails; the first differing uid is printed);
- wall time;
- CPU time (user + sys) of the whole process tree: ``resource.getrusage(RUSAGE_CHILDREN)`` deltas
  around each run, which include DataComp's spawned workers (its ``multiprocessing.Pool`` joins
  them) and all of DuckDB's threads;
- peak RSS of the whole process tree: psutil sums the RSS of the process and all its descendants
  every 0.1 s, and the largest sum is kept;

and the curate / DataComp ratio of each (below 1: curate takes less). At the end, for each tool,
the peak RSS at the largest pool size over the one at the smallest, per baseline.

The pool is a synthetic DataComp metadata folder in DataComp's exact on-disk format
(``benchmarks/datacomp_pool.py``: ``<32 hex>.parquet`` files, and the ``.npz`` beside each with
``--npz``), built once per (rows, rows per file, seed, npz) and reused from ``--pool-dir``. Before
a pool's runs its parquet files are read once, so that neither tool pays for the first read from
disk. No baseline measured here reads the npz files (only ``image_based`` does, which needs a GPU
and assets that are not available offline), so ``--npz auto`` writes them only up to 2M rows.

DataComp runs as ``/work/datacomp-ref/run_baselines.sh`` runs it: the pinned copy's
``baselines.py`` with the interpreter of its own environment (``--datacomp-python``), in
``--datacomp-dir``, with ``HOME=--datacomp-home`` (its asset cache and ``nltk_data``) and
``DATACOMP_REF_LID_MODEL`` naming the ``lid.176.ftz`` in that home (the startup hook of that
environment points DataComp's ``download("fasttext")`` at it; see
``benchmarks/datacomp_ref/README.md``). DataComp's code is never imported here. curate runs as
``.venv/bin/curate filter --index POOL --rule RULE --out OUT``. ``--num-workers`` is DataComp's
``--num_workers``; curate has no such flag (DuckDB uses one thread per core), so below the number
of cores curate runs under ``taskset`` on that many cores. Both tools inherit this process's
niceness; run it under ``nice`` to lower both alike. The machine's 1-minute load average at the
start and end of each run is kept in ``--results``: other work on the machine skews the times.

Baselines (``--baselines``, default all of them), as ``run_baselines.sh`` names its runs:

================= ======================================================= ==================================
name              DataComp ``baselines.py``                               curate ``--rule``
================= ======================================================= ==================================
no_filter         ``--name no_filter``                                    ``no_filter()``
clip_b32_f0.3     ``--name clip_score --arch b32 --fraction 0.3``         ``clip_score(arch='b32', fraction=0.3)``
clip_b32_t0.3     ``--name clip_score --arch b32 --threshold 0.3``        ``clip_score(arch='b32', threshold=0.3)``
clip_l14_f0.3     ``--name clip_score --arch l14 --fraction 0.3``         ``clip_score(arch='l14', fraction=0.3)``
clip_l14_t0.3     ``--name clip_score --arch l14 --threshold 0.3``        ``clip_score(arch='l14', threshold=0.3)``
basic_filter      ``--name basic_filter``                                 ``basic_filter()``
laion2b           ``--name laion2b``                                      ``laion2b()``
text_based        ``--name text_based``                                   ``text_based(wordnet=--wordnet)``
================= ======================================================= ==================================

(any ``clip_<b32|l14>_<f|t><number>`` is accepted too.)

    .venv/bin/python benchmarks/datacomp_bench.py --quick                  # smoke test, < 2 min
    nice -n 10 .venv/bin/python benchmarks/datacomp_bench.py               # 1M rows, all baselines
    nice -n 10 .venv/bin/python benchmarks/datacomp_bench.py --rows 1000000 10000000 \\
        --baselines no_filter clip_b32_f0.3 --reuse                        # 1M from results.jsonl

Every run appends one JSON line to ``--results`` (default ``WORK_DIR/results.jsonl``); with
``--reuse``, a (rows, baseline, tool) already measured there with the same pool and worker
count is taken from it instead of run again, so sizes measured in separate invocations land
in one table. The subset files stay in ``--work-dir`` until the next run of the same cell.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINES = ["no_filter", "clip_b32_f0.3", "clip_b32_t0.3", "clip_l14_f0.3", "clip_l14_t0.3",
                     "basic_filter", "laion2b", "text_based"]
QUICK_BASELINES = ["clip_l14_f0.3", "basic_filter"]
TOOLS = ("datacomp", "curate")
GIB = 1024 ** 3
NPZ_AUTO_MAX_ROWS = 2_000_000
SAMPLE_S = 0.1


# --------------------------------------------------------------------------------------------
# Baselines


def datacomp_args(baseline: str) -> list[str]:
    """``baselines.py`` flags for a baseline name (``run_baselines.sh``'s naming)."""
    if baseline in ("no_filter", "basic_filter", "text_based", "laion2b"):
        return ["--name", baseline]
    arch, kind, value = parse_clip(baseline)
    return ["--name", "clip_score", "--arch", arch, "--fraction" if kind == "f" else "--threshold", value]


def curate_rule(baseline: str, wordnet: str) -> str:
    """The curate rule that writes the same subset as DataComp's baseline."""
    if baseline in ("no_filter", "basic_filter", "laion2b"):
        return f"{baseline}()"
    if baseline == "text_based":
        return f"text_based(wordnet={wordnet!r})"
    arch, kind, value = parse_clip(baseline)
    return f"clip_score(arch={arch!r}, {'fraction' if kind == 'f' else 'threshold'}={value})"


def parse_clip(baseline: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"clip_(b32|l14)_([ft])([0-9]*\.?[0-9]+)", baseline)
    if not m:
        raise ValueError(f"unknown baseline {baseline!r}: one of {', '.join(DEFAULT_BASELINES)} "
                         "or clip_<b32|l14>_<f|t><number>")
    return m.group(1), m.group(2), m.group(3)


def check_baseline(name: str) -> str:
    try:
        datacomp_args(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


# --------------------------------------------------------------------------------------------
# Pool


def pool_name(rows: int, rows_per_file: int, seed: int, npz: bool) -> str:
    return f"rows{rows}_rpf{rows_per_file}_seed{seed}_{'npz' if npz else 'nonpz'}"


def ensure_pool(pool_dir: Path, rows: int, rows_per_file: int, seed: int, npz: bool, python: str) -> tuple[Path, dict]:
    """The pool folder, built with ``datacomp_pool.py`` unless a complete one is cached. A pool is
    complete when its ``<name>.json`` (written after the build) exists beside it."""
    name = pool_name(rows, rows_per_file, seed, npz)
    pool, meta_path = pool_dir / name, pool_dir / f"{name}.json"
    if pool.is_dir() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta["reused"] = True
        return pool, meta
    pool_dir.mkdir(parents=True, exist_ok=True)
    tmp = pool_dir / f"{name}.partial"
    for p in (tmp, pool):
        if p.exists():
            shutil.rmtree(p)
    cmd = [python, str(REPO / "benchmarks" / "datacomp_pool.py"), "--rows", str(rows), "--rows-per-file",
           str(rows_per_file), "--seed", str(seed), "--out", str(tmp), "--quiet"]
    if not npz:
        cmd.append("--no-npz")
    log(f"building pool: {' '.join(cmd)}")
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    tmp.rename(pool)
    meta = {"rows": rows, "rows_per_file": rows_per_file, "seed": seed, "npz": npz,
            "build_s": round(time.monotonic() - t0, 1), "bytes": folder_bytes(pool),
            "files": len(list(pool.glob("*.parquet")))}
    meta_path.write_text(json.dumps(meta) + "\n")
    meta["reused"] = False
    return pool, meta


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def warm_cache(pool: Path) -> float:
    """Read every parquet file once, so that the first tool to run does not pay for the disk."""
    t0 = time.monotonic()
    for p in sorted(pool.glob("*.parquet")):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Run:
    rows: int
    baseline: str
    tool: str
    pool: str
    num_workers: int
    cmd: list
    rc: int | None = None
    timed_out: bool = False
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss: int | None = None
    kept: int | None = None
    npy: str | None = None
    log: str | None = None
    date: str | None = None
    reused: bool = False
    load_start: float | None = None
    load_end: float | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out and self.npy is not None and Path(self.npy).is_file()


def tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` and all its descendants, in bytes (processes that exit meanwhile are skipped)."""
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], cwd: Path, env: dict, log_path: Path, time_limit: float | None) -> dict:
    """Run ``cmd`` (its own process group), sampling the tree's RSS every 0.1 s. CPU time is the
    ``RUSAGE_CHILDREN`` delta: every descendant that was waited for, threads included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        peak, timed_out = 0, False
        try:
            proc = psutil.Process(popen.pid)
        except psutil.Error:
            proc = None
        while popen.poll() is None:
            if proc is not None:
                peak = max(peak, tree_rss(proc))
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                timed_out = True
                os.killpg(popen.pid, signal.SIGTERM)  # the group this call started, by its id
                try:
                    popen.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(popen.pid, signal.SIGKILL)
                break
            time.sleep(SAMPLE_S)
        rc = popen.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss": peak}


def npy_rows(path: Path) -> int | None:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except Exception:
        return None


def uid_hex(row) -> str:
    return f"{int(row[0]):016x}{int(row[1]):016x}"


def compare(datacomp_npy: Path, curate_npy: Path) -> tuple[bool, str]:
    """Byte comparison; on a difference, where the files first differ, by uid."""
    a, b = datacomp_npy.read_bytes(), curate_npy.read_bytes()
    if a == b:
        return True, ""
    try:
        x, y = np.load(datacomp_npy), np.load(curate_npy)
    except Exception as e:  # noqa: BLE001 - report whatever broke the load
        return False, f"cannot load both files as .npy: {e}"
    notes = [f"DataComp {len(x):,} uids ({x.dtype}), curate {len(y):,} uids ({y.dtype})"]
    if x.dtype != y.dtype:
        return False, "; ".join(notes + ["dtypes differ"])
    n = min(len(x), len(y))
    diff = np.flatnonzero(x[:n] != y[:n])
    if len(diff):
        i = int(diff[0])
        notes.append(f"first differing position {i:,}: DataComp {uid_hex(x[i])}, curate {uid_hex(y[i])}")
    elif len(x) != len(y):
        i = n
        longer, who = (x, "DataComp") if len(x) > len(y) else (y, "curate")
        notes.append(f"same first {n:,} uids; {who} goes on with {uid_hex(longer[i])}")
    else:
        notes.append("same uids, different bytes (header?)")
    try:
        only_x, only_y = np.setdiff1d(x, y), np.setdiff1d(y, x)
        if len(only_x):
            notes.append(f"{len(only_x):,} only in DataComp's (first {uid_hex(only_x[0])})")
        if len(only_y):
            notes.append(f"{len(only_y):,} only in curate's (first {uid_hex(only_y[0])})")
    except Exception:  # noqa: BLE001 - the positional report above stands
        pass
    return False, "; ".join(notes)


# --------------------------------------------------------------------------------------------
# Output


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fmt_gib(v: int | None) -> str:
    return "-" if not v else f"{v / GIB:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def status_of(r: Run | None) -> str:
    if r is None:
        return "not run"
    if r.timed_out:
        return "timed out"
    if not r.ok:
        return f"failed (rc {r.rc})"
    return "ok"


HEADER = ("| rows | baseline | kept | subset | DataComp wall s | curate wall s | wall curate/DC | "
          "DataComp CPU s | curate CPU s | CPU curate/DC | DataComp peak RSS GiB | curate peak RSS GiB | "
          "RSS curate/DC |\n" + "| --- " * 13 + "|")


def table_row(rows: int, baseline: str, dc: Run | None, cu: Run | None, same: str) -> str:
    kept = next((f"{r.kept:,}" for r in (cu, dc) if r is not None and r.kept is not None), "-")

    def cell(r: Run | None, attr: str, f) -> str:
        if r is None:
            return "-"
        if not r.ok:
            return status_of(r) + (f" after {r.wall_s:.0f} s" if r.timed_out and attr == "wall_s" else "")
        return f(getattr(r, attr))

    def rat(attr: str) -> str:
        if dc is None or cu is None or not dc.ok or not cu.ok:
            return "-"
        return ratio(getattr(cu, attr), getattr(dc, attr))

    return (f"| {rows:,} | {baseline} | {kept} | {same} | {cell(dc, 'wall_s', fmt_s)} | {cell(cu, 'wall_s', fmt_s)} | "
            f"{rat('wall_s')} | {cell(dc, 'cpu_s', fmt_s)} | {cell(cu, 'cpu_s', fmt_s)} | {rat('cpu_s')} | "
            f"{cell(dc, 'peak_rss', fmt_gib)} | {cell(cu, 'peak_rss', fmt_gib)} | {rat('peak_rss')} |")


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured and how.")
    p.add_argument("--rows", type=int, nargs="+", default=None,
                   help="pool sizes, e.g. --rows 1000000 10000000 (default 1000000; --quick: 20000)")
    p.add_argument("--baselines", type=check_baseline, nargs="+", default=None,
                   help=f"baselines to run (default all: {' '.join(DEFAULT_BASELINES)}; --quick: "
                        f"{' '.join(QUICK_BASELINES)})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 20,000 rows in files of 5,000, baselines "
                        f"{' and '.join(QUICK_BASELINES)} (unless --rows/--baselines are given); under 2 minutes")
    p.add_argument("--rows-per-file", type=int, default=None,
                   help="rows per parquet file (default 492308, about a real DataComp file; --quick: 5000)")
    p.add_argument("--seed", type=int, default=0, help="pool seed (default 0)")
    p.add_argument("--npz", choices=("auto", "always", "never"), default="auto",
                   help=f"write the .npz files too: auto = up to {NPZ_AUTO_MAX_ROWS:,} rows (10M rows with npz "
                        "take 56 GB; no baseline here reads them) (default auto)")
    p.add_argument("--pool-dir", type=Path, default=REPO / "out" / "datacomp_bench" / "pools",
                   help="where pools are built and reused (default out/datacomp_bench/pools)")
    p.add_argument("--work-dir", type=Path, default=REPO / "out" / "datacomp_bench" / "runs",
                   help="subsets and logs of each run (default out/datacomp_bench/runs)")
    p.add_argument("--results", type=Path, default=None,
                   help="JSON lines, one per run, appended (default WORK_DIR/results.jsonl)")
    p.add_argument("--reuse", action="store_true",
                   help="take a (rows, baseline, tool) already in --results (same pool, same workers) "
                        "instead of running it again")
    p.add_argument("--num-workers", type=int, default=2,
                   help="DataComp's --num_workers; curate runs on this many cores (default 2)")
    p.add_argument("--curate-only", action="store_true", help="do not run DataComp (no comparison)")
    p.add_argument("--datacomp-python", default="/work/datacomp-env/bin/python",
                   help="python of DataComp's environment (default /work/datacomp-env/bin/python)")
    p.add_argument("--datacomp-dir", type=Path, default=Path("/work/datacomp-ref/datacomp"),
                   help="the pinned DataComp checkout holding baselines.py (default /work/datacomp-ref/datacomp)")
    p.add_argument("--datacomp-home", type=Path, default=Path("/work/datacomp-ref/home"),
                   help="HOME for DataComp: .cache/datacomp, .cache/fasttext, nltk_data "
                        "(default /work/datacomp-ref/home)")
    p.add_argument("--curate", default=str(REPO / ".venv" / "bin" / "curate"),
                   help="the curate executable (default .venv/bin/curate)")
    p.add_argument("--wordnet", default="/usr/share/wordnet",
                   help="WordNet 3.0 folder for curate's text_based (default /usr/share/wordnet)")
    p.add_argument("--skip", nargs="+", default=[], metavar="BASELINE@ROWS",
                   help="cells not to run, e.g. text_based@10000000 (printed as skipped)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which a run is stopped and reported as timed out (default none)")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = [20_000] if args.quick else [1_000_000]
    if args.baselines is None:
        args.baselines = list(QUICK_BASELINES if args.quick else DEFAULT_BASELINES)
    if args.rows_per_file is None:
        args.rows_per_file = 5_000 if args.quick else 492_308
    if args.results is None:
        args.results = args.work_dir / "results.jsonl"
    if min(args.rows) < 1 or args.rows_per_file < 1 or args.num_workers < 1:
        p.error("--rows, --rows-per-file and --num-workers must be positive")
    args.rows = sorted(set(args.rows))
    try:
        args.skip = {(int(r), b) for b, r in (x.split("@") for x in args.skip)}
    except ValueError:
        p.error("--skip takes BASELINE@ROWS, e.g. text_based@10000000")
    return args


def check_datacomp(args: argparse.Namespace) -> str | None:
    """Why DataComp's environment cannot run, or None."""
    py, base = Path(args.datacomp_python), args.datacomp_dir / "baselines.py"
    missing = [f"{what} {path}" for what, path, ok in (
        ("DataComp's python", py, py.is_file() and os.access(py, os.X_OK)),
        ("DataComp's baselines.py", base, base.is_file()),
        ("DataComp's HOME", args.datacomp_home, args.datacomp_home.is_dir())) if not ok]
    if missing:
        return ("DataComp's environment is not here: missing " + "; ".join(missing) + ".\n"
                "Build it as benchmarks/datacomp_ref/README.md says ('Recreating the environment'), point "
                "--datacomp-python/--datacomp-dir/--datacomp-home at it, or run with --curate-only.")
    return None


def datacomp_env(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["HOME"] = str(args.datacomp_home)
    env.setdefault("DATACOMP_REF_LID_MODEL", str(args.datacomp_home / ".cache" / "fasttext" / "lid.176.ftz"))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def load_previous(path: Path) -> dict:
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
                r = Run(**d)
            except (ValueError, TypeError):
                continue
            if r.ok:
                runs[(r.rows, r.baseline, r.tool, r.pool, r.num_workers)] = r
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.curate).is_file():
        print(f"error: curate executable {args.curate} not found (make install, or --curate PATH)", file=sys.stderr)
        return 2
    if not args.curate_only:
        why = check_datacomp(args)
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    ncpu = os.cpu_count() or 1
    curate_prefix = []
    if args.num_workers < ncpu and shutil.which("taskset"):
        curate_prefix = ["taskset", "-c", f"0-{args.num_workers - 1}"]
    previous = load_previous(args.results) if args.reuse else {}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    tools = ("curate",) if args.curate_only else TOOLS

    print(f"# datacomp_bench: rows {', '.join(f'{r:,}' for r in args.rows)}; baselines {' '.join(args.baselines)}; "
          f"{args.num_workers} workers; {ncpu} cores; {psutil.virtual_memory().total / GIB:.0f} GiB; "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    table: list[str] = []
    results: dict[tuple[int, str, str], Run] = {}
    bad: list[str] = []
    for rows in args.rows:
        npz = args.npz == "always" or (args.npz == "auto" and rows <= NPZ_AUTO_MAX_ROWS)
        pool, meta = ensure_pool(args.pool_dir, rows, args.rows_per_file, args.seed, npz, python)
        warm = warm_cache(pool)
        built = "reused" if meta["reused"] else f"built in {meta['build_s']} s"
        print(f"# pool {pool}: {rows:,} rows in {meta['files']} parquet files{' + npz' if npz else ''}, "
              f"{meta['bytes'] / 1e9:.2f} GB; {built}; "
              f"parquet read in {warm:.1f} s before the runs", flush=True)
        for baseline in args.baselines:
            if (rows, baseline) in args.skip:
                if not table:
                    print(HEADER, flush=True)
                table.append(f"| {rows:,} | {baseline} | - | skipped (--skip) |" + " - |" * 9)
                print(table[-1], flush=True)
                continue
            cell = args.work_dir / f"rows{rows}" / baseline
            for tool in tools:
                key = (rows, baseline, tool, str(pool), args.num_workers)
                if key in previous:
                    r = previous[key]
                    r.reused = True
                    results[(rows, baseline, tool)] = r
                    log(f"{rows:,} {baseline} {tool}: reused from {args.results} ({r.date})")
                    continue
                cell.mkdir(parents=True, exist_ok=True)
                if tool == "datacomp":
                    npy = cell / "datacomp.npy"
                    npy.unlink(missing_ok=True)
                    cmd = [args.datacomp_python, "baselines.py", *datacomp_args(baseline), "--metadata_dir",
                           str(pool), "--save_path", str(npy), "--num_workers", str(args.num_workers)]
                    cwd, env = args.datacomp_dir, datacomp_env(args)
                else:
                    out = cell / "curate"
                    if out.exists():
                        shutil.rmtree(out)
                    npy = out / "subset.npy"
                    cmd = [*curate_prefix, args.curate, "filter", "--index", str(pool), "--rule",
                           curate_rule(baseline, args.wordnet), "--out", str(out)]
                    cwd, env = REPO, dict(os.environ)
                log(f"{rows:,} {baseline} {tool}: {' '.join(cmd)}")
                load_start = os.getloadavg()[0]
                m = measure(cmd, cwd, env, cell / f"{tool}.log", args.time_limit)
                r = Run(rows=rows, baseline=baseline, tool=tool, pool=str(pool), num_workers=args.num_workers,
                        cmd=cmd, npy=str(npy), log=str(cell / f"{tool}.log"), date=time.strftime("%Y-%m-%d %H:%M"),
                        load_start=load_start, load_end=os.getloadavg()[0], **m)
                r.kept = npy_rows(npy) if r.ok else None
                log(f"{rows:,} {baseline} {tool}: {status_of(r)}, {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU, "
                    f"peak {fmt_gib(r.peak_rss)} GiB, kept {r.kept}, "
                    f"load average {r.load_start:.1f} -> {r.load_end:.1f}")
                if not r.ok:
                    tail = Path(r.log).read_text(errors="replace")[-2000:]
                    log(f"{tool} log tail ({r.log}):\n{tail}")
                with open(args.results, "a") as f:
                    f.write(json.dumps(asdict(r)) + "\n")
                results[(rows, baseline, tool)] = r
            dc, cu = results.get((rows, baseline, "datacomp")), results.get((rows, baseline, "curate"))
            if cu is None or not cu.ok or (dc is not None and not dc.ok):
                same = "run failed"
                bad.append(f"{rows:,} {baseline}: DataComp {status_of(dc)}, curate {status_of(cu)}")
            elif dc is None:
                same = "-"
            else:
                equal, why = compare(Path(dc.npy), Path(cu.npy))
                same = "same" if equal else "**DIFFERENT**"
                if not equal:
                    bad.append(
                        f"{rows:,} {baseline} (rule {curate_rule(baseline, args.wordnet)}): subsets differ: {why}")
            row = table_row(rows, baseline, dc, cu, same)
            if not table:
                print(HEADER, flush=True)
            table.append(row)
            print(row, flush=True)

    if len(args.rows) > 1:
        lo, hi = args.rows[0], args.rows[-1]
        print(f"\n# peak RSS at {hi:,} rows over peak RSS at {lo:,} rows ({hi / lo:g}x the rows)")
        print("| baseline | " + " | ".join(f"{'DataComp' if t == 'datacomp' else 'curate'} {lo:,} GiB | "
                                           f"{'DataComp' if t == 'datacomp' else 'curate'} {hi:,} GiB | growth"
                                           for t in tools) + " |")
        print("| --- " * (1 + 3 * len(tools)) + "|")
        for baseline in args.baselines:
            cells = []
            for t in tools:
                a, b = results.get((lo, baseline, t)), results.get((hi, baseline, t))
                pa_ = a.peak_rss if a is not None and a.ok else None
                pb_ = b.peak_rss if b is not None and b.ok else None
                cells += [fmt_gib(pa_), fmt_gib(pb_), ratio(pb_, pa_)]
            print(f"| {baseline} | " + " | ".join(cells) + " |")
        for t in tools:
            both = [b for b in args.baselines
                    if all((s, b, t) in results and results[(s, b, t)].ok for s in (lo, hi))]
            if both:
                pl = max(results[(lo, b, t)].peak_rss for b in both)
                ph = max(results[(hi, b, t)].peak_rss for b in both)
                print(f"# {t}: largest peak over the {len(both)} baselines run at both sizes: "
                      f"{fmt_gib(pl)} GiB at {lo:,}, {fmt_gib(ph)} GiB at {hi:,}: {ratio(ph, pl)}")
    if bad:
        print("\n# PROBLEMS", flush=True)
        for b in bad:
            print(f"# {b}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
