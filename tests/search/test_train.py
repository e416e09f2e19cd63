import json
import os
import signal

import pytest
import torch

from search.model.config import ModelConfigError, parse_run_config
from search.model.perplexity import evaluate
from search.model import train as train_mod
from search.model.train import (CHECKPOINT, MANIFEST, VariantDecks, _lr, load_supernet, plan_updates,
                               step_subnets, train_supernet)
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
    assert first["step"] == 5 and not first["done"]
    assert not list((tmp_path / "b").glob("*.tmp"))
    train_supernet(split, corpus=shakespeare, quiet=True)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    losses = lambda ckpt: [(h["ce"], h["kl"]) for h in ckpt["history"] if "ce" in h]
    assert losses(a) == losses(b)
    assert a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "ce" in m] == [m["step"] for m in a["history"] if "ce" in m]


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


def _same_run(a_dir, b_dir):
    a = torch.load(a_dir / CHECKPOINT, weights_only=False)
    b = torch.load(b_dir / CHECKPOINT, weights_only=False)
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optimizer"]["state"]:
        for name, t in a["optimizer"]["state"][key].items():
            assert torch.equal(t, b["optimizer"]["state"][key][name]), (key, name)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "s_per_step", "eval_s_per_subnet")}
                       for r in h]
    assert strip(a["history"]) == strip(b["history"])
    assert a["rng"]["python"] == b["rng"]["python"] and a["rng"]["decks"] == b["rng"]["decks"]
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"]) and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["ffn_updates"] == b["ffn_updates"] and a["window"] == b["window"]


@pytest.mark.parametrize("where", ["batch", "optimizer"])
def test_a_signal_mid_step_resumes_bit_for_bit(shakespeare, tmp_path, monkeypatch, where):
    straight = tiny_run(tmp_path / "a", steps=8, checkpoint_interval=3, log_interval=1, batch_size=4,
                        distill=True)
    train_supernet(straight, corpus=shakespeare, quiet=True)
    run = tiny_run(tmp_path / "b", steps=8, checkpoint_interval=3, log_interval=1, batch_size=4, distill=True)
    calls = []
    if where == "batch":
        # SIGTERM while step 5 draws its batch, before any subnet ran.
        real = train_mod.random_batch

        def batch(*args):
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args)
        monkeypatch.setattr(train_mod, "random_batch", batch)
    else:
        # SIGINT inside opt.step() of step 5, before the weights change.
        real = train_mod._optimizer

        def optimizer(model, cfg):
            opt = real(model, cfg)

            def hook(opt, args, kwargs):
                calls.append(1)
                if len(calls) == 5:
                    os.kill(os.getpid(), signal.SIGINT)
            opt.register_step_pre_hook(hook)
            return opt
        monkeypatch.setattr(train_mod, "_optimizer", optimizer)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(run, corpus=shakespeare, quiet=True)
    # The step under way finished; the checkpoint is that step's boundary, not a half step.
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    train_supernet(run, corpus=shakespeare, quiet=True)
    _same_run(tmp_path / "a", tmp_path / "b")


def test_the_balanced_sandwich_updates_every_variant_alike(shakespeare, tmp_path):
    run = tiny_run(tmp_path / "bal", steps=40, batch_size=2, log_interval=10)
    results = train_supernet(run, corpus=shakespeare, quiet=True)
    counts = results["ffn_updates"]
    assert set(counts) == {"standard", "none", "lowrank", "shared", "glu"}
    assert all(len(c) == 2 for c in counts.values())
    assert max(results["ffn_update_ratio"]) <= 1.5, counts
    # The schedule alone predicts the counts (python -m search.model.train --plan).
    assert plan_updates(run)["ffn_updates"] == counts
    # The old rule (largest and smallest by MACs, uniform draws) favours GLU in every layer.
    from dataclasses import replace
    old = plan_updates(replace(run, train=replace(run.train, variant_sampling="by_macs")))
    assert old["ffn_updates"]["glu"] == [40, 40] and min(old["ffn_update_ratio"]) > 2


def test_the_balanced_sandwich_rotates_each_variants_extremes():
    space = tiny_run("x").space
    from dataclasses import replace
    space = replace(space, vocab_size=11)
    cfg = tiny_run("x").train
    rng, decks = __import__("random").Random(0), VariantDecks(space.ffn_variants, 2)
    for step in range(10):
        subs = step_subnets(space, cfg, step, rng, decks)
        v = space.ffn_variants[step % 5]
        assert subs[0] == space.largest(v) and subs[1] == space.smallest(v) and len(subs) == 4
        assert set(subs[0].ffn_variants) == {v} and subs[0].layers == 2 and subs[1].layers == 1


def test_in_place_distillation_logs_what_each_subnet_learned(shakespeare, tmp_path):
    run = tiny_run(tmp_path / "kd", steps=30, batch_size=8, log_interval=1, distill=True)
    results = train_supernet(run, corpus=shakespeare, quiet=True)
    records = [h for h in json.loads("[" + ",".join((tmp_path / "kd" / "metrics.jsonl").read_text()
                                                    .splitlines()) + "]") if "ce" in h]
    assert len(records) == 30
    for r in records:
        # The step's largest learns the labels; the others learn its predictions (KL).
        assert r["kl"][0] is None and all(k is not None and k >= -1e-6 for k in r["kl"][1:])
        assert len(r["ce"]) == len(r["subnets"]) == 4 and r["ce_largest"] == r["ce"][0]
    # Students follow the teacher: their cross-entropy with the labels falls too.
    first, last = records[0]["ce"][1], sum(r["ce"][1] for r in records[-5:]) / 5
    assert last < first - 0.5
    assert results["valid_ppl"]["smallest"] < shakespeare.unigram_perplexity() * 1.3


def test_random_subnets_can_be_held_to_a_weight_budget():
    import random
    from dataclasses import replace
    from search.model.space import count_params
    space = replace(tiny_run("x").space, vocab_size=11)
    # Every variant mix fits at the narrowest widths (the all-GLU one is the heaviest);
    # about a third of unconstrained draws are wider than that and must be redrawn.
    n = max(space.layers)
    kib = count_params(space.subnet(d_model=min(space.d_model), heads=[min(space.heads)] * n,
                                    ffn_dims=[min(space.ffn_dim)] * n, ffn_variants=["glu"] * n)) / 1024
    free = [count_params(space.sample(random.Random(i))) for i in range(200)]
    assert sum(f > kib * 1024 for f in free) > 40
    cfg = tiny_run("x", random_weight_kib=kib, random_subnets=3).train
    rng, decks = random.Random(0), VariantDecks(space.ffn_variants, 2)
    dealt = {v: [0, 0] for v in space.ffn_variants}
    for step in range(100):
        subs = step_subnets(space, cfg, step, rng, decks)
        assert subs[0] == space.largest(space.ffn_variants[step % 5]) and len(subs) == 5
        for sub in subs[2:]:
            assert count_params(sub) <= kib * 1024
            for i, v in enumerate(sub.ffn_variants):
                dealt[v][i] += 1
    # The variants still come from the decks: every layer deals each about equally often.
    for i in range(2):
        counts = [c[i] for c in dealt.values()]
        assert max(counts) - min(counts) <= 2, dealt
    # The default (0) draws exactly as before the option existed.
    a, b = random.Random(1), random.Random(1)
    plain = step_subnets(space, tiny_run("x").train, 0, a, VariantDecks(space.ffn_variants, 2))
    decks = VariantDecks(space.ffn_variants, 2)
    old = [space.largest("standard"), space.smallest("standard")]
    for _ in range(2):
        n = b.choice(space.layers)
        old.append(space.sample(b, ffn_variants=[decks.deal(b, i) for i in range(n)]))
    assert plain == old
    # A mix that fits only at the narrowest widths, which uniform redraws miss, still comes out.
    from search.model.train import _fitting_sample
    tight = _fitting_sample(space, random.Random(0), ["glu", "glu"], kib, tries=0)
    assert count_params(tight) <= kib * 1024 and tight.ffn_variants == ("glu", "glu")
    loose = {_fitting_sample(space, random.Random(i), ["glu"], kib, tries=0) for i in range(30)}
    assert len(loose) > 3 and all(count_params(s) <= kib * 1024 for s in loose)
    # A budget nothing fits is one clear error, not an endless loop.
    with pytest.raises(ModelConfigError, match="random_weight_kib = 0.01: no subnet"):
        step_subnets(space, tiny_run("x", random_weight_kib=0.01).train, 0, rng, decks)
    with pytest.raises(ModelConfigError, match="random_weight_kib must be 0 or more"):
        tiny_run("x", random_weight_kib=-1)
