import pytest
import torch

from search.model.data import (SHAKESPEARE_TEST, SHAKESPEARE_VALID, CharTokenizer, CorpusError,
                               eval_windows, load_corpus, load_wikitext2, random_batch)

# Three tiny splits in the layout of WikiText-2 raw (wiki.*.raw): " = Title = " headings,
# blank lines, @-@ style joiners.
WIKI = {
    "train": " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a tactical role @-@ playing game .\n",
    "valid": " \n = Homarus gammarus = \n \n Homarus gammarus is a large crustacean .\n",
    "test": " \n = Robert Boulter = \n \n Robert Boulter is an English actor .\n",
}


def test_shakespeare_splits_are_whole_disjoint_works(shakespeare):
    c = shakespeare
    assert c.name == "shakespeare" and 80 <= c.tokenizer.vocab_size <= 100
    assert len(c.train) > 4_000_000 and 300_000 < len(c.valid) < 500_000 and 300_000 < len(c.test) < 500_000
    text = lambda ids: c.tokenizer.decode(ids)
    valid, test = text(c.valid), text(c.test)
    assert "JULIUS CAESAR" in valid and "MACBETH" in test.upper()
    assert "Friends, Romans, countrymen" in valid and "Friends, Romans, countrymen" not in text(c.train[:]) \
        .replace("\n", " ")
    assert len(set(SHAKESPEARE_VALID) | set(SHAKESPEARE_TEST)) == 6
    # Every validation character is known to the training vocabulary (no <unk>).
    assert (c.valid == 0).sum() == 0
    assert 20 < c.unigram_perplexity() < 40
    assert load_corpus("shakespeare").sha256 == c.sha256  # fixed splits


def test_char_tokenizer_round_trip_and_unknowns():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == 1 + len(set("hello world"))
    assert tok.decode(tok.encode("hello")) == "hello"
    assert tok.encode("hi").tolist()[1] == 0  # 'i' is unknown
    assert CharTokenizer.from_json(tok.to_json()).chars == tok.chars


def test_wikitext2_from_a_local_directory(tmp_path):
    for split, name in (("train", "wiki.train.raw"), ("valid", "wiki.valid.raw"), ("test", "wiki.test.raw")):
        (tmp_path / name).write_text(WIKI[split], encoding="utf-8")
    c = load_corpus("wikitext2", tmp_path)
    assert c.name == "wikitext2"
    assert c.tokenizer.decode(c.train) == WIKI["train"]
    assert "ō" in c.tokenizer.chars
    assert c.tokenizer.decode(c.valid).count("\x00") == sum(ch not in WIKI["train"] for ch in WIKI["valid"])
    (tmp_path / "wiki.test.raw").unlink()
    with pytest.raises(CorpusError, match="wiki.test.raw"):
        load_corpus("wikitext2", tmp_path)


def test_wikitext2_through_datasets_rows():
    # datasets gives one row per line of the raw file, newline included.
    def fake_load_dataset(name, config):
        assert (name, config) == ("wikitext", "wikitext-2-raw-v1")
        rows = lambda text: {"text": text.splitlines(keepends=True)}
        return {"train": rows(WIKI["train"]), "validation": rows(WIKI["valid"]), "test": rows(WIKI["test"])}
    c = load_wikitext2(load_dataset=fake_load_dataset)
    unk = lambda text: "".join(ch if ch in WIKI["train"] else "\x00" for ch in text)
    assert c.tokenizer.decode(c.test) == unk(WIKI["test"]) and c.tokenizer.decode(c.valid) == unk(WIKI["valid"])
    assert c.tokenizer.decode(c.train) == WIKI["train"]

    def offline(name, config):
        raise ConnectionError("no network")
    with pytest.raises(CorpusError, match="could not load wikitext-2-raw-v1: ConnectionError"):
        load_wikitext2(load_dataset=offline)


def test_unknown_corpus_is_one_line():
    with pytest.raises(CorpusError, match="corpus must be one of shakespeare, wikitext2"):
        load_corpus("ptb")


def test_batches_are_seeded_windows():
    tokens = torch.arange(1000)
    x, y = random_batch(tokens, 4, 16, torch.Generator().manual_seed(5))
    x2, _ = random_batch(tokens, 4, 16, torch.Generator().manual_seed(5))
    assert x.shape == y.shape == (4, 16) and torch.equal(x, x2)
    assert torch.equal(y, x + 1)
    x, y = eval_windows(tokens, 16, max_tokens=100, sample="prefix")
    assert x.shape == (6, 16) and x[1, 0] == 16 and torch.equal(y, x + 1)
    assert eval_windows(tokens, 16)[0].shape == (62, 16)


def test_evaluation_windows_are_stratified_over_the_whole_split():
    tokens = torch.arange(10_001)
    x, y = eval_windows(tokens, 16, max_tokens=160)
    assert x.shape == (10, 16) and torch.equal(y, x + 1)
    starts = x[:, 0]
    # One window in each tenth of the split, none overlapping.
    assert [int(s) // 1000 for s in starts] == list(range(10))
    assert all(int(s) % 1000 <= 1000 - 16 for s in starts)
    assert torch.equal(eval_windows(tokens, 16, max_tokens=160)[0], x)  # fixed by the seed
    assert not torch.equal(eval_windows(tokens, 16, max_tokens=160, seed=1)[0], x)
    # Asking for the whole split (or more) gives the plain tiling.
    assert torch.equal(eval_windows(tokens, 16, max_tokens=10**6)[0], eval_windows(tokens, 16)[0])
