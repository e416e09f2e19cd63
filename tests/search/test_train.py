import json

import pytest
import torch

from search.model.config import ModelConfigError, parse_run_config
from search.model.perplexity import evaluate
from search.model.train import CHECKPOINT, MANIFEST, _lr, load_supernet, train_supernet
from search.model.transformer import Supernet


def tiny_run(out, **train):
    doc = {"space": {"context_len": 32, "head_dim": 8, "d_model": [24, 32], "layers": [1, 2],
                     "heads": [1, 2], "ffn_dim": [32, 64], "lowrank_rank": [4, 8]},
           "train": {"steps": 60, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "eval_interval": 0,
                     "eval_tokens": 8192, "log_interval": 20, "checkpoint_interval": 20,
                     "out": str(out), "threads": 1, "device": "cpu", **train}}
    return parse_run_config(doc, name="tiny")


def test_training_reduces_validation_loss_on_the_real_corpus(shakespeare, tmp_path):
    run = tiny_run(tmp_path / "run")
    results = train_supernet(run, corpus=shakespeare, quiet=True)
    net, space, tokenizer = load_supernet(tmp_path / "run")
    torch.manual_seed(run.train.seed)
    untrained = Supernet(space)
    for which in ("largest", "smallest"):
        sub = getattr(space, which)()
        before = evaluate(untrained, sub, shakespeare, max_tokens=8192)
        after = evaluate(net, sub, shakespeare, max_tokens=8192)
        assert after == pytest.approx(results["valid_ppl"][which])
        assert before > 60 and after < 0.5 * before
    # Below the unigram baseline after 60 tiny steps.
    assert results["valid_ppl"]["largest"] < shakespeare.unigram_perplexity()
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["config"]["train"]["steps"] == 60 and manifest["git_commit"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["corpus"]["sha256"] == shakespeare.sha256 and manifest["results"]["done"]
    assert tokenizer.chars == shakespeare.tokenizer.chars


def test_a_resumed_run_continues_exactly_where_it_stopped(shakespeare, tmp_path):
    # Logging every step, both runs log the same records.
    straight = tiny_run(tmp_path / "a", steps=8, checkpoint_interval=3, log_interval=1)
    train_supernet(straight, corpus=shakespeare, quiet=True)
    split = tiny_run(tmp_path / "b", steps=8, checkpoint_interval=3, log_interval=1)
    first = train_supernet(split, corpus=shakespeare, quiet=True, stop_after=5)
    assert first == {"step": 5, "done": False, "median_tokens_per_s": first["median_tokens_per_s"]}
    assert not list((tmp_path / "b").glob("*.tmp"))
    train_supernet(split, corpus=shakespeare, quiet=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    losses = lambda ckpt: [h["losses"] for h in ckpt["history"] if "losses" in h]
    assert losses(a) == losses(b)
    assert a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "losses" in m] == [m["step"] for m in a["history"] if "losses" in m]


def test_resuming_with_another_config_is_refused(shakespeare, tmp_path):
    train_supernet(tiny_run(tmp_path / "c", steps=2), corpus=shakespeare, quiet=True)
    with pytest.raises(ModelConfigError, match="different config; use --fresh"):
        train_supernet(tiny_run(tmp_path / "c", steps=2, lr=1e-3), corpus=shakespeare, quiet=True)
    # Where it logs and how often it saves may change between runs.
    train_supernet(tiny_run(tmp_path / "c", steps=2, log_interval=1), corpus=shakespeare, quiet=True)


def test_learning_rate_schedule():
    cfg = tiny_run("x", steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4).train
    assert _lr(1, cfg) == pytest.approx(1e-4) and _lr(10, cfg) == pytest.approx(1e-3)
    assert _lr(100, cfg) == pytest.approx(1e-4)
    assert all(_lr(s, cfg) >= _lr(s + 1, cfg) for s in range(10, 100))
