"""``python -m search.model.score --checkpoint build/supernet_default
[--subnet largest|smallest|JSON] [--split valid|test] [--tokens N]``

Prints the perplexity, bits per token and seconds taken of one subnet of a
trained supernet, as one JSON line. A bad argument is one line on stderr and
exit status 2.
"""

import argparse
import json
import math
import pathlib
import sys
import time

import torch

from .config import ModelConfigError
from .data import CorpusError, eval_windows, load_corpus
from .perplexity import nll
from .space import SubnetConfig

__all__ = ["main"]


def _subnet_arg(text, net):
    if text == "largest":
        return net.space.largest()
    if text == "smallest":
        return net.space.smallest()
    cfg = SubnetConfig.from_dict(json.loads(text))
    net.space.check(cfg)
    return cfg


def main(argv=None):
    from .train import load_supernet
    parser = argparse.ArgumentParser(prog="python -m search.model.score")
    parser.add_argument("--checkpoint", required=True, help="training output directory")
    parser.add_argument("--subnet", default="largest", help="largest, smallest or a SubnetConfig as JSON")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--tokens", type=int, default=0, help="tokens to score (0 = the whole split)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        net, space, tokenizer = load_supernet(args.checkpoint)
        manifest = json.loads((pathlib.Path(args.checkpoint) / "manifest.json").read_text())
        train_cfg = manifest["config"]["train"]
        corpus = load_corpus(train_cfg["corpus"], train_cfg["corpus_path"] or None, tokenizer)
        subnet = _subnet_arg(args.subnet, net)
    except (ModelConfigError, CorpusError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokens = corpus.split(args.split)
    t0 = time.perf_counter()
    loss = nll(net, subnet, tokens, max_tokens=args.tokens or None)
    dt = time.perf_counter() - t0
    scored = eval_windows(tokens, subnet.context_len, args.tokens or None)[1].numel()
    print(json.dumps({"subnet": subnet.short(), "split": args.split, "ppl": math.exp(loss),
                      "bits_per_token": loss / math.log(2), "seconds": dt,
                      "tokens": scored}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
