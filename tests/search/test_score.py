import json

from search.model.config import parse_run_config
from search.model.score import main
from search.model.train import train_supernet


def test_score_prints_one_json_line_and_rejects_bad_subnets(shakespeare, tmp_path, capsys):
    run = parse_run_config({
        "space": {"context_len": 32, "head_dim": 8, "d_model": [16, 24], "layers": [1, 2], "heads": [1, 2],
                  "ffn_dim": [16, 32], "lowrank_rank": [4]},
        "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_interval": 0, "eval_tokens": 1024,
                  "out": str(tmp_path), "threads": 1}})
    train_supernet(run, corpus=shakespeare, quiet=True)
    assert main(["--checkpoint", str(tmp_path), "--subnet", "smallest", "--tokens", "1000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 992 and out["split"] == "valid" and 1 < out["ppl"] < 85
    sub = {"vocab_size": 85, "context_len": 32, "d_model": 16, "head_dim": 8, "heads": [2],
           "ffn_dims": [32], "ffn_variants": ["lowrank"], "lowrank_rank": 4}
    assert main(["--checkpoint", str(tmp_path), "--subnet", json.dumps(sub), "--tokens", "64",
                 "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 64
    sub["d_model"] = 64
    assert main(["--checkpoint", str(tmp_path), "--subnet", json.dumps(sub)]) == 2
    assert capsys.readouterr().err.strip() == "error: subnet d_model 64 exceeds the space's 24"
    assert main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
