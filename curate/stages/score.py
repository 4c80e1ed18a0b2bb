"""Score: CLIP similarity of each caption with its original and its text-masked image.

``clip_score`` is the cosine similarity of the L2-normalised image and caption embeddings of an
open_clip model (the DataComp "CLIP score", Gadre et al. 2023, Sec. 3.4); ``masked_clip_score``
is the same for the masked image (the T-MARS score, Maini et al. 2023). Original and masked
images are embedded in one forward pass; a row without detected text has an unchanged image,
so its masked score is its CLIP score and its masked image is not embedded twice.

Captions go through ``curate.models.BoundedTokenizer`` (their cost bounded, the tokens of every
ordinary caption unchanged), and no image over ``limits`` reaches open_clip's resize: decode
refused it already (``too_large``); should one come all the same, ``image_input`` raises and the
row gets ``score_error``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from curate import schema as S
from curate.limits import DEFAULT_LIMITS, Limits
from curate.models import ResolvedWeights, clip_input_size, create_clip, resolve_device, resolve_pretrained
from curate.stages.base import Resources, Stage
from curate.stages.common import batch_len, image_at


class Score(Stage):
    """Stage: add ``clip_score`` and ``masked_clip_score`` (float32; NaN for failed rows).

    A batch whose forward pass raises is retried sample by sample; a sample that still fails
    gets status ``score_error`` (``curate.stages.base.Stage``).

    Input columns: ``image``, ``masked_image`` (object ``(H, W, 3) uint8``; empty where nothing
    was masked, see ``curate.stages.mask.Mask``), ``text``
    (caption), ``num_text_boxes``, ``status``.

    Args:
        clip_model: open_clip model name, or ``tiny``.
        pretrained: tag, local checkpoint path, or ``None`` (random init). Resolved offline by
            ``curate.models.resolve_pretrained``, which raises ``PretrainedNotAvailable`` when
            the weights are not on this machine.
        cache_dir: weights cache folder.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        batch_size: samples per forward pass.
        device: ``cpu``, ``cuda`` or ``None`` (auto).
        torch_threads: intra-op threads (0: torch's default).
        embeddings: also write ``image_embedding``, ``masked_image_embedding`` and
            ``text_embedding``: ``(N, D) float16``, L2-normalised, the vectors the scores are
            the dot products of (NaN rows where not computed); the masked image's is the
            original's where nothing was masked.
        limits: what one sample may cost (``curate.limits``; ``curate score``: its ``limits``
            section): the captions' (``max_tokenize_chars``, ``max_word_chars``) and the
            images' shape (``max_aspect_ratio``, ``max_resized_pixels`` after CLIP's resize).
    """

    name = "score"
    error_status = S.STATUS_SCORE_ERROR
    reads = (S.STATUS, S.IMAGE, S.MASKED_IMAGE, S.TEXT, S.NUM_TEXT_BOXES)
    writes = (S.CLIP_SCORE, S.MASKED_CLIP_SCORE)
    drops = (S.IMAGE, S.MASKED_IMAGE)  # the images go no further than the last model stage
    resources = Resources(cpus=1.0, actor=True)

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        cache_dir: str | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        device: str | None = None,
        torch_threads: int = 0,
        weights: ResolvedWeights | None = None,
        embeddings: bool = False,
        limits: Limits = DEFAULT_LIMITS,
    ):
        import torch

        self.embeddings = bool(embeddings)
        if self.embeddings:
            self.writes = Score.writes + S.EMBEDDING_COLUMNS

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.device = resolve_device(device)
        self.weights = weights or resolve_pretrained(clip_model, pretrained, cache_dir)
        self.limits = limits
        self.model, self.preprocess, self.tokenizer = create_clip(clip_model, self.weights, self.device, limits)
        # S: open_clip's eval transform resizes an image's shorter side to this, then crops S x S.
        self.input_size = clip_input_size(self.weights.model)
        # On GPUs the patch-embedding convolution runs faster in channels_last (NHWC).
        self.channels_last = self.device.startswith("cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batch_size = int(batch_size)
        import open_clip

        # D, the length of the joint embedding (open_clip config ``embed_dim``): read once, not per batch
        self.embedding_dim = int(open_clip.get_model_config(self.weights.model)["embed_dim"])
        if precision == "auto":
            precision = "bf16" if self.device.startswith("cuda") else "fp32"
        self.precision = precision
        # One forward pass on a blank image and a short caption, so that the first batch does not
        # pay the one-time costs (kernel selection, CUDA context and cuBLAS handles on a GPU) after
        # the actor is up: the actor loads while detection runs on the first batch (issue 31).
        self.embed([np.zeros((self.input_size, self.input_size, 3), dtype=np.uint8)], ["a photo"])

    def _autocast(self):
        import contextlib

        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def image_input(self, image: np.ndarray):
        """The model input of one image: open_clip's eval transform of an ``(H, W, 3) uint8`` RGB
        array, a ``(3, S, S) float32`` tensor (``S``: ``input_size``).

        Raises:
            ValueError: the image is over ``limits`` (``Limits.check_shape`` with CLIP's
                shortest-side resize to ``S``): decode refuses such an image, so this is a
                guard, checked on the shape before the transform allocates anything.
        """
        h, w = image.shape[:2]
        over = self.limits.check_shape(w, h, resize_short=self.input_size)
        if over:
            raise ValueError(f"image too large for CLIP's resize: {over}")
        return self.preprocess(Image.fromarray(image))

    def embed_inputs(self, inputs: list) -> np.ndarray:
        """L2-normalised image embeddings ``(N, D) float32`` of ``image_input`` tensors."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode(), self._autocast():
            x = torch.stack(inputs).to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy()

    def embed(self, images: list[np.ndarray], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised embeddings.

        Args:
            images: ``(H, W, 3) uint8`` RGB arrays.
            captions: strings (through the bounded tokenizer).

        Returns:
            ``(image_emb (N, D) float32, text_emb (M, D) float32)``.

        Raises:
            ValueError: an image over ``limits`` (``image_input``).
        """
        import torch
        import torch.nn.functional as F

        img_emb = txt_emb = None
        if images:
            img_emb = self.embed_inputs([self.image_input(im) for im in images])
        with torch.inference_mode(), self._autocast():
            if captions:
                t = self.tokenizer(list(captions)).to(self.device)
                txt_emb = F.normalize(self.model.encode_text(t).float(), dim=-1).cpu().numpy()
        return img_emb, txt_emb

    def score(self, images, masked, captions, has_text, with_embeddings: bool = False):
        """CLIP and masked CLIP scores of aligned lists (one forward pass for all images).

        Returns:
            ``(clip_score (N,) float32, masked_clip_score (N,) float32)``, cosine similarities
            in [-1, 1]; with ``with_embeddings`` also the ``(N, D) float32`` image, masked-image
            and text embeddings they come from.
        """
        # A row with boxes that masked nothing (degenerate polygons) has an empty masked image.
        extra = [m if m.size else im for im, m, t in zip(images, masked, has_text) if t]
        img_emb, txt_emb = self.embed(list(images) + extra, list(captions))
        n = len(images)
        orig = img_emb[:n]
        clip = (orig * txt_emb).sum(axis=1)
        masked_emb = orig.copy()
        if extra:
            masked_emb[np.flatnonzero(has_text)] = img_emb[n:]
        masked_score = (masked_emb * txt_emb).sum(axis=1)
        if with_embeddings:
            return clip.astype(np.float32), masked_score.astype(np.float32), orig, masked_emb, txt_emb
        return clip.astype(np.float32), masked_score.astype(np.float32)

    def process(self, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        n = batch_len(batch)
        clip = np.full(n, np.nan, dtype=np.float32)
        masked = np.full(n, np.nan, dtype=np.float32)
        vectors = {c: np.full((n, self.embedding_dim), np.nan, dtype=np.float16) for c in S.EMBEDDING_COLUMNS} \
            if self.embeddings else {}
        for start in range(0, len(rows), self.batch_size):
            part = np.asarray(rows[start : start + self.batch_size])
            out = self.score(
                [image_at(batch[S.IMAGE], i) for i in part],
                [image_at(batch[S.MASKED_IMAGE], i) for i in part],
                [str(batch[S.TEXT][i]) for i in part],
                np.asarray(batch[S.NUM_TEXT_BOXES])[part] > 0,
                with_embeddings=self.embeddings,
            )
            clip[part] = out[0]
            masked[part] = out[1]
            for c, v in zip(S.EMBEDDING_COLUMNS, out[2:]):
                vectors[c][part] = v
        batch[S.CLIP_SCORE] = clip
        batch[S.MASKED_CLIP_SCORE] = masked
        batch.update(vectors)
        return batch

