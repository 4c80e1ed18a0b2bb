"""The settings of ``curate score``: a tree of dataclasses, loaded from the YAML presets in ``pipelines/``.

``load_config(path)`` reads a YAML file whose top-level sections (``read``, ``decode``,
``detect``, ``mask``, ``score``, ``limits``) mirror the dataclasses below; unknown keys raise ``ValueError``
so that a typo never passes silently. Resources (CPUs and GPUs per actor, pool sizes, batch
sizes) live here and nowhere inside the stages.

One name per setting: ``detect.long_side`` in YAML is ``--detect-long-side`` on the command line,
``detect__long_side=`` in ``curate.score(...)`` and ``curate.detect.long_side`` in the index's
Parquet metadata. Four settings also go by their bare field name (``SHORTCUTS``: ``clip_model``,
``pretrained``, ``cache_dir``, ``detector``; ``--clip-model`` as in open_clip). Choices are
checked against the registries that implement them (``curate.stages.detect.DETECTORS``,
``curate.stages.mask.MASK_METHODS``, ``curate.models.PRECISIONS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import AT_LEAST_0, POSITIVE, build_section, check_dataclass, check_field, read_yaml_mapping
from curate.limits import PILLOW_MAX_PIXELS, Limits
from curate.models import PRECISIONS
from curate.stages.detect import DETECTORS, check_long_side
from curate.stages.mask import MASK_METHODS
from curate.stages.recognize import RECOGNIZERS


@dataclass
class ReadConfig:
    """Shard reading (one Ray task per shard).

    Attributes:
        num_cpus: CPUs reserved per read task (fractions allowed).
    """

    num_cpus: float = field(default=0.25, metadata=POSITIVE)


@dataclass
class DecodeConfig:
    """Image decoding (``curate.stages.decode.Decode``).

    Attributes:
        max_pixels: images with more than ``width * height`` pixels get status ``too_large``
            without being decoded (decompression-bomb guard; Pillow's own default warning level
            is 89,478,485 pixels, ``PIL.Image.MAX_IMAGE_PIXELS``).
        background: RGB colour, 0-255, that transparent images are composited on.
        draft: decode large JPEGs at a reduced scale (Pillow ``Image.draft``: 1/2, 1/4 or 1/8 in
            the DCT domain) that keeps the longer side at least twice ``detect.long_side`` and
            the shorter side at least the CLIP model's input size: the detector and CLIP shrink
            the image to those sizes anyway. ``false`` decodes every image in full.
        num_cpus: CPUs per decode task.
        batch_size: samples per decode batch.
    """

    max_pixels: int = field(default=PILLOW_MAX_PIXELS, metadata=POSITIVE)
    background: tuple[int, int, int] = (255, 255, 255)
    draft: bool = True
    num_cpus: float = field(default=0.25, metadata=POSITIVE)
    batch_size: int = field(default=32, metadata=POSITIVE)


@dataclass
class ActorPoolConfig:
    """Resources of a stage that runs in a Ray actor pool (the executor places it, not the stage).

    Every resource left ``None`` (or ``auto`` in YAML) is sized to the cluster when the job starts
    (``curate.scoring.plan.fit_to_cluster``): on a cluster with GPUs the detect and score actors
    take half a GPU each (one of each per GPU); without GPUs they run on CPUs; the pools
    autoscale (Ray Data's ``ActorPoolStrategy(min_size, max_size)``) between ``min_actors`` and
    as many actors as the cluster holds.

    Attributes:
        batch_size: samples per batch handed to the stage.
        num_actors: a fixed pool size (``ActorPoolStrategy(size=...)``); ``None``: autoscale
            between ``min_actors`` and ``max_actors``.
        min_actors: smallest pool size (actors started before any batch runs).
        max_actors: largest pool size; ``None``: what the cluster holds (a joined cluster, which
            may autoscale: no cap).
        num_gpus: GPUs per actor (0: CPUs only; fractions share a GPU); ``None``: auto.
        num_cpus: CPUs per actor (fractions allowed); ``None``: auto.
        torch_threads: intra-op threads for torch in the actor (0 leaves torch's default; Ray
            sets one thread per reserved CPU).
    """

    batch_size: int = field(default=32, metadata=POSITIVE)
    num_actors: int | None = field(default=None, metadata=POSITIVE)
    min_actors: int = field(default=1, metadata=POSITIVE)
    max_actors: int | None = field(default=None, metadata=POSITIVE)
    num_gpus: float | None = field(default=None, metadata=AT_LEAST_0)
    num_cpus: float | None = field(default=None, metadata=POSITIVE)
    torch_threads: int = field(default=0, metadata=AT_LEAST_0)

    RESOURCE_FIELDS = ("num_actors", "min_actors", "max_actors", "num_gpus", "num_cpus")

    def stage_kwargs(self) -> dict[str, Any]:
        """The fields the stage itself takes (everything but the pool's resources)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESOURCE_FIELDS}


@dataclass
class DetectConfig(ActorPoolConfig):
    """Text detection (``curate.stages.detect``).

    Attributes:
        detector: ``craft`` (EasyOCR's CRAFT, Baek et al. 2019), ``dbnet`` (PP-OCRv4 DBNet,
            ONNX, from rapidocr-onnxruntime) or ``none`` (no detection: CLIP score only,
            DataComp's CLIP-score baseline; ``masked_clip_score`` equals ``clip_score``).
        long_side: the image is resized so its long side is this many pixels before detection
            (T-MARS, Sec. 4: 512).
        text_threshold, link_threshold, low_text: CRAFT score-map thresholds (EasyOCR defaults).
        min_size: boxes whose longer side is at most this many pixels of the detector input are
            dropped (EasyOCR ``Reader.detect(min_size=20)`` uses 20 at full resolution).
        ocr: also read the text in each box into ``ocr_text`` / ``ocr_confidence``
            (``curate.stages.recognize``: EasyOCR ``english_g2`` for CRAFT, PP-OCRv4's
            recognizer for DBNet), for ``text_match()`` and queries.
        recognizer: the text recognizer of ``ocr``: ``auto`` (the detector's own), ``easyocr``
            (``english_g2``) or ``ppocr`` (PP-OCRv4; it read 12 of the 21 legible ICDAR 2015
            words of the sample shards exactly, EasyOCR 2: ``benchmarks/RESULTS.md``).
        ocr_min_confidence: reads with a confidence below this, in [0, 1], and empty reads are
            not stored in ``ocr_text`` (0.3: on the sample shards with DBNet, 20 of the 38 reads
            below it were single stray characters and 9 were empty, and none was a word of the
            image; text_match()'s own ``min_confidence`` (0.5) applies on top).
        batch_size, num_actors, min_actors, max_actors, num_gpus, num_cpus, torch_threads: see
            ``ActorPoolConfig``.
    """

    detector: str = field(default="craft", metadata={"choices": tuple(DETECTORS)})
    long_side: int = field(default=512, metadata=POSITIVE)
    text_threshold: float = 0.7
    link_threshold: float = 0.4
    low_text: float = 0.4
    min_size: int = field(default=4, metadata=AT_LEAST_0)
    ocr: bool = False
    recognizer: str = field(default="auto", metadata={"choices": ("auto", *RECOGNIZERS)})
    ocr_min_confidence: float = field(default=0.3, metadata={"min": 0, "max": 1})
    batch_size: int = field(default=16, metadata=POSITIVE)


@dataclass
class MaskConfig:
    """Text masking (``curate.stages.mask.Mask``).

    Attributes:
        method: ``mean`` fills each text polygon with the mean colour of the ring of pixels
            around it (T-MARS, Sec. 4 "we in-paint ... with the average colour of the
            surrounding pixels"); ``inpaint`` uses ``cv2.inpaint`` (Telea).
        ring_px: width in pixels of the surrounding ring used by ``mean``.
        inpaint_radius: radius in pixels for ``cv2.inpaint``.
        num_cpus: CPUs per mask task.
    """

    method: str = field(default="mean", metadata={"choices": MASK_METHODS})
    ring_px: int = field(default=3, metadata=AT_LEAST_0)
    inpaint_radius: int = field(default=3, metadata=AT_LEAST_0)
    num_cpus: float = field(default=0.25, metadata=POSITIVE)


@dataclass
class ScoreConfig(ActorPoolConfig):
    """CLIP scoring (``curate.stages.score.Score``).

    Attributes:
        clip_model: open_clip model name (``open_clip.list_models()``) or ``tiny``.
        pretrained: open_clip pretrained tag, a local checkpoint path, or ``None`` for random
            init. T-MARS and DataComp's CLIP-score filter use OpenAI ViT-L/14.
        cache_dir: where open_clip / Hugging Face look for cached weights (``None``: defaults).
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 autocast on CUDA, fp32 on CPU).
        embeddings: also store, per sample, the L2-normalised image, masked-image and text
            embeddings (float16) and the image's hashes in ``<out>/_embeddings/`` beside the
            index (``curate.io.embeddings``), for dedup, decontamination and search.
        batch_size: samples per CLIP forward pass (original and masked images are scored in
            the same pass, so the tensor holds up to ``2 * batch_size`` images).
        num_actors, min_actors, max_actors, num_gpus, num_cpus, torch_threads: see
            ``ActorPoolConfig``.
    """

    clip_model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    cache_dir: str | None = None
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    embeddings: bool = False


@dataclass
class PipelineConfig:
    """The whole ``curate score`` configuration: one dataclass per YAML section (``SECTIONS``)."""

    read: ReadConfig = field(default_factory=ReadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    limits: Limits = field(default_factory=Limits)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {
    "read": ReadConfig,
    "decode": DecodeConfig,
    "detect": DetectConfig,
    "mask": MaskConfig,
    "score": ScoreConfig,
    "limits": Limits,  # curate.limits: what one sample may cost (shape, bytes, characters, seconds, memory)
}


def config_from_dict(data: dict[str, Any] | None) -> PipelineConfig:
    """Build a ``PipelineConfig`` from a nested mapping.

    Raises:
        ValueError: on an unknown section or key.
    """
    data = data or {}
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(SECTIONS)}")
    cfg = PipelineConfig(**{k: build_section(cls, data.get(k), k) for k, cls in SECTIONS.items()})
    validate(cfg)
    return cfg


def load_config(path: str | Path | None) -> PipelineConfig:
    """Load a YAML preset (e.g. ``pipelines/tmars.yaml``); ``None`` gives the defaults.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown sections or keys, or invalid values.
    """
    if path is None:
        return config_from_dict({})
    data = read_yaml_mapping(path, "config")
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"config {path}: {e}") from None


def validate(cfg: PipelineConfig) -> None:
    """Check every field against its declaration (``curate.config.check_field``: type, bounds and
    choices from the field's metadata), then the rules that join two settings. Raises
    ``ValueError`` with the offending key."""
    for name in SECTIONS:
        check_dataclass(getattr(cfg, name), name)
    for section in ("detect", "score"):
        pool = getattr(cfg, section)
        if pool.max_actors is not None and pool.max_actors < pool.min_actors:
            raise ValueError(
                f"{section}.max_actors ({pool.max_actors}) is below {section}.min_actors ({pool.min_actors})")
    if cfg.detect.ocr and cfg.detect.detector == "none":
        raise ValueError("detect.ocr reads the text in detected boxes: choose detect.detector craft or dbnet")
    check_long_side(cfg.detect.long_side, "detect.long_side")


# Settings that also go by their bare field name (``clip_model`` and ``pretrained`` are handled
# first: a model given without weights means random init, as in open_clip).
SHORTCUTS = {"clip_model": ("score", "clip_model"), "pretrained": ("score", "pretrained"),
             "cache_dir": ("score", "cache_dir"), "detector": ("detect", "detector"),
             "embeddings": ("score", "embeddings"), "ocr": ("detect", "ocr")}


def apply_settings(cfg: PipelineConfig, settings: dict[str, Any]) -> PipelineConfig:
    """Apply overrides in place and validate.

    Args:
        settings: ``section__key -> value`` for any key (``detect__long_side=1280``), or a bare
            name of ``SHORTCUTS``. ``clip_model`` without ``pretrained`` means random init (as
            ``open_clip.create_model_and_transforms(name)``); ``pretrained="none"`` too.

    Raises:
        ValueError: an unknown setting, or a value of the wrong type or range.
    """
    settings = {"__".join(SHORTCUTS.get(k, (k,))): v for k, v in settings.items()}
    if "score__clip_model" in settings and "score__pretrained" not in settings:
        settings["score__pretrained"] = None  # the config's weights belong to its own model
    if isinstance(settings.get("score__pretrained"), str) and settings["score__pretrained"].lower() == "none":
        settings["score__pretrained"] = None
    for key, value in settings.items():
        section, name = key.split("__", 1) if "__" in key else ("", key)
        part = getattr(cfg, section, None) if section in SECTIONS else None
        fields = {f.name: f for f in dataclasses.fields(part)} if part is not None else {}
        if name not in fields:
            raise ValueError(f"unknown setting {key!r}; use section__key (e.g. detect__batch_size) or one of "
                             f"{', '.join(SHORTCUTS)}")
        setattr(part, name, check_field(f"{section}.{name}", value, fields[name], getattr(type(part)(), name)))
    validate(cfg)
    return cfg


def draft_sizes(cfg: PipelineConfig) -> dict[str, int | None]:
    """``min_side`` / ``min_long_side`` of the decode stage when ``decode.draft`` is on (else
    ``None``: full decode): the CLIP model's input size, and twice the detector's long side (the
    detector then still shrinks from at least 2x with ``INTER_AREA``; decoding right at its size,
    DCT scaling alone, lost a detection on an ICDAR 2015 image with DBNet)."""
    if not cfg.decode.draft:
        return {"min_side": None, "min_long_side": None}
    from curate.models import clip_input_size

    return {"min_side": clip_input_size(cfg.score.clip_model), "min_long_side": 2 * cfg.detect.long_side}
