import pytest

from search.model.config import ModelConfigError, load_run_config, parse_run_config
from search.model import train as train_cli
from search.model import ffn_study

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def test_example_configs_parse():
    run = load_run_config(CONFIGS / "supernet_default.toml")
    assert run.name == "supernet_default" and run.train.sandwich and run.space.layers == (2, 3, 4)
    study = load_run_config(CONFIGS / "model_ffn_study.toml", need_study=True)
    assert "lowrank:30%" in study.study.variants


@pytest.mark.parametrize("document, message", [
    ({"train": {"stepz": 3}}, "[train] has no key 'stepz'; allowed keys: corpus,"),
    ({"train": {"steps": "many"}}, "[train] steps = 'many' has the wrong type; it must be an integer"),
    ({"train": {"steps": 0}}, "[train] steps must be at least 1, not 0"),
    ({"train": {"corpus": "ptb"}}, "[train] corpus must be one of shakespeare, wikitext2, not 'ptb'"),
    ({"train": {"sandwich": 1}}, "[train] sandwich = 1 has the wrong type; it must be true or false"),
    ({"space": {"heads": [2, "4"]}}, "[space] heads = [2, '4'] has the wrong type"),
    ({"space": {"ffn_variants": ["standard", "moe"]}}, "[space] ffn_variants: 'moe' is not one of"),
    ({"space": {"ffn_dim": []}}, "[space] ffn_dim needs at least one choice"),
    ({"model": {}}, "unknown table [model]; allowed tables: space, train"),
])
def test_a_bad_key_or_value_is_one_line_naming_it(document, message):
    with pytest.raises(ModelConfigError) as e:
        parse_run_config(document)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_study_variants_are_checked():
    with pytest.raises(ModelConfigError, match=r"\[study\] variants: 'lowrank:x'"):
        parse_run_config({"study": {"variants": ["lowrank:x"]}}, need_study=True)


@pytest.mark.parametrize("cli", [train_cli.main, ffn_study.main])
def test_cli_exits_2_with_one_line(cli, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 'fast'\n")
    assert cli(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr = 'fast' has the wrong type" in err and str(bad) in err
    assert cli(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad.write_text("[train\n")
    assert cli(["--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
