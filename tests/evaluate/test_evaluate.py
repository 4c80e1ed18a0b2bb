"""curate evaluate / make-evalset: real CIFAR-10 test images, real Flickr30k captions, real models."""

from __future__ import annotations

import errno
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curate.cli import main
from curate.evaluate.datasets import open_evalset
from curate.evaluate.make_evalset import make_classification_set, make_retrieval_set
from curate.evaluate.run import RESULTS_FILE, classification_metrics, retrieval_metrics
from curate.evaluate.tasks import DATACOMP_TASKS, NUM_AVERAGED, parse_tasks
from curate.models import create_clip, resolve_pretrained
from tests.conftest import SHARD_SPEC

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
CIFAR_TEST = SHARED / "cifar10" / "test.tar"
FLICKR = SHARED / "flickr30k_snli"
FLICKR_CAPTIONS = REPO / "tests" / "data" / "eval" / "flickr30k_captions.jsonl"
PER_CLASS = 12


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> Path:
    """The first PER_CLASS images of every class of CIFAR-10's real test split, as a class-folder tree."""
    root = tmp_path_factory.mktemp("cifar_tree") / "cifar10"
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_TEST) as tf:
        for m in sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name):
            cls = Path(m.name).parent.name
            if taken.get(cls, 0) < PER_CLASS:
                (root / cls).mkdir(parents=True, exist_ok=True)
                (root / cls / Path(m.name).name).write_bytes(tf.extractfile(m).read())
                taken[cls] = taken.get(cls, 0) + 1
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, cifar_tree) -> Path:
    d = tmp_path_factory.mktemp("evaldata")
    make_classification_set(cifar_tree, "cifar10", d)
    make_retrieval_set(FLICKR_CAPTIONS, FLICKR, "flickr30k_mini", d)
    return d


@pytest.fixture(scope="module")
def tiny_clip():
    return create_clip("tiny", resolve_pretrained("tiny", None))


def test_task_lists():
    assert len(DATACOMP_TASKS) == 40 and NUM_AVERAGED == 38
    assert len(parse_tasks("datacomp")) == 40 and len(parse_tasks("datacomp38")) == 38
    assert parse_tasks("cifar10, flickr30k,mscoco,cifar10") == [
        "cifar10", "retrieval/flickr_1k_test_image_text_retrieval",
        "retrieval/mscoco_2014_5k_test_image_text_retrieval"]
    assert DATACOMP_TASKS["vtab/pets"].main_metric == "mean_per_class_recall"


def test_make_evalset_from_the_real_cifar10_test_tar(tmp_path):
    summary = make_classification_set(CIFAR_TEST, "cifar10", tmp_path, shard_size=4000)
    assert (summary.samples, summary.classes, summary.shards) == (10_000, 10, 3)
    folder = tmp_path / "wds_cifar10_test"
    assert (folder / "test" / "nshards.txt").read_text().strip() == "3"
    assert (folder / "classnames.txt").read_text().split("\n")[:3] == ["airplane", "automobile", "bird"]
    templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert len(templates) == 18 and all("{c}" in t for t in templates)  # clip_benchmark's CIFAR templates
    labels = []
    with tarfile.open(folder / "test" / "0.tar") as tf:
        for m in tf.getmembers():
            if m.name.endswith(".cls"):
                labels.append(int(tf.extractfile(m).read()))
    # Samples are in sorted class-folder order, labelled as torchvision's ImageFolder numbers them.
    assert np.bincount(labels).tolist() == [1000, 1000, 1000, 1000]
    with pytest.raises(ValueError, match="already exists"):
        make_classification_set(CIFAR_TEST, "cifar10", tmp_path)


def _direct_predictions(clip, transform, tokenizer, images, classnames, templates):
    """Zero-shot predictions computed by hand: normalised image embeddings against the mean of the
    normalised template embeddings of each class (CLIP, Radford et al. 2021, section 3.1.4)."""
    with torch.no_grad():
        x = torch.stack([transform(im) for im in images])
        feats = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
        weights = []
        for c in classnames:
            t = torch.nn.functional.normalize(clip.encode_text(tokenizer([tp.format(c=c) for tp in templates])), dim=-1)
            w = t.mean(0)
            weights.append(w / w.norm())
        return (feats @ torch.stack(weights, 1)).argmax(1).numpy()


def _tree_images(tree: Path):
    classes = sorted(p.name for p in tree.iterdir())
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((tree / c).iterdir()):
            images.append(Image.open(f).convert("RGB"))
            labels.append(i)
    return images, np.array(labels)


def test_accuracy_equals_a_direct_computation_on_both_layouts(tiny_clip, data_dir, cifar_tree):
    clip, transform, tokenizer = tiny_clip
    images, labels = _tree_images(cifar_tree)
    wds_set = open_evalset("cifar10", data_dir / "wds_cifar10_test")
    tree_set = open_evalset("cifar10", cifar_tree)
    assert (wds_set.layout, tree_set.layout) == ("wds", "imagefolder")
    assert wds_set.classnames == tree_set.classnames
    pred = _direct_predictions(clip, transform, tokenizer, images, wds_set.classnames, wds_set.templates)
    want_acc1 = float((pred == labels).mean())
    want_recall = float(np.mean([(pred[labels == c] == c).mean() for c in range(10)]))
    for evalset in (wds_set, tree_set):
        got = classification_metrics(clip, evalset, transform, tokenizer, "cpu", 32, 0)
        assert got["num_samples"] == 10 * PER_CLASS
        assert got["acc1"] == pytest.approx(want_acc1, abs=1e-9)
        assert got["mean_per_class_recall"] == pytest.approx(want_recall, abs=1e-9)
        assert 0 <= got["acc1"] <= got["acc5"] <= 1


def test_a_dataset_is_evaluated_with_its_own_templates(tiny_clip, cifar_tree, tmp_path):
    clip, transform, tokenizer = tiny_clip
    own = tmp_path / "templates.txt"
    own.write_text("a crayon drawing of the {c}.\n")
    make_classification_set(cifar_tree, "cifar10", tmp_path, templates=str(own))
    evalset = open_evalset("cifar10", tmp_path / "wds_cifar10_test")
    assert evalset.templates == ["a crayon drawing of the {c}."] and evalset.templates_source == "dataset"
    images, labels = _tree_images(cifar_tree)
    own_pred = _direct_predictions(clip, transform, tokenizer, images, evalset.classnames, evalset.templates)
    got = classification_metrics(clip, evalset, transform, tokenizer, "cpu", 64, 0)
    assert got["acc1"] == pytest.approx(float((own_pred == labels).mean()), abs=1e-9)
    # A folder without its own templates falls back to clip_benchmark's packaged ones.
    assert open_evalset("cifar10", cifar_tree).templates_source == "clip_benchmark"


def test_retrieval_recall_equals_a_direct_computation(tiny_clip, data_dir):
    clip, transform, tokenizer = tiny_clip
    evalset = open_evalset("flickr30k_mini", data_dir / "wds_flickr30k_mini_test")
    assert evalset.kind == "retrieval" and evalset.count() == 4
    got = retrieval_metrics(clip, evalset, transform, tokenizer, "cpu", 2, 0)
    rows = [json.loads(line) for line in FLICKR_CAPTIONS.read_text().splitlines()]
    rows.sort(key=lambda r: r["image"])  # make_retrieval_set keeps file order; the file is sorted
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.encode_image(torch.stack(
            [transform(Image.open(FLICKR / r["image"]).convert("RGB")) for r in rows])), dim=-1)
        caps = [c for r in rows for c in r["captions"]]
        owner = np.array([i for i, r in enumerate(rows) for _ in r["captions"]])
        txt = torch.nn.functional.normalize(clip.encode_text(tokenizer(caps)), dim=-1)
    scores = (txt @ img.T).numpy()
    image_r1 = float((scores.argmax(1) == owner).mean())  # text -> image
    text_r1 = float(np.mean([owner[scores[:, i].argmax()] == i for i in range(len(rows))]))  # image -> text
    assert got["num_samples"] == 4 and got["num_captions"] == len(caps) == 16
    assert got["image_retrieval_recall@1"] == pytest.approx(image_r1)
    assert got["text_retrieval_recall@1"] == pytest.approx(text_r1)
    assert got["mean_recall@1"] == pytest.approx((image_r1 + text_r1) / 2)


def test_cli_reports_missing_tasks_resumes_and_the_table_matches_the_jsonl(data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", "tiny", "--tasks", "cifar10,imagenet1k,flickr30k_mini,wilds/fmow",
            "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "64"]
    (data_dir / "wds_wilds-fmow_test").mkdir(exist_ok=True)
    assert main(args) == 0
    printed = capsys.readouterr().out
    lines = [json.loads(x) for x in (out / RESULTS_FILE).read_text().splitlines()]
    assert [r["task"] for r in lines] == ["cifar10", "flickr30k_mini"]
    for r in lines:
        assert f"{r['score']:>8.4f}" in printed and r["task"] in printed
    assert lines[0]["templates_source"] == "dataset" and lines[0]["num_samples"] == 10 * PER_CLASS
    assert f"MISSING      imagenet1k: looked for {data_dir / 'wds_imagenet1k_test'}" in printed
    assert "UNSUPPORTED  wilds/fmow" in printed
    assert f"1 of {NUM_AVERAGED} DataComp tasks present" in printed
    assert f"{'Average':<48}{'1 of 38 tasks':<24}{lines[0]['score']:>8.4f}" in printed
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["missing"]["imagenet1k"][0].endswith("wds_imagenet1k_test")
    # A rerun skips what is done and appends nothing.
    assert main(args) == 0
    assert "already done 2 task(s)" in capsys.readouterr().out
    assert len((out / RESULTS_FILE).read_text().splitlines()) == 2


def test_bad_arguments_fail_before_any_task(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny", "--pretrained", str(tmp_path / "nope.pt"), "--tasks", "cifar10",
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert main(["evaluate", "--train-dir", str(tmp_path), "--tasks", "cifar10", "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a curate train output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_from_curate_train_evaluates_end_to_end(ray_cluster, data_dir, tmp_path, capsys):
    run = tmp_path / "train"
    assert main(["train", SHARD_SPEC, "--out", str(run), "--scale", "tiny", "--batch-size", "8", "--samples-seen", "64",
                 "--data-workers", "0", "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--train-dir", str(run), "--tasks", "cifar10", "--data-dir", str(data_dir),
                 "--out", str(out)]) == 0
    rec = json.loads((out / RESULTS_FILE).read_text())
    assert rec["model"] == "tiny" and rec["pretrained"].endswith("step_00000008.pt")
    assert rec["num_samples"] == 10 * PER_CLASS and 0 <= rec["score"] <= 1
    assert "tiny, weights" in capsys.readouterr().out


def test_image_bytes_are_kept_unchanged(cifar_tree, data_dir):
    first_class = sorted(p.name for p in cifar_tree.iterdir())[0]
    first = sorted((cifar_tree / first_class).iterdir())[0].read_bytes()
    with tarfile.open(data_dir / "wds_cifar10_test" / "test" / "0.tar") as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".jpg"))
        assert tf.extractfile(member).read() == first
    assert Image.open(io.BytesIO(first)).size == (32, 32)


def test_make_evalset_refuses_bad_caption_files_and_templates(tmp_path, cifar_tree):
    def write(lines):
        path = tmp_path / "caps.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path

    ok = json.dumps({"image": "402978771.jpg", "captions": ["A woman sits on a bench."]})
    cases = {
        "must be a list of strings": [ok, json.dumps({"image": "2248275918.jpg", "captions": "one string"})],
        "line 2: not valid JSON": [ok, "{not json"],
        "listed more than once": [ok, ok],
        "at least one non-empty caption": [json.dumps({"image": "402978771.jpg", "captions": [" "]})],
    }
    for message, lines in cases.items():
        with pytest.raises(ValueError, match=message):
            make_retrieval_set(write(lines), FLICKR, "r", tmp_path / "out")
        # Nothing is left of a set that failed half-way (its first shard was being written).
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    bad = tmp_path / "t.txt"
    bad.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match=r"placeholder \{c\}"):
        make_classification_set(cifar_tree, "c", tmp_path / "out", templates=str(bad))
    with pytest.raises(ValueError, match="non-empty task name"):
        make_classification_set(cifar_tree, "", tmp_path / "out")


def test_evaluate_with_no_task_found_is_not_a_success(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny", "--tasks", "nosuchtask", "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "o")]) == 1
    assert "NOTHING EVALUATED" in capsys.readouterr().out


def test_a_full_disk_leaves_no_half_evalset_and_a_cut_result_line_is_rerun(full_disk, cifar_tree, data_dir, tmp_path,
                                                                            capsys):
    """make-evalset on a disk that fills up: ENOSPC, nothing left behind, and the same command
    works once there is space. evaluate after a run killed mid-line in eval_results.jsonl: the
    cut line is dropped and that task evaluated again, instead of a JSON error."""
    disk, fill = full_disk
    make_classification_set(cifar_tree, "before", disk)
    fill()
    with pytest.raises(OSError) as e:
        make_classification_set(cifar_tree, "cifar10", disk)
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "wds_before_test"]
    (disk / "filler").unlink()
    assert make_classification_set(cifar_tree, "cifar10", disk).samples == 10 * PER_CLASS

    out = tmp_path / "eval"
    args = ["evaluate", "--model", "tiny", "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "64"]
    assert main(args + ["--tasks", "cifar10"]) == 0
    results = out / RESULTS_FILE
    results.write_text(results.read_text() + '{"task": "flickr30k_mini", "score": 0.1')  # killed mid-line
    assert main(args + ["--tasks", "cifar10,flickr30k_mini"]) == 0
    assert "already done 1 task(s)" in capsys.readouterr().out
    assert [json.loads(x)["task"] for x in results.read_text().splitlines()] == ["cifar10", "flickr30k_mini"]


# --- Bounded reads (issue 27): eval members are size-checked, unused ones never read ----------


def _noise_tree(root: Path, classes: int = 3, per_class: int = 8, side: int = 256) -> int:
    """A class-folder tree of random-noise PNGs (incompressible, so each file is about
    ``side * side * 3`` bytes); returns the total bytes of the images."""
    rng = np.random.default_rng(0)
    total = 0
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            path = root / f"class{c}" / f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
            total += path.stat().st_size
    return total


def _members(tar: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]


def test_make_evalset_holds_one_image_at_a_time(tmp_path):
    """make-evalset reads, converts and writes one image at a time: the Python memory it
    allocates at its peak is far below the tree's images together (it held all of them before)."""
    import tracemalloc

    import webdataset  # noqa: F401  (imported before tracing: its import is not the command's cost)

    tree = tmp_path / "tree"
    total = _noise_tree(tree)
    assert total > 4_500_000  # 24 images of about 197 KB
    make_classification_set(tree, "warm", tmp_path / "warm")  # first-call imports, outside the trace
    tracemalloc.start()
    try:
        summary = make_classification_set(tree, "noise", tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.samples == 24 and summary.classes == 3
    assert peak < total / 4, f"peak {peak} bytes for {total} bytes of images"
    # The same samples as before: every image byte for byte, labelled in sorted folder order.
    written = _members(tmp_path / "out" / "wds_noise_test" / "test" / "0.tar")
    files = sorted(p for p in tree.rglob("*.png"))
    assert [n for n, _ in written] == [f"s{i:07d}.{e}" for i in range(24) for e in ("cls", "png")]
    assert [d for n, d in written if n.endswith(".png")] == [p.read_bytes() for p in files]
    assert [int(d) for n, d in written if n.endswith(".cls")] == [i // 8 for i in range(24)]


def test_make_evalset_refuses_an_image_over_the_member_limit(tmp_path):
    tree = tmp_path / "tree"
    _noise_tree(tree, classes=2, per_class=2, side=64)
    big = tree / "class1" / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big)
    limit = 50_000
    size = big.stat().st_size
    with pytest.raises(ValueError, match=rf"big\.png: {size} bytes, over limits\.max_member_bytes {limit}"):
        make_classification_set(tree, "t", tmp_path / "out", max_member_bytes=limit)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    packed = tmp_path / "tree.tar"  # the same tree as a tar: refused from the member's header
    with tarfile.open(packed, "w") as tf:
        tf.add(tree, arcname="tree")
    with pytest.raises(ValueError, match=rf"member 'tree/class1/big\.png': {size} bytes, over"):
        make_classification_set(packed, "t", tmp_path / "out", max_member_bytes=limit)
    assert make_classification_set(packed, "t", tmp_path / "out").samples == 5  # the default limit: 256 MiB
    line = json.dumps({"image": "class1/big.png", "captions": ["noise"]})
    (tmp_path / "caps.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=rf"big\.png: {size} bytes, over limits\.max_member_bytes {limit}"):
        make_retrieval_set(tmp_path / "caps.jsonl", tree, "r", tmp_path / "out", max_member_bytes=limit)


def _batches(evalset, **kw):
    from torchvision.transforms import ToTensor

    images, labels = [], []
    for x, y in evalset.dataloader(ToTensor(), batch_size=16, **kw):
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def test_the_eval_reader_never_reads_members_it_does_not_use(data_dir, tmp_path):
    """Extra members beside each sample (a ``.json.gz`` that is not gzip, a ``.pyd`` whose
    unpickling raises, a large ``.npy``) are never read, inflated or decoded: the batches are
    those of the clean set. webdataset's own reader (clip_benchmark's) inflates and unpickles them."""
    import shutil

    clean = tmp_path / "wds_cifar10_test"
    shutil.copytree(data_dir / "wds_cifar10_test", clean)
    want_images, want_labels = _batches(open_evalset("cifar10", clean))
    assert len(want_labels) == 10 * PER_CLASS

    dirty = tmp_path / "dirty" / "wds_cifar10_test"
    shutil.copytree(clean, dirty)
    shard = dirty / "test" / "0.tar"
    members = _members(shard)
    unpickle_raises = b"cno_such_module_here\nfn\n."  # a pickle naming a module that does not exist
    with tarfile.open(shard, "w") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for name, data in members:
            add(name, data)
            if name.endswith(".cls"):
                key = name.split(".", 1)[0]
                add(f"{key}.json.gz", b"\x1f\x8bnot gzip at all")
                add(f"{key}.pyd", unpickle_raises)
                add(f"{key}.npy", bytes(3_000_000))
    images, labels = _batches(open_evalset("cifar10", dirty), max_member_bytes=1_000_000)
    assert torch.equal(images, want_images) and torch.equal(labels, want_labels)

    import warnings

    from clip_benchmark.datasets.builder import build_wds_dataset
    from torchvision.transforms import ToTensor

    with pytest.raises(Exception) as e, warnings.catch_warnings():  # the reader this replaced, same folder
        warnings.simplefilter("ignore", UserWarning)
        list(build_wds_dataset("wds/cifar10", ToTensor(), split="test", data_dir=str(dirty)))
    assert getattr(e.value, "k", None) == "json.gz"  # webdataset's DecodingError: it inflated the member


def test_the_eval_reader_refuses_a_used_member_over_the_limit(data_dir, tmp_path):
    evalset = open_evalset("cifar10", data_dir / "wds_cifar10_test")
    sizes = [len(d) for n, d in _members(data_dir / "wds_cifar10_test" / "test" / "0.tar") if n.endswith(".jpg")]
    limit = sorted(sizes)[len(sizes) // 2]  # half of the images are larger
    big = next(s for s in sizes if s > limit)
    over = rf"\.jpg' is \d+ bytes, over limits\.max_member_bytes {limit}; it is not read"
    with pytest.raises(ValueError, match=over):
        _batches(evalset, max_member_bytes=limit)
    assert big > limit
    # Retrieval sets are read by the same reader.
    retrieval = open_evalset("flickr30k_mini", data_dir / "wds_flickr30k_mini_test")
    over = r"0\.tar: member 's0000000\.jpg' is \d+ bytes, over limits\.max_member_bytes 10;"
    with pytest.raises(ValueError, match=over):
        list(retrieval.dataloader(lambda im: torch.zeros(1), batch_size=2, max_member_bytes=10))


def test_the_eval_reader_refuses_an_image_over_the_shape_limits(data_dir, tmp_path):
    """A 1 x 600,000 PNG (1.2 KB) in a test set is refused from its header, by name, on both
    layouts: never decoded, never resized to 224 x 134M pixels by the transform."""
    import shutil

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 600_000), 128).save(buf, "PNG")
    wds = tmp_path / "wds_cifar10_test"
    shutil.copytree(data_dir / "wds_cifar10_test", wds)
    shard = wds / "test" / "0.tar"
    members = _members(shard)
    with tarfile.open(shard, "w") as tf:
        for name, data in members + [("zzz_tall.png", buf.getvalue()), ("zzz_tall.cls", b"0")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"'zzz_tall\.png': 1x600000 pixels: aspect ratio"):
        _batches(open_evalset("cifar10", wds))
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "b").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tree / "a" / "ok.png")
    (tree / "b" / "tall.png").write_bytes(buf.getvalue())
    evalset = open_evalset("cifar10", tree)
    with pytest.raises(ValueError, match=r"tall\.png: 1x600000 pixels: aspect ratio"):
        list(evalset.dataloader(lambda im: torch.zeros(1), batch_size=2))
