


"""The ``curate`` command.

    curate score SHARDS... --out DIR [--config pipelines/tmars.yaml] [--clip-model NAME]
                 [--pretrained TAG_OR_PATH] [--num-cpus N] [--address ADDR] [--overwrite]
                 [--<section>-<key> VALUE for any key of the YAML config, e.g. --detect-long-side 1280]
    curate filter --index DIR --rule "tmars(fraction=0.5) & basic()" [--where SQL] --out DIR
    curate query "SELECT ... FROM scores" --index DIR [--output result.csv|.parquet|.json]
    curate reshard SHARDS... --subset subset.npy|subset.parquet --out DIR [--shard-size N]
                   [--face-boxes METADATA_DIR [--webp-quality Q]]
    curate train SHARDS... [--subset subset.npy|subset.parquet] --scale tiny|small|medium|large|xlarge
                 --out DIR [--config pipelines/train_tiny.yaml] [--num-workers N] [--resume latest|PATH]
                 [--<any TrainConfig field> VALUE]
    curate evaluate (--model ARCH --pretrained TAG_OR_PATH | --train-dir DIR) --tasks TASKS
                    --data-dir DIR --out DIR
    curate make-evalset (--imagefolder DIR_OR_TAR | --captions FILE.jsonl --image-root DIR) --name NAME --out DIR
    curate report --index DIR [--index DIR] --out DIR [--subset FILE]
    curate search ("TEXT" | --image PATH) --index DIR [--index METADATA_DIR] [-k 20] [--html OUT.html]

Settings: every command's settings are one dataclass (``PipelineConfig``, ``TrainConfig``,
``EvalConfig``, ``ReportConfig``, ``ReshardConfig``, ``EvalsetConfig``, ``SearchConfig``) and ``_add_settings``
makes one flag per field, named as the field (``--section-field`` for ``curate score``'s nested
config), typed and range-checked by ``curate.config.check_field`` and documented from the
dataclass's docstring. Inputs and outputs (shards, ``--out``, ``--index``) and how to run
(``--num-cpus``, ``--address``) are the only hand-written flags.

Exit codes: 0 when every shard was read (bad samples are recorded, not failures); 1 when a
shard could not be read at all, or a disk filled up (``disk_full``: one line naming the
disk error, no traceback); 2 for a usage or configuration error (unknown model, weights not
available offline, bad config), reported before any shard is read.
"""


from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import time
from typing import Any

from curate import __version__
from curate.errors import CurateError

STARTED_AT = time.time()  # the command's start (this module's import), for the start-up `curate score` reports


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _error_text(e: BaseException | str, limit: int | None = None) -> str:
    """The text of an error for the one line a command prints, capped
    (``curate.schema.cap_error``: ``ERROR_CHARS`` characters unless ``limit``)."""
    from curate.schema import ERROR_CHARS, cap_error

    return cap_error(str(e), limit or ERROR_CHARS)


def _show(value: Any) -> str:
    return "auto" if value is None else str(value)


def _setting(key: str, f: dataclasses.Field, default: Any):
    """argparse ``type`` of a setting: the text as the field's type (``int`` also takes
    ``1.28e9``, an optional field takes ``auto``), checked by ``curate.config.check_field``."""
    from curate.config import check_field

    is_text = isinstance(default, str) or "str" in str(f.type)

    def parse(text: str):
        value: Any = text
        if not is_text and text.strip().lower() not in ("auto", "none"):
            try:
                number = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
            value = int(number) if "int" in str(f.type) and number.is_integer() else number
        elif not is_text:
            value = None if text.strip().lower() == "none" else text
        try:
            return check_field(key, value, f, default)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_settings(parser, cls: type, title: str, section: str | None = None, aliases: dict[str, str] | None = None,
                  show_defaults: bool = True) -> None:
    """One flag per field of the settings dataclass ``cls``: ``--field-name`` (``--section-field``
    with ``section``), stored as ``set__[section__]field`` (``None`` when not given), its help from
    the dataclass's ``Attributes:`` docstring (``curate.config.field_docs``). ``aliases`` maps a
    field to a second flag name (``clip_model`` -> ``--clip-model``)."""
    from curate.config import field_docs

    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        names = ["--" + "-".join(filter(None, [section, f.name])).replace("_", "-")]
        if aliases and f.name in aliases:  # "-k" as it is; a field name as "--field-name"
            alias = aliases[f.name]
            names.append(alias if alias.startswith("-") else "--" + alias.replace("_", "-"))
        dest = "__".join(filter(None, ["set", section, f.name]))
        default = getattr(defaults, f.name)
        text = docs.get(f.name, "").replace("%", "%%")
        help_text = text + (f" (default: {_show(default)})" if show_defaults else "")
        if isinstance(default, bool):
            group.add_argument(*names, dest=dest, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(*names, dest=dest, nargs=len(default), type=int, metavar="N", help=help_text)
        else:
            kind = "TEXT" if isinstance(default, str) or "str" in str(f.type) else (
                "FLOAT" if "float" in str(f.type) else "INT")
            if "choices" in f.metadata:
                kind = "{" + ",".join(f.metadata["choices"]) + "}"
            group.add_argument(*names, dest=dest, type=_setting(".".join(filter(None, [section, f.name])), f, default),
                               metavar=kind, help=help_text)


def _settings(args) -> dict[str, Any]:
    """The settings given on the command line: ``{field: value}``, or ``{section__field: value}``
    for sectioned settings (``curate.scoring.config.apply_settings`` takes that form)."""
    given = {k.removeprefix("set__"): v for k, v in vars(args).items() if k.startswith("set__") and v is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}


def _add_score(sub) -> None:
    from curate.scoring.config import SECTIONS, SHORTCUTS

    p = sub.add_parser(
        "score",
        help="detect text, mask it and CLIP-score every sample into a Parquet score index",
        description="Stream webdataset shards through decode, text detection, text masking and CLIP re-scoring "
        "on Ray; write one Parquet index file per shard into --out. Every key of the YAML config has its own "
        "flag, --<section>-<key>, which wins over --config. --clip-model without --pretrained: random init, "
        "as open_clip does.",
    )
    p.add_argument("shards", nargs="+",
                   help="shard paths or URLs; brace ranges {000000..000009}, globs and fsspec URLs")
    p.add_argument("--out", required=True, help="output folder of the score index (one .parquet per shard)")
    p.add_argument("--config", help="pipeline YAML (e.g. pipelines/tmars.yaml); default: the T-MARS defaults, "
                   "with actor pools, CPUs and GPUs sized to the Ray cluster")
    p.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--overwrite", action="store_true", help="recompute shards whose index file is already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for section, cls in SECTIONS.items():
        aliases = {name: name for name, (sec, _) in SHORTCUTS.items() if sec == section}
        _add_settings(p, cls, f"{section} settings (YAML section `{section}`)", section=section, aliases=aliases)


def _cmd_score(args) -> int:
    from curate.scoring import run_score
    from curate.scoring.config import apply_settings, load_config

    def call():
        cfg = apply_settings(load_config(args.config), _settings(args))
        return run_score(args.shards, args.out, cfg, num_cpus=args.num_cpus, address=args.address,
                         progress=not args.no_progress, overwrite=args.overwrite, started_at=STARTED_AT)

    return _run_command("score", call)


def _add_filter(sub) -> None:
    from curate.filters.rules import rule_signatures

    p = sub.add_parser(
        "filter",
        help="select a subset of the pool by rules over the score index (no image is re-read)",
        description=f"Rules: {rule_signatures()}. Combine with & | ~ and parentheses; fraction= ranks the whole "
        "pool's ok rows, not one file's. What each rule does, and which give DataComp's baselines exactly: "
        "README, 'Filter and query the index' and 'DataComp participants'.",
    )
    _add_pool_index(p)
    p.add_argument("--rule", help='e.g. "tmars(fraction=0.5) & basic()"')
    p.add_argument("--where", help="one extra SQL expression over the index columns, ANDed with the rule, "
                   "e.g. \"num_text_boxes = 0\" (nothing else is accepted; non-ok rows are never kept)")
    p.add_argument("--out", required=True,
                   help="output folder: subset.parquet, subset.npy (DataComp), filter_summary.json")
    _add_memory_limit(p, "the kept rows spill to OUT/.filter-work and are sorted a uid range at a time")
    p.add_argument("--address", help="run on this Ray cluster (or RAY_ADDRESS's), a task per group of index files; "
                   "the index and --out must be on storage every node reads (default: one process)")


def _cmd_filter(args) -> int:
    from curate.filters import run_filter

    if args.address or os.environ.get("RAY_ADDRESS"):
        from curate.filters.distributed import run_filter_distributed

        return _run_command("filter", lambda: run_filter_distributed(
            args.index, args.rule, args.out, where=args.where, memory_limit=args.memory_limit,
            address=args.address))
    return _run_command("filter", lambda: run_filter(args.index, args.rule, args.out, where=args.where,
                                                     memory_limit=args.memory_limit))


def _add_query(sub) -> None:
    p = sub.add_parser(
        "query",
        help="read-only DuckDB SQL over the score index (a view named `scores`)",
        description="Example: curate query \"SELECT status, count(*) FROM scores GROUP BY status\" --index out/index",
    )
    p.add_argument("sql", help="one SELECT statement over the view `scores`")
    _add_pool_index(p)
    p.add_argument("--output", help="write the result to a .csv, .parquet, .json or .jsonl file instead of printing")
    p.add_argument("--max-rows", type=_positive_int, default=40, help="rows to print (default 40)")
    _add_memory_limit(p, "--output is streamed; DuckDB spills sorts and joins beyond this to disk")


def _cmd_query(args) -> int:
    from curate.query import query, query_to_file

    def call() -> None:
        if args.output:
            rows = query_to_file(args.sql, args.index, args.output, memory_limit=args.memory_limit)
            print(f"{rows} rows written to {args.output}")
        else:
            import duckdb

            table = query(args.sql, args.index)
            duckdb.from_arrow(table).show(max_rows=args.max_rows, max_width=200)
            print(f"({table.num_rows} rows)")

    return _run_command("query", call)


def _add_pool_index(p) -> None:
    p.add_argument("--index", required=True, action="append",
                   help="the pool: a score-index folder written by `curate score`, or a DataComp metadata folder "
                   "(<32 hex>.parquet files as download_upstream.py leaves them, read in place); give --index twice, "
                   "one of each, to join them by uid")


def _add_memory_limit(p, what: str) -> None:
    p.add_argument("--memory-limit", default="2GiB",
                   help=f"most memory DuckDB may hold, DuckDB syntax (default 2GiB); {what}")


def _add_reshard(sub) -> None:
    p = sub.add_parser(
        "reshard",
        help="write the samples of a subset into new shards (DataComp's resharder)",
        description="Streams the input shards once; a uid that appears k times in the subset is written k times.",
    )
    p.add_argument("shards", nargs="+", help="input shards (brace ranges, globs, fsspec URLs)")
    p.add_argument("--subset", required=True, help="subset.npy (DataComp u8,u8) or subset.parquet with a uid column")
    p.add_argument("--out", required=True, help="output folder for {:08d}.tar shards and their stats")
    p.add_argument("--face-boxes", metavar="METADATA_DIR",
                   help="a DataComp metadata folder (<32 hex>.parquet with uid, face_bboxes): blur the faces of "
                   "each written image and store it as .webp, as DataComp's resharder does with "
                   "--blur-metadata-map MAP --apply-blur (giving the folder turns blurring on); samples without "
                   "boxes are written byte for byte")
    from curate.io.reshard import ReshardConfig

    _add_settings(p, ReshardConfig, "settings")


def _cmd_reshard(args) -> int:
    from curate.io.reshard import reshard

    return _run_command("reshard", lambda: reshard(args.subset, args.shards, args.out, face_boxes=args.face_boxes,
                                                   **_settings(args)))


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a self-contained HTML report: examples per score band with boxes and masks, plots, accounting",
        description="Writes OUT/index.html and OUT/images/. Images are read back from the shards named in the index. "
        "On a DataComp metadata folder alone: counts, score and caption figures, no thumbnails (the metadata names "
        "no shard); joined with a score index: the full report plus DataComp's scores.",
    )
    _add_pool_index(p)
    p.add_argument("--subset", help="subset.parquet or DataComp .npy: show what it kept and dropped")
    p.add_argument("--shards", nargs="+",
                   help="where the shards are now, if moved since scoring (matched by file name)")
    p.add_argument("--out", required=True, help="output folder (index.html, images/)")
    from curate.report.data import ReportConfig

    _add_settings(p, ReportConfig, "settings")


def _cmd_report(args) -> int:
    from curate.report import build_report

    def show(r) -> str:
        return (f"curate report: {r.html} ({r.num_samples} samples, {r.num_examples} examples shown, "
                f"{r.num_images} images"
                + (f", {r.missing} image(s) unreadable, shown with the reason" if r.missing else "")
                + (f"; subset kept {r.subset_kept}" if r.subset_kept is not None else "") + ")"
                + (f"; {r.note}" if r.note else ""))

    return _run_command("report", lambda: build_report(args.index, args.out, subset=args.subset, shards=args.shards,
                                                       **_settings(args)), show=show)


def _add_search(sub) -> None:
    from curate.report.search import SearchConfig

    p = sub.add_parser(
        "search",
        help="the pool samples nearest to a text or an image, over the stored embeddings (score --embeddings)",
        description="Embeds the query with the index's own CLIP model and searches the stored image embeddings "
        "(exact inner product, faiss). Example: curate search \"a red double-decker bus\" --index out/index -k 20",
    )
    p.add_argument("query", nargs="?", help="a text query (or give --image)")
    p.add_argument("--image", help="a query image file instead of a text")
    p.add_argument("--index", required=True, action="append",
                   help="score-index folder written by `curate score --embeddings`; give a DataComp metadata folder "
                   "as a second --index to show DataComp's scores of the hits (the metadata alone cannot be searched: "
                   "its .npz embeddings are not read)")
    p.add_argument("--html", help="also write a page of the hits' thumbnails to this .html file")
    p.add_argument("--shards", nargs="+", help="where the shards are now, if moved since scoring (for --html)")
    _add_settings(p, SearchConfig, "settings", aliases={"top_k": "-k"})


def _cmd_search(args) -> int:
    from curate.report.search import search

    return _run_command("search", lambda: search(args.index, text=args.query, image=args.image, html=args.html,
                                                 shards=args.shards, **_settings(args)))


def _add_train(sub) -> None:
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
    p.add_argument("--local", action="store_true", help="train in this process without Ray Train: one worker, "
                   "no start-up cost, no restarts after a failure (small runs, notebooks, benchmarks)")
    _add_settings(p, TrainConfig, "recipe fields (override the scale and --config; defaults: the scale's)",
                  show_defaults=False)


def _cmd_train(args) -> int:
    from curate.train.config import train_config
    from curate.train.data import NoTrainingData
    from curate.train.run import TrainFailed, run_train

    def call():
        cfg = train_config(args.scale, args.config, _settings(args))
        return run_train(args.shards, args.out, cfg, subset=args.subset, resume=args.resume,
                         num_cpus=args.num_cpus, address=args.address, progress=not args.no_progress,
                         local=args.local)

    try:
        return _run_command("train", call)
    except (TrainFailed, NoTrainingData) as e:
        if disk_full(e):
            raise  # main's one line
        print(f"curate train: failed: {_error_text(e, 2000)}", file=sys.stderr)
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
    from curate.evaluate.run import EvalConfig

    _add_settings(p, EvalConfig, "settings")


def _cmd_evaluate(args) -> int:
    from curate.evaluate.run import run_evaluate
    from curate.evaluate.tasks import parse_tasks

    return _run_command("evaluate", lambda: run_evaluate(
        parse_tasks(args.tasks), args.data_dir, args.out, model=args.model, pretrained=args.pretrained,
        train_dir=args.train_dir, **_settings(args)))


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
    from curate.evaluate.make_evalset import EvalsetConfig

    _add_settings(p, EvalsetConfig, "settings")


def _cmd_make_evalset(args) -> int:
    from curate.evaluate.make_evalset import make_classification_set, make_retrieval_set

    settings = _settings(args)

    def call():
        if args.imagefolder:
            return make_classification_set(args.imagefolder, args.name, args.out, **settings)
        if not args.image_root:
            raise ValueError("--captions needs --image-root")
        if settings.get("classnames") or settings.get("templates"):
            raise ValueError("--classnames and --templates are for --imagefolder (classification) sets")
        return make_retrieval_set(args.captions, args.image_root, args.name, args.out,
                                  **{k: v for k, v in settings.items() if k == "shard_size"})

    return _run_command("make-evalset", call)


# What a full disk says where no errno is kept: Python and pyarrow raise OSError with
# errno.ENOSPC, DuckDB an IOException with the OS's text, or (when its temp_directory cannot grow)
# an OutOfMemoryException naming max_temp_directory_size.
NO_SPACE_TEXT = ("No space left on device", "max_temp_directory_size")


def disk_full(e: BaseException | None) -> BaseException | None:
    """The exception that says a disk is full, among ``e``, those it was raised from or during
    (``__cause__``, ``__context__``) and a Ray task's own (``RayTaskError.cause``); ``None``
    when there is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and cause is not e and (inner := disk_full(cause)) is not None:
            return inner
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or any(t in str(e) for t in NO_SPACE_TEXT):
            return e
        e = e.__cause__ or e.__context__
    return None


# The one error path of every command: an error the user fixes from its message (``CurateError``,
# and the ValueError / FileNotFoundError curate raises for bad input) is one line and exit 2; a
# full disk is ``main``'s one line and exit 1; anything else is a bug and keeps its traceback.
USER_ERRORS = (CurateError, ValueError, FileNotFoundError)


def _run_command(command: str, call, show=None) -> int:
    """Run ``call``; print ``show(result)`` (default ``result.format()``; nothing for ``None``)
    and return the result's ``exit_code`` (else 0), or print a ``USER_ERRORS`` error in one line
    and return 2."""
    try:
        result = call()
    except USER_ERRORS as e:
        if disk_full(e):
            raise  # main's one line
        print(f"curate {command}: error: {_error_text(e)}", file=sys.stderr)
        return 2
    text = show(result) if show is not None else result.format() if result is not None else None
    if text is not None:
        print(text)
    return getattr(result, "exit_code", 0)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``curate score: error: ... (see curate score --help)``.

    argparse's own prints the whole usage first (20 lines for ``curate score``), which hides the
    one line that matters. Sub-parsers are made with this class too (``add_subparsers`` uses the
    parent's class). Exit status 2, as argparse's.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# Each command: (the function that adds its parser, the function that runs it), in --help order.
COMMANDS = {
    "score": (_add_score, _cmd_score),
    "filter": (_add_filter, _cmd_filter),
    "query": (_add_query, _cmd_query),
    "reshard": (_add_reshard, _cmd_reshard),
    "train": (_add_train, _cmd_train),
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "make-evalset": (_add_make_evalset, _cmd_make_evalset),
    "report": (_add_report, _cmd_report),
    "search": (_add_search, _cmd_search),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="curate",
        description="T-MARS-style data curation for CLIP pretraining: score once, filter many.",
    )
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, handler) in COMMANDS.items():
        add(sub)
        sub.choices[name].set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``curate`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"curate {args.command}: interrupted; finished index files are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk is the machine's state, not a bug: one line, exit 1
        full = disk_full(e)
        if full is None:
            raise
        detail = _error_text((str(full).strip().splitlines() or [""])[0], 300)
        print(f"curate {args.command}: error: no space left on device ({detail}). Free space on that disk, or write "
              f"the output to a larger one, then rerun", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
