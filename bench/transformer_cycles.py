"""Board cycles and tokens/s of the Transformer on the accelerator, beside the float model on the CPU.

    python -m bench.transformer_cycles [--config configs/default.toml]
        [--model firmware/data/shakespeare_l2d64.npz] [--prompt 32] [--tokens 32]
        [--png docs/img/transformer_cycles.png]

From the whole-program cycle model (``firmware/compile_model.py``, equal to the
RTL's counts: ``tests/firmware/test_compile_model.py``):

* per layer, the cycles of one decode position split into matmul, nonlinear
  (the vector unit's arithmetic: LayerNorm, softmax, GELU, requantization,
  residual adds, embedding, argmax) and data movement (KV-cache writes, bias
  copies, parameter and control words), as a table and a stacked-bar PNG;
* tokens/s of a prefill of ``--prompt`` tokens and of decoding ``--tokens``
  more, at the config's clock, on chip and with the UART host link
  (``firmware.cycles.link_seconds``);
* the float model (``search/model/transformer.py``, the shipped checkpoint
  when it exists) on this machine's CPU, one thread, batch 1, with its KV cache.
"""

import argparse
import pathlib
import time

from firmware.compile_model import compile_model, CycleModel, CATEGORIES
from firmware.cycles import link_seconds
from firmware.generate import DEFAULT_MODEL, _baud
from firmware.model import QuantizedModel
from gen.config import load_config
from rtl.isa import INSTRUCTION_BYTES

__all__ = ["layer_table", "throughput", "cpu_tokens_per_s", "main"]


def layer_table(model: CycleModel, pos: int) -> list[tuple]:
    """[(name, {category: cycles})] of one decode position at ``pos``."""
    split = model.breakdown(pos)
    rows = [(f"layer {i}", split[i]) for i in sorted(k for k in split if k is not None)]
    return rows + [("embedding, final LN, LM head, control", split[None])]


def throughput(model: CycleModel, config, prompt: int, tokens: int) -> dict:
    clock = config.target.clock_mhz * 1e6
    prefill = model.prefill_cycles(prompt)
    decode = sum(model.decode_cycles(p) for p in range(prompt, prompt + tokens - 1))
    decode_per_token = decode / max(tokens - 1, 1)
    baud = _baud(config)
    prefill_link = link_seconds(INSTRUCTION_BYTES + 2 * prompt, 2, baud=baud).seconds
    run_link = link_seconds(INSTRUCTION_BYTES + 2 * prompt, 2 * tokens, baud=baud).seconds
    run_chip = model.run_cycles(prompt, tokens) / clock
    return {
        "prefill_cycles": prefill, "decode_cycles_per_token": decode_per_token,
        "prefill_tokens_per_s_chip": prompt * clock / prefill,
        "prefill_tokens_per_s_link": prompt / (prefill / clock + prefill_link),
        "decode_tokens_per_s_chip": clock / decode_per_token,
        "run_tokens_per_s_link": tokens / (run_chip + run_link),
        "run_chip_s": run_chip, "run_link_s": run_link, "baud": baud,
    }


def cpu_tokens_per_s(qmodel, prompt: int, tokens: int, checkpoint=None) -> dict:
    """The float model of the same architecture on the CPU (1 thread): prefill and decode."""
    import torch
    from search.model.space import SubnetConfig
    from search.model.transformer import Transformer
    torch.set_num_threads(1)
    d = qmodel.desc
    if checkpoint is not None and pathlib.Path(checkpoint).exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model = Transformer(SubnetConfig.from_dict(saved["config"]))
        model.load_state_dict(saved["state"])
    else:
        model = Transformer(SubnetConfig(d.vocab_size, d.context_len, d.d_model, d.head_dim,
                                         d.heads, d.ffn_dims, d.ffn_variants, d.lowrank_rank))
    model.eval()
    idx = torch.zeros(1, prompt, dtype=torch.long)
    best_prefill, best_decode = float("inf"), float("inf")
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            logits, cache = model(idx, return_cache=True)
            t1 = time.perf_counter()
            token = logits[:, -1:].argmax(-1)
            for _ in range(tokens - 1):
                logits, cache = model(token, cache=cache, return_cache=True)
                token = logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            best_prefill = min(best_prefill, t1 - t0)
            best_decode = min(best_decode, (t2 - t1) / max(tokens - 1, 1))
    return {"prefill_tokens_per_s": prompt / best_prefill, "decode_tokens_per_s": 1 / best_decode}


def _plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [name.replace(", ", ",\n") for name, _ in rows]
    bottom = [0] * len(rows)
    for category, colour in zip(CATEGORIES, ("#4878a8", "#e3a33b", "#8a8a8a")):
        values = [split[category] for _, split in rows]
        ax.bar(names, values, bottom=bottom, label=category, color=colour)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("cycles per decoded token")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transformer_cycles",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--png", default="docs/img/transformer_cycles.png")
    parser.add_argument("--no-cpu", action="store_true", help="skip the float model on the CPU")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    qmodel = QuantizedModel.load(args.model)
    t0 = time.process_time()
    image = compile_model(qmodel, config.accelerator.geometry)
    model = CycleModel(image)
    pos = args.prompt + args.tokens // 2
    rows = layer_table(model, pos)
    figures = throughput(model, config, args.prompt, args.tokens)
    elapsed = time.process_time() - t0
    g = config.accelerator.geometry
    print(f"{qmodel.desc.short()} on {config.name} ({g.rows}x{g.cols} {g.dataflow.upper()}, "
          f"{config.target.clock_mhz:g} MHz); compile + cycle model {elapsed * 1e3:.0f} ms CPU")
    print(f"\nCycles of one decoded token at position {pos}:\n")
    print("| part | matmul | nonlinear | data movement | total |")
    print("|---|---:|---:|---:|---:|")
    for name, split in rows:
        print(f"| {name} | " + " | ".join(str(split[c]) for c in CATEGORIES) +
              f" | {sum(split.values())} |")
    total = {c: sum(split[c] for _, split in rows) for c in CATEGORIES}
    print("| total | " + " | ".join(str(total[c]) for c in CATEGORIES) +
          f" | {sum(total.values())} |")
    share = {c: total[c] / sum(total.values()) for c in CATEGORIES}
    print("| share | " + " | ".join(f"{share[c]:.0%}" for c in CATEGORIES) + " | |")
    f = figures
    print(f"\nOn chip at {config.target.clock_mhz:g} MHz: prefill of {args.prompt} tokens "
          f"{f['prefill_cycles']} cycles = {f['prefill_tokens_per_s_chip']:.0f} tokens/s; decode "
          f"{f['decode_cycles_per_token']:.0f} cycles/token = {f['decode_tokens_per_s_chip']:.0f} "
          f"tokens/s")
    print(f"With the link ({f['baud']} baud, framing, 1 ms turnaround a frame): prefill "
          f"{f['prefill_tokens_per_s_link']:.0f} tokens/s; a RUN of {args.prompt} + "
          f"{args.tokens} tokens {f['run_tokens_per_s_link']:.0f} generated tokens/s "
          f"({f['run_chip_s'] * 1e3:.1f} ms on chip + {f['run_link_s'] * 1e3:.1f} ms on the link)")
    if not args.no_cpu:
        cpu = cpu_tokens_per_s(qmodel, args.prompt, args.tokens,
                               pathlib.Path(args.model).with_suffix(".pt"))
        print(f"Float model on this CPU (torch, 1 thread, batch 1, KV cache): prefill "
              f"{cpu['prefill_tokens_per_s']:.0f} tokens/s, decode "
              f"{cpu['decode_tokens_per_s']:.0f} tokens/s")
    if args.png:
        _plot(rows, args.png, f"{qmodel.desc.short()} on {config.name}: cycles per decoded token")
        print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
