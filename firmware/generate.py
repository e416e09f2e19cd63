"""``python -m firmware.generate``: text from the Transformer that runs on the accelerator.

    python -m firmware.generate --config configs/default.toml --prompt "ROMEO:" --tokens 32
    python -m firmware.generate --config configs/default.toml --prompt "ROMEO:" --tokens 8 \\
        --check --backend verilator

Loads the quantized model once (``--model``, default the shipped
``firmware/data/shakespeare_l2d64.npz``), runs the prompt and prints the text
as the token ids arrive, then the board figures: cycles per generated token and
tokens/s at the config's clock, on chip and with the UART host link (request
and reply at baud / 10 bytes a second, framing and a turnaround per frame).
Cycles come from the whole-program cycle model (``firmware/compile_model.py``);
a simulated backend also reports the cycles it counted. ``--check`` compares
the logits of every position with the integer reference
(``firmware/reference.py``) and says whether they are bit-exact.

Backends: ``functional`` (default, the numpy ISA interpreter), ``verilator``,
``icarus``, ``amaranth`` (the simulated RTL) and ``serial`` (a board on
``--port``).
"""

import argparse
import pathlib
import sys
import time

import numpy as np

__all__ = ["main", "DEFAULT_MODEL", "encode_text", "decode_ids", "board_figures"]

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "firmware" / "data" / "shakespeare_l2d64.npz"
DEFAULT_CONFIG = REPO / "configs" / "default.toml"


class GenerateError(Exception):
    """A mistake the user can fix; one line."""


def _chars(qmodel) -> list | None:
    return qmodel.meta.get("chars")


def encode_text(qmodel, text: str) -> list[int]:
    """Token ids of ``text`` with the model's character tokenizer (unknown characters are 0)."""
    chars = _chars(qmodel)
    if chars is None:
        raise GenerateError("the model file has no tokenizer (meta['chars']); give token ids "
                            "with --prompt-ids")
    index = {c: i for i, c in enumerate(chars)}
    return [index.get(c, 0) for c in text]


def decode_ids(qmodel, ids) -> str:
    chars = _chars(qmodel)
    if chars is None:
        return " ".join(str(i) for i in ids)
    return "".join(chars[i] if 0 < i < len(chars) else "?" for i in ids)


def board_figures(cycle_model, config, prompt: int, generate: int) -> dict:
    """Cycles and tokens/s of RUN(prompt, generate) on the config's board: on chip (the
    cycle model at the target clock) and with the host link."""
    from .cycles import link_seconds
    from rtl.isa import INSTRUCTION_BYTES
    clock_hz = config.target.clock_mhz * 1e6
    baud = _baud(config)
    total = cycle_model.run_cycles(prompt, max(generate, 1))
    prefill = cycle_model.prefill_cycles(prompt)
    decode = [cycle_model.decode_cycles(p) for p in range(prompt, prompt + generate - 1)]
    per_token = (sum(decode) / len(decode)) if decode else float(prefill)
    link = link_seconds(INSTRUCTION_BYTES + 2 * prompt, 2 * generate, baud=baud).seconds
    chip_s = total / clock_hz
    return {"clock_mhz": config.target.clock_mhz, "baud": baud, "run_cycles": total,
            "prefill_cycles": prefill, "decode_cycles_per_token": per_token,
            "decode_tokens_per_s": clock_hz / per_token,
            "prefill_tokens_per_s": prompt * clock_hz / prefill,
            "chip_s": chip_s, "link_s": link,
            "tokens_per_s_on_chip": generate / chip_s if generate else 0.0,
            "tokens_per_s_with_link": generate / (chip_s + link) if generate else 0.0}


def _baud(config) -> int:
    from boards import BOARDS
    board = BOARDS.get(config.target.board) if config.target.board else None
    return getattr(board, "baud", 1_000_000)


def _device(args, config):
    from .runtime import Device
    if args.backend == "serial":
        if not args.port:
            raise GenerateError("--backend serial needs --port (e.g. /dev/ttyUSB0)")
        return Device.serial(args.port, config)
    if args.backend == "functional":
        return Device.functional(config)
    # firmware/sim.py elaborates with the generic multiplier, whose timing the DSP
    # primitives share, so the cycles are the board's.
    return Device.simulated(config, args.backend)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.generate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="accelerator config (TOML)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="quantized model (.npz)")
    parser.add_argument("--prompt", default="ROMEO:", help="prompt text")
    parser.add_argument("--prompt-ids", help="prompt as comma-separated token ids instead")
    parser.add_argument("--tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--check", action="store_true",
                        help="check every position's logits against the integer reference")
    parser.add_argument("--backend", default="functional",
                        choices=["functional", "verilator", "icarus", "amaranth", "serial"])
    parser.add_argument("--port", help="serial port of the board (--backend serial)")
    args = parser.parse_args(argv)
    try:
        return _generate(args)
    except GenerateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _generate(args) -> int:
    from gen.config import load_config, ConfigError
    from .compile_model import ModelRefused, CycleModel
    from .model import QuantizedModel
    from .runtime import DeviceError
    from .serial import LinkError
    from .sim import SimError
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise GenerateError(str(e)) from None
    if not pathlib.Path(args.model).exists():
        raise GenerateError(f"model file {args.model!r} does not exist")
    try:
        qmodel = QuantizedModel.load(args.model)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    if args.tokens < 0:
        raise GenerateError(f"--tokens must be >= 0, not {args.tokens}")
    if args.prompt_ids:
        try:
            prompt = [int(t) for t in args.prompt_ids.split(",")]
        except ValueError:
            raise GenerateError(f"--prompt-ids must be comma-separated integers, not "
                                f"{args.prompt_ids!r}") from None
    else:
        prompt = encode_text(qmodel, args.prompt)
    if not prompt:
        raise GenerateError("the prompt is empty")
    try:
        device = _device(args, config)
    except (RuntimeError, ValueError) as e:
        raise GenerateError(str(e)) from None
    try:
        t0 = time.time()
        image = device.load(qmodel)
        load_s = time.time() - t0
        try:
            image.run_step(prompt, args.tokens)
        except ValueError as e:
            raise GenerateError(str(e)) from None
        print(f"[{device.backend_name}] {image.summary()}; loaded in {load_s:.1f} s",
              file=sys.stderr)
        sys.stdout.write(decode_ids(qmodel, prompt))
        sys.stdout.flush()
        generated = []
        t0 = time.time()
        for token in device.generate(prompt, args.tokens):
            generated.append(token)
            sys.stdout.write(decode_ids(qmodel, [token]))
            sys.stdout.flush()
        host_s = time.time() - t0
        measured = device.cycles
        print()
        figures = board_figures(CycleModel(image), config, len(prompt), args.tokens)
        print(f"board: {figures['decode_cycles_per_token']:.0f} cycles per generated token, "
              f"prefill {figures['prefill_cycles']} cycles for {len(prompt)} prompt tokens "
              f"(cycle model); RUN of {figures['run_cycles']} cycles")
        if measured is not None:
            same = "equal to" if measured == figures["run_cycles"] else "the model says"
            print(f"board: the simulated RTL counted {measured} cycles for the RUN ({same} "
                  f"{figures['run_cycles']})")
        print(f"board at {figures['clock_mhz']:g} MHz: {figures['decode_tokens_per_s']:.1f} "
              f"tokens/s decode, {figures['prefill_tokens_per_s']:.1f} tokens/s prefill on chip; "
              f"{figures['tokens_per_s_with_link']:.1f} tokens/s for this RUN with the link "
              f"({figures['baud']} baud: {figures['link_s'] * 1e3:.1f} ms on the link, "
              f"{figures['chip_s'] * 1e3:.1f} ms on chip)")
        print(f"host: {len(generated)} tokens in {host_s:.2f} s on the {device.backend_name} "
              f"backend")
        if args.check:
            return _check(args.model, device, prompt + generated[:-1] if generated else prompt)
        return 0
    except ModelRefused as e:
        raise GenerateError(str(e)) from None
    except (DeviceError, SimError, LinkError) as e:
        raise GenerateError(str(e).splitlines()[0]) from None
    finally:
        device.close()


def _check(model_path, device, tokens) -> int:
    from .reference import IntegerTransformer
    reference = IntegerTransformer.load(model_path).logits(tokens).numpy()
    got = device.logits(tokens)
    bad = [p for p in range(len(tokens)) if not np.array_equal(got[p], reference[p])]
    if bad:
        print(f"check: logits differ from the integer reference at {len(bad)} of {len(tokens)} "
              f"positions (first: {bad[0]})")
        return 1
    print(f"check: the logits of all {len(tokens)} positions are bit-exact with the integer "
          f"reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
