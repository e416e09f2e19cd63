import math

import pytest
import torch

from search.model.perplexity import evaluate, nll
from search.model.space import SearchSpace
from search.model.transformer import Supernet


def test_a_model_that_knows_nothing_has_the_vocabulary_size_as_perplexity():
    space = SearchSpace(context_len=8, head_dim=4, d_model=(8,), layers=(1,), heads=(1,), ffn_dim=(8,),
                        vocab_size=13)
    net = Supernet(space)
    with torch.no_grad():
        net.wte.zero_()  # tied head: all logits 0
    tokens = torch.randint(0, 13, (200,))
    assert evaluate(net, space.largest(), tokens, max_tokens=None) == pytest.approx(13)
    # Scoring through the extracted standalone model gives the same figure.
    model = net.extract(space.largest())
    assert nll(model, None, tokens) == pytest.approx(math.log(13))
    # 200 tokens: 24 windows of 8 predictions; max_tokens cuts to whole windows.
    assert nll(net, space.largest(), tokens, max_tokens=20) == pytest.approx(math.log(13))


def test_supernet_and_extracted_model_score_alike():
    torch.manual_seed(0)
    space = SearchSpace(context_len=8, head_dim=4, d_model=(8, 12), layers=(1, 2), heads=(1, 2),
                        ffn_dim=(8, 16), lowrank_rank=(2,), vocab_size=13)
    net = Supernet(space)
    tokens = torch.randint(0, 13, (300,))
    for sub in (space.largest(), space.smallest()):
        assert nll(net, sub, tokens, batch_size=5) == pytest.approx(nll(net.extract(sub), None, tokens), abs=1e-5)
