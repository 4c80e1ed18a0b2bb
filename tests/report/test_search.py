"""``curate search`` over the stored embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from curate import schema as S
from curate.cli import main
from curate.io.embeddings import NoEmbeddings
from curate.report.search import search


@pytest.mark.slow
def test_an_image_query_finds_its_own_sample_first_and_writes_a_page(embedded_pool, tmp_path, capsys):
    src = embedded_pool["sources"]
    k = embedded_pool["pool"][3]
    query = tmp_path / "q.jpg"
    query.write_bytes(src[k]["image"])
    r = search(embedded_pool["index"], image=query, top_k=5, html=tmp_path / "page" / "hits.html")
    assert r.rows[0][S.KEY] == src[k]["key"] and r.similarity[0] > 0.999
    assert len(r.rows) == 5 and (np.diff(r.similarity) <= 1e-6).all()
    page = r.html.read_text()
    assert page.count('class="card"') == 5 and "images/" in page
    # Each card says its rank and similarity; the query image heads the page (issue 30).
    assert f"rank 1 · similarity {r.similarity[0]:.4f}" in page and "rank 5 · similarity" in page
    assert 'src="images/query.jpg"' in page and (tmp_path / "page" / "images" / "query.jpg").is_file()
    # The fixture's index was scored with a random-init CLIP: search says so, as score and report do.
    assert "random-init CLIP" in page and "WARNING" in page
    assert main(["search", "a photo", "--index", str(embedded_pool["index"]), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 nearest samples" in out and len([ln for ln in out.splitlines() if ln[:4].strip().isdigit()]) == 3
    assert "WARNING: the index was scored with a random-init CLIP" in out


def test_search_needs_embeddings_and_one_query(scored, tmp_path):
    out, _, _ = scored
    with pytest.raises(NoEmbeddings, match="--embeddings"):
        search(out, text="a dog")
    with pytest.raises(ValueError, match="not both"):
        search(out, text="a dog", image=tmp_path / "x.jpg")
