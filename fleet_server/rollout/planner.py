"""The rollout rules as pure functions: which wave a box may join now, when a wave has failed.

No I/O: a store backend calls these inside its transaction, on counters it just read, so the
decision and the write are atomic (SQLite: the one writer; PostgreSQL: the rollout row locked
FOR UPDATE). The engine calls the same functions on its in-memory copy only to skip the
database when the answer is surely "nothing for you".

Rules
- Waves are filled in order, first come first served: a box joins the current wave while it has
  room, so offline boxes never hold a wave back. When it is full, the next wave opens once
  `ceil(success_pct % of (capacity - errors the admin accepted by resuming))` boxes succeeded.
- A wave breaches its error threshold when, counting only errors after the admin's last resume,
  errors > error_pct % of its capacity (hawkBit's rule: bounds the damage), or once
  min(min_finished, capacity) of its actions are final, errors > error_pct % of the finished
  ones (AWS's abort rule: detects a bad wave early). A breach pauses the rollout; no box is
  assigned while any wave is breached, whatever the order in which reports arrive.
- Rate limit: a token bucket of `rate_per_min`, burst max(1, rate/12) (five seconds' worth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet_server.rollout.model import RolloutView, WaveView

__all__ = ["Pick", "breached_wave", "burst", "can_assign", "is_finished", "pick_wave", "refill"]


@dataclass(frozen=True, slots=True)
class Pick:
    """Outcome of `pick_wave`: `wave` to assign into (None: not now, `reason` says why)."""

    wave: int | None
    reason: str
    current_wave: int
    tokens: float


def burst(rate_per_min: float) -> float:
    return max(1.0, rate_per_min / 12.0)


def refill(rollout: RolloutView, now: float) -> float:
    """Tokens available at `now` (inf when the rollout has no rate limit)."""
    if rollout.rate_per_min is None:
        return math.inf
    elapsed = max(0.0, now - rollout.tokens_at)
    return min(burst(rollout.rate_per_min), rollout.tokens + elapsed * rollout.rate_per_min / 60.0)


def _wave_breached(wave: WaveView, min_finished: int) -> bool:
    errors = wave.errors - wave.errors_acked
    if errors <= 0:
        return False
    if errors > wave.error_pct / 100.0 * wave.capacity:
        return True
    finished = wave.finished - wave.errors_acked
    return finished >= min(min_finished, wave.capacity) and errors > wave.error_pct / 100.0 * finished


def breached_wave(rollout: RolloutView) -> WaveView | None:
    """The first wave over its error threshold, or None."""
    for wave in rollout.waves:
        if _wave_breached(wave, rollout.min_finished):
            return wave
    return None


def _needed(wave: WaveView) -> int:
    return math.ceil(wave.success_pct / 100.0 * (wave.capacity - wave.errors_acked) - 1e-9)


def pick_wave(rollout: RolloutView, now: float) -> Pick:
    """The wave a newly checking-in target box joins now, advancing `current_wave` if allowed."""
    tokens = refill(rollout, now)
    current = rollout.current_wave
    if rollout.status != "running":
        return Pick(None, rollout.status, current, tokens)
    if breached_wave(rollout) is not None:
        return Pick(None, "error_threshold", current, tokens)
    if tokens < 1.0:
        return Pick(None, "rate_limited", current, tokens)
    waves = rollout.waves
    index = current - 1
    while True:
        wave = waves[index]
        if wave.assigned < wave.capacity:
            return Pick(wave.no, "assign", wave.no, tokens - 1.0)
        if index + 1 == len(waves):
            return Pick(None, "all_assigned", wave.no, tokens)
        if wave.succeeded < _needed(wave):
            return Pick(None, "waiting_for_wave", wave.no, tokens)
        index += 1


def can_assign(rollout: RolloutView, now: float) -> bool:
    return pick_wave(rollout, now).wave is not None


def is_finished(rollout: RolloutView) -> bool:
    """Every target was assigned and every action is final."""
    return all(w.assigned == w.capacity and w.finished == w.assigned for w in rollout.waves)
