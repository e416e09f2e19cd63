import json

from search.model.config import parse_run_config
from search.model.ffn_study import run_study, variant_subnet
from search.model.space import count_params


def study_run(out, variants):
    return parse_run_config({
        "space": {"context_len": 32, "head_dim": 8},
        "study": {"d_model": 32, "layers": 2, "heads": 2, "ffn_dim": 128, "variants": variants},
        "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_interval": 0, "eval_tokens": 2048,
                  "log_interval": 2, "checkpoint_interval": 2, "out": str(out), "threads": 1}},
        name="study", need_study=True)


def test_variants_of_the_baseline_shape():
    run = study_run("x", ["standard"])
    from dataclasses import replace
    space = replace(run.space, vocab_size=50)
    std = variant_subnet(run.study, space, "standard")
    cut = variant_subnet(run.study, space, "lowrank:30%")
    emb = (50 + 32) * 32
    saving = 1 - (count_params(cut) - emb) / (count_params(std) - emb)
    assert 0.27 < saving < 0.33 and cut.ffn_variants == ("lowrank",) * 2
    assert variant_subnet(run.study, space, "glu:2/3").ffn_dims == (85, 85)
    assert variant_subnet(run.study, space, "lowrank:5").lowrank_rank == 5
    assert variant_subnet(run.study, space, "none").ffn_dims == (0, 0)


def test_study_writes_a_table(shakespeare, tmp_path):
    variants = ["standard", "none", "shared", "lowrank:30%", "glu:2/3"]
    rows = run_study(study_run(tmp_path, variants), tmp_path, corpus=shakespeare, quiet=True)
    assert [r["variant"] for r in rows] == variants
    std = rows[0]
    assert std["delta_ppl"] == 0 and rows[1]["params"] < std["params"]
    assert rows[1]["macs_vs_standard"] < rows[3]["macs_vs_standard"] < 0
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == len(variants) + 1 and "lowrank:30%" in table
    assert json.loads((tmp_path / "table.json").read_text())[2]["variant"] == "shared"
    assert (tmp_path / "ffn_study.png").stat().st_size > 1000
    assert (tmp_path / "standard" / "checkpoint.pt").exists()
    # A rerun finds every variant done and only rebuilds the table.
    again = run_study(study_run(tmp_path, variants), tmp_path, corpus=shakespeare, quiet=True)
    assert [r["valid_ppl"] for r in again] == [r["valid_ppl"] for r in rows]


def test_study_over_seeds_gives_mean_and_std(shakespeare, tmp_path):
    from dataclasses import replace
    run = study_run(tmp_path, ["standard", "none"])
    run = replace(run, study=replace(run.study, seeds=(0, 1)), train=replace(run.train, steps=2))
    rows = run_study(run, tmp_path, corpus=shakespeare, quiet=True)
    for r in rows:
        a, b = r["valid_ppl_seeds"]
        assert a != b and r["valid_ppl"] == (a + b) / 2
        assert abs(r["valid_ppl_std"] - abs(a - b) / 2 ** 0.5) < 1e-9
    deltas = [n - s for n, s in zip(rows[1]["valid_ppl_seeds"], rows[0]["valid_ppl_seeds"])]
    assert abs(rows[1]["delta_ppl"] - sum(deltas) / 2) < 1e-9 and rows[0]["delta_ppl_std"] == 0
    assert (tmp_path / "seed1" / "none" / "checkpoint.pt").exists()
    assert " ± " in (tmp_path / "table.md").read_text()
