import random

import pytest
import torch

from search.model.space import FFN_VARIANTS, SearchSpace, SubnetConfig, count_params
from search.model.transformer import Supernet, Transformer

SPACE = SearchSpace(context_len=16, head_dim=4, d_model=(8, 12), layers=(1, 2, 3), heads=(1, 2, 3),
                    ffn_dim=(6, 10), lowrank_rank=(2, 3), vocab_size=11)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = Supernet(SPACE).eval()
    with torch.no_grad():  # biases and LayerNorms away from their init, so slicing them matters
        for name, p in net.named_parameters():
            if name.endswith(("_b", "_w")) and p.dim() == 1:
                p.normal_(0, 0.5)
    return net


def subnets():
    rng = random.Random(2)
    mixed = SPACE.subnet(d_model=8, heads=(3, 1, 2), ffn_dims=(10, 6, 6),
                         ffn_variants=("lowrank", "shared", "shared"), lowrank_rank=2)
    return [SPACE.largest(), SPACE.smallest(), mixed] + [
        SPACE.subnet(d_model=12, heads=(2, 3), ffn_dims=(6, 6 if v == "shared" else 10),
                     ffn_variants=(v, v), lowrank_rank=3)
        for v in FFN_VARIANTS] + [SPACE.sample(rng) for _ in range(8)]


@pytest.mark.parametrize("sub", subnets(), ids=lambda c: c.short())
def test_extracted_subnet_computes_the_same_logits(supernet, sub):
    idx = torch.randint(0, SPACE.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    model = supernet.extract(sub).eval()
    assert isinstance(model, Transformer) and model.cfg == sub
    assert sum(p.numel() for p in model.parameters()) == count_params(sub)
    with torch.no_grad():
        sliced, standalone = supernet(idx, sub), model(idx)
    assert sliced.shape == (3, 16, SPACE.vocab_size)
    torch.testing.assert_close(sliced, standalone, rtol=0, atol=1e-5)


def test_subnets_differ_and_the_largest_uses_all_weights(supernet):
    idx = torch.randint(0, SPACE.vocab_size, (2, 16))
    with torch.no_grad():
        a, b = supernet(idx, SPACE.largest()), supernet(idx, SPACE.smallest())
    assert not torch.allclose(a, b)
    net = Supernet(SPACE)
    net(idx, SPACE.largest()).sum().backward()
    # Weights no largest-subnet path touches: the other variants' FFNs.
    untouched = {n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()}
    assert untouched and all(n.startswith("shared.") or ".std_" in n or ".lr_" in n for n in untouched)


def test_kv_cache_generation_matches_the_full_forward():
    torch.manual_seed(3)
    cfg = SubnetConfig(11, 16, 12, 4, (2, 3, 1), (10, 6, 6), ("glu", "shared", "lowrank"), 3)
    model = Transformer(cfg).eval()
    idx = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        full = model(idx)
        logits, cache = model(idx[:, :5], return_cache=True)
        steps = [logits]
        for t in range(5, 12):
            logits, cache = model(idx[:, t:t + 1], cache=cache, return_cache=True)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="context_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_shared_ffn_is_one_module():
    cfg = SubnetConfig(11, 16, 12, 4, (2, 2, 2), (6, 6, 10), ("shared", "shared", "standard"))
    model = Transformer(cfg)
    assert model.blocks[0]._shared_ffn[0] is model.blocks[1]._shared_ffn[0] is model.shared_ffn
    assert model.blocks[2]._shared_ffn == [] and model.blocks[0].ffn is None
    assert sum(1 for k in model.state_dict() if k.startswith("shared_ffn.")) == 4


def test_supernet_rejects_subnets_outside_its_space(supernet):
    with pytest.raises(ValueError, match="layers"):
        supernet(torch.zeros(1, 4, dtype=torch.long),
                 SubnetConfig(11, 16, 8, 4, (1,) * 4, (6,) * 4, ("standard",) * 4))
