"""``curate make-evalset``: turn local data into a DataComp-format webdataset test folder.

Output ``OUT/wds_<name>_test/`` (what ``curate evaluate``, clip_benchmark's ``wds/<name>`` and
DataComp's evaluation read): ``test/{0..n-1}.tar`` written with ``webdataset.ShardWriter``,
``test/nshards.txt``, and for classification ``classnames.txt`` and
``zeroshot_classification_templates.txt``, for retrieval ``dataset_type.txt`` (``retrieval``).

- Classification from a class-folder tree (a directory, or a ``.tar`` of one, e.g.
  ``cifar10/test.tar`` holding ``test/<class>/*.jpg``): every file in the one list of image
  formats (``curate.io.formats``). A sample is the image's bytes unchanged when it is JPEG, PNG
  or WebP (what ``evaluate`` and clip_benchmark's webdataset reader take), else the image
  converted to PNG losslessly (BMP, TIFF, GIF, AVIF, ...), so ``evaluate`` reads every sample
  written; a file that cannot be decoded is refused by name. With it, its label (``.cls``, index in
  sorted folder order, as ``torchvision.datasets.ImageFolder`` numbers classes). Class names: ``--classnames`` file,
  else the known names for ``--name`` (CIFAR-10's from torchvision, others from clip_benchmark)
  when they match the folders, else the folder names. Templates: ``--templates`` file, else
  clip_benchmark's for ``--name``, else ``"a photo of a {c}."``.
- Retrieval from a JSONL file of ``{"image": path, "captions": [str, ...]}`` (paths relative to
  ``--image-root``): a sample is the image and ``.txt`` with one caption per line.

Memory: images are read, converted and written one at a time (the tree is listed by name
first), and a file or tar member larger than ``limits.max_member_bytes`` (``curate.limits
.DEFAULT_LIMITS``, 256 MiB; its size from the file system or the tar header) is refused by name
before any byte of it is read.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from curate.evaluate.datasets import default_classnames, default_templates
from curate.io.atomic import atomic_folder, refuse_foreign
from curate.io.formats import EVAL_WDS_EXTS, image_suffixes
from curate.limits import DEFAULT_LIMITS
from curate.schema import cap_error


@dataclass
class EvalsetConfig:
    """Settings of ``curate make-evalset``.

    Attributes:
        classnames: file of class names, one per line, in sorted folder order (default: the
            task's known names, else the folder names).
        templates: file of zero-shot templates with {c}, one per line (default: the task's
            known templates, else CLIP's "a photo of a {c}.").
        shard_size: samples per tar.
    """

    classnames: str | None = None
    templates: str | None = None
    shard_size: int = field(default=10_000, metadata={"min": 1})


@dataclass
class EvalsetSummary:
    """What ``make_evalset`` wrote; ``format()`` is the printed summary."""

    path: str
    kind: str
    samples: int
    shards: int
    classes: int = 0
    captions: int = 0
    templates_source: str = ""

    def format(self) -> str:
        lines = ["curate make-evalset: summary", f"  folder        {self.path}", f"  kind          {self.kind}",
                 f"  samples       {self.samples} in {self.shards} shard(s)"]
        if self.kind == "classification":
            lines.append(f"  classes       {self.classes}; templates from {self.templates_source}")
        else:
            lines.append(f"  captions      {self.captions}")
        return "\n".join(lines)


def _too_large(name: str, size: int, max_member_bytes: int) -> ValueError:
    return ValueError(f"{name}: {size} bytes, over limits.max_member_bytes {max_member_bytes}; not read")


def _read_file(path: Path, max_member_bytes: int) -> bytes:
    """The bytes of one image file, refused before reading when over ``max_member_bytes``.

    Raises:
        ValueError: the file is larger than ``max_member_bytes`` (its size, from the file
            system), or it grew after its size was taken (never read past that size plus one byte).
    """
    size = path.stat().st_size
    if size > max_member_bytes:
        raise _too_large(str(path), size, max_member_bytes)
    with open(path, "rb") as f:
        data = f.read(size + 1)  # Python allocates what it is asked for: the size, not the limit
    if len(data) > size:
        raise ValueError(f"{path}: grew past {size} bytes while being read")
    return data


@contextmanager
def _tree(source: Path, max_member_bytes: int) -> Iterator[list[tuple[str, Callable[[], bytes]]]]:
    """``(relative posix path, read)`` of every image in a directory or a tar of one, sorted by
    path; ``read()`` returns the image's bytes (valid while the context is open). Nothing is
    read until ``read`` is called, and ``read`` refuses an image over ``max_member_bytes`` (its
    file size or tar header size) with a ``ValueError`` naming it, before reading it.

    Raises:
        ValueError: ``source`` is neither a folder nor a tar archive.
    """
    suffixes = image_suffixes()
    if source.is_dir():
        files = [p for p in sorted(source.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes]
        yield [(p.relative_to(source).as_posix(), partial(_read_file, p, max_member_bytes)) for p in files]
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile()
                              and PurePosixPath(m.name).suffix.lower() in suffixes), key=lambda m: m.name)

            def read(m: tarfile.TarInfo) -> bytes:
                if m.size > max_member_bytes:
                    raise _too_large(f"{source}: member {m.name!r}", m.size, max_member_bytes)
                return tf.extractfile(m).read()

            yield [(m.name, partial(read, m)) for m in members]
    else:
        raise ValueError(f"--imagefolder {source} is neither a folder nor a tar archive")


def _evaluable(name: str, data: bytes) -> tuple[str, bytes]:
    """``(member extension, bytes)`` that the evaluation readers take: JPEG, PNG and WebP as they
    are (``EVAL_WDS_EXTS``), any other format converted to PNG losslessly (RGB, or RGBA when
    the image has transparency). Every image is decoded once here, so a broken file is refused
    by name instead of failing ``evaluate``.

    Raises:
        ValueError: the file is not an image Pillow can decode (named in the message).
    """
    import io

    from PIL import Image

    ext = PurePosixPath(name).suffix.lower().lstrip(".").replace("jpeg", "jpg")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if ext in EVAL_WDS_EXTS:
                return ext, data  # decodable: kept byte for byte
            keep_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if keep_alpha else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception as e:
        raise ValueError(f"{name}: not an image Pillow can decode ({type(e).__name__}: {e})") from None
    return "png", buf.getvalue()


@contextmanager
def _shard_writer(folder: Path, shard_size: int):
    """``webdataset.ShardWriter`` over ``folder/test/{0..}.tar``, closed on the way out; on an
    error it is closed quietly (a tar stream that cannot flush would otherwise complain again
    when collected) and the error propagates."""
    import webdataset as wds

    (folder / "test").mkdir(parents=True, exist_ok=True)
    writer = wds.ShardWriter(str(folder / "test" / "%d.tar"), maxcount=shard_size, verbose=0)
    try:
        yield writer
    except BaseException:
        with suppress(Exception):
            writer.close()
        raise
    writer.close()


def _count_shards(folder: Path) -> int:
    shards = len(list((folder / "test").glob("*.tar")))
    (folder / "test" / "nshards.txt").write_text(f"{shards}\n")
    return shards


def _prepare(out: str | Path, name: str) -> Path:
    if not name or "/" in name or name.strip() != name:
        raise ValueError(f"--name must be a non-empty task name without '/' or spaces around it, got {name!r}")
    folder = Path(out) / f"wds_{name}_test"
    if (folder / "test" / "nshards.txt").exists():
        raise ValueError(f"{folder} already exists; remove it or choose another --out")
    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        refuse_foreign([folder])  # a folder of the user's (the image tree itself, say) is never replaced
    return folder


def make_classification_set(imagefolder: str | Path, name: str, out: str | Path, classnames: str | None = None,
                            templates: str | None = None, shard_size: int = 10_000,
                            max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes) -> EvalsetSummary:
    """Write a classification test folder from a class-folder tree (see the module docstring),
    holding one image at a time.

    Raises:
        ValueError: no images, images not all at the same depth, a class-name file whose
            length differs from the number of class folders, an image that does not decode,
            an image file / tar member over ``max_member_bytes`` (named; nothing is left), or an
            ``imagefolder`` that is not a local path (``curate.io.shards.check_shard_spec``:
            ``pipe:``, any scheme; before any work), or ``OUT/wds_<name>_test`` already exists
            and is not an empty folder (``curate.io.atomic.ForeignOutput``: never replaced).
    """
    from curate.io.shards import check_shard_spec

    source = Path(check_shard_spec(imagefolder, "--imagefolder", schemes=()))
    folder = _prepare(out, name)
    with _tree(source, max_member_bytes) as items:
        return _write_classification_set(source, items, folder, name, classnames, templates, shard_size)


def _write_classification_set(source: Path, items: list[tuple[str, Callable[[], bytes]]], folder: Path,
                              name: str, classnames: str | None, templates: str | None,
                              shard_size: int) -> EvalsetSummary:
    suffixes = image_suffixes()
    if not items:
        raise ValueError(f"no images (any format Pillow decodes: {', '.join(sorted(suffixes))}) in {source}")
    depths = {len(PurePosixPath(p).parts) for p, _ in items}
    if len(depths) != 1 or depths.pop() < 2:
        raise ValueError(f"{source}: every image must sit in a class folder, all at the same depth")
    classes = sorted({PurePosixPath(p).parent.name for p, _ in items})
    if classnames:
        names = [ln.strip() for ln in Path(classnames).read_text().splitlines() if ln.strip()]
        if len(names) != len(classes):
            raise ValueError(f"{classnames} lists {len(names)} class names for {len(classes)} class folders")
    else:
        known = default_classnames(name)
        norm = lambda s: s.replace("_", " ").lower()  # noqa: E731
        if known and sorted(map(norm, known)) == sorted(map(norm, classes)):
            by_norm = {norm(n): n for n in known}
            names = [by_norm[norm(c)] for c in classes]
        else:
            names = [c.replace("_", " ") for c in classes]
    if templates:
        tmpl = [ln.strip() for ln in Path(templates).read_text().splitlines() if ln.strip()]
        bad = [t for t in tmpl if "{c}" not in t]
        if not tmpl or bad:
            raise ValueError(f"{templates}: every template needs the class-name placeholder {{c}}"
                             + (f"; not in {bad[0]!r}" if bad else "; the file is empty"))
        source_of_templates = str(templates)
    else:
        tmpl, source_of_templates = default_templates(name)
    index = {c: i for i, c in enumerate(classes)}
    with atomic_folder(folder) as tmp:
        with _shard_writer(tmp, shard_size) as writer:
            for n, (rel, read) in enumerate(items):
                path = PurePosixPath(rel)
                ext, data = _evaluable(rel, read())
                writer.write({"__key__": f"s{n:07d}", ext: data, "cls": str(index[path.parent.name]).encode()})
        shards = _count_shards(tmp)
        (tmp / "classnames.txt").write_text("\n".join(names) + "\n")
        (tmp / "zeroshot_classification_templates.txt").write_text("\n".join(tmpl) + "\n")
    return EvalsetSummary(str(folder), "classification", len(items), shards, classes=len(classes),
                          templates_source=source_of_templates)


def make_retrieval_set(captions: str | Path, image_root: str | Path, name: str, out: str | Path,
                       shard_size: int = 10_000,
                       max_member_bytes: int = DEFAULT_LIMITS.max_member_bytes) -> EvalsetSummary:
    """Write a retrieval test folder from a JSONL of images and captions (see the module docstring),
    holding one image at a time.

    Raises:
        ValueError: a line without ``image`` or with no caption, an image that does not decode,
            or an image file over ``max_member_bytes``, an ``image`` that is not a
            relative path under ``image_root`` (an absolute path, a ``..`` segment), or a
            ``captions`` / ``image_root`` that is not a local path
            (``curate.io.shards.check_shard_spec``: ``pipe:``, any scheme; before
            any work), or ``OUT/wds_<name>_test`` already exists and is not an empty folder
            (``curate.io.atomic.ForeignOutput``); FileNotFoundError: a missing image.
    """
    from curate.io.shards import check_shard_spec

    check_shard_spec(captions, "--captions", schemes=())
    check_shard_spec(image_root, "--image-root", schemes=())
    folder = _prepare(out, name)
    root = Path(image_root)
    rows = []
    for n, line in enumerate(Path(captions).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{captions} line {n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{captions} line {n}: expected an object with 'image' and 'captions'")
        rows.append((n, row))
    if not rows:
        raise ValueError(f"{captions} holds no line")
    images = [row.get("image") for _, row in rows]
    dup = next((i for i in images if images.count(i) > 1), None)
    if dup is not None:
        raise ValueError(f"{captions}: image {dup!r} is listed more than once; give all its captions on one line")
    total = 0
    with atomic_folder(folder) as tmp:
        with _shard_writer(tmp, shard_size) as writer:
            for n, (line_no, row) in enumerate(rows):
                raw = row.get("captions")
                if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
                    raise ValueError(f"{captions} line {line_no}: 'captions' must be a list of strings")
                caps = [c.strip() for c in raw if c.strip()]
                if not isinstance(row.get("image"), str) or not caps:
                    raise ValueError(f"{captions} line {line_no}: needs 'image' and at least one non-empty caption")
                # The captions file is data: its names stay under --image-root (no absolute name,
                # no ``..``); links the user made under the root are followed as usual.
                rel = PurePosixPath(row["image"].replace("\\", "/"))
                if rel.is_absolute() or ".." in rel.parts or not rel.parts or Path(row["image"]).is_absolute():
                    raise ValueError(f"{captions} line {line_no}: image {cap_error(repr(row['image']), 200)} is not "
                                     f"a path under --image-root {image_root}; it is not read")
                image = root / rel
                if not image.is_file():
                    raise FileNotFoundError(f"{captions} line {line_no}: image not found: {image}")
                ext, data = _evaluable(str(image), _read_file(image, max_member_bytes))
                writer.write({"__key__": f"s{n:07d}", ext: data, "txt": "\n".join(caps).encode()})
                total += len(caps)
        shards = _count_shards(tmp)
        (tmp / "dataset_type.txt").write_text("retrieval\n")
    return EvalsetSummary(str(folder), "retrieval", len(rows), shards, captions=total)

