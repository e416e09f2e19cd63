import json
import random

from search.model.genome import GenomeCodec
from search.model.score import Scorer
from search.model.train import CI_SUPERNET, load_supernet


def test_the_shipped_supernet_loads_scores_and_says_how_it_was_made(shakespeare, tmp_path):
    assert (CI_SUPERNET / "checkpoint.pt").stat().st_size < 400 * 1024
    manifest = json.loads((CI_SUPERNET / "manifest.json").read_text())
    assert manifest["export"]["command"].startswith("python -m search.model.train --config configs/supernet_ci.toml")
    assert manifest["config"]["train"]["seed"] == manifest["export"]["seed"] == 0
    assert manifest["results"]["done"] and max(manifest["results"]["ffn_update_ratio"]) <= 1.5
    net, space, tokenizer = load_supernet(CI_SUPERNET)
    assert tokenizer.chars == shakespeare.tokenizer.chars and len(space.ffn_variants) == 5
    # A small search on a fresh clone: genomes decoded, scored, cached; every subnet
    # learned far more than the unigram baseline.
    codec, rng = GenomeCodec(space), random.Random(0)
    scorer = Scorer(net, shakespeare, tokens=2048, cache_dir=tmp_path)
    unigram = shakespeare.unigram_perplexity()
    for _ in range(4):
        s = scorer.score(codec.decode(codec.random(rng)))
        assert s.ppl < 0.75 * unigram
    largest = scorer.score("largest").ppl
    assert largest < scorer.score("smallest").ppl and largest < 14
