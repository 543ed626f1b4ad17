"""The per-key limit: counts per key, refuses past the limit with a wait, slides, forgets."""

from __future__ import annotations

import pytest

from app import ratelimit
from app.ratelimit import PerKeyLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", fake)
    return fake


def test_a_key_past_its_limit_waits_and_others_do_not(clock: Clock) -> None:
    limit = PerKeyLimit("3/minute")
    assert [limit.hit("a") for _ in range(3)] == [None, None, None]
    wait = limit.hit("a")
    assert wait is not None
    assert 1 <= wait <= 60
    assert limit.hit("b") is None  # another key has its own count


def test_the_window_slides(clock: Clock) -> None:
    limit = PerKeyLimit("4/minute")
    for _ in range(4):
        assert limit.hit("a") is None
    clock.now += 60  # the next window: the previous one still weighs fully
    assert limit.hit("a") is not None
    clock.now += 30  # half of it overlaps: 2 of its 4 count
    assert limit.hit("a") is None
    assert limit.hit("a") is None
    assert limit.hit("a") is not None
    clock.now += 120  # two windows later nothing of it is left
    assert [limit.hit("a") for _ in range(4)] == [None] * 4


def test_idle_keys_are_forgotten(clock: Clock) -> None:
    limit = PerKeyLimit("10/second")
    for n in range(100):
        limit.hit(f"k{n}")
    clock.now += 5
    limit.hit("fresh")
    assert set(limit._windows) == {"fresh"}
