import json
import math
import multiprocessing
import random

import pytest
import torch

from search.model.config import parse_run_config
from search.model.score import Scorer, main
from search.model.space import SearchSpace, SubnetConfig
from search.model.train import train_supernet
from search.model.transformer import Supernet

SPACE = SearchSpace(context_len=16, head_dim=4, d_model=(8, 12), layers=(1, 2), heads=(1, 2),
                    ffn_dim=(6, 10), lowrank_rank=(2, 3), vocab_size=11)
TOKENS = torch.randint(0, 11, (4000,), generator=torch.Generator().manual_seed(0))


def supernet():
    torch.manual_seed(0)
    return Supernet(SPACE).eval()


def test_score_prints_one_json_line_and_rejects_bad_subnets(shakespeare, tmp_path, capsys):
    run = parse_run_config({
        "space": {"context_len": 32, "head_dim": 8, "d_model": [16, 24], "layers": [1, 2], "heads": [1, 2],
                  "ffn_dim": [16, 32], "lowrank_rank": [4]},
        "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_interval": 0, "eval_tokens": 1024,
                  "out": str(tmp_path), "threads": 1}})
    train_supernet(run, corpus=shakespeare, quiet=True)
    assert main(["--checkpoint", str(tmp_path), "--subnet", "smallest", "--tokens", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 992 and out["split"] == "valid" and 1 < out["ppl"] < 85 and not out["cached"]
    sub = {"vocab_size": 85, "context_len": 32, "d_model": 16, "head_dim": 8, "heads": [2],
           "ffn_dims": [32], "ffn_variants": ["lowrank"], "lowrank_rank": 4}
    args = ["--checkpoint", str(tmp_path), "--subnet", json.dumps(sub), "--tokens", "64", "--split", "test",
            "--baseline", "largest", "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["tokens"] == 64 and first["paired"]["baseline"].startswith("L2 d24")
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] and again["ppl"] == first["ppl"]
    sub["d_model"] = 64
    assert main(["--checkpoint", str(tmp_path), "--subnet", json.dumps(sub)]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: subnet d_model 64 is not one of the space's choices (16, 24)"
    assert main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cache_hits_return_identical_scores(tmp_path):
    net = supernet()
    scorer = Scorer(net, TOKENS, tokens=1024, cache_dir=tmp_path)
    rng = random.Random(0)
    subs = [SPACE.sample(rng) for _ in range(4)] + [SPACE.largest()]
    cold = [scorer.score(s) for s in subs]
    assert not any(c.cached for c in cold) and cold[0].tokens == 1024 and len(cold[0].window_nll) == 64
    warm = [Scorer(net, TOKENS, tokens=1024, cache_dir=tmp_path).score(s) for s in subs]
    assert all(w.cached for w in warm)
    for c, w in zip(cold, warm):
        assert (w.key, w.subnet, w.nll, w.window_nll) == (c.key, c.subnet, c.nll, c.window_nll)
    assert scorer.score("largest").cached
    # Another token set or other weights never read these entries.
    assert not Scorer(net, TOKENS, tokens=1024, seed=1, cache_dir=tmp_path).score(subs[0]).cached
    with torch.no_grad():
        net.wte.add_(0.01)
    assert not Scorer(net, TOKENS, tokens=1024, cache_dir=tmp_path).score(subs[0]).cached


def test_paired_differences_against_a_named_baseline():
    scorer = Scorer(supernet(), TOKENS, tokens=None, baseline="smallest")
    same = scorer.paired("smallest")
    assert same["delta_nll"] == 0 and same["delta_nll_se"] == 0 and same["windows"] == 249
    big = scorer.paired("largest")
    a, b = scorer.score("largest"), scorer.score("smallest")
    assert big["delta_nll"] == pytest.approx(a.nll - b.nll) and big["delta_ppl"] == pytest.approx(a.ppl - b.ppl)
    diffs = torch.tensor(a.window_nll) - torch.tensor(b.window_nll)
    assert big["delta_nll_se"] == pytest.approx(float(diffs.std() / math.sqrt(249)))
    # Pairing removes the windows' own difficulty: far less noise than unpaired.
    unpaired = math.sqrt(torch.tensor(a.window_nll).var() / 249 + torch.tensor(b.window_nll).var() / 249)
    assert 0 < big["delta_nll_se"] < unpaired
    with pytest.raises(ValueError, match="not one of the space's choices"):
        scorer.score(SubnetConfig(11, 16, 10, 4, (1,), (6,), ("standard",)))


def _worker(args):
    cache, subnet_dicts = args
    torch.set_num_threads(1)
    scorer = Scorer(supernet(), TOKENS, tokens=512, cache_dir=cache)
    return [scorer.score(SubnetConfig.from_dict(d)).nll for d in subnet_dicts]


def test_parallel_writers_do_not_corrupt_the_cache(tmp_path):
    rng = random.Random(3)
    subs = list(dict.fromkeys(SPACE.sample(rng) for _ in range(12)))
    dicts = [s.to_dict() for s in subs]
    # Four processes score the same subnets at once (in different orders) into one cache.
    jobs = [(str(tmp_path), dicts[i:] + dicts[:i]) for i in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_worker, jobs)
    fresh = Scorer(supernet(), TOKENS, tokens=512)
    expected = {s.key(): fresh.score(s).nll for s in subs}
    for i, nlls in enumerate(results):
        assert nlls == [expected[SubnetConfig.from_dict(d).key()] for d in jobs[i][1]]
    files = list(tmp_path.glob("*/*.json"))
    assert len(files) == len(subs) and not list(tmp_path.glob("*/.*.tmp"))
    for f in files:
        entry = json.loads(f.read_text())
        assert entry["nll"] == expected[entry["key"]] and f.stem == entry["key"]
    cached = Scorer(supernet(), TOKENS, tokens=512, cache_dir=tmp_path)
    assert all(cached.score(s).cached and cached.score(s).nll == expected[s.key()] for s in subs)
