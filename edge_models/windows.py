"""Per-(device, channel) ring buffers at a model's sample period, gathered as one batch.

A store holds `slots` (one per bound device, or device + detector suffix) x `channels` x
`window` values. Readings arrive at whatever rate the device is polled; each channel keeps a
sample grid at the model's period, anchored at its first sample: a reading is taken when it is
at most a quarter period before the next grid point, and the grid moves on by one period (so a
station polled every 10 s feeds a one-minute model exactly once a minute, and poll jitter does
not drop samples). A reading more than a period late re-anchors the grid; a gap longer than
`max_gap_periods` restarts the channel's window (the features assume regular samples). Missing values are kept
as NaN; a row with a NaN in its window is not judged.

Appending is plain Python on the event loop (a few hundred ns); gathering is one numpy fancy
index over all ready rows, run off the loop together with the model.
"""

from __future__ import annotations

import numpy as np


class WindowStore:
    def __init__(self, channels: int, window: int, period_s: float, *, capacity: int = 16,
                 max_gap_periods: float = 3.0) -> None:
        self.channels = channels
        self.window = window
        self.period_s = period_s
        self._early = 0.25 * period_s
        self._max_gap = max_gap_periods * period_s
        self.values = np.full((capacity, channels, window), np.nan)
        self._heads: list[int] = [0] * (capacity * channels)
        self._count: list[int] = [0] * (capacity * channels)
        self._last_ts: list[float] = [-1e18] * (capacity * channels)
        self._due: list[float] = [-1e18] * (capacity * channels)
        self.slots = 0

    def add_slot(self) -> int:
        cap = self.values.shape[0]
        if self.slots == cap:
            self.values = np.concatenate([self.values, np.full_like(self.values, np.nan)])
            self._heads += [0] * (cap * self.channels)
            self._count += [0] * (cap * self.channels)
            self._last_ts += [-1e18] * (cap * self.channels)
            self._due += [-1e18] * (cap * self.channels)
        self.slots += 1
        return self.slots - 1

    def would_take(self, slot: int, ch: int, ts: float) -> bool:
        return ts >= self._due[slot * self.channels + ch] - self._early

    def append(self, slot: int, ch: int, ts: float, value: float | None) -> bool:
        """Take a sample if it is due; returns whether it was taken."""
        k = slot * self.channels + ch
        due = self._due[k]
        if ts < due - self._early:
            return False
        if ts - self._last_ts[k] > self._max_gap:
            self._count[k] = 0
        self._due[k] = due + self.period_s if ts < due + self.period_s else ts + self.period_s
        h = self._heads[k]
        self.values[slot, ch, h] = np.nan if value is None else value
        self._heads[k] = (h + 1) % self.window
        self._count[k] += 1
        self._last_ts[k] = ts
        return True

    def full(self, slot: int, channels: range | tuple[int, ...] | None = None) -> bool:
        base = slot * self.channels
        if channels is None:
            return min(self._count[base:base + self.channels]) >= self.window
        return all(self._count[base + c] >= self.window for c in channels)

    def last_ts(self, slot: int, ch: int) -> float:
        return self._last_ts[slot * self.channels + ch]

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """Windows of all channels for the given slots, oldest sample first: (R, C, N)."""
        slots = np.asarray(slots, dtype=np.int64)
        heads = np.array(self._heads, dtype=np.int64).reshape(-1, self.channels)
        idx = (heads[slots][:, :, None] + np.arange(self.window)) % self.window
        return self.values[slots[:, None, None], np.arange(self.channels)[None, :, None], idx]

    def reset(self, slot: int) -> None:
        base = slot * self.channels
        for c in range(self.channels):
            self._count[base + c] = 0
