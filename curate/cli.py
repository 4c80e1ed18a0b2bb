"""The ``curate`` command.

    curate score SHARDS... --out DIR [--config pipelines/tmars.yaml] [--clip-model NAME]
                 [--pretrained TAG_OR_PATH] [--num-cpus N] [--address ADDR] [--overwrite]
    curate filter --index DIR --rule "tmars(fraction=0.5) & basic()" [--where SQL] --out DIR
    curate query "SELECT ... FROM scores" --index DIR [--output result.csv|.parquet|.json]
    curate reshard SHARDS... --subset subset.npy|subset.parquet --out DIR [--shard-size N]
    curate train SHARDS... [--subset subset.npy|subset.parquet] --scale tiny|small|medium|large|xlarge
                 --out DIR [--config pipelines/train_tiny.yaml] [--num-workers N] [--resume latest|PATH]
                 [--<any TrainConfig field> VALUE]
    curate evaluate (--model ARCH --pretrained TAG_OR_PATH | --train-dir DIR) --tasks TASKS
                    --data-dir DIR --out DIR
    curate make-evalset (--imagefolder DIR_OR_TAR | --captions FILE.jsonl --image-root DIR) --name NAME --out DIR

Exit codes: 0 when every shard was read (bad samples are recorded, not failures); 1 when a
shard could not be read at all; 2 for a usage or configuration error (unknown model, weights
not available offline, bad config), reported before any shard is read.
"""

from __future__ import annotations

import argparse
import sys

from curate import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="detect text, mask it and CLIP-score every sample into a Parquet score index",
        description="Stream webdataset shards through decode, CRAFT text detection, text masking and "
        "CLIP re-scoring on Ray; write one Parquet index file per shard into --out.",
    )
    p.add_argument("shards", nargs="+", help="shard paths or URLs; brace ranges {000000..000009}, globs and fsspec URLs")
    p.add_argument("--out", required=True, help="output folder of the score index (one .parquet per shard)")
    p.add_argument("--config", help="pipeline YAML (e.g. pipelines/tmars.yaml); default: the T-MARS defaults, "
                   "with actor pools, CPUs and GPUs sized to the Ray cluster")
    p.add_argument("--clip-model", help="open_clip model name, or 'tiny' (random init, offline tests)")
    p.add_argument(
        "--pretrained",
        help="open_clip pretrained tag (must already be in the local cache), a local checkpoint path, "
        "or 'none' for random init. With --clip-model and no --pretrained: random init, as open_clip does",
    )
    p.add_argument("--cache-dir", help="open_clip / Hugging Face cache folder for pretrained weights")
    p.add_argument("--detector", choices=["craft", "dbnet", "none"],
                   help="text detector (default craft; dbnet is PP-OCRv4 on onnxruntime; none: CLIP score only, "
                   "DataComp's CLIP-score baseline, masked_clip_score = clip_score)")
    p.add_argument("--detect-size", type=int, help="long side in pixels of the detector input (default 512)")
    p.add_argument("--mask-method", choices=["mean", "inpaint"], help="text masking method (default mean)")
    p.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--overwrite", action="store_true", help="recompute shards whose index file is already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_score(args) -> int:
    from curate.config import load_config
    from curate.models import PretrainedNotAvailable
    from curate.scoring import IndexConfigMismatch, run_score
    from curate.scoring.run import apply_settings

    try:
        cfg = load_config(args.config)
        flags = {"clip_model": args.clip_model, "pretrained": args.pretrained, "cache_dir": args.cache_dir,
                 "detector": args.detector, "detect_size": args.detect_size, "mask_method": args.mask_method}
        apply_settings(cfg, {k: v for k, v in flags.items() if v not in (None, "")})
        summary = run_score(
            args.shards,
            args.out,
            cfg,
            num_cpus=args.num_cpus,
            address=args.address,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (PretrainedNotAvailable, IndexConfigMismatch, ValueError, FileNotFoundError) as e:
        print(f"curate score: error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    return summary.exit_code


def _add_filter(sub) -> None:
    p = sub.add_parser(
        "filter",
        help="select a subset of the pool by rules over the score index (no image is re-read)",
        description="Rules: tmars(threshold=|fraction=), clip_score(threshold=|fraction=), basic(), "
        "laion(), text_area(max=); combine with & | ~ and parentheses. Fractions are pool-wide.",
    )
    p.add_argument("--index", required=True, help="score-index folder written by `curate score`")
    p.add_argument("--rule", help='e.g. "tmars(fraction=0.5) & basic()"')
    p.add_argument("--where", help="one extra SQL expression over the index columns, ANDed with the rule, e.g. \"num_text_boxes = 0\" (nothing else is accepted; non-ok rows are never kept)")
    p.add_argument("--out", required=True, help="output folder: subset.parquet, subset.npy (DataComp), filter_summary.json")


def _add_query(sub) -> None:
    p = sub.add_parser(
        "query",
        help="read-only DuckDB SQL over the score index (a view named `scores`)",
        description="Example: curate query \"SELECT status, count(*) FROM scores GROUP BY status\" --index out/index",
    )
    p.add_argument("sql", help="one SELECT statement over the view `scores`")
    p.add_argument("--index", required=True, help="score-index folder written by `curate score`")
    p.add_argument("--output", help="write the result to a .csv, .parquet, .json or .jsonl file instead of printing")
    p.add_argument("--max-rows", type=_positive_int, default=40, help="rows to print (default 40)")


def _add_reshard(sub) -> None:
    p = sub.add_parser(
        "reshard",
        help="write the samples of a subset into new shards (DataComp's resharder)",
        description="Streams the input shards once; a uid that appears k times in the subset is written k times.",
    )
    p.add_argument("shards", nargs="+", help="input shards (brace ranges, globs, fsspec URLs)")
    p.add_argument("--subset", required=True, help="subset.npy (DataComp u8,u8) or subset.parquet with a uid column")
    p.add_argument("--out", required=True, help="output folder for {:08d}.tar shards and their stats")
    p.add_argument("--shard-size", type=_positive_int, default=10_000, help="samples per output shard (default 10000)")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a self-contained HTML report: examples per score band with boxes and masks, plots, accounting",
        description="Writes OUT/index.html and OUT/images/. Images are read back from the shards named in the index.",
    )
    p.add_argument("--index", required=True, help="score-index folder written by `curate score`")
    p.add_argument("--subset", help="subset.parquet or DataComp .npy: show what it kept and dropped")
    p.add_argument("--shards", nargs="+", help="where the shards are now, if moved since scoring (matched by file name)")
    p.add_argument("--out", required=True, help="output folder (index.html, images/)")
    p.add_argument("--band-by", default="masked_clip_score", choices=["masked_clip_score", "clip_score"],
                   help="score whose quantile bands group the examples (default masked_clip_score)")
    p.add_argument("--bands", type=_positive_int, default=5, help="number of score bands (default 5)")
    p.add_argument("--per-band", type=_positive_int, default=8, help="examples per band (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example sampling (default 0)")


def _cmd_report(args) -> int:
    from curate.report import build_report

    try:
        r = build_report(args.index, args.out, subset=args.subset, shards=args.shards, band_by=args.band_by,
                         bands=args.bands, per_band=args.per_band, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"curate report: error: {e}", file=sys.stderr)
        return 2
    print(f"curate report: {r.html} ({r.num_samples} samples, {r.num_examples} examples shown, "
          f"{r.num_images} images" + (f", {r.missing} image(s) unreadable, shown with the reason" if r.missing else "")
          + (f"; subset kept {r.subset_kept}" if r.subset_kept is not None else "") + ")")
    return 0


def _add_train(sub) -> None:
    import dataclasses

    from curate.train.config import SCALES, TrainConfig

    p = sub.add_parser(
        "train",
        help="train an open_clip model contrastively on a subset (DataComp recipe, Ray Train)",
        description="Streams the shards and keeps the subset's uids; DataComp's recipe per --scale; every "
        "field of the recipe can be set from --config YAML or from its own flag below. Checkpoints are "
        "open_clip files in OUT/checkpoints.",
    )
    p.add_argument("shards", nargs="+", help="the pool's shards (or shards written by `curate reshard`)")
    p.add_argument("--subset", help="subset.npy (DataComp) or subset.parquet from `curate filter`; "
                   "omit to train on every sample (e.g. resharded shards)")
    p.add_argument("--scale", default="tiny", choices=list(SCALES), help="recipe (default tiny: CPU, the tiny model)")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, train_log.jsonl, train_summary.json")
    p.add_argument("--config", help="YAML of recipe fields applied over the scale (e.g. pipelines/train_tiny.yaml)")
    p.add_argument("--resume", help="'latest' (newest checkpoint in --out) or a checkpoint path")
    p.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    recipe = p.add_argument_group("recipe fields (override the scale and --config)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            recipe.add_argument(flag, dest=f"set_{f.name}", default=None, action=argparse.BooleanOptionalAction)
        else:
            kind = type(f.default)
            recipe.add_argument(flag, dest=f"set_{f.name}", type=_number(kind), metavar=kind.__name__.upper())


def _number(kind: type):
    """argparse type for a recipe field: ``int`` also takes ``1.28e9``, ``float`` takes ``5e-4``."""
    def parse(text: str):
        try:
            if kind is int:
                value = float(text)
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind.__name__}") from None

    return parse


def _cmd_train(args) -> int:
    from curate.train.config import train_config
    from curate.train.data import NoTrainingData
    from curate.train.run import TrainFailed, run_train

    overrides = {k.removeprefix("set_"): v for k, v in vars(args).items() if k.startswith("set_")}

    def call():
        cfg = train_config(args.scale, args.config, overrides)
        return run_train(args.shards, args.out, cfg, subset=args.subset, resume=args.resume,
                         num_cpus=args.num_cpus, address=args.address, progress=not args.no_progress)

    try:
        return _report("train", call)
    except (TrainFailed, NoTrainingData) as e:
        print(f"curate train: failed: {e}", file=sys.stderr)
        return 1


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="DataComp-style zero-shot classification and retrieval from local test sets",
        description="Reads DataComp / clip_benchmark webdataset folders (wds_<task>_test/) or ImageFolder trees "
        "from --data-dir; never downloads. Appends one JSON line per task to OUT/eval_results.jsonl and "
        "skips tasks already there for the same weights.",
    )
    p.add_argument("--model", help="open_clip model name (e.g. ViT-B-32, tiny)")
    p.add_argument("--pretrained", help="pretrained tag already in the local cache, or a checkpoint path")
    p.add_argument("--train-dir", help="a `curate train` output folder: its model and newest checkpoint")
    p.add_argument("--tasks", default="datacomp", help="comma-separated DataComp task names (cifar10, imagenet1k, "
                   "vtab/cifar100, flickr30k, mscoco, ...), 'datacomp' (all 40), 'datacomp38', or a YAML task list")
    p.add_argument("--data-dir", required=True, help="folder holding the test sets")
    p.add_argument("--out", required=True, help="output folder: eval_results.jsonl, eval_summary.json")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--cache-dir", help="open_clip / Hugging Face cache folder for pretrained tags")


def _add_make_evalset(sub) -> None:
    p = sub.add_parser(
        "make-evalset",
        help="turn a class-folder tree or a caption file into a DataComp-format webdataset test folder",
        description="Writes OUT/wds_NAME_test/ (test/*.tar, nshards.txt, classnames.txt and templates, or "
        "dataset_type.txt for retrieval).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--imagefolder", help="class-folder tree: a directory, or a tar of one (classification)")
    src.add_argument("--captions", help="JSONL of {\"image\": path, \"captions\": [...]} (retrieval)")
    p.add_argument("--image-root", help="folder the --captions image paths are relative to")
    p.add_argument("--name", required=True, help="task name, e.g. cifar10 (known names get default class names "
                   "and templates)")
    p.add_argument("--out", required=True, help="data folder to write wds_NAME_test/ into")
    p.add_argument("--classnames", help="file of class names, one per line, in sorted folder order")
    p.add_argument("--templates", help="file of zero-shot templates with {c}, one per line")
    p.add_argument("--shard-size", type=_positive_int, default=10_000, help="samples per tar (default 10000)")


def _cmd_evaluate(args) -> int:
    from curate.evaluate.run import run_evaluate
    from curate.evaluate.tasks import parse_tasks
    from curate.models import PretrainedNotAvailable

    return _report("evaluate", lambda: run_evaluate(
        parse_tasks(args.tasks), args.data_dir, args.out, model=args.model, pretrained=args.pretrained,
        train_dir=args.train_dir, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        cache_dir=args.cache_dir), PretrainedNotAvailable)


def _cmd_make_evalset(args) -> int:
    from curate.evaluate.make_evalset import make_classification_set, make_retrieval_set

    def call():
        if args.imagefolder:
            return make_classification_set(args.imagefolder, args.name, args.out, classnames=args.classnames,
                                           templates=args.templates, shard_size=args.shard_size)
        if not args.image_root:
            raise ValueError("--captions needs --image-root")
        return make_retrieval_set(args.captions, args.image_root, args.name, args.out, shard_size=args.shard_size)

    return _report("make-evalset", call)


def _report(command: str, call, *errors: type[Exception]) -> int:
    """Run ``call``; print its summary (exit code: the summary's, else 0), or a usage error (2)."""
    try:
        summary = call()
    except (ValueError, FileNotFoundError, *errors) as e:
        print(f"curate {command}: error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    return getattr(summary, "exit_code", 0)


def _cmd_reshard(args) -> int:
    from curate.io.reshard import reshard

    return _report("reshard", lambda: reshard(args.subset, args.shards, args.out, shard_size=args.shard_size))


def _cmd_filter(args) -> int:
    from curate.filters import RuleError
    from curate.query import run_filter

    return _report("filter", lambda: run_filter(args.index, args.rule, args.out, where=args.where), RuleError)


def _cmd_query(args) -> int:
    from curate.query import QueryError, query, write_table

    try:
        table = query(args.sql, args.index)
        if args.output:
            write_table(table, args.output)
            print(f"{table.num_rows} rows written to {args.output}")
        else:
            import duckdb

            rel = duckdb.from_arrow(table)
            rel.show(max_rows=args.max_rows, max_width=200)
            print(f"({table.num_rows} rows)")
    except (QueryError, FileNotFoundError, ValueError) as e:
        print(f"curate query: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="T-MARS-style data curation for CLIP pretraining: score once, filter many.",
    )
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score(sub)
    _add_filter(sub)
    _add_query(sub)
    _add_reshard(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_make_evalset(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``curate`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"curate {args.command}: interrupted; finished index files are kept, rerun to resume", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "score":
        return _cmd_score(args)
    if args.command == "filter":
        return _cmd_filter(args)
    if args.command == "query":
        return _cmd_query(args)
    if args.command == "reshard":
        return _cmd_reshard(args)
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "evaluate":
        return _cmd_evaluate(args)
    if args.command == "make-evalset":
        return _cmd_make_evalset(args)
    if args.command == "report":
        return _cmd_report(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
