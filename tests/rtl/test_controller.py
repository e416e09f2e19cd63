"""The controller through the Accelerator's byte streams (Amaranth simulator).

Each instruction of rtl/isa.py is exercised with hand-built programs and the
results compared with torch. Whole matmuls through the compiler and every
simulator are tested in tests/firmware and tests/cocotb.
"""

import numpy as np
import pytest
import torch

from rtl.isa import Geometry, Instruction, Opcode, Flags, ErrorCode, encode
from rtl.top import Accelerator
from tests.rtl.streams import run_stream
from tests.rtl.test_requant import torch_requant


def pack(matrix, lanes, width):
    """Rows of signed lanes, lane 0 first, little-endian, zero padded (rtl/isa.py)."""
    out = bytearray()
    for row in matrix:
        value = 0
        for i, x in enumerate(row):
            value |= (int(x) & ((1 << width) - 1)) << (i * width)
        out += value.to_bytes((lanes * width + 7) // 8, "little")
    return bytes(out)


def unpack(data, lanes, width, nrows):
    row_bytes = (lanes * width + 7) // 8
    rows = []
    for r in range(nrows):
        value = int.from_bytes(data[r * row_bytes:(r + 1) * row_bytes], "little")
        row = [(value >> (i * width)) & ((1 << width) - 1) for i in range(lanes)]
        rows.append([x - (1 << width) if x >> (width - 1) else x for x in row])
    return torch.tensor(rows, dtype=torch.int64)


def program(*steps):
    return b"".join(encode(i) + p for i, p in steps)


@pytest.mark.parametrize("input_width", [4, 8, 16])
def test_load_then_store_scratchpad_rows(input_width):
    g = Geometry(rows=3, cols=5, input_width=input_width, acc_width=max(32, 2 * input_width),
                 scratchpad_kib=0.25, accumulator_kib=0.25, banks=2)
    lo, hi = -(1 << (input_width - 1)), (1 << (input_width - 1))
    rows = torch.randint(lo, hi, (7, g.sp_lanes), generator=torch.Generator().manual_seed(1))
    reply, _ = run_stream(Accelerator(g), program(
        (Instruction(Opcode.LOAD_SP, addr0=3, count0=7), pack(rows, g.sp_lanes, input_width)),
        (Instruction(Opcode.STORE_SP, addr0=3, count0=7), b""),
        (Instruction(Opcode.SYNC, tag=99), b""),
    ), 7 * g.sp_row_bytes + 1)
    assert reply[-1] == 99
    assert torch.equal(unpack(reply, g.sp_lanes, input_width, 7), rows)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_matmul_accumulate_bias_and_requantize(dataflow):
    """C = A @ B over two K tiles (overwrite, then accumulate), stored raw with bias and requantized."""
    g = Geometry(rows=4, cols=3, dataflow=dataflow, scratchpad_kib=0.5, accumulator_kib=0.5, banks=2)
    gen = torch.Generator().manual_seed(7)
    m = 4 if dataflow == "os" else 6
    k_tile = g.rows if dataflow == "ws" else 9
    a = torch.randint(-128, 128, (m, 2 * k_tile), generator=gen)
    b = torch.randint(-128, 128, (2 * k_tile, g.cols), generator=gen)
    bias = torch.randint(-2**20, 2**20, (g.cols,), generator=gen)
    steps = [(Instruction(Opcode.SET_BIAS), b"".join(int(x).to_bytes(4, "little", signed=True) for x in bias))]
    for t in range(2):
        a_t, b_t = a[:, t * k_tile:(t + 1) * k_tile], b[t * k_tile:(t + 1) * k_tile]
        a_rows = a_t if dataflow == "ws" else a_t.T     # OS keeps A transposed
        steps += [
            (Instruction(Opcode.LOAD_SP, addr0=0, count0=b_t.shape[0]), pack(b_t, g.sp_lanes, 8)),
            (Instruction(Opcode.LOAD_SP, addr0=40, count0=a_rows.shape[0]), pack(a_rows, g.sp_lanes, 8)),
            (Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE if t else 0, addr0=40, addr1=0,
                         addr2=5, count0=m, count1=k_tile), b""),
        ]
    mult, shift = 51234, 22
    steps += [
        (Instruction(Opcode.STORE, addr0=5, count0=m, flags=Flags.BIAS), b""),
        (Instruction(Opcode.STORE, addr0=5, count0=m, flags=Flags.REQUANT | Flags.BIAS,
                     mult=mult, shift=shift), b""),
        (Instruction(Opcode.REQUANT, addr0=5, addr1=100, count0=m, mult=mult, shift=shift), b""),
        (Instruction(Opcode.STORE_SP, addr0=100, count0=m), b""),
        (Instruction(Opcode.SYNC, tag=1), b""),
    ]
    n_raw, n_q, n_sp = m * g.acc_row_bytes, m * g.out_row_bytes, m * g.sp_row_bytes
    reply, _ = run_stream(Accelerator(g), program(*steps), n_raw + n_q + n_sp + 1)

    c = a @ b
    raw = np.frombuffer(reply[:n_raw], dtype="<i4").reshape(m, g.cols)
    assert torch.equal(torch.from_numpy(raw.astype(np.int64)), c + bias)
    q = unpack(reply[n_raw:n_raw + n_q], g.cols, 8, m)
    assert torch.equal(q, torch_requant(c, bias.expand_as(c), mult, shift, 8))
    sp_rows = unpack(reply[n_raw + n_q:n_raw + n_q + n_sp], g.sp_lanes, 8, m)
    assert torch.equal(sp_rows[:, :g.cols], torch_requant(c, torch.zeros_like(c), mult, shift, 8))
    assert torch.all(sp_rows[:, g.cols:] == 0)


def test_ws_ignores_stale_lanes_beyond_k():
    """A rows whose lanes past k hold junk must not leak into the result."""
    g = Geometry(rows=4, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=1)
    a = torch.tensor([[1, 2, 99, -99], [3, 4, 77, 55]])
    b = torch.tensor([[5, 6], [7, 8], [100, 100], [100, 100]])
    reply, _ = run_stream(Accelerator(g), program(
        (Instruction(Opcode.LOAD_SP, addr0=0, count0=4), pack(b, 4, 8)),
        (Instruction(Opcode.LOAD_SP, addr0=8, count0=2), pack(a, 4, 8)),
        (Instruction(Opcode.MATMUL, addr0=8, addr1=0, addr2=0, count0=2, count1=2), b""),
        (Instruction(Opcode.STORE, addr0=0, count0=2), b""),
    ), 2 * g.acc_row_bytes)
    got = np.frombuffer(reply, dtype="<i4").reshape(2, 2)
    assert got.tolist() == (a[:, :2] @ b[:2]).tolist()


def test_reserved_opcode_sets_the_sticky_error_until_reset():
    """A reserved opcode is illegal: later instructions are skipped with 0xFF replies of the
    right length (their payloads dropped), STATUS names it, and RESET brings the machine back."""
    g = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=0.25, banks=1)
    junk = bytes([0x1F]) + bytes(15)            # opcode 31 is reserved
    rows = pack([[1, 2], [3, 4]], g.sp_lanes, 8)
    reply, _ = run_stream(Accelerator(g), program(
        (Instruction(Opcode.NOP), b""),
        (Instruction(Opcode.SYNC, tag=1), b""),
    ) + junk + program(
        (Instruction(Opcode.SYNC, tag=3), b""),
        (Instruction(Opcode.LOAD_SP, addr0=0, count0=2), rows),
        (Instruction(Opcode.STORE_SP, addr0=0, count0=2), b""),
        (Instruction(Opcode.STATUS), b""),
        (Instruction(Opcode.RESET), b""),
        (Instruction(Opcode.STATUS), b""),
        (Instruction(Opcode.LOAD_SP, addr0=0, count0=2), rows),
        (Instruction(Opcode.STORE_SP, addr0=0, count0=2), b""),
    ), 1 + 1 + 2 * g.sp_row_bytes + 4 + 4 + 2 * g.sp_row_bytes)
    n = 2 * g.sp_row_bytes
    assert reply[:2 + n] == b"\x01" + b"\xff" * (1 + n)
    assert reply[2 + n:6 + n] == bytes([ErrorCode.ILLEGAL_OPCODE, 0x1F, 0xFF, 0xFF])
    assert reply[6 + n:10 + n] == bytes(4)
    assert reply[10 + n:] == rows


def test_accumulating_into_the_row_just_written():
    """Back-to-back WS tiles where the next tile's first row is the last row just written:
    the write-back must forward the sum still in flight."""
    g = Geometry(rows=2, cols=2, scratchpad_kib=0.25, accumulator_kib=1, banks=1)
    m = 24                                         # long tiles: the next one follows at once
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (m, 2), generator=gen)
    b = torch.randint(-128, 128, (2, 2), generator=gen)
    reply, _ = run_stream(Accelerator(g), program(
        (Instruction(Opcode.LOAD_SP, addr0=0, count0=2), pack(b, 2, 8)),
        (Instruction(Opcode.LOAD_SP, addr0=2, count0=m), pack(a, 2, 8)),
        (Instruction(Opcode.MATMUL, addr0=2, addr1=0, addr2=0, count0=m, count1=2), b""),
        (Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE, addr0=2, addr1=0, addr2=m - 1,
                     count0=m, count1=2), b""),
        (Instruction(Opcode.MATMUL, flags=Flags.ACCUMULATE, addr0=2, addr1=0, addr2=m - 2,
                     count0=m, count1=2), b""),
        (Instruction(Opcode.STORE, addr0=0, count0=3 * m), b""),
    ), 3 * m * g.acc_row_bytes)
    c = a @ b
    expected = torch.zeros(3 * m, 2, dtype=torch.int64)
    expected[0:m] = c
    expected[m - 1:2 * m - 1] += c
    expected[m - 2:2 * m - 2] += c
    got = np.frombuffer(reply, dtype="<i4").reshape(3 * m, 2)
    assert got.tolist() == expected.tolist()
