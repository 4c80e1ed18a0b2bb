"""DataComp's evaluation suite: task names, main metrics, groups, and where each task's data lives.

The task list, main metrics and groups follow DataComp (Gadre et al., 2023, section 3.5 and
Appendix "Evaluation details"; the repository's ``tasklist.yml`` and ``aggregate_scores.py``):
40 tasks, of which 38 make the headline average (``fairness/fairface`` and
``fairness/utkface`` report only fairness metrics). The datasets are the ``djghosh/wds_<task>_test``
webdataset folders DataComp downloads, or clip_benchmark's ``clip_benchmark_export_wds`` output:
here they are only ever read from a local ``--data-dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Task:
    """One evaluation task.

    Attributes:
        key: DataComp's task name (``vtab/cifar100``) or a user task name.
        name: display name (DataComp's ``aggregate_scores.py`` spelling).
        kind: ``classification`` or ``retrieval`` (what ``curate evaluate`` can run), or
            ``unsupported`` (needs metadata beyond labels: WILDS, fairness, WinoGAViL).
        main_metric: the metric DataComp reports for the task.
        in_average: counted in DataComp's 38-task average.
    """

    key: str
    name: str
    kind: str = "classification"
    main_metric: str = "acc1"
    in_average: bool = True


def _t(key, name, kind="classification", metric="acc1", avg=True) -> Task:
    return Task(key, name, kind, metric, avg)


DATACOMP_TASKS: dict[str, Task] = {t.key: t for t in [
    _t("cars", "Stanford Cars"),
    _t("cifar10", "CIFAR-10"),
    _t("country211", "Country211"),
    _t("fgvc_aircraft", "FGVC Aircraft", metric="mean_per_class_recall"),
    _t("food101", "Food-101"),
    _t("gtsrb", "GTSRB"),
    _t("imagenet1k", "ImageNet 1k"),
    _t("imagenet_sketch", "ImageNet Sketch"),
    _t("imagenetv2", "ImageNet v2"),
    _t("imagenet-a", "ImageNet-A"),
    _t("imagenet-o", "ImageNet-O"),
    _t("imagenet-r", "ImageNet-R"),
    _t("mnist", "MNIST"),
    _t("objectnet", "ObjectNet"),
    _t("renderedsst2", "Rendered SST2"),
    _t("stl10", "STL-10"),
    _t("sun397", "SUN397"),
    _t("voc2007", "Pascal VOC 2007", metric="mean_per_class_recall"),
    _t("vtab/caltech101", "Caltech-101", metric="mean_per_class_recall"),
    _t("vtab/cifar100", "CIFAR-100"),
    _t("vtab/clevr_count_all", "CLEVR Counts"),
    _t("vtab/clevr_closest_object_distance", "CLEVR Distance"),
    _t("vtab/dtd", "Describable Textures"),
    _t("vtab/eurosat", "EuroSAT"),
    _t("vtab/flowers", "Oxford Flowers-102", metric="mean_per_class_recall"),
    _t("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance"),
    _t("vtab/pcam", "PatchCamelyon"),
    _t("vtab/pets", "Oxford-IIIT Pet", metric="mean_per_class_recall"),
    _t("vtab/resisc45", "RESISC45"),
    _t("vtab/svhn", "SVHN"),
    _t("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", "retrieval", "mean_recall@1"),
    _t("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", "retrieval", "mean_recall@1"),
    _t("misc/winogavil", "WinoGAViL", "unsupported", "avg_jaccard_score"),
    _t("wilds/iwildcam", "iWildCam", "unsupported", "F1-macro_all"),
    _t("wilds/camelyon17", "Camelyon17", "unsupported", "acc1"),
    _t("wilds/fmow", "FMoW", "unsupported", "acc_worst_region"),
    _t("fairness/dollar_street", "Dollar Street", "unsupported", "acc5_worst_income"),
    _t("fairness/geode", "GeoDE", "unsupported", "acc_worst_region"),
    _t("fairness/fairface", "FairFace", "unsupported", "none", avg=False),
    _t("fairness/utkface", "UTKFace", "unsupported", "none", avg=False),
]}
NUM_AVERAGED = sum(t.in_average for t in DATACOMP_TASKS.values())  # 38

# DataComp's groups (aggregate_scores.py).
GROUPS: dict[str, list[str]] = {
    "ImageNet": ["imagenet1k"],
    "ImageNet dist. shifts": ["imagenet_sketch", "imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r", "objectnet"],
    "VTAB": ["vtab/caltech101", "vtab/cifar100", "vtab/clevr_count_all", "vtab/clevr_closest_object_distance",
             "vtab/dtd", "vtab/eurosat", "vtab/kitti_closest_vehicle_distance", "vtab/flowers", "vtab/pets",
             "vtab/pcam", "vtab/resisc45", "vtab/svhn", "sun397"],
    "Retrieval": ["retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval",
                  "misc/winogavil"],
}

# Short names users type, as in clip_benchmark and the issue tracker.
ALIASES = {
    "flickr30k": "retrieval/flickr_1k_test_image_text_retrieval",
    "flickr": "retrieval/flickr_1k_test_image_text_retrieval",
    "mscoco": "retrieval/mscoco_2014_5k_test_image_text_retrieval",
    "mscoco_captions": "retrieval/mscoco_2014_5k_test_image_text_retrieval",
    "winogavil": "misc/winogavil",
    "imagenet": "imagenet1k",
    "cifar100": "vtab/cifar100",
}

# Known class names that clip_benchmark does not ship in en_classnames.json (it takes them from
# torchvision's dataset classes): torchvision.datasets.CIFAR10.classes.
KNOWN_CLASSNAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def canonical(name: str) -> str:
    """DataComp task key for a user-typed task name (aliases resolved; unknown names unchanged)."""
    name = name.strip()
    return ALIASES.get(name, name)


def task_for(name: str) -> Task:
    """The ``Task`` of a DataComp task name, or a user task (not in the 38) for any other name."""
    key = canonical(name)
    return DATACOMP_TASKS.get(key) or Task(key, key, "classification", "acc1", in_average=False)


def folder_candidates(data_dir: str | Path, key: str) -> list[Path]:
    """Folders that may hold ``key``'s test set, in the order they are tried.

    DataComp's local names (``wds_<key with / as ->_test``; fairness tasks without the prefix),
    clip_benchmark's (``wds_flickr30k_test``, ``wds_mscoco_captions_test``), the key itself
    (``<data-dir>/cifar10`` as webdataset folder or ImageFolder tree) and its last part.
    """
    data_dir = Path(data_dir)
    short = key.split("/", 1)[-1]
    names = [f"wds_{key.replace('/', '-')}_test", f"wds_{short}_test"]
    if key.startswith("retrieval/flickr"):
        names += ["wds_flickr30k_test", "wds_flickr_1k_test_image_text_retrieval_test"]
    if key.startswith("retrieval/mscoco"):
        names += ["wds_mscoco_captions_test", "wds_mscoco_2014_5k_test_image_text_retrieval_test"]
    names += [key, short]
    out: list[Path] = []
    for n in names:
        p = data_dir / n
        if p not in out:
            out.append(p)
    return out


def parse_tasks(spec: str) -> list[str]:
    """Task names from ``--tasks``.

    ``spec`` is a comma-separated list of task names (DataComp's or aliases), ``datacomp`` for
    all 40, ``datacomp38`` for the 38 of the average, or a YAML file holding a list of names
    or a mapping ``name: {...}`` (its keys are the names).

    Raises:
        ValueError: an empty list or a YAML file of another shape.
    """
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"task list not found: {spec}")
        data: Any = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            data = list(data)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ValueError(f"{spec} must hold a YAML list of task names (or a mapping keyed by them)")
        names = data
    else:
        names = []
        for part in spec.split(","):
            part = part.strip()
            if part == "datacomp":
                names += list(DATACOMP_TASKS)
            elif part == "datacomp38":
                names += [k for k, t in DATACOMP_TASKS.items() if t.in_average]
            elif part:
                names.append(part)
    keys: list[str] = []
    for n in names:
        k = canonical(n)
        if k not in keys:
            keys.append(k)
    if not keys:
        raise ValueError("--tasks names no task")
    return keys
