"""``python -m firmware.generate``: text, board figures, --check, one-line errors."""

import pytest

from firmware.generate import main, encode_text, decode_ids, board_figures
from firmware.compile_model import compile_model, CycleModel
from firmware.model import QuantizedModel
from gen.config import load_config

from .qmodels import random_qmodel, small_desc

CHARS = ["\u0000"] + list(" abcdefghijklmnopqrstuvwxyzROMEO:,.!?\n")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    qm = random_qmodel(small_desc("standard", vocab=len(CHARS), context=32), seed=3)
    qm = QuantizedModel(qm.desc, qm.tensors, logit_scale=1.0, meta={"chars": CHARS})
    path = tmp_path_factory.mktemp("model") / "model.npz"
    qm.save(path)
    return path


def test_generate_prints_text_figures_and_checks(model_file, capsys):
    assert main(["--config", "configs/default.toml", "--model", str(model_file),
                 "--prompt", "ROMEO:", "--tokens", "5", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:")
    assert "cycles per generated token" in out and "tokens/s decode" in out
    assert "with the link" in out
    assert "the logits of all 10 positions are bit-exact with the integer reference" in out


def test_tokenizer_round_trip(model_file):
    qm = QuantizedModel.load(model_file)
    assert decode_ids(qm, encode_text(qm, "ROMEO: hi")) == "ROMEO: hi"
    assert encode_text(qm, "#")[0] == 0      # unknown characters are <unk>


def test_board_figures_add_the_link_apart(model_file):
    config = load_config("configs/default.toml")
    image = compile_model(QuantizedModel.load(model_file), config.accelerator.geometry)
    f = board_figures(CycleModel(image), config, 6, 10)
    assert f["run_cycles"] == CycleModel(image).run_cycles(6, 10)
    assert f["tokens_per_s_with_link"] < f["tokens_per_s_on_chip"]
    assert f["decode_tokens_per_s"] == pytest.approx(config.target.clock_mhz * 1e6
                                                     / f["decode_cycles_per_token"])


@pytest.mark.parametrize("args,match", [
    (["--model", "nowhere.npz"], "does not exist"),
    (["--config", "configs/tiny.toml"], "cannot run: the config lacks the vector units"),
    (["--tokens", "40"], "this image holds 32"),
    (["--prompt-ids", "1,x"], "comma-separated integers"),
])
def test_errors_are_one_line(model_file, capsys, args, match):
    argv = ["--model", str(model_file), "--tokens", "2"] + args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
