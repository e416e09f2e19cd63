"""The genome of a subnet: a fixed-length list of choice indices, decoded in one place.

Every choice of a :class:`SearchSpace` is one gene, an index into that
choice's tuple, so DEAP's integer operators (``mutUniformInt``,
``cxTwoPoint``) apply directly with :attr:`GenomeCodec.bounds`. Layout, for a
space of at most ``L`` layers (length ``3 + 3 * L``)::

    [layers, d_model, lowrank_rank,                # one per subnet
     heads_0, ffn_dim_0, ffn_variant_0,            # layer 0
     ...,
     heads_{L-1}, ffn_dim_{L-1}, ffn_variant_{L-1}]

Genes of layers past ``layers`` are inactive: decoding ignores them, so a
mutation of the layer count can bring a layer back. :meth:`GenomeCodec.repair`
gives the canonical genome of the subnet a genome decodes to: out-of-range
indices clamped, every ``shared`` layer given the width of the first one
(they share one FFN), the width gene of ``none`` layers, the rank gene of a
subnet without ``lowrank`` layers and the genes of inactive layers set to 0.
``encode(decode(g)) == repair(g)`` and ``decode(encode(cfg)) == cfg``.
"""

import random
import typing

from .space import SearchSpace, SubnetConfig

__all__ = ["GenomeCodec"]

_PER_SUBNET = 3  # layers, d_model, lowrank_rank
_PER_LAYER = 3   # heads, ffn_dim, ffn_variant


class GenomeCodec:
    """Encode, decode, repair and check genomes of ``space``'s subnets."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.max_layers = max(space.layers)
        # Spaces without lowrank have no ranks; the gene still exists (always 0).
        self._ranks = space.lowrank_rank or (0,)
        self.choices = ([space.layers, space.d_model, self._ranks]
                        + [space.heads, space.ffn_dim, space.ffn_variants] * self.max_layers)

    @property
    def length(self) -> int:
        return len(self.choices)

    @property
    def bounds(self) -> tuple:
        """(low, up) per gene, inclusive, as DEAP's ``mutUniformInt`` takes them."""
        return [0] * self.length, [len(c) - 1 for c in self.choices]

    def check(self, genome: typing.Sequence[int]) -> None:
        """Raise ValueError unless ``genome`` has the right length and every gene
        indexes one of its choices."""
        if len(genome) != self.length:
            raise ValueError(f"a genome of this space has {self.length} genes, not {len(genome)}")
        for i, (g, c) in enumerate(zip(genome, self.choices)):
            if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(c):
                raise ValueError(f"gene {i} ({self._gene_name(i)}) must be an index from 0 to "
                                 f"{len(c) - 1}, not {g!r}")

    def _gene_name(self, i: int) -> str:
        if i < _PER_SUBNET:
            return ("layers", "d_model", "lowrank_rank")[i]
        layer, j = divmod(i - _PER_SUBNET, _PER_LAYER)
        return f"{('heads', 'ffn_dim', 'ffn_variant')[j]} of layer {layer}"

    def _layer(self, genome, i):
        base = _PER_SUBNET + _PER_LAYER * i
        return genome[base:base + _PER_LAYER]

    def repair(self, genome: typing.Sequence[int]) -> list:
        """The canonical genome of what ``genome`` decodes to (see the module docstring);
        genes out of range are clamped into it. Only the length must be right."""
        if len(genome) != self.length:
            raise ValueError(f"a genome of this space has {self.length} genes, not {len(genome)}")
        g = [min(max(int(x), 0), len(c) - 1) for x, c in zip(genome, self.choices)]
        layers = self.space.layers[g[0]]
        variants = self.space.ffn_variants
        shared_width = None
        for i in range(self.max_layers):
            base = _PER_SUBNET + _PER_LAYER * i
            if i >= layers:
                g[base:base + _PER_LAYER] = [0] * _PER_LAYER
                continue
            v = variants[g[base + 2]]
            if v == "none":
                g[base + 1] = 0
            elif v == "shared":
                shared_width = g[base + 1] if shared_width is None else shared_width
                g[base + 1] = shared_width
        if not any(variants[self._layer(g, i)[2]] == "lowrank" for i in range(layers)):
            g[2] = 0
        return g

    def decode(self, genome: typing.Sequence[int]) -> SubnetConfig:
        """The subnet of a genome (checked first; shared widths repaired)."""
        self.check(genome)
        g = self.repair(genome)
        layers = self.space.layers[g[0]]
        heads, dims, variants = [], [], []
        for i in range(layers):
            h, f, v = self._layer(g, i)
            heads.append(self.space.heads[h])
            dims.append(self.space.ffn_dim[f])
            variants.append(self.space.ffn_variants[v])
        return self.space.subnet(d_model=self.space.d_model[g[1]], heads=heads, ffn_dims=dims,
                                 ffn_variants=variants, lowrank_rank=self._ranks[g[2]])

    def encode(self, cfg: SubnetConfig) -> list:
        """The canonical genome of ``cfg``; ValueError when a choice is not in the space."""
        self.space.check(cfg)
        index = lambda choices, value: choices.index(value)
        g = [index(self.space.layers, cfg.layers), index(self.space.d_model, cfg.d_model),
             index(self._ranks, cfg.lowrank_rank) if cfg.lowrank_rank else 0]
        for h, f, v in zip(cfg.heads, cfg.ffn_dims, cfg.ffn_variants):
            g += [index(self.space.heads, h), index(self.space.ffn_dim, f) if v != "none" else 0,
                  index(self.space.ffn_variants, v)]
        g += [0] * (self.length - len(g))
        return g

    def random(self, rng: random.Random) -> list:
        """A uniformly drawn genome (every gene independently), repaired."""
        return self.repair([rng.randrange(len(c)) for c in self.choices])
