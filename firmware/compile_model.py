"""Compile a :class:`~firmware.model.QuantizedModel` into a :class:`ModelImage`: the memory plan,
the byte stream that loads it once, and the on-chip program that generates text.

The program follows "The integer Transformer" of ``docs/intmath.md`` (and
``firmware/model.py``'s names) one position at a time::

    word 0:  EMBED (TOK[POS], POS) -> x
             per layer: LAYERNORM, q/k/v linears (bias by COPY_ACC, WS MATMULs that
             ACCUMULATE, REQ with per-channel multipliers), k into the transposed K
             cache (PUT_COL), v into the V cache (COPY_SP with flags.POS), per head
             scores over every context tile, SOFTMAX with flags.POS (the causal mask),
             probabilities @ V, REQ, the out linear, ADD into x; the FFN of the variant
             BRANCH PROMPT -> loop   (the next token is a prompt token: no LM head)
             final LAYERNORM, LM head (the tied embedding as B), ARGMAX, EMIT
    loop:    BRANCH LOOP -> word 0
             HALT

Prefill is the same program position by position (a prompt of P tokens runs P
positions, the LM head only at the last), so a decode step and a prefill over
the same positions compute the same integers.

Memory plan (the vector layout of ``docs/intmath.md``; the array must be
square, rows == cols = C, because a vector's row is one k-chunk of a MATMUL
and one output tile at once):

* scratchpad: each weight W (out x in) as W^T in the column-table layout (entry
  = output channel, n = in), so output tile j, k-chunk c is the WS B tile at
  ``base + j*in + c*C``; the token embedding as one column table (EMBED's
  table and the LM head's B operand); the position table; per layer and head
  the K cache transposed (a column table of positions, n = head_dim) and the V
  cache (head_dim / C blocks of T rows, row = position); the int8 activations.
* accumulator: the residual stream x, biases, per-channel multipliers,
  LayerNorm gamma then beta, matmul outputs, attention scores, logits.

A model or config that cannot run raises :class:`ModelRefused` (one line)
before anything runs.
"""

from dataclasses import dataclass, field
import math

import numpy as np

from rtl.isa import (Geometry, Instruction, Opcode, Flags, VecOp, Branch, Param, UNITS,
                     INSTRUCTION_BYTES, HOST_FETCH_CYCLES, PROGRAM_FETCH_CYCLES, encode,
                     vector_rows, vector_op_cycles)
from . import cycles
from .model import QuantizedModel, ModelDesc
from .compiler import k_loop
from .packing import pack_rows, pack_acc_lanes
from .program import Program, Placement

__all__ = ["ModelRefused", "ModelImage", "Region", "compile_model", "check_fits",
           "plan_memory", "program_length", "CATEGORIES", "CycleModel"]

MAX_LOAD_ROWS = 0xFFFF          # rows (words) one LOAD_* instruction carries

#: How the per-layer cycle split names instructions.
CATEGORIES = ("matmul", "nonlinear", "data movement")
_NONLINEAR = {VecOp.REQ, VecOp.ADD, VecOp.MUL, VecOp.GELU, VecOp.SOFTMAX, VecOp.LAYERNORM,
              VecOp.EMBED, VecOp.ARGMAX}


class ModelRefused(ValueError):
    """A model that this config cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class Region:
    name: str
    memory: str     # "scratchpad" or "accumulator"
    base: int
    rows: int


class _Allocator:
    def __init__(self, memory):
        self.memory, self.next, self.regions = memory, 0, {}

    def take(self, name, rows) -> int:
        self.regions[name] = Region(name, self.memory, self.next, rows)
        self.next += rows
        return self.regions[name].base


def _cache_len(desc: ModelDesc, g: Geometry) -> int:
    """T: the positions the program keeps (the KV cache and the position table)."""
    return min(desc.context_len, g.tokens) if g.tokens else desc.context_len


def _config_problems(desc: ModelDesc, g: Geometry) -> str | None:
    missing = [u for u in UNITS if not g.has_unit(u)]
    if missing:
        return f"the config lacks the vector units {', '.join(missing)} ([accelerator] units)"
    if g.dataflow != "ws":
        return "the Transformer program needs the WS dataflow, not OS"
    if g.rows != g.cols:
        return (f"the Transformer program needs rows == cols (the vector layout), "
                f"not {g.rows}x{g.cols}")
    if desc.head_dim % g.cols:
        return f"head_dim {desc.head_dim} must be a multiple of cols = {g.cols}"
    if not g.program_words:
        return "the config has no program memory ([accelerator] program_kib = 0)"
    if g.tokens < 2:
        return f"the token buffer holds {g.tokens} tokens; at least 2 are needed ([accelerator] tokens)"
    return None


def plan_memory(desc: ModelDesc, g: Geometry) -> tuple[dict, int, int]:
    """The regions of a model on ``g``: ({name: Region}, scratchpad rows, accumulator rows).

    Needs only the description, so the search can ask whether a model fits without weights."""
    C = g.cols
    T = _cache_len(desc, g)
    d = desc.d_model
    vr = lambda n: vector_rows(n, C)
    table = lambda entries, n: vector_rows(entries, C) * n
    sp, acc = _Allocator("scratchpad"), _Allocator("accumulator")
    sp.take("wte", table(desc.vocab_size, d))
    sp.take("wpe", table(T, d))
    linears = desc.linears()
    for prefix, out, inp, _, _ in linears:
        sp.take(f"{prefix}.weight", table(out, inp))
    for i, h in enumerate(desc.heads):
        for j in range(h):
            sp.take(f"layers.{i}.k_cache.{j}", table(T, desc.head_dim))
        sp.take(f"layers.{i}.v_cache", vr(h * desc.head_dim) * T)
    a_max = max(desc.attn_dim(i) for i in range(desc.layers))
    f_max = max(desc.ffn_dims + (desc.lowrank_rank, 1))
    for name, n in (("act.h", d), ("act.q", a_max), ("act.k", a_max), ("act.v", a_max),
                    ("act.probs", T), ("act.ctx", a_max), ("act.f1", f_max), ("act.f2", f_max),
                    ("act.f3", f_max)):
        sp.take(name, vr(n))
    acc.take("x", vr(d))
    for prefix, out, _, has_bias, _ in linears:
        if has_bias:
            acc.take(f"{prefix}.bias", vr(out))
        acc.take(f"{prefix}.mult", vr(out))
    for prefix in desc.layernorms():
        acc.take(f"{prefix}.gamma_beta", 2 * vr(d))
    out_max = max([out for _, out, _, _, _ in linears] + [d])
    acc.take("out", vr(out_max))
    acc.take("scores", vr(T))
    acc.take("ctx", vr(a_max))
    acc.take("logits", vr(desc.vocab_size))
    regions = {**sp.regions, **acc.regions}
    return regions, sp.next, acc.next


def _kib(rows, row_bytes):
    return f"{rows * row_bytes / 1024:.1f} KiB"


def check_fits(desc: ModelDesc, g: Geometry, *, program_words: int | None = None) -> None:
    """Raise :class:`ModelRefused` (one line) when ``desc`` cannot run on ``g``."""
    problem = _config_problems(desc, g)
    if problem:
        raise ModelRefused(f"{desc.short()} cannot run: {problem}")
    _, sp_rows, acc_rows = plan_memory(desc, g)
    needs = [("scratchpad", sp_rows, g.sp_depth, g.sp_row_bytes),
             ("accumulator", acc_rows, g.acc_depth, g.acc_row_bytes),
             ("program memory", None, g.program_words, INSTRUCTION_BYTES)]
    for memory, need, have, row_bytes in needs:
        if need is None:
            need = program_words if program_words is not None else program_length(desc, g)
        if need > have:
            unit = "words" if memory == "program memory" else "rows"
            raise ModelRefused(f"{desc.short()} does not fit: the {memory} needs {need} {unit} "
                               f"({_kib(need, row_bytes)}), the config has {have} "
                               f"({_kib(have, row_bytes)})")


# --- the program ------------------------------------------------------------------------------

@dataclass
class _Emitter:
    desc: ModelDesc
    g: Geometry
    regions: dict
    qm: QuantizedModel | None       # None: count words only (scalars are then 0)
    words: list = field(default_factory=list)
    labels: list = field(default_factory=list)   # (layer or None, category) per word
    layer: int | None = None

    def r(self, name) -> int:
        return self.regions[name].base

    def scalar(self, name) -> int:
        return self.qm.scalar(name) if self.qm is not None else 0

    def add(self, ins: Instruction):
        self.words.append(ins)
        if ins.opcode == Opcode.MATMUL:
            kind = "matmul"
        elif ins.opcode == Opcode.VEC and ins.tag in _NONLINEAR:
            kind = "nonlinear"
        else:
            kind = "data movement"
        self.labels.append((self.layer, kind))

    def vec(self, op, **fields):
        self.add(Instruction(Opcode.VEC, tag=op, **fields))

    def linear(self, prefix, src, inp, out, dst, has_bias):
        """dst (acc) = bias + src (sp vector of inp) @ W^T, out outputs."""
        C = self.g.cols
        w = self.r(f"{prefix}.weight")
        if has_bias:
            self.vec(VecOp.COPY_ACC, addr0=self.r(f"{prefix}.bias"), addr2=dst,
                     count0=vector_rows(out, C))
        for j in range(vector_rows(out, C)):
            self.k_loop(src, w + j * inp, dst + j, inp, accumulate=has_bias)

    def k_loop(self, a_row, b_row, acc_row, K, accumulate=False):
        """acc row (+)= the vector at a_row (K elements) @ the K x C weights at b_row."""
        for ins in k_loop(self.g, a_row=a_row, a_step=1, b_row=b_row, acc_row=acc_row, m=1, K=K,
                          accumulate=accumulate):
            self.add(ins)

    def req(self, prefix, src, dst, n):
        self.vec(VecOp.REQ, flags=Flags.PERCHAN, addr0=src, addr1=self.r(f"{prefix}.mult"),
                 addr2=dst, count0=n, shift=self.scalar(f"{prefix}.shift"))

    def linear_req(self, prefix, src, inp, out, dst_sp, has_bias=True):
        self.linear(prefix, src, inp, out, self.r("out"), has_bias)
        self.req(prefix, self.r("out"), dst_sp, out)

    def linear_add(self, prefix, src, inp, has_bias=True):
        d = self.desc.d_model
        self.linear(prefix, src, inp, d, self.r("out"), has_bias)
        self.vec(VecOp.ADD, flags=Flags.PERCHAN, addr0=self.r("x"), addr1=self.r("out"),
                 addr2=self.r(f"{prefix}.mult"), count0=d, shift=self.scalar(f"{prefix}.shift"))

    def layernorm(self, prefix, dst):
        self.vec(VecOp.LAYERNORM, addr0=self.r("x"), addr1=self.r(f"{prefix}.gamma_beta"),
                 addr2=dst, count0=self.desc.d_model, count1=self.scalar(f"{prefix}.sh"),
                 mult=self.scalar(f"{prefix}.mult"), shift=self.scalar(f"{prefix}.shift"))

    def gelu(self, prefix, src, dst, n):
        for param, name in ((Param.GELU_B, "b"), (Param.GELU_C, "c"), (Param.GELU_ONE, "one")):
            value = self.scalar(f"{prefix}.{name}") & 0xFFFFFFFF
            self.add(Instruction(Opcode.SETP, tag=param, addr0=value & 0xFFFF, addr1=value >> 16))
        self.vec(VecOp.GELU, addr0=src, addr2=dst, count0=n, mult=self.scalar(f"{prefix}.mult"),
                 shift=self.scalar(f"{prefix}.shift"))

    def attention(self, i):
        desc, C = self.desc, self.g.cols
        d, hd, heads = desc.d_model, desc.head_dim, desc.heads[i]
        a = heads * hd
        T = _cache_len(desc, self.g)
        p = f"layers.{i}.attn"
        h, q, k, v = self.r("act.h"), self.r("act.q"), self.r("act.k"), self.r("act.v")
        self.layernorm(f"layers.{i}.ln1", h)
        for name, dst in (("q", q), ("k", k), ("v", v)):
            self.linear_req(f"{p}.{name}", h, d, a, dst)
        hr = hd // C                # rows of one head's vector
        for j in range(heads):
            self.vec(VecOp.PUT_COL, addr0=k + j * hr, addr1=self.r(f"layers.{i}.k_cache.{j}"),
                     count0=hd)
        v_cache = self.r(f"layers.{i}.v_cache")
        self.vec(VecOp.COPY_SP, flags=Flags.POS, addr0=v, addr1=v_cache, count0=a // C,
                 count1=T)
        scores, probs, ctx = self.r("scores"), self.r("act.probs"), self.r("ctx")
        tiles = vector_rows(T, C)
        for j in range(heads):
            k_cache = self.r(f"layers.{i}.k_cache.{j}")
            for t in range(tiles):
                self.k_loop(q + j * hr, k_cache + t * hd, scores + t, hd)
            self.vec(VecOp.SOFTMAX, flags=Flags.POS, addr0=scores, addr2=probs, count0=1,
                     count1=T, mult=self.scalar(f"{p}.softmax.mult"),
                     shift=self.scalar(f"{p}.softmax.shift"))
            for e in range(hr):
                block = v_cache + (j * hr + e) * T
                self.k_loop(probs, block, ctx + j * hr + e, T)
        self.vec(VecOp.REQ, addr0=ctx, addr2=self.r("act.ctx"), count0=a,
                 mult=self.scalar(f"{p}.context.mult"), shift=self.scalar(f"{p}.context.shift"))
        self.linear_add(f"{p}.out", self.r("act.ctx"), a)

    def ffn(self, i):
        desc = self.desc
        variant, f, r = desc.ffn_variants[i], desc.ffn_dims[i], desc.lowrank_rank
        if variant == "none":
            return
        d = desc.d_model
        F = desc.ffn_prefix(i)
        h, f1, f2, f3 = self.r("act.h"), self.r("act.f1"), self.r("act.f2"), self.r("act.f3")
        self.layernorm(f"layers.{i}.ln2", h)
        if variant in ("standard", "shared"):
            self.linear_req(f"{F}.up", h, d, f, f1)
            self.gelu(f"{F}.gelu", f1, f2, f)
            self.linear_add(f"{F}.down", f2, f)
        elif variant == "glu":
            self.linear_req(f"{F}.gate", h, d, f, f1)
            self.gelu(f"{F}.gelu", f1, f2, f)
            self.linear_req(f"{F}.up", h, d, f, f1)
            self.vec(VecOp.MUL, addr0=f2, addr1=f1, addr2=f3, count0=f,
                     mult=self.scalar(f"{F}.mul.mult"), shift=self.scalar(f"{F}.mul.shift"))
            self.linear_add(f"{F}.down", f3, f)
        else:   # lowrank
            self.linear_req(f"{F}.up_v", h, d, r, f1, has_bias=False)
            self.linear_req(f"{F}.up_u", f1, r, f, f2)
            self.gelu(f"{F}.gelu", f2, f3, f)
            self.linear_req(f"{F}.down_v", f3, f, r, f1, has_bias=False)
            self.linear_add(f"{F}.down_u", f1, r)

    def program(self):
        desc, C = self.desc, self.g.cols
        d = desc.d_model
        self.vec(VecOp.EMBED, addr0=self.r("wte"), addr1=self.r("wpe"), addr2=self.r("x"),
                 count0=d, mult=self.scalar("embed.mult_tok"),
                 count1=self.scalar("embed.mult_pos"))
        for i in range(desc.layers):
            self.layer = i
            self.attention(i)
            self.ffn(i)
        self.layer = None
        prompt_branch = len(self.words)
        self.add(Instruction(Opcode.BRANCH, tag=Branch.PROMPT))     # its target patched below
        h, wte, logits = self.r("act.h"), self.r("wte"), self.r("logits")
        self.layernorm("ln_f", h)
        for t in range(vector_rows(desc.vocab_size, C)):
            self.k_loop(h, wte + t * d, logits + t, d)
        self.vec(VecOp.ARGMAX, addr0=logits, count0=desc.vocab_size)
        self.add(Instruction(Opcode.EMIT))
        loop = len(self.words)
        # (A program past 65536 words is refused by check_fits; only its length counts then.)
        self.words[prompt_branch] = Instruction(Opcode.BRANCH, tag=Branch.PROMPT,
                                                addr0=loop & 0xFFFF)
        self.add(Instruction(Opcode.BRANCH, tag=Branch.LOOP, addr0=0))
        self.add(Instruction(Opcode.HALT))
        return prompt_branch, loop


def program_length(desc: ModelDesc, g: Geometry) -> int:
    """Words of the program for ``desc`` on ``g`` (no weights needed)."""
    regions, _, _ = plan_memory(desc, g)
    # Addresses do not change the count (and may not fit an instruction when the model
    # does not fit the memories).
    regions = {name: Region(name, r.memory, 0, r.rows) for name, r in regions.items()}
    emitter = _Emitter(desc, g, regions, None)
    emitter.program()
    return len(emitter.words)


# --- the image --------------------------------------------------------------------------------

def _column_table(matrix, C, entries=None) -> np.ndarray:
    """Rows of the column table of ``matrix`` (entries x n): entry v, element i is lane v % C of
    row (v // C) * n + i."""
    matrix = np.asarray(matrix, dtype=np.int64)
    entries = matrix.shape[0] if entries is None else entries
    n = matrix.shape[1]
    tiles = vector_rows(entries, C)
    padded = np.zeros((tiles * C, n), dtype=np.int64)
    padded[:entries] = matrix[:entries]
    # (tiles, C, n) -> (tiles, n, C): row (tile, i), lane v % C.
    return padded.reshape(tiles, C, n).transpose(0, 2, 1).reshape(tiles * n, C)


def _vector(values, C) -> np.ndarray:
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    rows = vector_rows(len(values), C)
    flat = np.zeros(rows * C, dtype=np.int64)
    flat[:len(values)] = values
    return flat.reshape(rows, C)


@dataclass
class ModelImage:
    """A compiled model: where everything lives, how to load it, and its program.

    ``words`` is the program (loaded at word 0, the RUN entry); ``labels`` gives each word's
    layer (None outside the layers) and category (:data:`CATEGORIES`). ``max_tokens`` is the
    longest sequence (prompt + generated) a RUN may hold; ``loop_word`` and
    ``prompt_branch_word`` delimit what a prompt position skips.
    """
    geometry: Geometry
    desc: ModelDesc
    regions: dict
    sp_rows: int
    acc_rows: int
    load: Program
    words: list
    labels: list
    prompt_branch_word: int
    loop_word: int
    max_tokens: int

    @property
    def vocab_size(self) -> int:
        return self.desc.vocab_size

    @property
    def logits_region(self) -> Region:
        return self.regions["logits"]

    def run_step(self, prompt_ids, generate: int) -> tuple[Instruction, bytes]:
        """The RUN instruction and its payload for a prompt and ``generate`` new tokens."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("the prompt needs at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        if generate < 0:
            raise ValueError(f"tokens to generate must be >= 0, not {generate}")
        # N = 0 still runs the LM head at the last position, whose ARGMAX writes TOK[P].
        if len(ids) + max(generate, 1) > self.max_tokens:
            raise ValueError(f"a prompt of {len(ids)} tokens and {generate} new ones need "
                             f"{len(ids) + max(generate, 1)} positions; this image holds "
                             f"{self.max_tokens}")
        payload = b"".join(t.to_bytes(2, "little") for t in ids)
        return Instruction(Opcode.RUN, addr0=0, count0=len(ids), count1=generate), payload

    def store_logits(self) -> Instruction:
        region = self.logits_region
        return Instruction(Opcode.STORE, addr0=region.base, count0=region.rows)

    def trace(self, last: bool) -> list:
        """Indices of the words one position executes: a prompt position (``last`` False:
        the next token is a prompt token) or one that runs the LM head."""
        if last:
            return list(range(self.loop_word + 1))
        return list(range(self.prompt_branch_word + 1)) + [self.loop_word]

    def summary(self) -> str:
        g = self.geometry
        return (f"{self.desc.short()}: scratchpad {self.sp_rows}/{g.sp_depth} rows, "
                f"accumulator {self.acc_rows}/{g.acc_depth} rows, program {len(self.words)}/"
                f"{g.program_words} words, up to {self.max_tokens} tokens")


def compile_model(qmodel: QuantizedModel, geometry: Geometry) -> ModelImage:
    """The image of ``qmodel`` on ``geometry``; :class:`ModelRefused` if it cannot run."""
    desc, g = qmodel.desc, geometry
    problem = _config_problems(desc, g)
    if problem:
        raise ModelRefused(f"{desc.short()} cannot run: {problem}")
    regions, sp_rows, acc_rows = plan_memory(desc, g)
    check_fits(desc, g, program_words=0)        # the memories first: their rows are addresses
    emitter = _Emitter(desc, g, regions, qmodel)
    prompt_branch, loop = emitter.program()
    check_fits(desc, g, program_words=len(emitter.words))
    C = g.cols
    T = _cache_len(desc, g)

    load = Program(g)
    sp_data = {"wte": _column_table(qmodel["wte"], C),
               "wpe": _column_table(qmodel["wpe"], C, entries=T)}
    for prefix, _, _, _, _ in desc.linears():
        sp_data[f"{prefix}.weight"] = _column_table(qmodel[f"{prefix}.weight"], C)
    acc_data = {}
    for prefix, _, _, has_bias, _ in desc.linears():
        if has_bias:
            acc_data[f"{prefix}.bias"] = _vector(qmodel[f"{prefix}.bias"], C)
        acc_data[f"{prefix}.mult"] = _vector(qmodel[f"{prefix}.mult"], C)
    for prefix in desc.layernorms():
        acc_data[f"{prefix}.gamma_beta"] = np.concatenate(
            [_vector(qmodel[f"{prefix}.gamma"], C), _vector(qmodel[f"{prefix}.beta"], C)])
    pack = {Opcode.LOAD_SP: lambda part: pack_rows(part, g.input_width, g.sp_lanes),
            Opcode.LOAD_ACC: lambda part: pack_acc_lanes(part, g.acc_width),
            Opcode.LOAD_PROG: lambda part: b"".join(encode(w) for w in part)}
    loads = [(Opcode.LOAD_SP, regions[name], rows) for name, rows in sp_data.items()]
    loads += [(Opcode.LOAD_ACC, regions[name], rows) for name, rows in acc_data.items()]
    loads.append((Opcode.LOAD_PROG, Region("program", "program memory", 0, len(emitter.words)),
                  emitter.words))
    for op, region, rows in loads:
        assert len(rows) == region.rows, region.name
        for start in range(0, len(rows), MAX_LOAD_ROWS):
            part = rows[start:start + MAX_LOAD_ROWS]
            load.add(Instruction(op, addr0=region.base + start, count0=len(part)), pack[op](part))
    return ModelImage(geometry=g, desc=desc, regions=regions, sp_rows=sp_rows, acc_rows=acc_rows,
                      load=load, words=emitter.words, labels=emitter.labels,
                      prompt_branch_word=prompt_branch, loop_word=loop, max_tokens=T)


# --- the whole-program cycle model ------------------------------------------------------------

def _timing_key(ins: Instruction) -> tuple:
    # What the timing of a word depends on (addresses never matter).
    return (ins.opcode, ins.flags, ins.count0, ins.count1, ins.tag)


class CycleModel:
    """Cycles of the image's program without simulating a whole generation.

    A position's words are cut into pieces that each start with a word waiting for the
    engine (a VEC, HALT); such a word dispatches once all before it is done, so the pieces' cycles
    (:func:`firmware.cycles.straight_line_cycles`, each distinct piece timed once) add up.
    POS enters only through the vector unit's latency (:func:`rtl.isa.vector_op_cycles`:
    SOFTMAX with flags.POS), added per position. :meth:`run_cycles` equals
    :func:`firmware.cycles.run_cycles` (tests/firmware/test_compile_model.py), which is
    checked against the RTL.
    """

    def __init__(self, image: "ModelImage"):
        self.image = image
        self.g = image.geometry
        self._cache = {}
        self.full = self._pieces(image.trace(last=True))
        self.prompt = self._pieces(image.trace(last=False))

    def _pieces(self, trace):
        words = self.image.words
        pieces, current = [], []
        for index in trace:
            ins = words[index]
            if current and ins.opcode in (Opcode.VEC, Opcode.HALT):
                pieces.append(current)
                current = []
            current.append(index)
        pieces.append(current)
        out = []
        for piece in pieces:
            piece_words = [words[i] for i in piece]
            key = tuple(_timing_key(w) for w in piece_words)
            if key not in self._cache:
                self._cache[key] = cycles.straight_line_cycles(piece_words, self.g, pos=0)
            moving = [w for w in piece_words if w.opcode == Opcode.VEC
                      and w.tag == VecOp.SOFTMAX and w.flags & Flags.POS]
            # A moving VEC's latency adds to the piece one for one only while the unit,
            # not the fetch of the next word, is what the next dispatch waits for.
            assert all(cycles.VEC_DISPATCH_CYCLES + vector_op_cycles(w, self.g, 0)
                       >= PROGRAM_FETCH_CYCLES + 1 for w in moving)
            out.append((piece, self._cache[key], moving))
        return out

    def _piece_cycles(self, piece, pos):
        _, base, moving = piece
        return base + sum(vector_op_cycles(w, self.g, pos) - vector_op_cycles(w, self.g, 0)
                          for w in moving)

    def position_cycles(self, pos: int, last: bool = True) -> int:
        """Cycles of the position ``pos``: one that runs the LM head (``last``: a generated
        token, or the last prompt token) or a prompt position that skips it."""
        return sum(self._piece_cycles(p, pos) for p in (self.full if last else self.prompt))

    def breakdown(self, pos: int, last: bool = True) -> dict:
        """{layer (None: embedding, final LayerNorm, LM head, control): {category: cycles}} of
        one position: each piece's leading VEC (its fetch, dispatch and latency) in its
        category, the rest of the piece (MATMULs) in ``matmul`` or, without MATMULs, in the
        category of its words."""
        labels, words, g = self.image.labels, self.image.words, self.g
        out = {}
        for piece in (self.full if last else self.prompt):
            indices = piece[0]
            total = self._piece_cycles(piece, pos)
            first = words[indices[0]]
            lead = 0
            if first.opcode == Opcode.VEC:
                # The next word dispatches once the unit is done and the word is fetched.
                lead = min(total, max(PROGRAM_FETCH_CYCLES + 1, cycles.VEC_DISPATCH_CYCLES
                                      + vector_op_cycles(first, g, pos)))
            layer, kind = labels[indices[0]]
            bucket = out.setdefault(layer, dict.fromkeys(CATEGORIES, 0))
            bucket[kind] += lead
            rest_kind = "matmul" if any(words[i].opcode == Opcode.MATMUL for i in indices) \
                else labels[indices[-1]][1]
            bucket[rest_kind] += total - lead
        return out

    def run_cycles(self, prompt: int, generate: int) -> int:
        """Cycles of RUN(P = ``prompt``, N = ``generate`` >= 1), as the simulators count them:
        from the RUN's first byte to the last EMIT's last byte."""
        if generate < 1:
            raise ValueError("the cycles of a RUN are counted to its last reply byte: N >= 1")
        last = prompt + generate - 2
        t = HOST_FETCH_CYCLES + 1 + 2 * prompt + PROGRAM_FETCH_CYCLES   # word 0 dispatches
        t += sum(self.position_cycles(p, last=False) for p in range(prompt - 1))
        t += sum(self.position_cycles(p) for p in range(prompt - 1, last))
        # The last position up to its EMIT, which sends 2 bytes: the end is 3 cycles later.
        emit = self.image.loop_word - 1
        for piece in self.full:
            if emit in piece[0]:
                head = [self.image.words[i] for i in piece[0] if i < emit]
                t += cycles.straight_line_cycles(head, self.g, pos=last)
                break
            t += self._piece_cycles(piece, last)
        return t + 3

    def prefill_cycles(self, prompt: int) -> int:
        """RUN of a ``prompt``-token prompt to its first generated token (the prompt's
        positions one by one, the LM head at the last)."""
        return self.run_cycles(prompt, 1)

    def decode_cycles(self, pos: int) -> int:
        """One generated token at position ``pos`` (the previous token's EMIT to this one's)."""
        return self.position_cycles(pos)
