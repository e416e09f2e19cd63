import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search.model.space import (FFN_VARIANTS, SearchSpace, SubnetConfig, count_macs, count_params,
                                gemm_shapes, macs_per_token)
from search.model.transformer import Transformer

SPACE = SearchSpace(context_len=16, head_dim=4, d_model=(8, 12), layers=(1, 2, 3), heads=(1, 2, 3),
                    ffn_dim=(6, 10), lowrank_rank=(2, 3), vocab_size=11)


def one_variant(variant, **kw):
    args = dict(vocab_size=11, context_len=16, d_model=12, head_dim=4, heads=(2, 3),
                ffn_dims=(10, 10), ffn_variants=(variant, variant), lowrank_rank=3)
    args.update(kw)
    return SubnetConfig(**args)


def some_configs():
    rng = random.Random(1)
    return ([one_variant(v) for v in FFN_VARIANTS] + [SPACE.largest(), SPACE.smallest()]
            + [SPACE.sample(rng) for _ in range(12)])


@pytest.mark.parametrize("cfg", some_configs(), ids=lambda c: c.short())
def test_count_params_matches_torch_modules(cfg):
    model = Transformer(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg) == sum(t.numel() for t in model.state_dict().values())


def _flops(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("cfg", some_configs(), ids=lambda c: c.short())
def test_prompt_macs_match_flop_counter(cfg):
    model = Transformer(cfg).eval()
    for seq_len in (1, 7, cfg.context_len):
        idx = torch.randint(0, cfg.vocab_size, (1, seq_len))
        with torch.no_grad():
            assert _flops(lambda: model(idx)) == 2 * count_macs(cfg, seq_len, "prompt")


@pytest.mark.parametrize("cfg", some_configs()[:7], ids=lambda c: c.short())
def test_generate_macs_match_flop_counter(cfg):
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        _, cache = model(prompt, return_cache=True)
        nxt = torch.randint(0, cfg.vocab_size, (1, 1))
        # The new token is the 10th: it attends to 10 keys.
        assert _flops(lambda: model(nxt, cache=cache)) == 2 * count_macs(cfg, 10, "generate")


def test_gemm_shapes_and_per_token_figures():
    cfg = one_variant("lowrank")
    shapes = gemm_shapes(cfg, 16, "prompt")
    assert [g.op for g in shapes if g.layer == 0] == ["q", "k", "v", "scores", "context", "out",
                                                     "ffn_up_v", "ffn_up_u", "ffn_down_v", "ffn_down_u"]
    scores = next(g for g in shapes if g.layer == 1 and g.op == "scores")
    assert (scores.m, scores.k, scores.n, scores.count, scores.weight) == (16, 4, 16, 3, False)
    assert shapes[-1].op == "lm_head" and shapes[-1].layer is None
    assert (shapes[-1].m, shapes[-1].k, shapes[-1].n) == (16, 12, 11)
    gen = gemm_shapes(cfg, 16, "generate")
    assert all(g.m == 1 for g in gen)
    # A batch stacks the tokens of products with a weight; attention's products are
    # per sequence, so the batch multiplies their count, not their rows.
    for mode in ("prompt", "generate"):
        one, four = gemm_shapes(cfg, 16, mode), gemm_shapes(cfg, 16, mode, batch=4)
        for a, b in zip(one, four):
            if a.weight:
                assert (b.m, b.k, b.n, b.count) == (4 * a.m, a.k, a.n, a.count)
            else:
                assert (b.m, b.k, b.n, b.count) == (a.m, a.k, a.n, 4 * a.count)
        assert count_macs(cfg, 16, mode, batch=4) == 4 * count_macs(cfg, 16, mode)
    assert macs_per_token(cfg, 16, "prompt") == count_macs(cfg, 16, "prompt") / 16
    assert count_macs(cfg, 16, lm_head=False) == count_macs(cfg, 16) - 16 * 12 * 11
    with pytest.raises(ValueError, match="seq_len"):
        count_macs(cfg, 17)
    with pytest.raises(ValueError, match="mode"):
        count_macs(cfg, 4, "decode")


def test_hand_count_of_one_standard_layer():
    # d=12, 2 heads of 4 (a=8), f=10, V=11, C=16, one layer.
    cfg = SubnetConfig(11, 16, 12, 4, (2,), (10,), ("standard",))
    emb = 11 * 12 + 16 * 12
    attn = 3 * (12 * 8 + 8) + 8 * 12 + 12
    ffn = 12 * 10 + 10 + 10 * 12 + 12
    assert count_params(cfg) == emb + 2 * 24 + attn + ffn + 24
    T = 5
    assert count_macs(cfg, T) == T * (3 * 12 * 8 + 8 * 12 + 12 * 10 * 2 + 12 * 11) + 2 * 2 * T * T * 4


def test_subnet_config_is_normalized_and_validated():
    a = SubnetConfig(11, 16, 12, 4, (2, 2), (10, 6), ("none", "standard"), lowrank_rank=3)
    assert a.ffn_dims == (0, 6) and a.lowrank_rank == 0 and a.layers == 2
    assert a == SubnetConfig.from_dict(a.to_dict()) and hash(a) == hash(SubnetConfig.from_dict(a.to_dict()))
    with pytest.raises(ValueError, match="one ffn_dim"):
        one_variant("shared", ffn_dims=(6, 10))
    with pytest.raises(ValueError, match="not one of"):
        one_variant("moe")
    with pytest.raises(ValueError, match="lowrank_rank"):
        one_variant("lowrank", lowrank_rank=0)
    with pytest.raises(ValueError, match="one entry per layer"):
        one_variant("standard", ffn_dims=(10,))


def test_space_extremes_sampling_and_check():
    big, small = SPACE.largest(), SPACE.smallest()
    assert big.layers == 3 and big.d_model == 12 and set(big.ffn_variants) == {"glu"}
    assert small.layers == 1 and small.d_model == 8 and set(small.ffn_variants) == {"none"}
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        cfg = SPACE.sample(rng)
        SPACE.check(cfg)
        assert count_macs(small, 16) <= count_macs(cfg, 16) <= count_macs(big, 16)
        seen.update(cfg.ffn_variants)
    assert seen == set(FFN_VARIANTS)
    with pytest.raises(ValueError, match="d_model"):
        SPACE.check(SubnetConfig(11, 16, 16, 4, (1,), (6,), ("standard",)))
    # Membership, not "at most the largest": the supernet never trained these slices.
    for bad, message in ((dict(d_model=10), "d_model 10 is not one of the space's choices \\(8, 12\\)"),
                         (dict(heads=(1, 4)), r"heads\[1\] 4"),
                         (dict(ffn_dims=(6, 7)), r"ffn_dims\[1\] 7"),
                         (dict(ffn_variants=("lowrank", "standard"), lowrank_rank=1), "lowrank_rank 1")):
        args = dict(vocab_size=11, context_len=16, d_model=8, head_dim=4, heads=(1, 2), ffn_dims=(6, 10),
                    ffn_variants=("standard", "standard"))
        args.update(bad)
        with pytest.raises(ValueError, match=message):
            SPACE.check(SubnetConfig(**args))
    for v in FFN_VARIANTS:
        assert set(SPACE.largest(v).ffn_variants) == set(SPACE.smallest(v).ffn_variants) == {v}
        assert SPACE.largest(v).layers == 3 and SPACE.smallest(v).d_model == 8
    fixed = SPACE.sample(rng, ffn_variants=("none", "shared"))
    assert fixed.ffn_variants == ("none", "shared") and fixed.layers == 2
    assert SubnetConfig.from_dict(big.to_dict()).key() == big.key() != small.key()
    with pytest.raises(ValueError, match="not allowed"):
        SearchSpace(ffn_variants=("standard",), vocab_size=11, context_len=16, head_dim=4,
                    d_model=(12,)).check(one_variant("glu"))
