"""bench/rank_proxies.py scores subnets as the ranking check does, and correlates right.

A tiny supernet and its ranking check (tests/search/test_rank.py's) give the reference:
their standalone perplexities. The proxies must reproduce the check's own inherited and
fine-tuned perplexities, and their tau and rho must be the hand count's.
"""

import json
import math

import pytest

from bench.rank_proxies import SCRATCH_SEED_BASE, format_pooled, main, parse_proxy, pool_sets, run_proxies
from search.model.config import ModelConfigError
from search.model.rank import load_rank_config, run_rank
from tests.search.test_rank import _rho_by_hand, _tau_by_hand, _tiny_rank


def _references(tmp_path, rows, rank_toml):
    ref = {"sets": {"T": {"rank_config": str(rank_toml),
                          "subnets": {r["key"]: r["short"] for r in rows},
                          "references": {"standalone": {"commit": "test", "source": "run_rank",
                                                        "ppl": {r["key"]: r["standalone_ppl"] for r in rows}}}}}}
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(ref))
    return path


def test_proxies_reproduce_the_ranking_check(shakespeare, tmp_path, monkeypatch, capsys):
    rank_toml = _tiny_rank(tmp_path, shakespeare, monkeypatch)
    run_rank(load_rank_config(rank_toml), quiet=True)
    rows = json.loads((tmp_path / "rank" / "table.json").read_text())["rows"]
    refs = _references(tmp_path, rows, rank_toml)
    monkeypatch.setattr("bench.rank_proxies.load_corpus", lambda *a, **k: shakespeare)
    out = tmp_path / "proxies"
    table = run_proxies("T", ["supernet:0", "supernet:2", "scratch:3"], out=out, references=refs,
                        say=lambda *a: None)
    keys = [r["key"] for r in rows]
    inherited = table["proxies"]["supernet:0"]["ppl"]
    finetuned = table["proxies"]["supernet:2"]["ppl"]
    for r in rows:
        # The extracted subnet scores as the supernet's slice does, and the fine-tune is the check's.
        assert math.isclose(inherited[r["key"]], r["inherited_ppl"], rel_tol=1e-5)
        assert finetuned[r["key"]] == pytest.approx(r["finetuned_ppl"], rel=1e-9)
    scratch = [json.loads(p.read_text()) for p in sorted((out / "scratch_3").glob("*.json"))]
    assert sorted(s["seed"] for s in scratch) == [SCRATCH_SEED_BASE + i for i in range(4)]
    assert all(s["lr"] == 3e-3 and s["steps"] == 3 for s in scratch)
    y = [r["standalone_ppl"] for r in rows]
    for p, e in table["proxies"].items():
        x = [e["ppl"][k] for k in keys]
        c = e["against"]["standalone"]
        assert c["kendall_tau"] == pytest.approx(_tau_by_hand(x, y))
        assert c["spearman_rho"] == pytest.approx(_rho_by_hand(x, y))
        assert c["kendall_tau_ci95"][0] <= c["kendall_tau"] <= c["kendall_tau_ci95"][1]
    # A rerun reads the cache: nothing is trained again, the table is the same.
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "table.json")
    assert main(["--set", "T", "--proxy", "supernet:0", "supernet:2", "scratch:3", "--references", str(refs),
                 "--out", str(out)]) == 0
    assert "| supernet:2 |" in capsys.readouterr().out
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name != "table.json") == before
    assert json.loads((out / "table.json").read_text()) == json.loads(json.dumps(table))


def test_bad_proxy_or_set_is_one_line(tmp_path, capsys):
    assert parse_proxy("scratch:600@3e-3") == ("scratch", 600, 3e-3)
    assert parse_proxy("supernet:0") == ("supernet", 0, None)
    for bad in ("scratch:0", "super:10", "supernet:x", "supernet:10@2"):
        with pytest.raises(ModelConfigError, match="proxy"):
            parse_proxy(bad)
    assert main(["--set", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no set 'nope'" in err


def test_pooled_sets_against_a_hand_count(shakespeare, tmp_path, monkeypatch):
    """Two draws of the tiny space scored as two sets; pooled tau and rho are the hand
    count's over the union of their subnets."""
    rank_toml = _tiny_rank(tmp_path, shakespeare, monkeypatch)
    other = tmp_path / "rank2.toml"
    other.write_text(rank_toml.read_text().replace("[rank]", "[rank]\nseed = 7").replace(
        str(tmp_path / "rank") + '"', str(tmp_path / "rank2") + '"'))
    sets = {}
    for name, toml, out in (("T", rank_toml, "rank"), ("U", other, "rank2")):
        run_rank(load_rank_config(toml), quiet=True)
        sets[name] = (toml, json.loads((tmp_path / out / "table.json").read_text())["rows"])
    doc = {"sets": {}}
    for name, (toml, rows) in sets.items():
        doc["sets"][name] = json.loads(_references(tmp_path, rows, toml).read_text())["sets"]["T"]
    refs = tmp_path / "both.json"
    refs.write_text(json.dumps(doc))
    monkeypatch.setattr("bench.rank_proxies.load_corpus", lambda *a, **k: shakespeare)
    tables = [run_proxies(n, ["supernet:0", "scratch:2"], out=tmp_path / f"p{n}", references=refs,
                          say=lambda *a: None) for n in ("T", "U")]
    pooled = pool_sets(tables, bootstrap=50)
    assert pooled["subnets"] == 8 and set(pooled["proxies"]) == {"supernet:0", "scratch:2"}
    y = [r["standalone_ppl"] for n in ("T", "U") for r in sets[n][1]]
    for p, e in pooled["proxies"].items():
        x = [t["proxies"][p]["ppl"][r["key"]] for t, n in zip(tables, "TU") for r in sets[n][1]]
        assert e["against"]["standalone"]["kendall_tau"] == pytest.approx(_tau_by_hand(x, y))
        assert e["against"]["standalone"]["spearman_rho"] == pytest.approx(_rho_by_hand(x, y))
    assert format_pooled(pooled).count("| standalone |") == 2
