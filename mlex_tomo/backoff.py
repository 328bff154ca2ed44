"""Capped exponential backoff, the one schedule every retry loop of the stack follows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays of `first`, twice that, four times ... never above `longest`.

    `next()` hands out the delay before the next attempt; `reset()` after a success
    starts the schedule again. `delay(n)` is the n-th delay, for callers that count
    attempts themselves.
    """

    first: float
    longest: float
    attempts: int = 0

    def delay(self, attempt: int) -> float:
        return min(self.first * 2 ** max(attempt - 1, 0), self.longest)

    def next(self) -> float:
        self.attempts += 1
        return self.delay(self.attempts)

    def reset(self) -> None:
        self.attempts = 0
