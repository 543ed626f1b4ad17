"""A capture timestamp drawn into the picture and read back after decode.

A row of 64 square blocks at the top left, each black (0) or white (1): 48 bits of a
CLOCK_MONOTONIC time in microseconds, 8 bits of frame sequence and an 8-bit check, so that a
block row damaged by the encoder is rejected instead of read as a wrong time. Blocks of 16 px
survive H.264 at streaming bitrates by a wide margin; only the luma plane is read back.
Standard library only: the sender runs under Debian's python3 (for gi), the receiver in the venv.
"""

from __future__ import annotations

BLOCK = 16
TIME_BITS = 48
SEQ_BITS = 8
CHECK_BITS = 8
BITS = TIME_BITS + SEQ_BITS + CHECK_BITS
WIDTH = BITS * BLOCK  # the picture must be at least this wide


def _check(value: int) -> int:
    folded = 0x5A
    for shift in range(0, TIME_BITS + SEQ_BITS, 8):
        folded ^= (value >> shift) & 0xFF
    return folded


def encode(time_us: int, sequence: int) -> list[int]:
    """The block values (0/1), most significant first."""
    value = ((time_us & ((1 << TIME_BITS) - 1)) << SEQ_BITS) | (sequence & 0xFF)
    value = (value << CHECK_BITS) | _check(value)
    return [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def decode(bits: list[int]) -> tuple[int, int] | None:
    """(time_us, sequence), or None when the check does not match."""
    if len(bits) != BITS:
        return None
    value = 0
    for bit in bits:
        value = (value << 1) | bit
    payload, check = value >> CHECK_BITS, value & 0xFF
    if _check(payload) != check:
        return None
    return payload >> SEQ_BITS, payload & 0xFF


def read_luma(row: bytes | memoryview, stride: int) -> list[int]:
    """Read the blocks from the first BLOCK lines of an 8-bit luma plane (`stride` bytes per
    line): the mean of each block's inner 8x8 pixels against mid-grey."""
    bits = []
    inner = range(BLOCK // 4, BLOCK - BLOCK // 4)
    for i in range(BITS):
        x0 = i * BLOCK
        total = 0
        for y in inner:
            line = y * stride + x0
            total += sum(row[line + BLOCK // 4 : line + BLOCK - BLOCK // 4])
        bits.append(1 if total > 128 * len(inner) * len(inner) else 0)
    return bits
