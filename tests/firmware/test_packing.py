"""Row packing exactly as rtl/isa.py lays rows on the wire."""

import numpy as np
import pytest

from firmware.packing import pack_rows, unpack_rows, pack_acc_lanes, unpack_acc_lanes


def test_8_bit_lanes_are_bytes_lane_0_first_zero_padded():
    assert pack_rows([[1, -1, 127]], 8, 4) == bytes([1, 0xFF, 127, 0])


def test_16_bit_lanes_are_little_endian():
    assert pack_rows([[0x1234, -2]], 16, 3) == bytes([0x34, 0x12, 0xFE, 0xFF, 0, 0])


def test_4_bit_lanes_share_a_byte_lane_0_low():
    assert pack_rows([[1, -1, 7]], 4, 3) == bytes([0xF1, 0x07])
    assert pack_rows([[-8, 3]], 4, 4) == bytes([0x38, 0x00])


@pytest.mark.parametrize("width,lanes", [(4, 1), (4, 5), (4, 8), (8, 3), (16, 7)])
def test_rows_round_trip(width, lanes):
    rng = np.random.default_rng(width * 100 + lanes)
    values = rng.integers(-(1 << (width - 1)), 1 << (width - 1), (9, lanes))
    data = pack_rows(values, width, lanes)
    assert len(data) == 9 * ((lanes * width + 7) // 8)
    assert (unpack_rows(data, width, lanes) == values).all()


@pytest.mark.parametrize("width", [4, 8, 16])
def test_out_of_range_lane_is_refused(width):
    with pytest.raises(ValueError, match=f"{width} bits"):
        pack_rows([[1 << (width - 1)]], width, 2)


@pytest.mark.parametrize("acc_width", [16, 24, 32, 48, 64])
def test_acc_lanes_round_trip(acc_width):
    extremes = [-(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1, 0, -1, 5]
    data = pack_acc_lanes(extremes, acc_width)
    assert len(data) == 5 * acc_width // 8
    assert unpack_acc_lanes(data, acc_width, 5).tolist() == [extremes]


def test_acc_lanes_are_little_endian_twos_complement():
    assert pack_acc_lanes([-2, 0x01020304], 32) == bytes([0xFE, 0xFF, 0xFF, 0xFF, 4, 3, 2, 1])
