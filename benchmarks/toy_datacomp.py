"""DataComp in a box: does T-MARS beat CLIP-score filtering, and the T-MARS paper's other
baselines, at matched subset sizes on a toy pool, on CPU? With enough seeds to say.

A toy version of T-MARS's experiment (Maini et al. 2023, Sec. 5 and Table 2), end to end through
``curate``'s own commands:

1. **Pools** from CIFAR-10's real train split (``--cifar-train``, class folders in a tar), images
   upscaled from 32 to 64 px, captions from templates (``a photo of a {c}.``...), uids in the
   DataComp ``.json``; one pool per ``--pools`` seed. Known shares of samples (``--shares``):
   - ``match``: the image shows class A and the caption names A;
   - ``match_text``: the same with A's name also rendered into the image (text *and* visual
     features match: T-MARS should keep these, a "drop any text" filter would not);
   - ``text_spot``: the image shows class A, the caption names B, and B's name is rendered into
     the image (T-MARS's "text-spotting" samples: the caption is only about the text);
   - ``mismatch``: the caption names another class, no text.
2. **Scorer** per pool: ``curate train`` (``tiny`` recipe, ``--scorer-samples`` samples seen,
   the pool's seed) on the whole pool, then ``curate score --ocr`` with that checkpoint (DBNet at
   128 px, PP-OCRv4's recognizer, mean-colour masking).
3. **Mechanism** per kind of sample: share with boxes, share of the rendered word's area masked,
   share whose word the OCR read, mean scores, mean text-match score (``mechanism``).
4. **Subsets** with ``curate filter`` at matched sizes (``SIZES``, 30% and 50% of the pool): CLIP
   score (DataComp's baseline), T-MARS, and T-MARS ∩ CLIP score (a common fraction found so the
   intersection has the size); and, with their own sizes, text-match (``text_match()``, the T-MARS
   paper's baseline) and text-area ("drop all text": ``text_area(max=0)``); no filter. Pools after
   the first ``--full-pools`` train CLIP score and T-MARS only.
5. **Train** each subset with the same ``tiny`` recipe and samples seen, once per ``--seeds``
   seed (``curate train --local`` in a Ray task each, ``--num-cpus`` at a time).
6. **Evaluate**: ``curate evaluate`` zero-shot on CIFAR-10's clean test split (``--cifar-test``).
7. **Paired tests** (``COMPARISONS``): the same pool, seed and samples seen give a pair; the
   mean difference, how often A is ahead and the paired t-test's p-value, per pool and over both.

    .venv/bin/python benchmarks/toy_datacomp.py --out out/toy_datacomp --results benchmarks/RESULTS.md

``--quick`` (CI): 300 samples, one pool, one seed, 300 test images: every step, in about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KINDS = ("match", "match_text", "text_spot", "mismatch")
TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.", "a picture of the {}.",
             "a low resolution photo of a {}.", "a photo of my {}.")
SIZES = (0.3, 0.5)  # matched subset sizes, fractions of the pool
SCORE_CONFIG = """# written by benchmarks/toy_datacomp.py: 64 px images, DBNet at 128 px with OCR, the tiny CLIP
read: {num_cpus: 0.25}
decode: {num_cpus: 0.25, batch_size: 64}
detect: {detector: dbnet, long_side: 128, ocr: true, batch_size: 64, num_actors: 1, num_cpus: 0.5, torch_threads: 2}
mask: {method: mean}
score: {clip_model: tiny, batch_size: 128, num_actors: 1, num_cpus: 0.5}
"""


def log(msg: str) -> None:
    print(f"[toy_datacomp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def curate(*args: str) -> str:
    """Run ``curate ARGS`` through the command's own entry point (``curate.cli.main``) in this
    process, so that every step shares one local Ray cluster and one set of imports; return what
    it printed. Raises RuntimeError with its output when it exits non-zero."""
    import contextlib

    from curate.cli import main as curate_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = curate_main(list(args))
    if rc != 0:
        raise RuntimeError(f"curate {' '.join(args)} exited {rc}:\n{buf.getvalue()[-3000:]}")
    return buf.getvalue()


def read_class_folders(tar_path: Path) -> dict[str, list[bytes]]:
    """``{class: [jpeg bytes, ...]}`` from a tar of ``<split>/<class>/<file>.jpg`` (sorted by name)."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            parts = m.name.strip("/").split("/")
            if m.isfile() and len(parts) >= 3 and parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                out.setdefault(parts[-2], []).append((m.name, tf.extractfile(m).read()))
    if not out:
        raise ValueError(f"{tar_path}: no <split>/<class>/<image> members")
    return {c: [b for _, b in sorted(v)] for c, v in sorted(out.items())}


def render_word(image, word: str, rng: random.Random):
    """Draw ``word`` in black on a white band across the top or bottom of a 64 px image; returns
    the glyphs' box ``[x0, y0, x1, y1]`` in pixels (clipped to the image)."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    w, h = right - left, bottom - top
    y = rng.choice((1, image.height - h - 5))
    x = max(0, (image.width - w) // 2 + rng.randint(-3, 3))
    draw.rectangle((x - 2, y - 1, x + w + 2, y + h + 3), fill=(255, 255, 255))
    draw.text((x - left, y - top), word, fill=(0, 0, 0), font=font)
    return [max(0, x), max(0, y), min(image.width, x + w), min(image.height, y + h)]


def build_pool(cifar_train: Path, out: Path, n: int, shares: dict[str, float], seed: int, shard_size: int) -> dict:
    """Write ``out/pool-{i:06d}.tar`` (webdataset: ``.jpg``, ``.txt``, ``.json`` with uid and kind)
    and ``out/truth.jsonl``; returns counts per kind."""
    import webdataset as wds
    from PIL import Image

    rng = random.Random(seed)
    images = read_class_folders(cifar_train)
    classes = sorted(images)
    out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in KINDS for _ in range(round(shares[k] * n))][:n]
    kinds += ["match"] * (n - len(kinds))
    rng.shuffle(kinds)
    counts = {k: 0 for k in KINDS}
    with wds.ShardWriter(str(out / "pool-%06d.tar"), maxcount=shard_size, verbose=0) as sink, \
            open(out / "truth.jsonl", "w") as truth:
        for i, kind in enumerate(kinds):
            label = rng.choice(classes)
            jpeg = rng.choice(images[label])
            other = rng.choice([c for c in classes if c != label])
            named = label if kind in ("match", "match_text") else other
            img = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
            word_box = render_word(img, named, rng) if kind in ("match_text", "text_spot") else None
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            caption = rng.choice(TEMPLATES).format(named)
            uid = hashlib.md5(f"toy-{seed}-{i}".encode()).hexdigest()
            meta = {"uid": uid, "kind": kind, "label": label, "caption_class": named, "word_box": word_box}
            sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": caption, "json": json.dumps(meta)})
            truth.write(json.dumps(meta) + "\n")
            counts[kind] += 1
    return counts


def kept_shares(uids: set[str] | None, truth: dict[str, dict]) -> tuple[int, dict[str, float], dict[str, float]]:
    """Subset size, the share of each kind of pool sample it keeps, and its own make-up (the
    share of each kind among its samples); ``uids=None`` is the whole pool."""
    uids = set(truth) if uids is None else uids
    total = {k: sum(1 for v in truth.values() if v["kind"] == k) for k in KINDS}
    kept = {k: sum(1 for u in uids if u in truth and truth[u]["kind"] == k) for k in KINDS}
    return (len(uids), {k: kept[k] / total[k] if total[k] else float("nan") for k in KINDS},
            {k: kept[k] / len(uids) if uids else float("nan") for k in KINDS})


def subset_uids(subset: Path | None) -> frozenset | None:
    import pyarrow.parquet as pq

    return None if subset is None else frozenset(pq.read_table(subset, columns=["uid"]).column("uid").to_pylist())


def intersection_fraction(index: Path, target: float) -> float:
    """The fraction ``g`` for which ``tmars(fraction=g) & clip_score(fraction=g)`` keeps about
    ``target`` of the ok rows: bisection over ``g``, each step with ``curate filter``'s own
    pool-wide thresholds (``curate.filters.run.pool_threshold``) on the index."""
    from curate.filters.rules import OK
    from curate.filters.run import pool_threshold
    from curate.query import VIEW, connect

    con = connect(index)
    want = target * con.execute(f"SELECT count(*) FROM {VIEW} WHERE {OK}").fetchone()[0]

    def kept(g: float) -> int:
        masked, clip = pool_threshold(con, "masked_clip_score", g), pool_threshold(con, "clip_score", g)
        return con.execute(f"SELECT count(*) FROM {VIEW} WHERE {OK} AND masked_clip_score >= ? AND clip_score >= ?",
                           [masked, clip]).fetchone()[0]

    lo, hi = target, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < want else (lo, mid)
    con.close()
    return round(hi, 4)


def subset_specs(index: Path, core_only: bool) -> dict[str, tuple[str, float | None] | None]:
    """``{name: (curate filter --rule, fraction of the pool it aims at) or None (no filter)}``:
    the T-MARS paper's baselines at matched sizes (``SIZES``), text-match and text-area (fixed
    rules, their own sizes). ``core_only``: CLIP score and T-MARS at each size only."""
    specs: dict[str, tuple[str, float | None] | None] = {}
    if not core_only:
        specs["no filter"] = None
    for f in SIZES:
        pct = f"{round(100 * f)}%"
        specs[f"CLIP score {pct}"] = (f"clip_score(fraction={f})", f)
        specs[f"T-MARS {pct}"] = (f"tmars(fraction={f})", f)
        if not core_only:
            g = intersection_fraction(index, f)
            specs[f"T-MARS ∩ CLIP score {pct}"] = (f"tmars(fraction={g}) & clip_score(fraction={g})", f)
    if not core_only:
        specs["text-match"] = ("text_match()", None)
        specs["text-area (drop all text)"] = ("text_area(max=0)", None)
    return specs


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def job(shards: str, subset: str | None, samples: int, seed: int, run: str, ev: str, evalsets: str) -> dict:
    """One training and its zero-shot evaluation (a Ray task): ``curate train --local`` (the
    trainer loop in this worker, one torch thread) then ``curate evaluate --tasks cifar10``;
    each step is skipped when its output exists. Returns ``{"acc1", "train_s", "eval_s"}``."""
    import torch

    from curate.evaluate.run import run_evaluate
    from curate.train.config import train_config
    from curate.train.run import run_train

    torch.set_num_threads(1)
    t0 = time.time()
    summary_file = Path(run) / "train_summary.json"
    if not summary_file.is_file():
        cfg = train_config("tiny", None, {"samples_seen": samples, "seed": seed, "torch_threads": 1})
        run_train(shards, run, cfg, subset=subset, progress=False, local=True)
    ckpt = json.loads(summary_file.read_text())["checkpoint"]
    t1 = time.time()
    results = Path(ev) / "eval_results.jsonl"
    if not results.is_file():
        run_evaluate(["cifar10"], evalsets, ev, model="tiny", pretrained=ckpt)
    acc = next(json.loads(x)["score"] for x in results.read_text().splitlines() if json.loads(x)["task"] == "cifar10")
    return {"acc1": acc, "train_s": t1 - t0, "eval_s": time.time() - t1}


def mechanism(index: Path, truth: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per kind of sample: share with text boxes; mean share of the rendered word's glyph box
    inside the detected boxes (what the mask covers); share whose OCR read the rendered word
    (an OCR word of at least ``min(len(word), 4)`` characters that begins the word, so that a
    word cut at the image's edge still counts); mean CLIP and masked CLIP score; mean
    text-match score (``curate.filters.rules.text_match_sql``)."""
    import cv2

    from curate.filters.rules import OK, text_match_sql
    from curate.query import VIEW, connect

    con = connect(index)
    rows = con.execute(
        f"SELECT uid, num_text_boxes, text_boxes, ocr_text, clip_score, masked_clip_score, {text_match_sql()} AS tm "
        f"FROM {VIEW} WHERE {OK}").fetchall()
    con.close()
    scale = 4  # rasterise at 4x the 64 px image
    acc: dict[str, dict[str, list]] = {k: {m: [] for m in ("boxes", "masked", "read", "clip", "masked_clip", "tm")}
                                       for k in KINDS}
    for uid, n, boxes, ocr, clip, masked, tm in rows:
        meta = truth.get(uid)
        if meta is None:
            continue
        a = acc[meta["kind"]]
        a["boxes"].append(float((n or 0) > 0))
        a["clip"].append(clip)
        a["masked_clip"].append(masked)
        a["tm"].append(tm if tm is not None else 0.0)
        if meta.get("word_box"):
            x0, y0, x1, y1 = meta["word_box"]
            canvas = np.zeros((64 * scale, 64 * scale), np.uint8)
            for b in boxes or []:
                pts = np.round(np.asarray(b, np.float32).reshape(4, 2) * 64 * scale).astype(np.int32)
                cv2.fillPoly(canvas, [pts], 1)
            glyphs = canvas[y0 * scale:y1 * scale, x0 * scale:x1 * scale]
            a["masked"].append(float(glyphs.mean()) if glyphs.size else 0.0)
            word = meta["caption_class"].lower()
            tokens = [
                t for text in (ocr or []) for t in "".join(c if c.isalnum() else " " for c in text.lower()).split()
            ]
            a["read"].append(float(any(len(t) >= min(len(word), 4) and word.startswith(t) for t in tokens)))
    return {k: {m: (float(np.mean(v)) if v else float("nan")) for m, v in a.items()} | {"n": len(a["boxes"])}
            for k, a in acc.items()}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Paired comparison across seeds: mean and sd of ``a - b``, wins of ``a``, and the
    two-sided p-value of the paired t-test (``scipy.stats.ttest_rel``; NaN with fewer than 2 pairs)."""
    from scipy.stats import ttest_rel

    d = np.asarray(a) - np.asarray(b)
    p = float(ttest_rel(a, b).pvalue) if len(d) > 1 and np.any(d != d[0]) else float("nan")
    return {"n": len(d), "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "wins": int((d > 0).sum()), "p": p}


COMPARISONS = [  # (A, B): is A better than B? Same seed, same samples seen.
    *[(f"T-MARS {p}", f"CLIP score {p}") for p in ("30%", "50%")],
    *[(f"T-MARS ∩ CLIP score {p}", f"CLIP score {p}") for p in ("30%", "50%")],
    *[(f"T-MARS ∩ CLIP score {p}", f"T-MARS {p}") for p in ("30%", "50%")],
    ("T-MARS 50%", "text-match"), ("T-MARS 50%", "text-area (drop all text)"), ("text-match", "no filter"),
    ("text-area (drop all text)", "no filter"), ("CLIP score 30%", "no filter"), ("T-MARS 30%", "no filter"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-train", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "train.tar")
    p.add_argument("--cifar-test", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "test.tar")
    p.add_argument("--out", type=Path, default=REPO / "out" / "toy_datacomp")
    p.add_argument("--pool-size", type=int, default=8_000)
    p.add_argument("--shares", default="match=0.45,match_text=0.1,text_spot=0.25,mismatch=0.2",
                   help="shares of the pool per kind of sample (sum 1)")
    p.add_argument("--pools", type=int, nargs="+", default=[0, 1],
                   help="pool seeds: each pool draws its own samples and trains its own scorer")
    p.add_argument("--full-pools", type=int, default=1,
                   help="how many of --pools (the first ones) train every subset; the others train CLIP score "
                        "and T-MARS at each size only")
    p.add_argument("--scorer-samples", type=int, default=19_200, help="samples seen by the scoring CLIP")
    p.add_argument("--samples-seen", type=int, default=8_000, help="samples seen by each subset's training")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--test-per-class", type=int, default=0,
                   help="evaluate on the first N test images of each class (0: the whole test split)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster: trainings run in parallel")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (CI): 300 samples, one pool, one seed, 30 test images a class")
    p.add_argument("--results", type=Path, help="also append the markdown tables to this file")
    args = p.parse_args()
    if args.quick:
        args.pool_size, args.pools, args.seeds, args.test_per_class = 300, args.pools[:1], args.seeds[:1], 30
        args.scorer_samples, args.samples_seen = 960, 480
    shares = {k: float(v) for k, v in (kv.split("=") for kv in args.shares.split(","))}
    if set(shares) != set(KINDS) or abs(sum(shares.values()) - 1) > 1e-6:
        p.error(f"--shares needs {', '.join(KINDS)} summing to 1")
    t_start = time.time()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from curate.runtime import init_ray

    init_ray(num_cpus=args.num_cpus)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    remote_job = ray.remote(num_cpus=1)(job)

    evalsets = out / "evalsets"
    if not (evalsets / "wds_cifar10_test").is_dir():
        test = args.cifar_test
        if args.test_per_class:
            test = out / "test-subset.tar"
            write_test_subset(args.cifar_test, test, args.test_per_class)
        log(f"converting the CIFAR-10 test split ({test})")
        curate("make-evalset", "--imagefolder", str(test), "--name", "cifar10", "--out", str(evalsets))

    pools = []
    for i, pool_seed in enumerate(args.pools):
        base = out / f"pool{pool_seed}"
        pool = base / "pool"
        if not (pool / "truth.jsonl").is_file():
            log(f"pool {pool_seed}: building {args.pool_size} samples from {args.cifar_train}")
            counts = build_pool(args.cifar_train, pool, args.pool_size, shares, seed=pool_seed,
                                shard_size=max(100, args.pool_size // 8))
            log(f"pool {pool_seed}: {counts}")
        truth = {m["uid"]: m for m in map(json.loads, (pool / "truth.jsonl").read_text().splitlines())}
        shards = str(pool / "pool-*.tar")
        log(f"pool {pool_seed}: training the scorer ({args.scorer_samples} samples seen)")
        scorer = ray.get(remote_job.remote(shards, None, args.scorer_samples, pool_seed, str(base / "runs" / "scorer"),
                                           str(base / "evals" / "scorer"), str(evalsets)))
        ckpt = json.loads((base / "runs" / "scorer" / "train_summary.json").read_text())["checkpoint"]
        index = base / "index"
        (base / "score.yaml").write_text(SCORE_CONFIG)
        log(f"pool {pool_seed}: curate score --ocr with the scorer")
        print(curate("score", shards, "--config", str(base / "score.yaml"), "--pretrained", ckpt, "--out", str(index),
                     "--no-progress"), flush=True)
        specs = subset_specs(index, core_only=i >= args.full_pools)
        subsets: dict[str, Path | None] = {}
        for name, spec in specs.items():
            if spec is None:
                subsets[name] = None
                continue
            folder = base / "subsets" / slug(name)
            if not (folder / "subset.parquet").is_file():
                curate("filter", "--index", str(index), "--rule", spec[0], "--out", str(folder))
            subsets[name] = folder / "subset.parquet"
        pools.append({"seed": pool_seed, "base": base, "truth": truth, "shards": shards, "index": index,
                      "specs": specs, "subsets": subsets, "scorer_acc": scorer["acc1"],
                      "mechanism": mechanism(index, truth)})
    t_scored = time.time()

    # The training grid: one Ray task per (pool, subset, seed), as many at once as the cluster has CPUs.
    futures, rows = {}, []
    for pool in pools:
        seen: dict[frozenset | None, str] = {}
        for name, subset in pool["subsets"].items():
            uids = subset_uids(subset)
            size, kept, makeup = kept_shares(uids, pool["truth"])
            row = {"pool": pool["seed"], "name": name, "rule": pool["specs"][name][0] if pool["specs"][name] else None,
                   "size": size, "pool_size": len(pool["truth"]), "kept": kept, "makeup": makeup, "acc": {},
                   "same_as": seen.get(uids)}
            rows.append(row)
            if row["same_as"]:
                continue
            seen[uids] = name
            for seed in args.seeds:
                tag = f"{slug(name)}-s{seed}"
                futures[(pool["seed"], name, seed)] = remote_job.remote(
                    pool["shards"], None if subset is None else str(subset), args.samples_seen, seed,
                    str(pool["base"] / "runs" / tag), str(pool["base"] / "evals" / tag), str(evalsets))
    log(f"training {len(futures)} subsets x seeds, {args.num_cpus} at a time")
    timings = []
    for key, fut in futures.items():
        res = ray.get(fut)
        timings.append(res)
        next(r for r in rows if (r["pool"], r["name"]) == key[:2])["acc"][key[2]] = res["acc1"]
        log(f"pool {key[0]} {key[1]} seed {key[2]}: CIFAR-10 zero-shot acc1 {res['acc1']:.4f} "
            f"(train {res['train_s']:.0f} s, eval {res['eval_s']:.0f} s)")
    for r in rows:
        if r["same_as"]:
            r["acc"] = dict(next(x for x in rows if x["pool"] == r["pool"] and x["name"] == r["same_as"])["acc"])
    tests = comparisons(rows, args.seeds, [pl["seed"] for pl in pools])
    text = format_tables(rows, pools, tests, args, time.time() - t_start, t_scored - t_start)
    print(text)
    (out / "results.json").write_text(json.dumps(
        {"rows": rows, "tests": tests, "mechanism": {pl["seed"]: pl["mechanism"] for pl in pools},
         "scorer_acc1": {pl["seed"]: pl["scorer_acc"] for pl in pools},
         "args": {k: str(v) for k, v in vars(args).items()},
         "minutes": (time.time() - t_start) / 60}, indent=2, default=str))
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text + "\n")


def write_test_subset(src: Path, dst: Path, per_class: int) -> None:
    """A tar of the first ``per_class`` images of each class folder of ``src`` (same layout)."""
    images = read_class_folders(src)
    with tarfile.open(dst, "w") as tf:
        for c, blobs in images.items():
            for i, b in enumerate(blobs[:per_class]):
                info = tarfile.TarInfo(f"test/{c}/{i:05d}.jpg")
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))


def comparisons(rows: list[dict], seeds: list[int], pool_seeds: list[int]) -> list[dict]:
    """``COMPARISONS`` per pool and over all pools together (pairs: same pool, same seed)."""
    acc = {(r["pool"], r["name"]): r["acc"] for r in rows}
    size = {(r["pool"], r["name"]): r["size"] for r in rows}
    out = []
    for a, b in COMPARISONS:
        both = [ps for ps in pool_seeds if (ps, a) in acc and (ps, b) in acc]
        for scope in [[ps] for ps in both] + ([both] if len(both) > 1 else []):
            xa = [acc[(ps, a)][s] for ps in scope for s in seeds]
            xb = [acc[(ps, b)][s] for ps in scope for s in seeds]
            out.append({"a": a, "b": b, "pools": scope, "size_a": sum(size[(ps, a)] for ps in scope),
                        "size_b": sum(size[(ps, b)] for ps in scope), **paired(xa, xb)})
    return out


def format_tables(rows: list[dict], pools: list[dict], tests: list[dict], args, total_s: float, score_s: float) -> str:
    seeds = args.seeds
    lines = []
    for pool in pools:
        ps = pool["seed"]
        lines += [f"**Pool {ps}** ({len(pool['truth'])} samples; its scorer's own CIFAR-10 zero-shot acc1 "
                  f"{100 * pool['scorer_acc']:.2f}%)", "",
                  "| subset | rule | size | % of pool | match kept | match+text kept | text-spotting kept "
                  "| mismatch kept | text-spotting in subset | CIFAR-10 zero-shot acc1 (%), mean ± sd | per seed ("
                  + ", ".join(map(str, seeds)) + ") |",
                  "| " + " | ".join(["---"] * 11) + " |"]
        for r in (r for r in rows if r["pool"] == ps):
            accs = [r["acc"][s] for s in seeds]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            k = r["kept"]
            lines.append(
                f"| {r['name']}{' (= ' + r['same_as'] + ')' if r['same_as'] else ''} | "
                f"`{r['rule'] or '-'}` | {r['size']} | "
                f"{100 * r['size'] / r['pool_size']:.0f}% | {100 * k['match']:.0f}% | {100 * k['match_text']:.0f}% | "
                f"{100 * k['text_spot']:.0f}% | {100 * k['mismatch']:.0f}% | {100 * r['makeup']['text_spot']:.1f}% | "
                f"{100 * np.mean(accs):.2f} ± {100 * sd:.2f} | " + ", ".join(f"{100 * a:.2f}" for a in accs) + " |")
        lines += ["",
                  f"Mechanism, pool {ps} (DBNet at 128 px on the 64 px images, PP-OCRv4 recognizer, "
                  "mean-colour masking):",
                  "",
                  "| kind | samples | with text boxes | rendered word's area masked | rendered word read by OCR "
                  "| mean CLIP score | mean masked CLIP score | mean text-match score |",
                  "| " + " | ".join(["---"] * 8) + " |"]
        for kind, m in pool["mechanism"].items():
            def pct(v):
                return "-" if v != v else f"{100 * v:.1f}%"

            lines.append(f"| {kind} | {m['n']} | {pct(m['boxes'])} | {pct(m['masked'])} | {pct(m['read'])} | "
                         f"{m['clip']:.4f} | {m['masked_clip']:.4f} | {m['tm']:.3f} |")
        lines.append("")
    lines += ["Paired comparisons (accuracy of A minus B in points, the same pool, seed and samples seen; "
              "two-sided paired t-test across seeds):", "",
              "| A | B | pools | sizes A / B | pairs | mean difference ± sd | A ahead | p |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tests:
        p = "n/a" if t["p"] != t["p"] else (f"**{t['p']:.3g}**" if t["p"] < 0.05 else f"{t['p']:.3g}")
        lines.append(f"| {t['a']} | {t['b']} | {', '.join(map(str, t['pools']))} | {t['size_a']} / {t['size_b']} | "
                     f"{t['n']} | {100 * t['mean']:+.2f} ± {100 * t['sd']:.2f} | {t['wins']}/{t['n']} | {p} |")
    lines += ["", f"Pools {args.pools} of {args.pool_size} samples (shares {args.shares}); "
              f"each scorer {args.scorer_samples} "
              f"samples seen; each subset trained for {args.samples_seen} samples seen (tiny recipe, `curate train "
              f"--local`), seeds {seeds}; CIFAR-10 test images: "
              f"{'all 10,000' if not args.test_per_class else f'{10 * args.test_per_class}'}; chance is 10%. "
              f"Whole run {total_s / 60:.1f} min ({score_s / 60:.1f} min to build the pools, train the scorers, score "
              "and filter)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
