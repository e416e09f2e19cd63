import json
import math
import pathlib
from dataclasses import replace

import numpy as np
import pytest

from search.model.config import ModelConfigError, load_run_config
from search.model.rank import (RankConfig, bootstrap_ci, kendall_tau, load_rank_config, main, pick_subnets,
                               run_rank, spearman_rho)
from search.model.space import count_params, macs_per_token
from search.model.train import train_supernet

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


def test_rank_end_to_end_on_a_tiny_supernet(shakespeare, tmp_path, capsys, monkeypatch):
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
""")
    monkeypatch.setattr("search.model.rank.load_corpus", lambda *a, **k: shakespeare)
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
    with pytest.raises(ModelConfigError, match="was trained with steps, batch, lr, seed"):
        run_rank(replace(load_rank_config(tmp_path / "rank.toml"), lr=2e-3), quiet=True)
    # Fine-tunes start from the checkpoint, so their results are kept per checkpoint.
    assert len(list((tmp_path / "rank" / "standalone").glob("*.finetune2.*.json"))) == 4


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
