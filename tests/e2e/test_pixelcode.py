"""The capture-time code drawn into pictures by the glass-to-glass harness."""

from __future__ import annotations

import random

import pytest

from harness import pixelcode

pytestmark = pytest.mark.e2e


def _plane(bits: list[int], width: int = 1280, noise: int = 0) -> bytes:
    """An 8-bit luma plane's first BLOCK lines with the blocks drawn (white 235, black 16, as
    video range), plus optional noise such as an encoder leaves."""
    rng = random.Random(7)
    lines = []
    for _ in range(pixelcode.BLOCK):
        line = bytearray(width)
        for i, bit in enumerate(bits):
            for x in range(i * pixelcode.BLOCK, (i + 1) * pixelcode.BLOCK):
                value = (235 if bit else 16) + rng.randint(-noise, noise)
                line[x] = max(0, min(255, value))
        lines.append(bytes(line))
    return b"".join(lines)


def test_a_time_survives_drawing_noise_and_reading() -> None:
    time_us, sequence = 1_234_567_890_123, 200
    plane = _plane(pixelcode.encode(time_us, sequence), noise=60)
    assert pixelcode.decode(pixelcode.read_luma(plane, 1280)) == (time_us, sequence)


def test_a_damaged_code_is_rejected_not_misread() -> None:
    bits = pixelcode.encode(987_654_321, 3)
    for flipped in (0, 20, 47, 50, 63):
        damaged = list(bits)
        damaged[flipped] ^= 1
        assert pixelcode.decode(damaged) is None
    assert pixelcode.decode(bits[:-1]) is None


def test_the_code_reads_with_a_padded_stride() -> None:
    bits = pixelcode.encode(42, 1)
    width, stride = pixelcode.WIDTH, pixelcode.WIDTH + 64
    plane = b"".join(
        line + b"\x00" * (stride - width)
        for line in (
            _plane(bits, width)[y * width : (y + 1) * width] for y in range(pixelcode.BLOCK)
        )
    )
    assert pixelcode.decode(pixelcode.read_luma(plane, stride)) == (42, 1)
