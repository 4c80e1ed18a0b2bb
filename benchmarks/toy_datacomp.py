"""DataComp in a box: does T-MARS beat CLIP-score filtering and no filtering on a toy pool, on CPU?

A toy version of T-MARS's experiment (Maini et al. 2023, Sec. 5 and Table 2), end to end through
the ``curate`` command line:

1. **Pool** from CIFAR-10's real train split (``--cifar-train``, class folders in a tar), images
   upscaled from 32 to 64 px, captions from templates (``a photo of a {c}.``...), uids in the
   DataComp ``.json``. Known shares of samples (``--shares``):
   - ``match``: the image shows class A and the caption names A;
   - ``match_text``: the same with A's name also rendered into the image (text *and* visual
     features match: T-MARS should keep these, a "drop any text" filter would not);
   - ``text_spot``: the image shows class A, the caption names B, and B's name is rendered into
     the image (T-MARS's "text-spotting" samples: the caption is only about the text);
   - ``mismatch``: the caption names another class, no text.
2. **Scorer**: ``curate train`` (``tiny`` recipe, ``--scorer-samples`` samples seen) on the whole
   pool, then ``curate score`` with that checkpoint (DBNet, 128 px detector input).
3. **Subsets** with ``curate filter``: no filter; CLIP score top 30% (DataComp's baseline);
   T-MARS top 50% by masked CLIP score; T-MARS ∩ the caption rules of DataComp's basic filter
   (English, > 5 characters, > 2 words; its image-size rules need >= 200 px and cannot apply to
   64 px images).
4. **Train** each subset with the same ``tiny`` recipe and the same samples seen, once per seed.
5. **Evaluate**: ``curate evaluate`` zero-shot on CIFAR-10's clean test split (``--cifar-test``).

The table gives per subset: size, the share of each kind of sample kept, and zero-shot accuracy
(mean ± standard deviation over seeds, and each seed). The pool and the scorer are built once
(seed 0); the seeds change the subset trainings (init, data order, augmentation).

    .venv/bin/python benchmarks/toy_datacomp.py --cifar-train ../shared/data/cifar10/train.tar \\
        --cifar-test ../shared/data/cifar10/test.tar --out out/toy_datacomp
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
SUBSETS = {  # name -> (curate filter --rule, --where); None: the whole pool
    "no filter": None,
    "CLIP score top 30%": ("clip_score(fraction=0.3)", None),
    "T-MARS top 50%": ("tmars(fraction=0.5)", None),
    "T-MARS ∩ basic caption rules": (
        "tmars(fraction=0.5)",
        "caption_lang = 'en' AND length(text) > 5 AND regexp_matches(text, '[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]')"),
}
SCORE_CONFIG = """# written by benchmarks/toy_datacomp.py: 64 px images, DBNet at 128 px, the tiny CLIP
read: {num_cpus: 0.25}
decode: {num_cpus: 0.25, batch_size: 64}
detect: {detector: dbnet, long_side: 128, batch_size: 64, num_actors: 1, num_cpus: 0.5, torch_threads: 2}
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
    """Draw ``word`` in black on a white band across the top or bottom of a 64 px image."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    w, h = right - left, bottom - top
    y = rng.choice((1, image.height - h - 5))
    x = max(0, (image.width - w) // 2 + rng.randint(-3, 3))
    draw.rectangle((x - 2, y - 1, x + w + 2, y + h + 3), fill=(255, 255, 255))
    draw.text((x - left, y - top), word, fill=(0, 0, 0), font=font)
    return image


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
            if kind in ("match_text", "text_spot"):
                img = render_word(img, named, rng)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            caption = rng.choice(TEMPLATES).format(named)
            uid = hashlib.md5(f"toy-{seed}-{i}".encode()).hexdigest()
            meta = {"uid": uid, "kind": kind, "label": label, "caption_class": named}
            sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": caption, "json": json.dumps(meta)})
            truth.write(json.dumps(meta) + "\n")
            counts[kind] += 1
    return counts


def kept_shares(subset: Path | None, truth: dict[str, str]) -> tuple[int, dict[str, float], dict[str, float]]:
    """Subset size, the share of each kind of pool sample it keeps, and its own make-up (the
    share of each kind among its samples)."""
    import pyarrow.parquet as pq

    uids = set(truth) if subset is None else set(pq.read_table(subset, columns=["uid"]).column("uid").to_pylist())
    total = {k: sum(1 for v in truth.values() if v == k) for k in KINDS}
    kept = {k: sum(1 for u in uids if truth.get(u) == k) for k in KINDS}
    return (len(uids), {k: kept[k] / total[k] if total[k] else float("nan") for k in KINDS},
            {k: kept[k] / len(uids) if uids else float("nan") for k in KINDS})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-train", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "train.tar")
    p.add_argument("--cifar-test", type=Path, default=REPO.parent / "shared" / "data" / "cifar10" / "test.tar")
    p.add_argument("--out", type=Path, default=REPO / "out" / "toy_datacomp")
    p.add_argument("--pool-size", type=int, default=8_000)
    p.add_argument("--shares", default="match=0.45,match_text=0.1,text_spot=0.25,mismatch=0.2",
                   help="shares of the pool per kind of sample (sum 1)")
    p.add_argument("--scorer-samples", type=int, default=19_200, help="samples seen by the scoring CLIP")
    p.add_argument("--samples-seen", type=int, default=8_000, help="samples seen by each subset's training")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--results", type=Path, help="also append the markdown table to this file")
    args = p.parse_args()
    shares = {k: float(v) for k, v in (kv.split("=") for kv in args.shares.split(","))}
    if set(shares) != set(KINDS) or abs(sum(shares.values()) - 1) > 1e-6:
        p.error(f"--shares needs {', '.join(KINDS)} summing to 1")
    t_start = time.time()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from curate.runtime import init_ray

    init_ray(num_cpus=args.num_cpus)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpus = ["--no-progress"]  # the cluster started above

    pool = out / "pool"
    if not (pool / "truth.jsonl").is_file():
        log(f"building a pool of {args.pool_size} samples from {args.cifar_train}")
        counts = build_pool(args.cifar_train, pool, args.pool_size, shares, seed=0, shard_size=1000)
        log(f"pool: {counts}")
    truth = {}
    for line in (pool / "truth.jsonl").read_text().splitlines():
        m = json.loads(line)
        truth[m["uid"]] = m["kind"]
    shards = str(pool / "pool-*.tar")

    evalsets = out / "evalsets"
    if not (evalsets / "wds_cifar10_test").is_dir():
        log("converting the CIFAR-10 test split")
        curate("make-evalset", "--imagefolder", str(args.cifar_test), "--name", "cifar10", "--out", str(evalsets))

    def train(name: str, subset: Path | None, samples: int, seed: int) -> Path:
        run = out / "runs" / name
        summary = run / "train_summary.json"
        if not summary.is_file():
            log(f"curate train {name} ({samples} samples seen, seed {seed})")
            curate("train", shards, *(["--subset", str(subset)] if subset else []), "--scale", "tiny",
                   "--samples-seen", str(samples), "--seed", str(seed), "--out", str(run), *cpus)
        return Path(json.loads(summary.read_text())["checkpoint"])

    scorer = train("scorer", None, args.scorer_samples, 0)
    index = out / "index"
    (out / "score.yaml").write_text(SCORE_CONFIG)
    log("curate score with the scorer")
    print(curate("score", shards, "--config", str(out / "score.yaml"), "--pretrained", str(scorer),
                 "--out", str(index), *cpus), flush=True)
    t_scored = time.time()

    subsets: dict[str, Path | None] = {}
    for name, spec in SUBSETS.items():
        if spec is None:
            subsets[name] = None
            continue
        rule, where = spec
        folder = out / "subsets" / name.split()[0].lower().replace("-", "") / ("basic" if where else "plain")
        curate("filter", "--index", str(index), "--rule", rule, *(["--where", where] if where else []),
               "--out", str(folder))
        subsets[name] = folder / "subset.parquet"

    rows = []
    for name, subset in subsets.items():
        size, kept, makeup = kept_shares(subset, truth)
        same_as = next((r["name"] for r in rows if r["uids"] == (None if subset is None else _uids(subset))), None)
        row = {"name": name, "size": size, "kept": kept, "makeup": makeup, "acc": {}, "same_as": same_as,
               "uids": None if subset is None else _uids(subset)}
        for seed in args.seeds:
            if same_as:  # the same subset: the same training, not run twice
                row["acc"][seed] = next(r for r in rows if r["name"] == same_as)["acc"][seed]
                continue
            tag = f"{name.split()[0].lower().replace('-', '')}{'-basic' if '∩' in name else ''}{'' if subset else '-none'}"
            ckpt = train(f"{tag}-s{seed}", subset, args.samples_seen, seed)
            ev = out / "evals" / f"{tag}-s{seed}"
            curate("evaluate", "--model", "tiny", "--pretrained", str(ckpt), "--tasks", "cifar10",
                   "--data-dir", str(evalsets), "--out", str(ev))
            res = [json.loads(x) for x in (ev / "eval_results.jsonl").read_text().splitlines()]
            row["acc"][seed] = next(r["score"] for r in res if r["task"] == "cifar10")
            log(f"{name} seed {seed}: CIFAR-10 zero-shot acc1 {row['acc'][seed]:.4f}")
        rows.append(row)

    table = format_table(rows, args, len(truth), time.time() - t_start, t_scored - t_start)
    print(table)
    (out / "results.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "uids"} for r in rows], indent=2))
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + table + "\n")


def _uids(subset: Path) -> frozenset:
    import pyarrow.parquet as pq

    return frozenset(pq.read_table(subset, columns=["uid"]).column("uid").to_pylist())


def format_table(rows: list[dict], args, pool_size: int, total_s: float, score_s: float) -> str:
    seeds = args.seeds
    head = ("| subset | size | % of pool | match kept | match+text kept | text-spotting kept | mismatch kept "
            "| text-spotting in subset | CIFAR-10 zero-shot acc1 (%), mean ± sd | per seed (" + ", ".join(map(str, seeds)) + ") |")
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in rows:
        accs = [r["acc"][s] for s in seeds]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        k = r["kept"]
        lines.append(
            f"| {r['name']}{' (= ' + r['same_as'] + ')' if r['same_as'] else ''} | {r['size']} | "
            f"{100 * r['size'] / pool_size:.0f}% | {100 * k['match']:.0f}% | {100 * k['match_text']:.0f}% | "
            f"{100 * k['text_spot']:.0f}% | {100 * k['mismatch']:.0f}% | {100 * r['makeup']['text_spot']:.1f}% | "
            f"{100 * np.mean(accs):.2f} ± {100 * sd:.2f} | "
            + ", ".join(f"{100 * a:.2f}" for a in accs) + " |")
    lines.append("")
    lines.append(f"Pool {pool_size} samples (shares {args.shares}); scorer {args.scorer_samples} samples seen; "
                 f"each subset trained for {args.samples_seen} samples seen (tiny recipe), seeds {seeds}; "
                 f"chance is 10%. Whole run {total_s / 60:.1f} min ({score_s / 60:.1f} min to build, "
                 f"train the scorer and score).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
