"""``curate score --embeddings``: the vectors the scores come from, stored beside the index."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.io.embeddings import as_matrix
from curate.models import resolve_pretrained
from curate.scoring.config import load_config
from curate.scoring.plan import StageChain
from curate.scoring.records import records_to_batch, shard_record_list
from tests.conftest import REPO, SHARDS


def tiny_config(embeddings: bool = True, detector: str = "craft"):
    cfg = load_config(REPO / "pipelines" / "tiny_cpu.yaml")
    cfg.score.embeddings = embeddings
    cfg.detect.detector = detector
    return cfg


def test_scores_are_the_dot_products_of_the_stored_embeddings():
    records = shard_record_list(str(SHARDS[0]))
    images = [r[S.IMAGE_BYTES] for r in records]
    out = StageChain(tiny_config(), resolve_pretrained("tiny", None))(records_to_batch(records))
    ok = out[S.STATUS] == S.STATUS_OK
    img, masked, txt = (as_matrix(out[c]).astype(np.float32) for c in S.EMBEDDING_COLUMNS)
    assert img.shape == (len(ok), 64)  # tiny's embed_dim
    np.testing.assert_allclose(np.linalg.norm(img[ok], axis=1), 1, atol=2e-3)  # L2-normalised (float16)
    np.testing.assert_allclose((img * txt).sum(1)[ok], out[S.CLIP_SCORE][ok], atol=3e-3)
    np.testing.assert_allclose((masked * txt).sum(1)[ok], out[S.MASKED_CLIP_SCORE][ok], atol=3e-3)
    no_text = ok & (np.asarray(out[S.NUM_TEXT_BOXES]) == 0)
    np.testing.assert_array_equal(masked[no_text], img[no_text])
    assert np.isnan(img[~ok]).all()  # not computed for failed rows
    # equal hashes exactly for byte-identical images (the shard holds one exact copy)
    hashes = out[S.IMAGE_HASH]
    for i in np.flatnonzero(ok):
        assert len(hashes[i]) == 16
        for j in np.flatnonzero(ok):
            assert (hashes[i] == hashes[j]) == (images[i] == images[j])
    phash = np.asarray(out[S.IMAGE_PHASH])
    assert (phash[ok] != 0).all()


@pytest.mark.slow
def test_score_job_writes_aligned_embedding_files_and_resumes(embedded_pool, tmp_path):
    """On the scored pool of ``tests/conftest.py`` (the sample shards plus injected copies, scored
    with --embeddings): every index file has an aligned embedding file whose vectors give its
    scores; a deleted embedding file makes only its shard be scored again; a run without
    embeddings is refused on that folder (another fingerprint)."""
    import shutil

    from curate.io.embeddings import embeddings_path, read_embeddings
    from curate.scoring import IndexConfigMismatch, run_score

    out = tmp_path / "index"
    shutil.copytree(embedded_pool["index"], out)
    files = sorted(out.glob("*.parquet"))
    for f in files:
        idx, emb = pq.read_table(f), pq.read_table(embeddings_path(f))
        assert emb.column(S.UID) == idx.column(S.UID) and emb.column(S.KEY) == idx.column(S.KEY)
        ok = np.asarray(idx.column(S.STATUS).to_pylist()) == S.STATUS_OK
        assert emb.column(S.IMAGE_EMBEDDING).type.value_type == "halffloat"
        assert emb.column(S.IMAGE_EMBEDDING).null_count == (~ok).sum()
        assert emb.schema.metadata[S.META_EMBEDDING_DIM.encode()] == b"64"
        img = np.stack([np.asarray(v, np.float32) for v in emb.column(S.IMAGE_EMBEDDING).to_pylist() if v])
        txt = np.stack([np.asarray(v, np.float32) for v in emb.column(S.TEXT_EMBEDDING).to_pylist() if v])
        clip = idx.column(S.CLIP_SCORE).to_numpy(zero_copy_only=False)[ok]
        np.testing.assert_allclose((img * txt).sum(1), clip, atol=3e-3)
    rows, vectors, hashes = read_embeddings(out)
    assert len(rows) == len(vectors) == len(hashes) and vectors.dtype == np.float16
    assert pq.read_table(out).num_rows == sum(pq.read_table(f).num_rows for f in files)  # pyarrow skips _embeddings
    embeddings_path(files[0]).unlink()
    again = run_score(embedded_pool["shards"], out, tiny_config(detector="none"), progress=False)
    assert sorted(r.status for r in again.shards) == ["complete"] + ["skipped"] * (len(files) - 1)
    assert embeddings_path(files[0]).is_file()
    with pytest.raises(IndexConfigMismatch):
        run_score(embedded_pool["shards"], out, tiny_config(embeddings=False, detector="none"), progress=False)
