"""Write ``tests/data/datacomp/sample_metadata/``: DataComp metadata (the format of
``download_upstream.py``, ``curate.io.datacomp``) for the bundled sample shards
``tests/data/shards/sample-00000{0,1,2}.tar``, so that the README's DataComp workflow runs on
them as written.

Per sample: its ``.json`` uid, the caption, the image's size from its header and the sha256
of its bytes (real); ``url`` the source file named in its ``.json``; ``clip_b32`` and
``clip_l14`` similarity scores drawn from a seeded generator (synthetic: DataComp's would come
from OpenAI CLIP); ``face_bboxes`` one synthetic box on every third sample. Three rows for
uids that are in no shard (images that "failed to download") are added. Deterministic:

    .venv/bin/python tests/data/datacomp/make_sample_metadata.py
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
SHARDS = sorted((HERE.parent / "shards").glob("sample-00000[0-2].tar"))


def main() -> None:
    rng = np.random.default_rng(29)
    rows: dict[str, list] = {k: [] for k in ("uid", "url", "text", "original_width", "original_height",
                                             "clip_b32_similarity_score", "clip_l14_similarity_score",
                                             "face_bboxes", "sha256")}
    n = 0
    for shard in SHARDS:
        with tarfile.open(shard) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name in sorted(k for k in members if k.endswith(".json")):
            meta = json.loads(members[name])
            stem = name[: -len(".json")]
            image = next((members[stem + e] for e in (".jpg", ".png", ".webp") if stem + e in members), None)
            if image is None or not isinstance(meta.get("uid"), str):
                continue
            try:
                w, h = Image.open(io.BytesIO(image)).size
            except Exception:
                w, h = 0, 0  # an image that does not decode: DataComp's metadata still lists it
            text = members.get(stem + ".txt", b"").decode("utf-8", "replace") or meta.get("caption") or ""
            rows["uid"].append(meta["uid"])
            rows["url"].append(str(meta.get("source", "")))
            rows["text"].append(text)
            rows["original_width"].append(w)
            rows["original_height"].append(h)
            rows["clip_b32_similarity_score"].append(float(rng.normal(0.30, 0.04)))
            rows["clip_l14_similarity_score"].append(float(rng.normal(0.25, 0.04)))
            rows["face_bboxes"].append([[0.25, 0.2, 0.55, 0.6]] if n % 3 == 0 else [])
            rows["sha256"].append(hashlib.sha256(image).hexdigest())
            n += 1
    for i in range(3):  # in the metadata, not in any shard: failed downloads
        rows["uid"].append(hashlib.md5(f"missing-{i}".encode()).hexdigest())
        rows["url"].append(f"https://example.invalid/missing-{i}.jpg")
        rows["text"].append("an image that could not be downloaded")
        rows["original_width"].append(640)
        rows["original_height"].append(480)
        rows["clip_b32_similarity_score"].append(0.35)
        rows["clip_l14_similarity_score"].append(0.35)
        rows["face_bboxes"].append([])
        rows["sha256"].append("0" * 64)
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
    out = HERE / "sample_metadata"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    name = hashlib.md5(b"curate sample metadata").hexdigest()
    pq.write_table(pa.table(rows, schema=schema), out / f"{name}.parquet")
    print(f"wrote {len(rows['uid'])} rows to {out / (name + '.parquet')}")


if __name__ == "__main__":
    main()
