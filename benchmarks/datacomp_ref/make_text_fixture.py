"""Write DataComp's own per-caption text decisions as a test fixture for ``curate.filters.datacomp_text``.

Runs in DataComp's reference environment (``/work/datacomp-env``, see ``README.md`` beside this
file), never in curate's: it imports DataComp's ``baselines/apply_filter.py`` from the pinned copy
(``mlfoundations/datacomp`` at ``4a8df1992566ef8334773f7152e1855b1f716162``) and asks DataComp's own
functions for each caption's decision:

=================== ============================================================================
field               DataComp code (``baselines/apply_filter.py``)
=================== ============================================================================
``fasttext_label``  ``get_fasttext_language(text, model)`` (used by ``basic_filter`` and
                    ``text_based``), with ``model = fasttext.load_model(--lid-model)``
``fasttext_en``     ``fasttext_label == "en"``
``words_gt2``       ``len(x.split()) > 2`` (the lambda in ``load_uids_with_basic_filter_helper``)
``chars_gt5``       ``len(x) > 5`` (the same helper)
``cld3_label``      ``get_gcld3_language(text, gcld3.NNetLanguageIdentifier(min_num_bytes=0,
                    max_num_bytes=1000))`` (``laion2b``, ``load_uids_with_clip_score_helper``)
``cld3_en``         ``cld3_label == "en"``
``in21k_word``      ``does_contain_text_entity(text, entity_ids)`` with ``entity_ids`` built as
                    ``load_uids_with_text_entity`` builds it from
                    ``download("imagenet21k_wordnet_ids")`` (NLTK WordNet 3.0)
=================== ============================================================================

The fixture is JSON lines (ASCII-escaped, so every control and space character survives): the
first line is ``{"meta": {...}}`` (versions, sha256 of the model files, how rows were picked),
then one object per caption: ``uid`` (``null`` for the hand-written edge captions), ``why`` (the
reason it was picked), ``text`` and the fields above. Rows: every hand-written edge caption, up to
``--per-kind`` pool rows of each kind of row where a detail decides (below), then pool rows drawn at
random (``--seed``) up to ``--rows`` pool rows in all, in pool order.

``--full-out`` also writes every pool row's decisions (Parquet) for a whole-pool comparison.

Regenerate (about 2 minutes on the 2-core machine for the 100k pool)::

    HOME=/work/datacomp-ref/home nice -n 19 /work/datacomp-env/bin/python \\
        benchmarks/datacomp_ref/make_text_fixture.py --pool /work/datacomp-ref/pool100k \\
        --out tests/data/datacomp/text_decisions.jsonl
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import sys
from importlib.metadata import version

DATACOMP = "/work/datacomp-ref/datacomp"

# Hand-written captions where the exact semantics decide (whitespace, case, morphology, length).
EDGE_CAPTIONS = [
    "", " ", "\n", "a", "abcde", "abcdef", "héllo", "ab cd", "ab cd ef", "two words",
    "three little words", "one\ntwo\nthree", "one\rtwo\rthree", "one\ttwo\tthree",
    "one\x0btwo\x0cthree", "one\x1ctwo\x1dthree", "one\x1etwo\x1fthree", "one\x85two\x85three",
    "one\xa0two\xa0three", "one\u2028two\u2029three", "one\u3000two\u3000three",
    "one\u2009two\u202fthree", "one\u200btwo\u200bthree", "one\x00two\x00three",
    "A photo of a dog", "DOGS", "The Geese are flying", "wolves at dusk", "running",
    "better", "worse", "oxen in a field", "mice", "Churches of Rome", "boxes", "leaves",
    "sheep", "aardvarks!", "dog.", "(cat)", "hot_dog", "ice-cream", "New York", "ran", "went",
    "happiest", "quickly", "fastest", "saw", "Ça va très bien merci", "これは日本語の文です",
    "Это предложение на русском языке", "😀😀😀 emoji only", "🐶 dog 🐱 cat", "ＦＵＬＬＷＩＤＴＨ text",
    "Ⅻ roman numeral", "İstanbul'da güzel bir gün", "STRASSE straße", "x" * 1500,
    "The quick brown fox jumps over the lazy dog " * 40,
]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True, help="DataComp pool folder (<hex>.parquet files)")
    ap.add_argument("--out", required=True, help="fixture path (.jsonl)")
    ap.add_argument("--rows", type=int, default=2000, help="pool rows in the fixture")
    ap.add_argument("--per-kind", type=int, default=120, help="pool rows of each edge kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lid-model", default=os.path.expanduser("~/.cache/fasttext/lid.176.ftz"),
                    help="fastText language-ID model (DataComp's lid.176.bin, or the .ftz stand-in)")
    ap.add_argument("--nltk-data", default=os.path.expanduser("~/nltk_data"),
                    help="folder holding corpora/wordnet (WordNet 3.0)")
    ap.add_argument("--full-out", default=None, help="also write every pool row's decisions here")
    args = ap.parse_args()

    sys.path.insert(0, DATACOMP)
    import fasttext
    import gcld3
    import nltk
    import pandas as pd

    nltk.data.path.insert(0, args.nltk_data)
    from baselines.apply_filter import does_contain_text_entity, get_fasttext_language, get_gcld3_language
    from baselines.utils import download
    from nltk.corpus import wordnet

    commit = open(os.path.join(DATACOMP, "COMMIT")).read().strip()
    ids_path = download("imagenet21k_wordnet_ids")  # sha256-checked against DataComp's hash
    # as load_uids_with_text_entity builds it: a list, membership by ==
    entity_ids = open(ids_path).readlines()
    entity_ids = [x.strip() for x in entity_ids]
    entity_ids = [int(x[1:]) for x in entity_ids]
    entity_set = set(entity_ids)  # the same membership test, faster; checked on every row below
    lid = fasttext.load_model(args.lid_model)
    cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)

    def decide(text: str) -> dict:
        label = get_fasttext_language(text, lid)
        cld = get_gcld3_language(text, cld3)
        return {"fasttext_label": label, "fasttext_en": label == "en",
                "words_gt2": len(text.split()) > 2, "chars_gt5": len(text) > 5,
                "cld3_label": cld, "cld3_en": cld == "en",
                "in21k_word": does_contain_text_entity(text, entity_set)}

    paths = sorted(p for p in glob.glob(os.path.join(args.pool, "*.parquet")))
    df = pd.concat([pd.read_parquet(p, columns=["uid", "text"]) for p in paths], ignore_index=True)
    texts = df.text.tolist()
    rows = [decide(t) for t in texts]
    print(f"decided {len(rows)} pool rows", file=sys.stderr)

    # kinds of pool rows where a detail of DataComp's semantics decides
    first_pos_cache: dict = {}

    def first_synset(word: str):
        if word not in first_pos_cache:
            ss = wordnet.synsets(word)
            if ss:  # (offset, part of speech, the form morphy found for it)
                pos = "a" if ss[0].pos() == "s" else ss[0].pos()
                first_pos_cache[word] = (ss[0].offset(), ss[0].pos(), wordnet._morphy(word.lower(), pos)[0])
            else:
                first_pos_cache[word] = None
        return first_pos_cache[word]

    def kinds(text: str, r: dict) -> list[str]:
        out = []
        if "\n" in text:
            out.append("newline")
        if any(c.isspace() and c not in " \t\n\r\x0b\x0c" for c in text):
            out.append("unicode-space")
        n_split, n_ft = len(text.split()), len(fasttext.tokenize(text))
        if n_split != n_ft and (n_split > 2) != (n_ft > 2):
            out.append("split-vs-fasttext-tokenize")
        if len(text) in (5, 6) or (len(text) <= 5 < len(text.encode("utf-8"))):
            out.append("length-boundary")
        if r["fasttext_en"] != r["cld3_en"]:
            out.append("fasttext-vs-cld3")
        hits = [first_synset(w) for w in text.split()]
        hits = [h for h in hits if h is not None and h[0] in entity_set]
        if hits and all(h[1] != "n" for h in hits):
            out.append("in21k-non-noun-synset")
        if any(h[2] != w.lower() for w, h in ((w, first_synset(w)) for w in text.split())
               if h is not None and h[0] in entity_set):
            out.append("in21k-via-morphy")
        if r["in21k_word"] and not r["fasttext_en"]:
            out.append("in21k-not-en")
        return out

    # the list test DataComp runs and the set test above agree (spot check on the edge rows)
    for t in EDGE_CAPTIONS:
        assert does_contain_text_entity(t, entity_ids) == does_contain_text_entity(t, entity_set)

    rng = random.Random(args.seed)
    by_kind: dict[str, list[int]] = {}
    for i, (t, r) in enumerate(zip(texts, rows)):
        for k in kinds(t, r):
            by_kind.setdefault(k, []).append(i)
    picked: dict[int, str] = {}
    for k in sorted(by_kind):
        idx = by_kind[k]
        for i in sorted(rng.sample(idx, min(args.per_kind, len(idx)))):
            picked.setdefault(i, k)
    rest = [i for i in range(len(texts)) if i not in picked]
    for i in rng.sample(rest, max(0, args.rows - len(picked))):
        picked[i] = "random"
    meta = {
        "what": "DataComp's per-caption text decisions (benchmarks/datacomp_ref/make_text_fixture.py)",
        "datacomp_commit": commit,
        "pool": os.path.basename(os.path.normpath(args.pool)), "pool_rows": len(texts),
        "lid_model": os.path.basename(args.lid_model), "lid_model_sha256": sha256(args.lid_model),
        "imagenet21k_ids_sha256": sha256(ids_path), "wordnet_version": wordnet.get_version(),
        "versions": {p: version(p) for p in ("fasttext", "gcld3", "nltk", "numpy", "pandas")},
        "seed": args.seed, "per_kind": args.per_kind,
        "kinds_in_pool": {k: len(v) for k, v in sorted(by_kind.items())},
        "edge_rows": len(EDGE_CAPTIONS), "pool_rows_picked": len(picked),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="ascii") as f:
        f.write(json.dumps({"meta": meta}, sort_keys=True) + "\n")
        for t in EDGE_CAPTIONS:
            f.write(json.dumps({"uid": None, "why": "edge", "text": t, **decide(t)}) + "\n")
        for i in sorted(picked):
            f.write(json.dumps({"uid": df.uid[i], "why": picked[i], "text": texts[i], **rows[i]}) + "\n")
    print(json.dumps(meta, indent=1), file=sys.stderr)
    if args.full_out:
        full = pd.DataFrame(rows)
        full.insert(0, "text", texts)
        full.insert(0, "uid", df.uid)
        full.to_parquet(args.full_out, index=False)


if __name__ == "__main__":
    main()
