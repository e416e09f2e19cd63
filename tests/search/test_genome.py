import random

import pytest

from search.model.genome import GenomeCodec
from search.model.space import SearchSpace

SPACE = SearchSpace(context_len=16, head_dim=4, d_model=(8, 12), layers=(1, 2, 3), heads=(1, 2, 3),
                    ffn_dim=(6, 10), lowrank_rank=(2, 3), vocab_size=11)
CODEC = GenomeCodec(SPACE)


def test_layout_and_bounds():
    assert CODEC.length == 3 + 3 * 3
    low, up = CODEC.bounds
    assert low == [0] * CODEC.length
    assert up == [2, 1, 1] + [2, 1, 4] * 3


def test_round_trip_over_random_genomes():
    rng = random.Random(0)
    seen = set()
    for _ in range(500):
        raw = [rng.randrange(n + 1) for n in CODEC.bounds[1]]
        cfg = CODEC.decode(raw)
        SPACE.check(cfg)
        canonical = CODEC.encode(cfg)
        assert canonical == CODEC.repair(raw)
        assert CODEC.repair(canonical) == canonical  # repair is idempotent
        assert CODEC.decode(canonical) == cfg
        seen.add(cfg)
    assert len(seen) > 300  # the genomes reach many distinct subnets


def test_round_trip_over_sampled_subnets():
    rng = random.Random(1)
    for _ in range(300):
        cfg = SPACE.sample(rng)
        assert CODEC.decode(CODEC.encode(cfg)) == cfg
    for cfg in (SPACE.largest(), SPACE.smallest()) + tuple(SPACE.largest(v) for v in SPACE.ffn_variants):
        assert CODEC.decode(CODEC.encode(cfg)) == cfg


def test_repair_shares_the_shared_width_and_zeroes_inactive_genes():
    shared = SPACE.ffn_variants.index("shared")
    # 2 layers, both shared with different width genes; layer 2 inactive but set.
    g = [1, 0, 1, 0, 0, shared, 1, 1, shared, 2, 1, 3]
    cfg = CODEC.decode(g)
    assert cfg.ffn_variants == ("shared", "shared") and cfg.ffn_dims == (6, 6)
    assert cfg.lowrank_rank == 0
    assert CODEC.repair(g) == [1, 0, 0, 0, 0, shared, 1, 0, shared, 0, 0, 0]
    # Out-of-range genes are clamped by repair, refused by decode.
    assert CODEC.repair([9] * CODEC.length) == [2, 1, 0] + [2, 1, 4] * 3  # glu: no rank


@pytest.mark.parametrize("genome, message", [
    ([0] * 5, "has 12 genes, not 5"),
    ([3] + [0] * 11, r"gene 0 \(layers\) must be an index from 0 to 2, not 3"),
    ([0, 0, 0, 0, 0, 5] + [0] * 6, r"gene 5 \(ffn_variant of layer 0\)"),
    ([0, -1] + [0] * 10, r"gene 1 \(d_model\)"),
])
def test_check_enforces_the_choices(genome, message):
    with pytest.raises(ValueError, match=message):
        CODEC.decode(genome)


def test_encode_refuses_what_the_space_cannot_hold():
    from search.model.space import SubnetConfig
    with pytest.raises(ValueError, match="not one of the space's choices"):
        CODEC.encode(SubnetConfig(11, 16, 10, 4, (2,), (6,), ("standard",)))
