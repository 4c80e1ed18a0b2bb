"""Nothing from the data runs as code (issues 27 and 28): tar members are read as bytes and decoded
only by the handlers of the members a reader uses (never unpickled, ``torch.load``ed or inflated),
and a shard spec or data path is a file, never webdataset's ``pipe:`` shell command.

Every attack here leaves a marker file if it runs: a pickle whose loading calls
``pathlib.Path.touch(marker)``, or a spec ``pipe:touch <marker>``. Each test checks first that its
payloads do run where a careless reader would load them (so a passing test is not a broken
payload), then that curate never creates a marker. The images are real CIFAR-10 test images.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.cli import main
from curate.evaluate import datasets as eval_datasets
from curate.evaluate.datasets import open_evalset
from curate.evaluate.run import RESULTS_FILE, run_evaluate

REPO = Path(__file__).resolve().parents[2]
CIFAR_TEST = REPO.parent / "shared" / "data" / "cifar10" / "test.tar"
CLASSES = ["bird", "cat"]
PER_CLASS = 2
SHELL = "runs a shell command"  # what every refusal of a pipe: spec says


class _TouchOnLoad:
    """Unpickling this object calls ``pathlib.Path.touch(marker)``: the marker's existence is the
    proof that some reader ran a pickle from the data."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payloads(marker_dir: Path) -> dict[str, bytes]:
    """Member bytes by extension, each of which runs code (touches ``marker_dir/<extension>``)
    when decoded as webdataset's default decoder decodes that extension: ``pyd``, ``pickle``,
    ``pkl`` (``pickle.loads``), ``cls.pyd`` (its last extension picks the handler), ``pyd.gz``
    (inflated by the ``gz`` pre-handler, then unpickled), ``pth`` (``torch.load`` with
    ``weights_only=False``, webdataset's default), ``npy`` (an object array: runs when loaded with
    ``allow_pickle=True``); and ``jpg.gz``, not gzip at all, which raises if anything inflates it."""
    def pickled(ext: str) -> bytes:
        return pickle.dumps(_TouchOnLoad(marker_dir / ext))

    pth = io.BytesIO()
    torch.save(_TouchOnLoad(marker_dir / "pth"), pth)
    npy = io.BytesIO()
    np.save(npy, np.array([_TouchOnLoad(marker_dir / "npy")], dtype=object), allow_pickle=True)
    return {"pyd": pickled("pyd"), "pickle": pickled("pickle"), "pkl": pickled("pkl"),
            "cls.pyd": pickled("cls.pyd"), "pyd.gz": gzip.compress(pickled("pyd.gz")),
            "pth": pth.getvalue(), "npy": npy.getvalue(), "jpg.gz": b"\x1f\x8bnot gzip at all"}


def _check_payloads_run(tmp_path: Path) -> None:
    """The payloads of ``_payloads`` do run when loaded carelessly (a passing test is not a dud)."""
    control = tmp_path / "control"
    control.mkdir()
    p = _payloads(control)
    pickle.loads(p["pyd"])
    pickle.loads(gzip.decompress(p["pyd.gz"]))
    torch.load(io.BytesIO(p["pth"]), weights_only=False)
    np.load(io.BytesIO(p["npy"]), allow_pickle=True)
    assert sorted(f.name for f in control.iterdir()) == ["npy", "pth", "pyd", "pyd.gz"]


def _datacomp_folder(root: Path, marker_dir: Path) -> Path:
    """``root/wds_cifar10_test`` in DataComp's layout (``test/0.tar``, ``test/nshards.txt``,
    ``classnames.txt``, ``zeroshot_classification_templates.txt``): ``PER_CLASS`` real CIFAR-10
    test images of each of ``CLASSES`` (``.jpg`` and ``.cls`` members), and beside every sample
    each member of ``_payloads(marker_dir)``."""
    folder = root / "wds_cifar10_test"
    (folder / "test").mkdir(parents=True)
    payloads = _payloads(marker_dir)
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_TEST) as src, tarfile.open(folder / "test" / "0.tar", "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for m in sorted((m for m in src.getmembers() if m.isfile()), key=lambda m: m.name):
            cls = Path(m.name).parent.name
            if cls in CLASSES and taken.get(cls, 0) < PER_CLASS:
                key = f"s{sum(taken.values()):07d}"
                taken[cls] = taken.get(cls, 0) + 1
                add(f"{key}.jpg", src.extractfile(m).read())
                add(f"{key}.cls", str(CLASSES.index(cls)).encode())
                for ext, data in payloads.items():
                    add(f"{key}.{ext}", data)
    assert sum(taken.values()) == PER_CLASS * len(CLASSES)
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return folder


def _markers(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()  # the payloads touch files here: the folder must exist for them to succeed
    return d


def test_evaluate_never_unpickles_torch_loads_or_inflates_a_test_shard_member(tmp_path):
    """``curate evaluate`` on a DataComp folder whose shard holds, beside each real sample,
    ``.pyd``, ``.pickle``, ``.pkl``, ``.cls.pyd``, ``.pyd.gz``, ``.pth``, ``.npy`` (object array)
    members that touch a marker when loaded, and a ``.jpg.gz`` that is not gzip: the task is
    scored on its 4 samples and no marker exists. Guards the eval reader (``_bounded_tar_files``:
    unused members skipped unread) and its decoder; before issue 27, clip_benchmark's webdataset
    reader unpickled ``.pyd`` members and inflated ``.gz`` ones."""
    _check_payloads_run(tmp_path)
    markers = _markers(tmp_path)
    data = tmp_path / "data"
    _datacomp_folder(data, markers)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny", "--tasks", "cifar10", "--data-dir", str(data), "--out", str(out),
                 "--batch-size", "8"]) == 0
    rec = json.loads((out / RESULTS_FILE).read_text())
    assert rec["task"] == "cifar10" and rec["num_samples"] == PER_CLASS * len(CLASSES)
    assert list(markers.iterdir()) == []


def test_the_eval_decoder_runs_nothing_that_slips_past_the_reader(tmp_path, monkeypatch):
    """Even a member the reader let through is never decoded: with the reader made to pass every
    member (``_bounded_tar_files`` with every extension "used"), the decoder (only the image,
    ``cls``, ``txt`` and ``npy`` handlers, no webdataset defaults) leaves ``.pyd``, ``.pth``,
    ``.pickle``, ``.cls.pyd``, ``.pyd.gz`` and ``.jpg.gz`` as bytes: the batches are those of the
    clean samples and no marker exists. Before this issue the decoder carried webdataset's default
    ``gz`` pre-handler and ``pickle`` / ``torch.load`` post-handlers. Also: an ``.npy`` member
    (multilabel labels) is read with ``allow_pickle=False`` (an object array raises, its pickle
    never runs), and so is a ``subset.npy`` given to ``curate reshard`` / ``train``."""
    from torchvision.transforms import ToTensor

    from curate.io.subset import load_subset_counts

    _check_payloads_run(tmp_path)
    markers = _markers(tmp_path)
    folder = _datacomp_folder(tmp_path / "data", markers)

    class _AnyExtension(frozenset):
        def __contains__(self, item) -> bool:
            return True

    reader = eval_datasets._bounded_tar_files
    monkeypatch.setattr(eval_datasets, "_bounded_tar_files",
                        lambda src, used, max_member_bytes: reader(src, _AnyExtension(), max_member_bytes))
    labels = []
    for images, y in open_evalset("cifar10", folder).dataloader(ToTensor(), batch_size=3):
        assert images.shape[1:] == (3, 32, 32)
        labels += y.tolist()
    assert labels == [0] * PER_CLASS + [1] * PER_CLASS
    assert list(markers.iterdir()) == []

    payloads = _payloads(markers)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        eval_datasets._decode_member(".npy", payloads["npy"])
    labels_npy = io.BytesIO()
    np.save(labels_npy, np.array([0, 1, 1], dtype=np.int64))
    assert eval_datasets._decode_member(".npy", labels_npy.getvalue()).tolist() == [0, 1, 1]
    for key in (".pyd", ".pth", ".pickle", ".cls.pyd", ".pyd.gz", ".jpg.gz"):
        assert eval_datasets._decode_member(key, payloads[key[1:]]) is None  # left as bytes
    (tmp_path / "subset.npy").write_bytes(payloads["npy"])
    with pytest.raises(ValueError, match="not a readable .npy file"):
        load_subset_counts(str(tmp_path / "subset.npy"))
    assert list(markers.iterdir()) == []


def _pipe_specs(marker: Path) -> list[str]:
    """Specs that run ``touch marker`` wherever webdataset's ``gopen`` opens them (the ``#``
    comments out what a reader appends, e.g. ``/test/0.tar``)."""
    return [f"pipe:touch {marker}", f"pipe:touch {marker} #", f"PIPE:touch {marker}"]


def test_evaluate_refuses_a_pipe_data_dir(tmp_path, capsys):
    """``curate evaluate --data-dir 'pipe:touch <marker>'`` (and ``open_evalset``, and the shard
    reader under it) is refused with a usage error naming ``pipe:`` before anything is opened:
    exit 2, no output folder, no marker. Before this issue it was taken for a local folder
    (``is not a folder``); clip_benchmark's reader, before issue 27, would run it."""
    marker = tmp_path / "ran"
    out = tmp_path / "eval"
    for spec in _pipe_specs(marker):
        assert main(["evaluate", "--model", "tiny", "--tasks", "cifar10", "--data-dir", spec,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert SHELL in err and repr(spec) in err
        with pytest.raises(ValueError, match=SHELL):
            run_evaluate(["cifar10"], spec, out, model="tiny")
        with pytest.raises(ValueError, match=SHELL):
            open_evalset("cifar10", Path(spec))
        with pytest.raises(ValueError, match=SHELL):
            list(eval_datasets._bounded_tar_files([{"url": spec + "/test/0.tar"}], frozenset(["jpg"]), 2**20))
    with pytest.raises(ValueError, match="URL scheme 'http' is not supported"):
        open_evalset("cifar10", "http://example.invalid/wds_cifar10_test")
    assert not out.exists() and not marker.exists()


def test_score_refuses_pipe_and_unsupported_shard_specs(tmp_path, capsys):
    """``curate score`` with a shard spec ``pipe:touch <marker>``, or a scheme curate does not
    read (``ssh://``, fsspec's ``memory://`` and ``simplecache::`` chaining), exits 2 with a usage
    error naming the spec before any work: no Ray, no index folder, no marker. A valid spec beside
    it does not get it through. Before this issue the spec was taken for a local file and the
    job ran (the shard then ``unreadable``, exit 1)."""
    marker = tmp_path / "ran"
    out = tmp_path / "index"
    good = str(REPO / "tests" / "data" / "shards" / "sample-000000.tar")
    specs = [*_pipe_specs(marker), "ssh://example.invalid/a.tar", "memory://a.tar",
             "simplecache::s3://bucket/a.tar", f"{good}::memory://a"]
    for spec in specs:
        assert main(["score", good, spec, "--out", str(out), "--clip-model", "tiny", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert repr(spec) in err and ("pipe:" not in spec.lower() or SHELL in err)
    assert not out.exists() and not marker.exists()


@pytest.mark.parametrize("command", ["train", "reshard", "report", "search", "make-evalset --imagefolder",
                                     "make-evalset --captions", "filter decontaminate", "filter image_based"])
def test_every_command_that_reads_tars_refuses_a_pipe_spec(command, tmp_path, capsys):
    """Every other command that takes a shard spec or a folder of tars as a string (``train`` and
    ``reshard`` shards, ``report`` / ``search --shards``, ``make-evalset``'s sources, the
    ``decontaminate(evalset=)`` and ``image_based(target=)`` filter rules) refuses
    ``pipe:touch <marker>`` before any work, naming it: no output, no marker. Before this issue
    each took it for a local path and failed later, or not at all, with another message."""
    from curate.filters.pool_rules import decontaminate_rule, image_based_rule, iter_evalset_images
    from curate.filters.rules import RuleError, parse_rule

    marker = tmp_path / "ran"
    out = tmp_path / "out"
    spec = f"pipe:touch {marker}"
    missing = str(tmp_path / "no-such-index")
    argv = {
        "train": ["train", spec, "--out", str(out), "--scale", "tiny", "--local", "--no-progress"],
        "reshard": ["reshard", spec, "--subset", str(tmp_path / "subset.npy"), "--out", str(out)],
        "report": ["report", "--index", missing, "--shards", spec, "--out", str(out)],
        "search": ["search", "a bird", "--index", missing, "--shards", spec, "--html", str(out / "s.html")],
        "make-evalset --imagefolder": ["make-evalset", "--imagefolder", spec, "--name", "x", "--out", str(out)],
        "make-evalset --captions": ["make-evalset", "--captions", spec, "--image-root", str(tmp_path),
                                    "--name", "x", "--out", str(out)],
    }
    if command in argv:
        assert main(argv[command]) == 2
        err = capsys.readouterr().err
        assert SHELL in err and repr(spec) in err
    else:  # the rules refuse before they touch the pool (none is given)
        rule = {"filter decontaminate": (decontaminate_rule, f"decontaminate(evalset={spec!r}, threshold=1)"),
                "filter image_based": (image_based_rule, f"image_based(target={spec!r})")}[command]
        with pytest.raises(RuleError, match=SHELL):
            rule[0](parse_rule(rule[1]), None)
        with pytest.raises(ValueError, match=SHELL):
            next(iter_evalset_images(spec))
    assert not out.exists() and not marker.exists()


def test_a_pipe_url_inside_the_data_is_never_opened(tmp_path):
    """A shard URL that reaches the reader from the data rather than the command line (an index's
    ``shard`` column read back by ``report`` / ``search``, a training run's config read by its data
    workers) is checked by the reader itself: ``read_shard``, ``iter_shard``, ``plan_members`` and
    Ray's ``read_shard_records`` report the shard ``unreadable`` with the refusal, never open it,
    and leave no marker. Before this issue the reader handed any such string to fsspec."""
    from curate.io.shards import SHARD_UNREADABLE, drain, iter_shard, plan_members, read_shard
    from curate.scoring.records import SHARD_ERROR, SHARD_STATUS, read_shard_records

    marker = tmp_path / "ran"
    for url in _pipe_specs(marker):
        result = read_shard(url)
        assert result.status == SHARD_UNREADABLE and SHELL in result.error and not result.samples
        samples, streamed = drain(iter_shard(url, None))
        assert samples == [] and streamed.status == SHARD_UNREADABLE and SHELL in streamed.error
        assert plan_members(url) is None
        (rec,) = list(read_shard_records({"url": url}))
        assert rec[SHARD_STATUS] == SHARD_UNREADABLE and SHELL in rec[SHARD_ERROR]
    assert not marker.exists()
