"""Capped, jittered exponential backoff, shared by the scheduler (dead devices) and the drain (dead uplink)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Full-jitter backoff: the n-th delay is uniform in [base*2^n/2, min(cap, base*2^n)].

    `next_delay()` advances, `reset()` after a success. Jitter keeps a hundred boxes that lost the
    same broker from reconnecting in lock-step.
    """

    base_s: float = 0.5
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got base_s={self.base_s}, cap_s={self.cap_s}")

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
