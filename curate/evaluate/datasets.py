"""Local evaluation datasets: DataComp / clip_benchmark webdataset folders and ImageFolder trees.

Nothing here touches the network. A webdataset folder is read with clip_benchmark's
``build_wds_dataset`` (``test/nshards.txt``, ``test/{0..n-1}.tar``, ``classnames.txt``,
``zeroshot_classification_templates.txt``, ``dataset_type.txt``). An ImageFolder tree (one
sub-folder per class) is read with ``torchvision.datasets.ImageFolder``.

Templates: a dataset that ships its own ``zeroshot_classification_templates.txt`` is evaluated
with **those** templates (never replaced by packaged defaults: the bug behind clip-benchmark #109 /
datacomp #69); otherwise clip_benchmark's packaged templates for the task, otherwise
``"a photo of a {c}."``. Which one was used is recorded with the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.evaluate.tasks import KNOWN_CLASSNAMES
from curate.io.formats import image_suffixes

DEFAULT_TEMPLATES = ["a photo of a {c}."]


def _packaged(kind: str) -> dict[str, Any]:
    import clip_benchmark.datasets as cbd

    path = Path(cbd.__file__).parent / f"en_{kind}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def default_classnames(key: str) -> list[str] | None:
    """Class names known for a task: ours (``KNOWN_CLASSNAMES``) or clip_benchmark's packaged ones."""
    short = key.split("/", 1)[-1]
    if short in KNOWN_CLASSNAMES:
        return list(KNOWN_CLASSNAMES[short])
    packaged = _packaged("classnames")
    return packaged.get(short) or packaged.get(key)


def default_templates(key: str) -> tuple[list[str], str]:
    """``(templates, source)`` for a task without its own: clip_benchmark's packaged templates
    (``en_zeroshot_classification_templates.json``), else ``DEFAULT_TEMPLATES``."""
    short = key.split("/", 1)[-1]
    packaged = _packaged("zeroshot_classification_templates")
    found = packaged.get(short) or packaged.get(key)
    if found:
        return list(found), "clip_benchmark"
    return list(DEFAULT_TEMPLATES), "default"


def _read_lines(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln]


@dataclass
class EvalSet:
    """A located test set.

    Attributes:
        key: task key. path: its folder. layout: ``wds`` or ``imagefolder``.
        kind: ``classification`` or ``retrieval``.
        classnames: class names in label order (classification).
        templates: zero-shot templates with ``{c}`` (classification); templates_source says
            where they came from (``dataset``, ``clip_benchmark``, ``default``).
    """

    key: str
    path: Path
    layout: str
    kind: str
    classnames: list[str] | None = None
    templates: list[str] | None = None
    templates_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def count(self) -> int:
        """Number of samples in the test split (webdataset: keys in ``test/*.tar``, read from the
        tar headers only; ImageFolder: image files)."""
        if self.layout == "wds":
            import tarfile

            keys = set()
            for shard in sorted((self.path / "test").glob("*.tar")):
                with tarfile.open(shard) as tf:
                    keys.update((shard.name, m.name.split(".", 1)[0]) for m in tf.getmembers() if m.isfile())
            return len(keys)
        suffixes = image_suffixes()
        return sum(1 for f in self.path.rglob("*") if f.suffix.lower() in suffixes)

    def dataloader(self, transform, batch_size: int = 256, num_workers: int = 0):
        """A ``DataLoader`` over the test split yielding ``(images (B, 3, S, S) float32, labels
        (B,) int64)`` for classification, ``(images, [[caption, ...], ...])`` for retrieval."""
        import torch

        if self.layout == "wds":
            import warnings

            from clip_benchmark.datasets.builder import build_wds_dataset

            with warnings.catch_warnings():  # "WebDataset(shardshuffle=...) is None": clip_benchmark's call
                warnings.simplefilter("ignore", UserWarning)
                ds = build_wds_dataset(f"wds/{self.key}", transform, split="test", data_dir=str(self.path))
            return torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, shuffle=False,
                                               num_workers=num_workers)
        from torchvision.datasets import ImageFolder

        suffixes = image_suffixes()  # the one list of image formats (curate.io.formats)
        ds = ImageFolder(str(self.path), transform=transform,
                         is_valid_file=lambda f: Path(f).suffix.lower() in suffixes)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _is_imagefolder(path: Path) -> bool:
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subdirs:
        return False
    suffixes = image_suffixes()
    return any(f.suffix.lower() in suffixes for d in subdirs[:3] for f in d.iterdir())


def open_evalset(key: str, path: Path) -> EvalSet:
    """Describe the test set in ``path`` (see the module docstring).

    Raises:
        ValueError: ``path`` is neither layout, or a classification set without class names.
    """
    if (path / "test" / "nshards.txt").is_file():
        layout = "wds"
        kind_file = _read_lines(path / "dataset_type.txt")
        kind = "retrieval" if kind_file and kind_file[0].lower() == "retrieval" else "classification"
    elif path.is_dir() and _is_imagefolder(path):
        layout, kind = "imagefolder", "classification"
    else:
        raise ValueError(f"{path} is neither a webdataset test folder (test/nshards.txt) nor an ImageFolder tree")
    ev = EvalSet(key, path, layout, kind)
    if kind == "retrieval":
        return ev
    classnames = _read_lines(path / "classnames.txt")
    if classnames is None:
        if layout == "imagefolder":
            folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            known = default_classnames(key)
            if known and sorted(n.lower() for n in known) == sorted(f.replace("_", " ").lower() for f in folders):
                by_folder = {n.lower(): n for n in known}
                classnames = [by_folder[f.replace("_", " ").lower()] for f in folders]
            else:
                classnames = [f.replace("_", " ") for f in folders]
                ev.notes.append("class names are the folder names")
        else:
            classnames = default_classnames(key)
            if classnames is None:
                raise ValueError(f"{path} has no classnames.txt and no class names are known for {key!r}")
            ev.notes.append("class names from clip_benchmark's defaults")
    templates = _read_lines(path / "zeroshot_classification_templates.txt")
    if templates:
        bad = [t for t in templates if "{c}" not in t]
        if bad:
            raise ValueError(f"{path / 'zeroshot_classification_templates.txt'}: template {bad[0]!r} has no {{c}}")
        ev.templates, ev.templates_source = templates, "dataset"
    else:
        ev.templates, ev.templates_source = default_templates(key)
    ev.classnames = classnames
    return ev
