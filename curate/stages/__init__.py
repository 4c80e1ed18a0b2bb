"""Per-batch transforms with no Ray inside; the contract is code in ``curate.stages.base``.

Each stage is a plain class: ``__init__`` loads its model once, ``__call__(batch) -> batch``
transforms one batch given as ``dict[str, np.ndarray]`` (Ray Data's ``batch_format="numpy"``).
Its class attributes declare the columns it reads, writes and drops, its default resources
(``Resources``: CPUs, GPUs, actor or task) and its batch size; ``curate.scoring.plan`` builds
the Ray plan from those declarations.
Every stage processes only the rows whose ``status`` is ``ok`` and passes the others through
unchanged, so a failed sample keeps its row to the end of the pipeline. Each stage subclasses
``curate.stages.base.Stage``: it implements ``process(batch, rows)`` and inherits one shared
per-sample fault isolation (a batch that raises is rerun in halves down to single rows; a row that
still raises gets the stage's error status and message, the others go on).
"""

from curate.stages.decode import Decode, decode_image
from curate.stages.detect import CraftDetector, Detect
from curate.stages.language import CaptionLanguage, detect_language
from curate.stages.mask import Mask, mask_text
from curate.stages.score import Score

__all__ = ["CaptionLanguage", "detect_language", "Decode", "decode_image", "CraftDetector", "Detect", "Mask", "mask_text", "Score"]
