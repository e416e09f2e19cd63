"""Rows of lanes to bytes and back, exactly as ``rtl/isa.py`` lays them on the wire.

A row of ``lanes`` lanes of ``width`` bits is one little-endian integer of
``ceil(lanes * width / 8)`` bytes with lane 0 in its lowest bits; numbers are
two's complement. Accumulator lanes (raw STORE replies, SET_BIAS payloads) take
``acc_bytes`` whole bytes each.
"""

import numpy as np

__all__ = ["signed_range", "pack_rows", "unpack_rows", "pack_acc_lanes", "unpack_acc_lanes",
           "wrap"]


def signed_range(width: int) -> tuple[int, int]:
    """The smallest and largest two's complement number of ``width`` bits."""
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def wrap(values, width: int) -> np.ndarray:
    """Values reduced to ``width``-bit two's complement (as hardware adders wrap)."""
    values = np.asarray(values)
    if width >= 64:
        return values.astype(np.int64)
    values = values.astype(np.int64)
    mask = (1 << width) - 1
    values = values & mask
    return np.where(values >= (1 << (width - 1)), values - (1 << width), values)


def pack_rows(values, width: int, lanes: int) -> bytes:
    """``values`` (rows x at most ``lanes``) packed as rows of ``lanes`` lanes; missing lanes are 0."""
    values = np.asarray(values, dtype=np.int64)
    if values.ndim != 2 or values.shape[1] > lanes:
        raise ValueError(f"rows to pack must be 2-D with at most {lanes} lanes, not shape "
                         f"{values.shape}")
    low, high = signed_range(width)
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(f"lanes of {width} bits hold {low}..{high}, got "
                         f"{values.min()}..{values.max()}")
    rows = values.shape[0]
    full = np.zeros((rows, lanes), dtype=np.int64)
    full[:, :values.shape[1]] = values
    unsigned = full & ((1 << width) - 1)
    if width == 8:
        return unsigned.astype(np.uint8).tobytes()
    if width == 16:
        return unsigned.astype("<u2").tobytes()
    if width == 4:
        if lanes % 2:
            unsigned = np.concatenate([unsigned, np.zeros((rows, 1), np.int64)], axis=1)
        pairs = unsigned.reshape(rows, -1, 2)
        return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).astype(np.uint8).tobytes()
    raise ValueError(f"lane width must be 4, 8 or 16 bits, not {width!r}")


def unpack_rows(data: bytes, width: int, lanes: int) -> np.ndarray:
    """Signed int64 array (rows x lanes) from rows of ``lanes`` lanes of ``width`` bits."""
    row_bytes = (lanes * width + 7) // 8
    if len(data) % row_bytes:
        raise ValueError(f"{len(data)} bytes are not a whole number of {row_bytes}-byte rows")
    rows = len(data) // row_bytes
    raw = np.frombuffer(bytes(data), dtype=np.uint8).reshape(rows, row_bytes)
    if width == 8:
        unsigned = raw.astype(np.int64)
    elif width == 16:
        unsigned = raw.copy().view("<u2").astype(np.int64)
    elif width == 4:
        unsigned = np.stack([raw & 0xF, raw >> 4], axis=2).reshape(rows, -1).astype(np.int64)
    else:
        raise ValueError(f"lane width must be 4, 8 or 16 bits, not {width!r}")
    return wrap(unsigned[:, :lanes], width)


def pack_acc_lanes(values, acc_width: int) -> bytes:
    """Lanes of ``acc_width`` bits, each sign-extended into ``ceil(acc_width / 8)`` bytes."""
    nbytes = (acc_width + 7) // 8
    out = bytearray()
    for value in np.asarray(values, dtype=object).reshape(-1):
        value = int(value)
        low, high = signed_range(acc_width)
        if not low <= value <= high:
            raise ValueError(f"accumulator lanes of {acc_width} bits hold {low}..{high}, not {value}")
        out += value.to_bytes(nbytes, "little", signed=True)
    return bytes(out)


def unpack_acc_lanes(data: bytes, acc_width: int, lanes: int) -> np.ndarray:
    """Signed lanes (rows x lanes) from accumulator rows; the value is the low ``acc_width`` bits."""
    nbytes = (acc_width + 7) // 8
    row_bytes = nbytes * lanes
    if len(data) % row_bytes:
        raise ValueError(f"{len(data)} bytes are not a whole number of {row_bytes}-byte rows")
    raw = np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, lanes, nbytes).astype(np.uint64)
    unsigned = np.zeros(raw.shape[:2], dtype=np.uint64)
    for byte in range(nbytes):
        unsigned |= raw[:, :, byte] << np.uint64(8 * byte)
    if acc_width < 64:
        unsigned &= np.uint64((1 << acc_width) - 1)
        return wrap(unsigned.astype(np.int64), acc_width)
    return unsigned.view(np.int64)
