"""Training configs: TOML in, frozen dataclasses out.

A supernet training config has a ``[space]`` table (a :class:`SearchSpace`;
every choice key takes an integer or a list) and a ``[train]`` table
(:class:`TrainConfig`)::

    [space]
    context_len = 128          # tokens per sequence
    head_dim = 32
    d_model = [128, 192]
    layers = [2, 3, 4]
    heads = [2, 3, 4]
    ffn_dim = [256, 512, 768]
    ffn_variants = ["standard", "none", "lowrank", "shared", "glu"]
    lowrank_rank = [32, 64]

    [train]
    steps = 1000
    batch_size = 32
    out = "build/supernet_default"

The FFN study adds a ``[study]`` table (:class:`StudyConfig`). A mistake
raises :class:`ModelConfigError` with one line naming the key; the command
line tools print it and exit with status 2.
"""

from dataclasses import dataclass, fields, asdict
import pathlib
import typing

from gen.config import read_toml

from .space import SearchSpace, FFN_VARIANTS

__all__ = ["ModelConfigError", "TrainConfig", "StudyConfig", "RunConfig", "load_run_config",
           "parse_run_config"]


class ModelConfigError(ValueError):
    """A config that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    corpus : "shakespeare" (offline default) or "wikitext2".
    corpus_path : local WikiText-2 directory ("" = Hugging Face datasets).
    seed : seeds the weights, the batches and the subnet draws.
    steps : optimizer steps.
    batch_size : sequences per subnet per step (each ``context_len`` tokens).
    lr, min_lr : peak and final learning rate (linear warmup, cosine decay).
    warmup_steps : steps of linear warmup.
    weight_decay : AdamW decay of matrices (not biases or LayerNorms).
    grad_clip : max global gradient norm (0 = off).
    sandwich : BigNAS sandwich rule: each step trains the largest, the smallest
        and ``random_subnets`` random subnets; false trains the largest only.
    random_subnets : random subnets per step with the sandwich rule.
    random_weight_kib : when > 0, the sandwich's random subnets are drawn only
        among those whose int8 weights (one byte a parameter) fit this many
        KiB, the search's device budget (300 for the ECP5-85F): the shared
        slices that only oversized subnets use get no update from the random
        draws, the ones the search ranks get them all. 0 = any subnet.
    variant_sampling : how the sandwich picks FFN variants. ``"balanced"``
        (default): step s's largest and smallest take variant
        ``ffn_variants[s % len(ffn_variants)]`` in every layer, and each layer
        of a random subnet deals its variant from a shuffled deck of all
        variants, so every variant of every layer gets about as many updates.
        ``"by_macs"``: the largest is always the variant with the most MACs
        (GLU) and the smallest the one with the fewest (none), random layers
        draw uniformly (BigNAS as first built; it favours GLU).
    distill : in-place distillation: subnets other than the step's largest
        learn the largest's (detached) predictions instead of the labels.
    eval_interval : steps between validation evaluations (0 = only at the end).
    eval_tokens : validation tokens per evaluation (0 = the whole split).
    log_interval : steps between progress lines.
    checkpoint_interval : steps between checkpoints.
    device : "auto" (a GPU when present, else CPU), "cpu" or "cuda".
    threads : CPU threads for torch (0 = torch's default).
    out : output directory (checkpoint, manifest, metrics).
    """
    corpus: str = "shakespeare"
    corpus_path: str = ""
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    sandwich: bool = True
    random_subnets: int = 2
    random_weight_kib: float = 0.0
    variant_sampling: str = "balanced"
    distill: bool = False
    eval_interval: int = 250
    eval_tokens: int = 32768
    log_interval: int = 10
    checkpoint_interval: int = 50
    device: str = "auto"
    threads: int = 2
    out: str = "build/supernet"

    def __post_init__(self):
        from .data import CORPORA
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, not {self.corpus!r}")
        for name in ("steps", "batch_size", "log_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("warmup_steps", "random_subnets", "eval_interval", "eval_tokens", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)!r}")
        if not 0 < self.lr <= 1 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"lr must be in (0, 1] and min_lr in [0, lr]; got lr={self.lr!r}, "
                             f"min_lr={self.min_lr!r}")
        if self.random_weight_kib < 0:
            raise ValueError(f"random_weight_kib must be 0 or more, not {self.random_weight_kib!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be 0 or more")
        if self.variant_sampling not in ("balanced", "by_macs"):
            raise ValueError(f"variant_sampling must be balanced or by_macs, not {self.variant_sampling!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if not self.out:
            raise ValueError("out must name a directory")


@dataclass(frozen=True)
class StudyConfig:
    """The FFN study: one baseline shape, each FFN variant trained alike.

    d_model, layers, heads, ffn_dim : the baseline shape (every layer alike).
    variants : rows of the table. ``standard``, ``none``, ``shared``, ``glu``;
        ``glu:F`` is GLU with hidden width F (``glu:2/3`` = 2/3 of ffn_dim,
        the parameter-matched GLU); ``lowrank:R`` is rank R; ``lowrank:30%``
        picks the rank that cuts the model's non-embedding parameters by ~30%.
    seeds : training seeds; every variant is trained once per seed and the
        table gives mean ± std over them (empty = ``[train] seed`` only).
    """
    d_model: int = 192
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 768
    variants: tuple = ("standard", "none", "lowrank:30%", "lowrank:32", "shared", "glu", "glu:2/3")
    seeds: tuple = ()

    def __post_init__(self):
        for name in ("d_model", "layers", "heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if not self.variants:
            raise ValueError("variants needs at least one entry")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct and 0 or more, not {list(self.seeds)!r}")
        for v in self.variants:
            kind, _, arg = v.partition(":")
            if kind not in FFN_VARIANTS or (arg and kind not in ("glu", "lowrank")):
                raise ValueError(f"variants: {v!r} is not one of {', '.join(FFN_VARIANTS)}, "
                                 "glu:F, glu:2/3, lowrank:R or lowrank:P%")
            if arg and not (arg.isdigit() or (kind == "glu" and arg == "2/3")
                            or (kind == "lowrank" and arg.endswith("%") and arg[:-1].isdigit())):
                raise ValueError(f"variants: {v!r} has a bad argument {arg!r}")


@dataclass(frozen=True)
class RunConfig:
    name: str
    space: SearchSpace
    train: TrainConfig
    study: StudyConfig | None = None
    source: str | None = None

    def to_dict(self) -> dict:
        out = {"space": self.space.to_dict(), "train": asdict(self.train)}
        if self.study is not None:
            out["study"] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in asdict(self.study).items()}
        return out


_SPACE_KEYS = {"context_len": int, "head_dim": int, "d_model": "ints", "layers": "ints",
               "heads": "ints", "ffn_dim": "ints", "ffn_variants": "strs", "lowrank_rank": "ints"}


def _typed(section, key, value, kind):
    def bad(what):
        return ModelConfigError(f"[{section}] {key} = {value!r} has the wrong type; it must be {what}")
    if kind == "ints":
        value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
            raise bad("an integer or a list of integers")
        return tuple(value)
    if kind == "strs":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a string or a list of strings")
        return tuple(value)
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad("an integer")
    if kind is bool and not isinstance(value, bool):
        raise bad("true or false")
    if kind is str and not isinstance(value, str):
        raise bad("a string")
    return value


def _build(section, cls, table, kinds):
    if not isinstance(table, dict):
        raise ModelConfigError(f"[{section}] must be a table, not {table!r}")
    known = [f.name for f in fields(cls) if f.name != "vocab_size"]
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ModelConfigError(f"[{section}] has no key {key!r}; allowed keys: " + ", ".join(known))
        kwargs[key] = _typed(section, key, value, kinds[key])
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ModelConfigError(f"[{section}] {e}") from None


def _kinds(cls):
    hints = typing.get_type_hints(cls)
    return {k: {"variants": "strs", "seeds": "ints"}.get(k, hints[k]) for k in hints}


def parse_run_config(document: dict, *, name="config", source=None, need_study=False) -> RunConfig:
    """Build a :class:`RunConfig` from a parsed TOML document."""
    allowed = ("space", "train", "study") if need_study else ("space", "train")
    for key in document:
        if key not in allowed:
            raise ModelConfigError(f"unknown table [{key}]; allowed tables: " + ", ".join(allowed))
    space = _build("space", SearchSpace, document.get("space", {}), _SPACE_KEYS)
    train = _build("train", TrainConfig, document.get("train", {}), _kinds(TrainConfig))
    study = _build("study", StudyConfig, document.get("study", {}), _kinds(StudyConfig)) \
        if need_study else None
    return RunConfig(name, space, train, study, source)


def load_run_config(path, *, need_study=False) -> RunConfig:
    """Read a TOML training config; its name is the file's stem."""
    path = pathlib.Path(path)
    document = read_toml(path, ModelConfigError)
    try:
        return parse_run_config(document, name=path.stem, source=str(path), need_study=need_study)
    except ModelConfigError as e:
        raise ModelConfigError(f"{path}: {e}") from None
