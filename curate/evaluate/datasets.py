"""Local evaluation datasets: DataComp / clip_benchmark webdataset folders and ImageFolder trees.

Nothing here touches the network. A webdataset folder (``test/nshards.txt``,
``test/{0..n-1}.tar``, ``classnames.txt``, ``zeroshot_classification_templates.txt``,
``dataset_type.txt``) is read as clip_benchmark's ``build_wds_dataset`` reads it (the same
webdataset grouping, decoders, tuples and batches) except for the tar reading
(``_bounded_tar_files``): only the members a sample is made of (the image: ``webp``, ``png``,
``jpg``, ``jpeg``; the label: ``cls``, or ``npy`` for ``multilabel``; the captions: ``txt`` for
``retrieval``) are read, each after its header's size is checked against
``limits.max_member_bytes`` (``curate.limits.DEFAULT_LIMITS``, 256 MiB); every other member,
``.gz`` ones included, is skipped unread and never decompressed or decoded (webdataset would
inflate a ``.gz`` member whole and unpickle a ``.pyd`` one). The decoder carries only the
handlers of the used members (``_decode_member``: the image handler, ``cls`` to ``int``, ``txt``
to ``str``, ``npy`` to an array without pickles) and none of webdataset's defaults (its ``gz``
pre-handler, its post-handlers that unpickle ``pyd``/``pickle`` and ``torch.load`` ``pth``), so
even a member that reached it could not run code. Paths are local: a test folder or shard path
with a scheme (webdataset's ``pipe:`` above all) is refused with a ``ValueError``
(``curate.io.shards.check_shard_spec``) and never opened. A used member over the limit stops
the test set with a ``ValueError`` naming it, and so does an image whose header is over the
shape limits of ``curate.limits`` (aspect ratio, Pillow's pixel limit): it is never decoded. An
ImageFolder tree (one sub-folder per class) is read with ``torchvision.datasets.ImageFolder``,
with the same header check.

Templates: a dataset that ships its own ``zeroshot_classification_templates.txt`` is evaluated
with **those** templates (never replaced by packaged defaults: the bug behind clip-benchmark #109 /
datacomp #69); otherwise clip_benchmark's packaged templates for the task, otherwise
``"a photo of a {c}."``. Which one was used is recorded with the result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from curate.evaluate.tasks import KNOWN_CLASSNAMES
from curate.io.formats import image_suffixes
from curate.limits import DEFAULT_LIMITS

DEFAULT_TEMPLATES = ["a photo of a {c}."]
# The image members clip_benchmark's webdataset reader takes, in its order of preference.
WDS_IMAGE_EXTS = ["webp", "png", "jpg", "jpeg"]
# webdataset's members that are metadata, not samples (``tariterators.tar_file_iterator``).
_WDS_META = re.compile(r"__[^/]*__($|/)")


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

    def dataloader(self, transform, batch_size: int = 256, num_workers: int = 0,
                   max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes):
        """A ``DataLoader`` over the test split yielding ``(images (B, 3, S, S) float32, labels
        (B,) int64)`` for classification, ``(images, [[caption, ...], ...])`` for retrieval.

        ``max_member_bytes``: a webdataset member the sample uses that is larger (from its tar
        header) is not read; iterating then raises ``ValueError`` naming the shard, the member,
        its size and the limit (see the module docstring).
        """
        import torch

        if self.layout == "wds":
            ds = self._wds_dataset(transform, max_member_bytes)
            return torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, shuffle=False,
                                               num_workers=num_workers)
        from torchvision.datasets import ImageFolder

        suffixes = image_suffixes()  # the one list of image formats (curate.io.formats)
        ds = ImageFolder(str(self.path), transform=transform, loader=_bounded_loader,
                         is_valid_file=lambda f: Path(f).suffix.lower() in suffixes)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


    def _wds_dataset(self, transform, max_member_bytes: int):
        """clip_benchmark's ``build_wds_dataset`` pipeline for this folder's test split, reading
        the tars with ``_bounded_tar_files`` instead of webdataset's reader."""
        import webdataset as wds
        from webdataset.compat import FluidWrapper, check_empty
        from webdataset.tariterators import group_by_keys

        nshards = int((self.path / "test" / "nshards.txt").read_text())
        type_file = self.path / "dataset_type.txt"
        dataset_type = type_file.read_text().strip().lower() if type_file.is_file() else "classification"
        if dataset_type == "retrieval":
            second = "txt"
        else:
            second = "npy" if dataset_type == "multilabel" else "cls"
        used = frozenset([*WDS_IMAGE_EXTS, second])
        urls = [str(self.path / "test" / f"{i}.tar") for i in range(nshards)]
        ds = FluidWrapper(wds.SimpleShardList(urls))
        ds.append(wds.split_by_worker)
        ds.append(partial(_bounded_tar_files, used=used, max_member_bytes=max_member_bytes))
        ds.append(group_by_keys)
        ds.append(check_empty)
        # Only the handlers of the used members, and no webdataset defaults (pre=[], post=[]: no
        # gz inflation, no pickle, no torch.load); a member of another name stays bytes.
        ds = ds.decode(wds.autodecode.ImageHandler("pil", extensions=WDS_IMAGE_EXTS), _decode_member,
                       pre=[], post=[], only=sorted(used))
        if second == "txt":
            return ds.to_tuple(WDS_IMAGE_EXTS, "txt").map_tuple(transform, str.splitlines)
        return ds.to_tuple(WDS_IMAGE_EXTS, second).map_tuple(transform, None)


def _decode_member(key: str, data: bytes):
    """webdataset decoder handler for the non-image members a test sample uses, as webdataset's
    ``basichandlers`` decodes them: ``.cls`` to ``int``, ``.txt`` to ``str`` (UTF-8), ``.npy``
    (multilabel) to a numpy array read with ``allow_pickle=False`` (an object array raises
    ``ValueError``). ``key`` is ``"." + the member's extension`` (the whole extension: ``.cls.pyd``
    is not ``.cls``); ``None`` (left to the next handler, none here: kept as bytes) for any other.
    """
    if key == ".cls":
        return int(data)
    if key == ".txt":
        return data.decode("utf-8")
    if key == ".npy":
        import io

        import numpy.lib.format

        return numpy.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    return None


def _check_image(name: str, im) -> None:
    """Refuse, from the header, an image over ``DEFAULT_LIMITS``' shape limits or Pillow's pixel
    limit (``curate.limits``).

    Raises:
        ValueError: naming the member or file and its shape.
    """
    from curate.limits import PILLOW_MAX_PIXELS

    w, h = im.size
    why = (f"{w}x{h} pixels, over {PILLOW_MAX_PIXELS}" if w * h > PILLOW_MAX_PIXELS
           else DEFAULT_LIMITS.check_shape(w, h))
    if why:
        raise ValueError(f"test image {name}: {why}; it is not decoded")


def _check_header(name: str, data: bytes) -> None:
    """``_check_image`` on encoded bytes (Pillow reads only the header); bytes Pillow cannot
    open pass, for the decoder to report as before."""
    import io

    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception:
        return
    _check_image(name, im)


def _bounded_loader(path: str):
    """torchvision ``ImageFolder`` loader: its ``pil_loader`` (RGB), after ``_check_image``."""
    from PIL import Image

    with open(path, "rb") as f:
        im = Image.open(f)
        _check_image(path, im)
        return im.convert("RGB")


def _bounded_tar_files(src, used: frozenset[str], max_member_bytes: int):
    """webdataset's ``tar_file_expander`` (``{"url"}`` in, ``{"fname", "data", "__url__"}`` out,
    ``{}`` after each shard), reading only regular members whose extension (webdataset's
    ``base_plus_ext``, lower case) is in ``used``; the others are skipped unread
    (``curate.io.shards.skip_member_data``: a ``.gz`` member is never inflated).

    Raises:
        ValueError: a used member's header size is over ``max_member_bytes`` (it is not read), or
            a shard path that is not local (``check_shard_spec``: ``pipe:``, any scheme; never
            opened).
    """
    import tarfile

    from webdataset.tariterators import base_plus_ext

    from curate.io.shards import check_shard_spec, skip_member_data

    for source in src:
        url = check_shard_spec(source["url"], "test shard", schemes=())
        with open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for member in tf:
                tf.members = []  # tarfile would keep every header of the shard
                name = member.name
                ext = base_plus_ext(name)[1] if member.isreg() and not _WDS_META.match(name) else None
                if ext is None or ext.lower() not in used:
                    skip_member_data(tf, member)
                    continue
                if member.size > max_member_bytes:
                    raise ValueError(f"{url}: member {name!r} is {member.size} bytes, over "
                                     f"limits.max_member_bytes {max_member_bytes}; it is not read")
                data = tf.extractfile(member).read()
                if ext.lower() in WDS_IMAGE_EXTS:
                    _check_header(f"{url}: member {name!r}", data)
                yield {"fname": name, "data": data, "__url__": url}
        yield {}


def _is_imagefolder(path: Path) -> bool:
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subdirs:
        return False
    suffixes = image_suffixes()
    return any(f.suffix.lower() in suffixes for d in subdirs[:3] for f in d.iterdir())


def open_evalset(key: str, path: Path) -> EvalSet:
    """Describe the test set in ``path`` (see the module docstring).

    Raises:
        ValueError: ``path`` is neither layout, a classification set without class names, or
            ``path`` is not a local path (``curate.io.shards.check_shard_spec``: ``pipe:``, any
            scheme), refused before anything is opened.
    """
    from curate.io.shards import check_shard_spec

    check_shard_spec(path, "test set path", schemes=())
    path = Path(path)
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
