#!/usr/bin/env python
"""Build the bundled sample shards from the real data in ../shared/data/.

    python scripts/build_sample_shards.py [--data ../shared/data] [--out tests/data/shards]

Writes three webdataset shards, ``sample-000000.tar`` .. ``sample-000002.tar``, each sample
holding an image member, a ``.txt`` caption and a DataComp-style ``.json`` (``uid``: 32 hex
chars, md5 of ``<source path relative to the data folder>#<index in shard>``; ``caption``; ``source``).
Tar headers are normalised (mtime 0, owner root) so the output is byte-for-byte reproducible.
Provenance of every file is in ``tests/data/shards/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Captions we wrote for photos that come without one (see the provenance note).
OUR_CAPTIONS = {
    "flickr30k_snli/1016887272.jpg": "A group of climbers in red shirts on a rock climbing wall.",
    "flickr30k_snli/4564320256.jpg": "Two women sitting behind a table of newspapers and snacks.",
    # ICDAR 2015 images whose ground truth marks every word unreadable ("###").
    "icdar2015_toy/img_4.jpg": "Emergency Door Key 2",
    "icdar2015_toy/img_5.jpg": "Commuters on a crowded covered platform beside a lawn and tall buildings.",
    "photos/123_456.jpg": "Close-up of a tabby kitten's face and eye.",
    "photos/208_495.jpg": "A wooden boardwalk leading through dune grass to the sea.",
    "photos/321_421.jpg": "Palm trees against a blue sky at sunset.",
    "photos/389_535.jpg": "A vintage motel sign on a pole under a cloudy sky.",
    "photos/416_264.jpg": "Green succulent plants seen from above.",
    "photos/456_123.jpg": "A small kitten peeking over a white bowl.",
    "photos/524_316.jpg": "Looking up between old buildings at a church dome and blue sky.",
    "dj_images/blip.jpg": "A woman sitting on the beach with her dog at sunset.",
    "dj_images/cat.jpg": "Two cats sleeping on a pink blanket next to remote controls.",
    "dj_images/img10.jpg": "Two plush toys, a dog and a penguin, wearing blue helmets with lights.",
    "dj_images/img8.jpg": "Portrait of four men in colourful coats.",
    "dj_images/img9.jpg": "Three fluffy puppies in a basket.",
    "dj_images/img_pair_1.jpg": "An illustration of an airplane flying among clouds.",
    "dj_images/img_pair_2.jpg": "An illustration of an airplane crashing into the sea under clouds.",
    "text_images/example.png": "Screenshot of text detection results on an infographic and street signs.",
    "text_images/example2.png": "Street signs with Japanese and Korean text, one reading NO LITTER.",
    "text_images/example3.png": "50 40 BASRURKAR MARKET SPEED LIMIT",
    "text_images/french.jpg": (
        "Mairie du 1er Palais du Louvre Les Arts Decoratifs Musee du Louvre Theatre du Palais-Royal"
    ),
    "text_images/width_ths.png": "35,498,648.64 6,001,271.61",
}

_EN_MARKUP = re.compile(r"\[/EN#\d+/[^\s\]]+ ([^\]]*)\]")


def strip_entities(line: str) -> str:
    """Flickr30k-Entities markup ``[/EN#id/type phrase]`` to the plain caption."""
    text = _EN_MARKUP.sub(r"\1", line.strip())
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def icdar_caption(gt: Path) -> str:
    """The transcriptions of an ICDAR 2015 ground-truth file, in order, ``###`` left out."""
    words = []
    for line in gt.read_text(encoding="utf-8-sig").splitlines():
        parts = line.strip().split(",", 8)
        if len(parts) == 9 and parts[8] != "###":
            words.append(parts[8])
    return " ".join(words)


def uid_of(rel: str) -> str:
    return hashlib.md5(rel.encode("utf-8")).hexdigest()


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = "root"
    tf.addfile(info, io.BytesIO(data))


def collect(data: Path) -> list[list[tuple[str, str | None]]]:
    """Return three lists of ``(relative image path, caption or None)``, one per shard."""
    shard0: list[tuple[str, str | None]] = []
    for f in sorted((data / "flickr30k_snli").glob("*.sentences.txt")):
        shard0.append((f"flickr30k_snli/{f.name.split('.')[0]}.jpg", strip_entities(f.read_text().splitlines()[0])))
    seen = set()
    for line in (data / "flickr30k_snli" / "snli_ve_pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["Flickr30K_ID"] not in seen:
            seen.add(rec["Flickr30K_ID"])
            shard0.append((f"flickr30k_snli/{rec['Flickr30K_ID']}.jpg", rec["sentence1"]))
        if rec["Flickr30K_ID"] == "2248275918" and rec["gold_label"] == "contradiction" and "mismatch" not in seen:
            # A natural mismatched pair: the SNLI-VE contradiction hypothesis as the caption.
            seen.add("mismatch")
            shard0.append((f"flickr30k_snli/{rec['Flickr30K_ID']}.jpg", rec["sentence2"]))
    for line in (data / "dj_images" / "demo-dataset-images.jsonl").read_text().splitlines():
        rec = json.loads(line)
        name = rec["images"][0].rsplit("/", 1)[-1]
        shard0.append((f"dj_images/{name}", rec["text"].replace("<__dj__image>", "").strip()))
    shard0.append(("bad/broken.jpg", "A truncated JPEG file."))

    shard1 = []
    for i in range(1, 11):
        rel = f"icdar2015_toy/img_{i}.jpg"
        shard1.append((rel, icdar_caption(data / "icdar2015_toy" / f"gt_img_{i}.txt") or OUR_CAPTIONS[rel]))
    shard0 += [(rel, cap) for rel, cap in OUR_CAPTIONS.items() if rel.startswith("flickr30k_snli/")]
    shard2 = [
        (rel, cap) for rel, cap in OUR_CAPTIONS.items() if rel.split("/")[0] in ("photos", "dj_images", "text_images")
    ]
    shard2.append(("dj_images/img3.jpg", None))  # the sample without a caption
    return [shard0, shard1, shard2]


def build(data: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, samples in enumerate(collect(data)):
        path = out / f"sample-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i, (rel, caption) in enumerate(samples):
                key = f"{s:05d}{i:04d}"
                ext = rel.rsplit(".", 1)[-1].lower()
                meta = {"uid": uid_of(f"{rel}#{i}"), "key": key, "source": f"shared/data/{rel}"}
                if caption is not None:
                    meta["caption"] = caption
                add_member(tf, f"{key}.{ext}", (data / rel).read_bytes())
                if caption is not None:
                    add_member(tf, f"{key}.txt", caption.encode("utf-8"))
                add_member(tf, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        paths.append(path)
        print(f"{path}: {len(samples)} samples")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "shards")
    args = ap.parse_args()
    build(args.data, args.out)


if __name__ == "__main__":
    main()
