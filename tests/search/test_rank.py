import json
import math
import pathlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from search.model.config import ModelConfigError, load_run_config
from search.model.data import random_batch
from search.model.rank import (FINETUNE_SEED_BASE, SEED_STRIDE, RankConfig, _standalone_train, best_of_rates,
                               bootstrap_ci, finetune_seed, finetune_stem, kendall_tau, load_rank_config, main,
                               pick_subnets, pool_tables, replica_seed, run_rank, spearman_rho,
                               train_standalone)
from search.model.space import SubnetConfig, count_params, macs_per_token
from search.model.train import train_supernet
from search.model.transformer import Transformer

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_rank_correlations_by_hand():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    # One swapped pair of six: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # tau-b with a tie in y: concordant 2, discordant 0, pairs untied in x 3, in y 2.
    assert kendall_tau([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / math.sqrt(3 * 2))
    assert spearman_rho([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman_rho([10, 20, 30], [1, 5, 5]) == pytest.approx(np.corrcoef([1, 2, 3], [1, 2.5, 2.5])[0, 1])
    assert math.isnan(kendall_tau([1, 1], [1, 2]))
    x = np.arange(12.0)
    y = x + np.random.default_rng(0).normal(0, 3, 12)
    lo, hi = bootstrap_ci(kendall_tau, x, y, resamples=300)
    assert -1 <= lo < kendall_tau(x, y) < hi <= 1
    # A constant reference has no tau in any resample: no interval, not a crash.
    assert all(math.isnan(v) for v in bootstrap_ci(kendall_tau, x, np.full(12, 7.0), resamples=20))


def test_subnets_fit_the_budget_in_a_band_of_macs():
    run = load_run_config(CONFIGS / "supernet_default.toml")
    space = replace(run.space, vocab_size=85)
    subs = pick_subnets(space, 10, weight_kib=300, mac_band=2, seed=0)
    macs = [macs_per_token(s, s.context_len) for s in subs]
    assert len(set(subs)) == 10 and max(macs) / min(macs) <= 2
    assert all(count_params(s) <= 300 * 1024 for s in subs)
    assert len({s.layers for s in subs}) > 1 and subs == pick_subnets(space, 10, weight_kib=300, mac_band=2,
                                                                       seed=0)
    with pytest.raises(ModelConfigError, match="fits"):
        pick_subnets(space, 10, weight_kib=1, mac_band=2, seed=0)


def test_shipped_rank_configs_draw_the_default_set():
    """The long reference trains the default's own subnets (same space, seed, budget and
    band), only longer and at its own rate; the held-out set is another draw."""
    cfgs = {p.stem: load_rank_config(p) for p in sorted(CONFIGS.glob("rank_*.toml"))}
    assert {"rank_default", "rank_heldout", "rank_long"} <= set(cfgs)

    def draw(c):
        space = replace(load_run_config(CONFIGS.parent / c.supernet_config).space, vocab_size=85)
        return pick_subnets(space, c.subnets, weight_kib=c.weight_kib, mac_band=c.mac_band, seed=c.seed)

    default, long = cfgs["rank_default"], cfgs["rank_long"]
    assert draw(long) == draw(default)
    assert not set(draw(cfgs["rank_heldout"])) & set(draw(default))
    run = load_run_config(CONFIGS.parent / long.supernet_config)
    assert long.steps == 3 * run.train.steps and long.lr == 3e-3 and long.out != default.out


def _tiny_rank(tmp_path, shakespeare, monkeypatch, extra=""):
    """A 6-step supernet of a tiny space and a [rank] TOML of 4 subnets for it."""
    (tmp_path / "super.toml").write_text(f"""
[space]
context_len = 32
head_dim = 8
d_model = [16, 24]
layers = [1, 2]
heads = [1, 2]
ffn_dim = [16, 32]
lowrank_rank = [4]
[train]
steps = 6
batch_size = 4
warmup_steps = 1
eval_interval = 0
eval_tokens = 1024
threads = 1
out = "{tmp_path / 'super'}"
""")
    train_supernet(load_run_config(tmp_path / "super.toml"), corpus=shakespeare, quiet=True)
    (tmp_path / "rank.toml").write_text(f"""
[rank]
supernet_config = "{tmp_path / 'super.toml'}"
subnets = 4
finetune_steps = 2
weight_kib = 20
mac_band = 3
eval_tokens = 1024
bootstrap = 50
out = "{tmp_path / 'rank'}"
{extra}""")
    monkeypatch.setattr("search.model.rank.load_corpus", lambda *a, **k: shakespeare)
    return tmp_path / "rank.toml"


def test_rank_end_to_end_on_a_tiny_supernet(shakespeare, tmp_path, capsys, monkeypatch):
    _tiny_rank(tmp_path, shakespeare, monkeypatch)
    assert main(["--config", str(tmp_path / "rank.toml")]) == 0
    table = capsys.readouterr().out
    assert "Kendall tau" in table and table.count("\n| `L") == 4
    result = json.loads((tmp_path / "rank" / "table.json").read_text())
    s = result["summary"]
    assert s["subnets"] == 4 and s["standalone_steps"] == 6 and s["standalone_batch"] == 4
    assert s["kendall_tau_ci95"][0] <= s["kendall_tau"] <= s["kendall_tau_ci95"][1]
    assert all(1 < r["inherited_ppl"] < 100 and 1 < r["standalone_ppl"] < 100 for r in result["rows"])
    assert s["finetuned"]["steps"] == 2 and "After fine-tuning the extracted weights 2 steps" in table
    assert all(r["finetuned_ppl"] != r["inherited_ppl"] for r in result["rows"])
    assert (tmp_path / "rank" / "rank.png").stat().st_size > 1000
    # A rerun trains nothing again.
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "rank" / "standalone").glob("*.json"))
    assert run_rank(load_rank_config(tmp_path / "rank.toml"), quiet=True)["kendall_tau"] == s["kendall_tau"]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "rank" / "standalone").glob("*.json")) == before
    # Reuse is only of runs trained as asked: another standalone rate is an error, not a silent mix.
    assert all(r["lr"] == 1e-3 for r in result["rows"]) and s["standalone_lr"] == 1e-3
    with pytest.raises(ModelConfigError, match="was trained with steps, batch, lr, seed, warmup"):
        run_rank(replace(load_rank_config(tmp_path / "rank.toml"), lr=2e-3), quiet=True)
    # Fine-tunes start from the checkpoint, so their results are kept per checkpoint.
    assert len(list((tmp_path / "rank" / "standalone").glob("*.finetune2.*.json"))) == 4


def _tau_by_hand(x, y):
    """Kendall tau of untied data: (concordant - discordant pairs) / pairs, pair by pair."""
    n, c, d = len(x), 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            c, d = c + ((x[i] - x[j]) * (y[i] - y[j]) > 0), d + ((x[i] - x[j]) * (y[i] - y[j]) < 0)
    assert c + d == n * (n - 1) // 2, "ties"
    return (c - d) / (n * (n - 1) / 2)


def _rho_by_hand(x, y):
    """Spearman rho of untied data: 1 - 6 sum d^2 / (n (n^2 - 1))."""
    rank = lambda v: [sorted(v).index(e) for e in v]
    n, d2 = len(x), sum((a - b) ** 2 for a, b in zip(rank(x), rank(y)))
    return 1 - 6 * d2 / (n * (n * n - 1))


def test_replica_seeds_are_distinct_and_explicit():
    seeds = {replica_seed(7, i, r) for i in range(SEED_STRIDE) for r in range(3)}
    assert len(seeds) == 3 * SEED_STRIDE and replica_seed(7, 3, 0) == 10 and replica_seed(7, 3, 2) == 2010
    with pytest.raises(ValueError, match="at most 1000 subnets"):
        RankConfig(subnets=1001, standalone_seeds=2)
    with pytest.raises(ValueError, match="standalone_seeds must be at least 1"):
        RankConfig(standalone_seeds=0)


def test_standalone_seeds_on_a_tiny_supernet(shakespeare, tmp_path, monkeypatch):
    cfg = load_rank_config(_tiny_rank(tmp_path, shakespeare, monkeypatch))
    where = tmp_path / "rank" / "standalone"
    one = run_rank(cfg, quiet=True)
    one_json = json.loads((tmp_path / "rank" / "table.json").read_text())
    # The default, one seed, writes what it wrote before the replicas existed.
    assert cfg.standalone_seeds == 1 and not list(where.glob("*replica*"))
    assert set(one) == {"kendall_tau", "kendall_tau_ci95", "spearman_rho", "spearman_rho_ci95", "subnets",
                        "standalone_steps", "standalone_batch", "supernet_steps", "supernet_batch",
                        "standalone_lr", "standalone_warmup", "eval_tokens", "checkpoint", "tau_and_params",
                        "tau_and_macs",
                        "finetuned"}
    assert set(one_json["rows"][0]) == {"subnet", "key", "standalone_ppl", "train_s", "steps", "batch_size", "lr",
                                        "warmup_steps", "train_loss",
                                        "tokens", "seed", "inherited_ppl", "params", "macs_per_token", "short",
                                        "finetuned_ppl"}
    table = (tmp_path / "rank" / "table.md").read_text()
    assert "mean" not in table and "replica" not in table and table.count("\n| `L") == 4
    kept = {p.name: p.stat().st_mtime_ns for p in where.glob("*.json")}

    three = run_rank(replace(cfg, standalone_seeds=3), quiet=True)
    rows = json.loads((tmp_path / "rank" / "table.json").read_text())["rows"]
    # Replica 0 is the one-seed run, reused; replicas 1 and 2 are new files with their own seeds.
    assert {p.name: p.stat().st_mtime_ns for p in where.glob("*.json") if p.name in kept} == kept
    assert len(list(where.glob("*.replica[12].json"))) == 8 and len(list(where.glob("*.replica[12].pt"))) == 8
    for i, r in enumerate(rows):
        files = [where / f"{r['key']}.json"] + [where / f"{r['key']}.replica{k}.json" for k in (1, 2)]
        reps = [json.loads(f.read_text()) for f in files]
        assert [x["seed"] for x in reps] == r["standalone_seeds"] == [i, 1000 + i, 2000 + i]
        ppls = [x["standalone_ppl"] for x in reps]
        assert r["standalone_ppls"] == ppls and len(set(ppls)) == 3 and r["standalone_ppl"] == ppls[0]
        assert r["standalone_ppl_mean"] == pytest.approx(sum(ppls) / 3, rel=1e-12)
        m = sum(ppls) / 3
        assert r["standalone_ppl_std"] == pytest.approx(math.sqrt(sum((p - m) ** 2 for p in ppls) / 2), rel=1e-12)
    # The one-seed numbers stay what they were; the new ones are against the mean, each replica, each other.
    for k in ("kendall_tau", "kendall_tau_ci95", "spearman_rho", "spearman_rho_ci95", "finetuned"):
        assert three[k] == one[k]
    seeds = three["mean_of_seeds"]
    inherited, finetuned = [r["inherited_ppl"] for r in rows], [r["finetuned_ppl"] for r in rows]
    mean = [r["standalone_ppl_mean"] for r in rows]
    for name, x in (("inherited", inherited), ("finetuned", finetuned)):
        assert seeds[name]["kendall_tau"] == pytest.approx(_tau_by_hand(x, mean))
        assert seeds[name]["spearman_rho"] == pytest.approx(_rho_by_hand(x, mean))
        lo, hi = seeds[name]["kendall_tau_ci95"]
        assert -1 <= lo <= hi <= 1
        for k, p in enumerate(seeds["per_replica"]):
            y = [r["standalone_ppls"][k] for r in rows]
            assert p[name]["kendall_tau"] == pytest.approx(_tau_by_hand(x, y))
            assert p[name]["spearman_rho"] == pytest.approx(_rho_by_hand(x, y))
    assert seeds["per_replica"][0]["inherited"]["kendall_tau"] == pytest.approx(one["kendall_tau"])
    agree = seeds["seed_to_seed"]
    assert [p["replicas"] for p in agree["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    col = lambda k: [r["standalone_ppls"][k] for r in rows]
    taus = [_tau_by_hand(col(a), col(b)) for a, b in [(0, 1), (0, 2), (1, 2)]]
    assert [p["kendall_tau"] for p in agree["pairs"]] == pytest.approx(taus)
    assert agree["kendall_tau_mean"] == pytest.approx(sum(taus) / 3)
    assert agree["spearman_rho_mean"] == pytest.approx(
        sum(_rho_by_hand(col(a), col(b)) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3)
    table = (tmp_path / "rank" / "table.md").read_text()
    assert "Inherited vs the mean of 3 seeds" in table and "Seed to seed" in table and "±" in table
    assert f"one seed: Kendall tau {one['kendall_tau']:.3f}" in table and table.count("\n| `L") == 4

    # Resume: a lost replica is trained again, alone, and comes out the same (its seed is fixed).
    lost = where / f"{rows[1]['key']}.replica2.json"
    ppl, lost_seed = json.loads(lost.read_text())["standalone_ppl"], json.loads(lost.read_text())["seed"]
    lost.unlink()
    others = {p.name: p.stat().st_mtime_ns for p in where.glob("*.json")}
    again = run_rank(replace(cfg, standalone_seeds=3), quiet=True)
    assert {p.name: p.stat().st_mtime_ns for p in where.glob("*.json") if p.name in others} == others
    assert json.loads(lost.read_text())["standalone_ppl"] == ppl and lost_seed == 2001
    assert again["mean_of_seeds"]["inherited"] == seeds["inherited"]
    # A replica trained otherwise (here: under another seed) is an error, not silently reused.
    stale = json.loads(lost.read_text())
    lost.write_text(json.dumps({**stale, "seed": 2}))
    with pytest.raises(ModelConfigError, match=r"replica2\.json was trained with steps, batch, lr, seed, warmup"):
        run_rank(replace(cfg, standalone_seeds=3), quiet=True)


def test_finetune_seeds_are_distinct_and_explicit():
    # Replica 0 keeps the seed of the one fine-tune of before (standalone replica 0's);
    # later replicas share no seed with any standalone replica or with each other.
    assert finetune_seed(7, 3, 0) == 10 == replica_seed(7, 3, 0)
    assert finetune_seed(7, 3, 1) == 7 + 3 + 100_000 + 1000 and FINETUNE_SEED_BASE == 100 * SEED_STRIDE
    standalone = {replica_seed(0, i, r) for i in range(SEED_STRIDE) for r in range(100)}
    tunes = {finetune_seed(0, i, r) for i in range(SEED_STRIDE) for r in range(1, 4)}
    assert len(tunes) == 3 * SEED_STRIDE and not tunes & standalone
    assert finetune_stem("k", 120, 0, None, "d") == "k.finetune120.d"
    assert finetune_stem("k", 120, 2, 3e-3, "d") == "k.finetune120.lr0.003.replica2.d"
    for bad, match in (({"finetune_seeds": 0}, "finetune_seeds must be at least 1"),
                       ({"finetune_lr": 2.0}, r"finetune_lr must be in \[0, 1\]"),
                       ({"finetune_seeds": 2, "subnets": 1001}, "finetune_seeds > 1 takes at most 1000"),
                       ({"standalone_seeds": 101}, "standalone_seeds must be at most 100")):
        with pytest.raises(ValueError, match=match):
            RankConfig(**bad)


def test_finetune_seeds_and_rate_on_a_tiny_supernet(shakespeare, tmp_path, monkeypatch):
    cfg = load_rank_config(_tiny_rank(tmp_path, shakespeare, monkeypatch))
    where = tmp_path / "rank" / "standalone"
    assert (cfg.finetune_seeds, cfg.finetune_lr) == (1, 0.0)
    one = run_rank(cfg, quiet=True)
    one_rows = json.loads((tmp_path / "rank" / "table.json").read_text())["rows"]
    one_md = (tmp_path / "rank" / "table.md").read_text()
    # The defaults write the summary, rows and file names of before.
    assert set(one["finetuned"]) == {"steps", "kendall_tau", "kendall_tau_ci95", "spearman_rho", "spearman_rho_ci95"}
    assert "finetuned_ppls" not in one_rows[0] and "fine-tune seeds" not in one_md and "peak rate" not in one_md
    first = sorted(where.glob("*.finetune2.*.json"))
    assert len(first) == 4 and not [p for p in first if "replica" in p.name or ".lr" in p.name]
    for i, r in enumerate(one_rows):
        done = json.loads(next(p for p in first if p.name.startswith(r["key"])).read_text())
        assert done["seed"] == i and done["lr"] == 1e-3 and done["steps"] == 2 and done["warmup_steps"] == 1
    # The supernet's rate, given explicitly, is the default (same files, same figures).
    assert run_rank(replace(cfg, finetune_lr=1e-3), quiet=True)["finetuned"] == one["finetuned"]
    assert sorted(where.glob("*.finetune2.*.json")) == first
    kept = {p.name: p.stat().st_mtime_ns for p in first}

    three = run_rank(replace(cfg, finetune_seeds=3), quiet=True)
    rows = json.loads((tmp_path / "rank" / "table.json").read_text())["rows"]
    # Replica 0 is the fine-tune of before, reused; replicas 1, 2 are new, with their own seeds.
    assert {p.name: p.stat().st_mtime_ns for p in first} == kept
    assert len(list(where.glob("*.finetune2.replica[12].*.json"))) == 8
    for i, (r, r1) in enumerate(zip(rows, one_rows)):
        reps = [json.loads((where / f"{finetune_stem(r['key'], 2, k, None, p.name.split('.')[-2])}.json")
                           .read_text()) for k in range(3) for p in first if p.name.startswith(r["key"])]
        assert [x["seed"] for x in reps] == r["finetune_seeds"] == [i, i + 101_000, i + 102_000]
        ppls = [x["finetuned_ppl"] for x in reps]
        assert r["finetuned_ppls"] == ppls and len(set(ppls)) == 3 and ppls[0] == r1["finetuned_ppl"]
        assert r["finetuned_ppl"] == pytest.approx(sum(ppls) / 3, rel=1e-12)
    ft = three["finetuned"]
    x, y = [r["finetuned_ppl"] for r in rows], [r["standalone_ppl"] for r in rows]
    assert ft["seeds"] == 3 and ft["kendall_tau"] == pytest.approx(_tau_by_hand(x, y))
    assert ft["spearman_rho"] == pytest.approx(_rho_by_hand(x, y))
    col = lambda k: [r["finetuned_ppls"][k] for r in rows]
    assert ft["seed_to_seed"]["kendall_tau_mean"] == pytest.approx(
        sum(_tau_by_hand(col(a), col(b)) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3)
    assert three["kendall_tau"] == one["kendall_tau"]  # the inherited score does not move
    assert "mean of 3 fine-tune seeds" in (tmp_path / "rank" / "table.md").read_text()

    # Another peak rate: its own files, the rate in the summary and the table.
    low = run_rank(replace(cfg, finetune_lr=5e-4), quiet=True)
    assert len(list(where.glob("*.finetune2.lr0.0005.*.json"))) == 4 and low["finetuned"]["lr"] == 5e-4
    assert "at peak rate 0.0005" in (tmp_path / "rank" / "table.md").read_text()
    # A cached fine-tune made otherwise (here: another seed) is an error, not silently reused.
    stale = where / f"{finetune_stem(rows[2]['key'], 2, 1, None, first[0].name.split('.')[-2])}.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "seed": 5}))
    with pytest.raises(ModelConfigError, match=r"replica1\.\w+\.json was fine-tuned with"):
        run_rank(replace(cfg, finetune_seeds=2), quiet=True)


def _table(tmp_path, name, rows, **summary):
    d = tmp_path / name
    d.mkdir()
    base = {"standalone_steps": 6, "standalone_batch": 4, "standalone_lr": 1e-3, "eval_tokens": 1024,
            "checkpoint": "super", "finetuned": {"steps": 2}}
    (d / "table.json").write_text(json.dumps({"summary": {**base, **summary}, "rows": rows}))
    return d


def _row(key, inherited, finetuned, *standalone):
    r = {"key": key, "short": key, "inherited_ppl": inherited, "finetuned_ppl": finetuned,
         "standalone_ppl": standalone[0]}
    if len(standalone) > 1:
        r["standalone_ppl_mean"] = sum(standalone) / len(standalone)
    return r


def test_pooling_tables_against_a_hand_count(tmp_path, capsys):
    # Set 0: three seeds (reference: their mean); set 1: one seed.
    a = _table(tmp_path, "a", [_row("a0", 8.0, 7.0, 6.0, 6.2, 6.4), _row("a1", 9.0, 7.5, 7.4, 7.0, 7.3),
                               _row("a2", 8.5, 8.1, 7.1, 7.3, 7.2)], mean_of_seeds={"standalone_seeds": 3})
    b = _table(tmp_path, "b", [_row("b0", 8.2, 7.2, 6.6), _row("b1", 9.5, 8.4, 8.0),
                               _row("b2", 8.8, 7.9, 7.0), _row("b3", 9.9, 7.8, 7.5)])
    pooled = pool_tables([a, b], bootstrap=100)
    s = pooled["summary"]
    ref = [6.2, 7.233333333333333, 7.2, 6.6, 8.0, 7.0, 7.5]
    rep0 = [6.0, 7.4, 7.1, 6.6, 8.0, 7.0, 7.5]
    inh, ft = [8.0, 9.0, 8.5, 8.2, 9.5, 8.8, 9.9], [7.0, 7.5, 8.1, 7.2, 8.4, 7.9, 7.8]
    assert [r["set"] for r in pooled["rows"]] == [0, 0, 0, 1, 1, 1, 1] and s["subnets_per_set"] == [3, 4]
    assert s["standalone_seeds_per_set"] == [3, 1]
    for name, x in (("inherited", inh), ("finetuned", ft)):
        assert s["reference"][name]["kendall_tau"] == pytest.approx(_tau_by_hand(x, ref))
        assert s["reference"][name]["spearman_rho"] == pytest.approx(_rho_by_hand(x, ref))
        assert s["replica0"][name]["kendall_tau"] == pytest.approx(_tau_by_hand(x, rep0))
        lo, hi = s["reference"][name]["kendall_tau_ci95"]
        assert -1 <= lo <= s["reference"][name]["kendall_tau"] <= hi <= 1
    # By hand: ordered by the inherited score, the references read 6.2 6.6 7.2 7.0 7.23 8.0 7.5,
    # 2 of 21 pairs swapped; by the fine-tuned one 6.2 6.6 7.23 7.5 7.0 7.2 8.0, 4 swapped.
    # Inherited ranks 1 5 3 2 6 4 7 against 1 5 4 2 7 3 6: sum of squared differences 4.
    assert s["reference"]["inherited"]["kendall_tau"] == pytest.approx(1 - 2 * 2 / 21)
    assert s["reference"]["finetuned"]["kendall_tau"] == pytest.approx(1 - 2 * 4 / 21)
    assert s["reference"]["inherited"]["spearman_rho"] == pytest.approx(1 - 6 * 4 / (7 * 48))
    assert s["per_set"][1]["finetuned"]["kendall_tau"] == pytest.approx(_tau_by_hand(ft[3:], ref[3:]))
    assert main(["--pool", str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    table = capsys.readouterr().out
    assert "7 subnets pooled from 2 ranking runs" in table and table.count("\n| 1 | `b") == 4
    written = json.loads((tmp_path / "ab" / "table.json").read_text())["summary"]["reference"]
    assert {n: c["kendall_tau"] for n, c in written.items()} == {n: c["kendall_tau"] for n, c in s["reference"].items()}
    # Not poolable: other standalone training, the same subnet twice, one table.
    c = _table(tmp_path, "c", [_row("c0", 1, 1, 1), _row("c1", 2, 2, 2), _row("c2", 3, 3, 3)], standalone_lr=2e-3)
    with pytest.raises(ModelConfigError, match="not poolable"):
        pool_tables([a, c])
    # Another warmup is other standalone training too; a table that does not record one
    # (from before the key) is taken at its word.
    w5, w1 = ([_row(f"{n}{i}", i, i, i) for i in range(3)] for n in ("w", "v"))
    w5, w1 = _table(tmp_path, "w5", w5, standalone_warmup=5), _table(tmp_path, "w1", w1, standalone_warmup=1)
    with pytest.raises(ModelConfigError, match="not poolable"):
        pool_tables([w5, w1])
    assert pool_tables([a, w5])["summary"]["subnets"] == 6
    with pytest.raises(ModelConfigError, match="more than one table"):
        pool_tables([a, a])
    with pytest.raises(ModelConfigError, match="at least two"):
        pool_tables([a])
    # Different fine-tunes: only the inherited score is pooled.
    e = _table(tmp_path, "e", [_row("e0", 1, 1, 1), _row("e1", 2, 2, 2), _row("e2", 3, 3, 3)],
               finetuned={"steps": 2, "lr": 1e-3})
    assert set(pool_tables([a, e])["summary"]["reference"]) == {"inherited"}
    with pytest.raises(SystemExit):  # --pool needs --out
        main(["--pool", str(a), str(b)])


def _other_rate(tmp_path, name, ppls, lr=8e-3, steps=6, seeds=None, **more):
    d = tmp_path / name
    (d / "standalone").mkdir(parents=True)
    for i, (key, ppl) in enumerate(ppls.items()):
        (d / "standalone" / f"{key}.json").write_text(json.dumps(
            {"key": key, "standalone_ppl": ppl, "steps": steps, "batch_size": 4, "lr": lr,
             "seed": (seeds or {}).get(key, i), **more}))
    return d


def test_best_rate_reference_against_a_hand_count(tmp_path, capsys):
    rows = [dict(_row(f"s{i}", inh, ft, st), seed=i, params=100 + i, macs_per_token=200 - i)
            for i, (inh, ft, st) in enumerate([(8.0, 7.0, 6.0), (8.4, 7.6, 7.9), (9.0, 7.4, 7.1),
                                               (8.6, 7.8, 6.5), (9.5, 8.3, 8.8)])]
    a = _table(tmp_path, "a", rows)
    hi = _other_rate(tmp_path, "hi", {"s0": 6.3, "s1": 6.9, "s2": 7.4, "s3": 9.2, "s4": 8.1})
    result = best_of_rates([a, hi], bootstrap=100)
    s = result["summary"]
    best = [6.0, 6.9, 7.1, 6.5, 8.1]          # by hand: the lower of each subnet's two
    assert [r["standalone_ppl"] for r in result["rows"]] == best
    assert [r["standalone_lr_best"] for r in result["rows"]] == [1e-3, 8e-3, 1e-3, 1e-3, 8e-3]
    assert s["wins"] == {"0.001": 3, "0.008": 2} and s["standalone_lr"] == "best of 0.001, 0.008"
    inh, ft = [8.0, 8.4, 9.0, 8.6, 9.5], [7.0, 7.6, 7.4, 7.8, 8.3]
    # Ordered by the fine-tuned score the references read 6.0 7.1 6.9 6.5 8.1: 3 of 10 pairs
    # swapped; by the inherited score 6.0 6.9 6.5 7.1 8.1: 1 swapped.
    assert s["finetuned"]["kendall_tau"] == pytest.approx(1 - 2 * 3 / 10)
    assert s["finetuned"]["kendall_tau"] == pytest.approx(_tau_by_hand(ft, best))
    assert s["kendall_tau"] == pytest.approx(1 - 2 * 1 / 10)
    assert s["kendall_tau"] == pytest.approx(_tau_by_hand(inh, best))
    assert s["finetuned"]["spearman_rho"] == pytest.approx(_rho_by_hand(ft, best))
    assert s["per_rate"]["0.008"]["finetuned"]["kendall_tau"] == pytest.approx(
        _tau_by_hand(ft, [6.3, 6.9, 7.4, 9.2, 8.1]))
    assert s["per_rate"]["0.001"]["inherited"]["kendall_tau"] == pytest.approx(
        _tau_by_hand(inh, [6.0, 7.9, 7.1, 6.5, 8.8]))
    assert s["finetuned"]["steps"] == 2     # the fine-tune's description is kept
    assert s["rate_to_rate"][0]["rates"] == ["0.001", "0.008"]
    assert s["rate_to_rate"][0]["kendall_tau"] == pytest.approx(
        _tau_by_hand([6.0, 7.9, 7.1, 6.5, 8.8], [6.3, 6.9, 7.4, 9.2, 8.1]))
    # Written as a table that pools: a second set's best-of table beside it.
    assert main(["--best-of", str(a), str(hi), "--out", str(tmp_path / "best")]) == 0
    out = capsys.readouterr().out
    assert "5 subnets; reference: each subnet's lowest standalone perplexity" in out
    assert "| `s3` | 8.600 | 7.800 | 6.500 | 9.200 | 6.500 |" in out
    rows_b = [dict(_row(f"t{i}", 8 + i, 7.05 + i, 6 + i), seed=i, params=1, macs_per_token=1) for i in range(3)]
    b = _table(tmp_path, "b", rows_b)
    hi_b = _other_rate(tmp_path, "hi_b", {"t0": 5.5, "t1": 7.5, "t2": 7.9})
    assert main(["--best-of", str(b), str(hi_b), "--out", str(tmp_path / "best_b")]) == 0
    pooled = pool_tables([tmp_path / "best", tmp_path / "best_b"], bootstrap=100)["summary"]
    assert pooled["subnets"] == 8 and "best of 0.001, 0.008" in pooled["reference_is"]
    assert pooled["reference"]["finetuned"]["kendall_tau"] == pytest.approx(
        _tau_by_hand(ft + [7.05, 8.05, 9.05], best + [5.5, 7.0, 7.9]))
    # Runs of another budget or seed, the same rate twice, a missing run, several seeds.
    with pytest.raises(ModelConfigError, match="steps, batch, seed"):
        best_of_rates([a, _other_rate(tmp_path, "short", {f"s{i}": 7.0 for i in range(5)}, steps=3)])
    with pytest.raises(ModelConfigError, match="steps, batch, seed"):
        best_of_rates([a, _other_rate(tmp_path, "seeded", {f"s{i}": 7.0 for i in range(5)}, seeds={"s2": 9})])
    # Another warmup is another recipe, not another rate (runs that do not record one are taken
    # at their word, as above).
    warm = _table(tmp_path, "warm", rows, standalone_warmup=5)
    assert best_of_rates([warm, _other_rate(tmp_path, "warm5", {f"s{i}": 7.0 for i in range(5)},
                                            warmup_steps=5)])["summary"]["subnets"] == 5
    with pytest.raises(ModelConfigError, match="warmed up 1 steps, .*warm's runs 5"):
        best_of_rates([warm, _other_rate(tmp_path, "warm1", {f"s{i}": 7.0 for i in range(5)}, warmup_steps=1)])
    with pytest.raises(ModelConfigError, match="the rate 0.001 again"):
        best_of_rates([a, _other_rate(tmp_path, "same", {f"s{i}": 7.0 for i in range(5)}, lr=1e-3)])
    with pytest.raises(ModelConfigError, match="does not exist"):
        best_of_rates([a, _other_rate(tmp_path, "part", {"s0": 7.0})])
    multi = _table(tmp_path, "multi", rows, mean_of_seeds={"standalone_seeds": 3})
    with pytest.raises(ModelConfigError, match="several standalone seeds"):
        best_of_rates([multi, hi])
    with pytest.raises(SystemExit):  # --best-of needs --out; one mode at a time
        main(["--best-of", str(a), str(hi)])
    with pytest.raises(SystemExit):
        main(["--best-of", str(a), str(hi), "--pool", str(a), str(b), "--out", str(tmp_path / "x")])


def test_standalone_recipe_loss_curve_and_pilot(shakespeare, tmp_path, monkeypatch):
    cfg = load_rank_config(_tiny_rank(tmp_path, shakespeare, monkeypatch))
    run_rank(cfg, quiet=True, standalone_only=True)
    where = tmp_path / "rank" / "standalone"
    first = {p.name: json.loads(p.read_text()) for p in where.glob("*.json")}
    # The default is the supernet's warmup (1 step in the tiny config), recorded with the run,
    # and each run's training loss: one point for its 6 steps (every 50 and the last).
    assert all(r["warmup_steps"] == 1 and [s for s, _ in r["train_loss"]] == [6] for r in first.values())
    # Another warmup is not silently reused; in its own out it trains otherwise.
    with pytest.raises(ModelConfigError, match=r"lr, seed, warmup \(6, 4, 0.001, \d+, 1\), not \(6, 4, "
                                               r"0.001, \d+, 4\)"):
        run_rank(replace(cfg, warmup_steps=4), quiet=True, standalone_only=True)
    warm = run_rank(replace(cfg, warmup_steps=4, out=str(tmp_path / "warm")), quiet=True, standalone_only=True)
    assert all(r["warmup_steps"] == 4 for r in warm["standalone"])
    assert all(r["standalone_ppl"] != first[f"{r['key']}.json"]["standalone_ppl"] for r in warm["standalone"])
    with pytest.raises(ValueError, match="warmup_steps must be 0 or more"):
        replace(cfg, warmup_steps=-1)

    # A pilot of one subnet (--only) trains it alone, with the seed it has in the set, to the
    # same result as the whole set's run.
    key = sorted(first)[2].removesuffix(".json")
    pilot = run_rank(replace(cfg, out=str(tmp_path / "pilot")), quiet=True, standalone_only=True, only=[key])
    assert [r["key"] for r in pilot["standalone"]] == [key]
    assert pilot["standalone"][0]["standalone_ppl"] == first[f"{key}.json"]["standalone_ppl"]
    assert pilot["standalone"][0]["seed"] == first[f"{key}.json"]["seed"]
    assert len(list((tmp_path / "pilot" / "standalone").glob("*.json"))) == 1
    with pytest.raises(ModelConfigError, match="beef are not in this config's draw; its keys: "):
        run_rank(cfg, quiet=True, standalone_only=True, only=["beef"])
    with pytest.raises(ModelConfigError, match="use it with --standalone-only"):
        run_rank(cfg, quiet=True, only=[key])

    # The curve against an independent count: step 1's loss is the untrained model's cross
    # entropy on the first batch, drawn as the trainer draws it; a window's mean is the mean of
    # its steps.
    sub = SubnetConfig.from_dict(next(iter(first.values()))["subnet"])
    train_cfg = _standalone_train(load_run_config(tmp_path / "super.toml").train, 1e-3)
    each, pairs = [], []
    train_standalone(sub, shakespeare.train, steps=6, batch_size=4, train_cfg=train_cfg, seed=3, curve=each,
                     curve_every=1)
    train_standalone(sub, shakespeare.train, steps=5, batch_size=4, train_cfg=train_cfg, seed=3, curve=pairs,
                     curve_every=2)
    torch.manual_seed(3)
    x, y = random_batch(shakespeare.train, 4, sub.context_len, torch.Generator().manual_seed(4))
    with torch.no_grad():
        step1 = torch.nn.functional.cross_entropy(Transformer(sub)(x).flatten(0, 1), y.flatten()).item()
    assert [s for s, _ in each] == [1, 2, 3, 4, 5, 6] and each[0][1] == pytest.approx(step1, rel=1e-6)
    # A 5-step run's cosine differs from step 2 on, but its first two steps are the 6-step run's
    # (step 1 is the whole 1-step warmup): its first window is their mean; the last is short.
    assert [s for s, _ in pairs] == [2, 4, 5]
    assert pairs[0][1] == pytest.approx((each[0][1] + each[1][1]) / 2, rel=1e-6)


def test_a_bad_rank_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rank]\nsubnets = 'ten'\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "subnets = 'ten' has the wrong type" in err
    bad.write_text("[rank]\nsubnets = 2\n")
    assert main(["--config", str(bad)]) == 2
    assert "subnets must be at least 3" in capsys.readouterr().err
    assert RankConfig().subnets == 10
