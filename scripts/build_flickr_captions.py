"""Build tests/data/eval/flickr30k_captions.jsonl: the Flickr30k photos in ../shared/data with their
real human captions, as input for `curate make-evalset --captions` (a small retrieval set).

Captions come from the Flickr30k-Entities `*.sentences.txt` files (markup
`[/EN#id/type phrase]` stripped to `phrase`) and from `sentence1` of the SNLI-VE pairs (each a
Flickr30k caption of `Flickr30K_ID`). Image paths are relative to `shared/data/flickr30k_snli`.

    python scripts/build_flickr_captions.py [--shared ../shared/data] [--out tests/data/eval/flickr30k_captions.jsonl]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ENTITY = re.compile(r"\[/EN#\d+/\S+ ([^\]]*)\]")


def strip_entities(line: str) -> str:
    """``[/EN#221796/people A girl] sits .`` -> ``A girl sits.``"""
    text = ENTITY.sub(r"\1", line).strip()
    return re.sub(r"\s+([.,!?])", r"\1", re.sub(r"\s+", " ", text))


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", default=str(here.parent / "shared" / "data"))
    p.add_argument("--out", default=str(here / "tests" / "data" / "eval" / "flickr30k_captions.jsonl"))
    args = p.parse_args()
    folder = Path(args.shared) / "flickr30k_snli"
    captions: dict[str, list[str]] = {}
    for f in sorted(folder.glob("*.sentences.txt")):
        captions[f.name.split(".")[0]] = [strip_entities(ln) for ln in f.read_text().splitlines() if ln.strip()]
    for line in (folder / "snli_ve_pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        caps = captions.setdefault(row["Flickr30K_ID"], [])
        if row["sentence1"].strip() not in caps:
            caps.append(row["sentence1"].strip())
    with open(args.out, "w") as out:
        for image_id in sorted(captions):
            if (folder / f"{image_id}.jpg").exists():
                out.write(json.dumps({"image": f"{image_id}.jpg", "captions": captions[image_id]}) + "\n")
    print(f"wrote {args.out}: {len(captions)} images")


if __name__ == "__main__":
    main()
