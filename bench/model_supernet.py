"""``python -m bench.model_supernet [--checkpoint build/supernet_default] [--subnets 8]``

Prints the figures docs/models.md records for a trained supernet:

* the perplexity of the largest and smallest subnets, and of the largest
  uniform subnet whose int8 weights fit ``--weight-kib`` (300 KiB: the
  ECP5-85F), on the validation and test splits (whole splits);
* the FFN update counts per variant per layer the training recorded;
* seconds per ``Scorer.score`` call (32,768 stratified validation
  characters), cold and from the disk cache;
* the time ``evaluate(supernet, subnet, corpus)`` takes per subnet (its
  default 32,768 validation characters) over random subnets, with each
  subnet's perplexity, parameters and MACs per token;
* training throughput: tokens per second of sandwich steps of the
  checkpoint's config (largest + smallest + random subnets, batch tokens
  summed over the subnets), measured over a few steps.

Wall-clock figures depend on the machine and on what else runs on it.
"""

import argparse
import json
import math
import pathlib
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from search.model import count_macs, count_params, evaluate, load_corpus, load_supernet, nll
from search.model.data import random_batch
from search.model.score import Scorer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.model_supernet")
    parser.add_argument("--checkpoint", default="build/supernet_default")
    parser.add_argument("--subnets", type=int, default=8, help="random subnets to time")
    parser.add_argument("--train-steps", type=int, default=5, help="sandwich steps to time (0 = skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weight-kib", type=float, default=300.0,
                        help="int8 weight budget of the 'fits' subnet (300 KiB: the ECP5-85F)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, space, tokenizer = load_supernet(args.checkpoint)
    manifest = json.loads((pathlib.Path(args.checkpoint) / "manifest.json").read_text())
    train_cfg = manifest["config"]["train"]
    corpus = load_corpus(train_cfg["corpus"], train_cfg["corpus_path"] or None, tokenizer)
    seq = space.context_len
    print(f"checkpoint {args.checkpoint}: step {manifest.get('results', {}).get('step')}, "
          f"{torch.get_num_threads()} thread(s); unigram valid ppl {corpus.unigram_perplexity():.2f}")

    results = manifest.get("results", {})
    if "ffn_updates" in results:
        print("FFN updates (steps with a gradient) per layer: " + "; ".join(
            f"{v} {','.join(map(str, c))}" for v, c in results["ffn_updates"].items())
            + "; max/min per layer " + ", ".join(f"{r:.2f}" for r in results["ffn_update_ratio"]))
    fits = space.largest_within(int(args.weight_kib * 1024))
    for name, sub in (("largest", space.largest()), ("smallest", space.smallest()), ("fits", fits)):
        for split in ("valid", "test"):
            t0 = time.perf_counter()
            loss = nll(net, sub, corpus.split(split))
            print(f"{name:8s} {split:5s} ppl {math.exp(loss):7.3f}  bits/char {loss / math.log(2):.3f}  "
                  f"({len(corpus.split(split)) - 1:,} chars, {time.perf_counter() - t0:.1f} s)  "
                  f"{count_params(sub):,} params, {count_macs(sub, seq) / seq:,.0f} MACs/token")

    rng = random.Random(0)
    times = []
    for _ in range(args.subnets):
        sub = space.sample(rng)
        t0 = time.perf_counter()
        ppl = evaluate(net, sub, corpus)
        times.append(time.perf_counter() - t0)
        print(f"evaluate {times[-1]:.2f} s  ppl {ppl:7.3f}  {count_params(sub):>9,} params  "
              f"{count_macs(sub, seq) / seq:>9,.0f} MACs/token  {sub.short()}")
    if times:
        print(f"evaluate(): median {statistics.median(times):.2f} s per subnet "
              f"(32,768 chars), max {max(times):.2f} s")
        with tempfile.TemporaryDirectory() as cache:
            rng = random.Random(0)
            subs = [space.sample(rng) for _ in range(args.subnets)]
            scorer = Scorer(net, corpus, tokens=32768, cache_dir=cache)
            cold = [scorer.score(s).seconds for s in subs]
            warm = [Scorer(net, corpus, tokens=32768, cache_dir=cache).score(s).seconds for s in subs]
        print(f"Scorer.score(): cold median {statistics.median(cold):.2f} s (max {max(cold):.2f}), "
              f"cached median {statistics.median(warm) * 1e3:.2f} ms (max {max(warm) * 1e3:.2f})")

    if args.train_steps:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        batch = train_cfg["batch_size"]
        n_sub = 2 + train_cfg["random_subnets"] if train_cfg["sandwich"] else 1
        steps = []
        for i in range(args.train_steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad()
            subs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n_sub - 2)]
            for sub in subs[:n_sub]:
                x, y = random_batch(corpus.train, batch, seq, gen)
                (F.cross_entropy(net(x, sub).flatten(0, 1), y.flatten()) / n_sub).backward()
            opt.step()
            if i:  # the first step warms up allocators
                steps.append(time.perf_counter() - t0)
        s = statistics.median(steps)
        print(f"training: {s:.2f} s per sandwich step, {batch * seq * n_sub / s:,.0f} tokens/s "
              f"({n_sub} subnets x {batch} x {seq} tokens)")


if __name__ == "__main__":
    main()
