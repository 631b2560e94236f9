"""Seeded physics under the street: a drainage chamber's water level, sewer methane, a manhole
cover's tilt and a water main's pressure. Feeds the utility simulators (drivers/modbus/sim.py).

What it models:
- ChamberLevel: a storm-drain chamber fills with the rain (WeatherState.rain_rate_mmh) and drains
  towards its dry-weather level; `inflow_m_per_h` adds a burst main or a pump (negative); the level
  stays between the floor (0) and the chamber depth (surcharged). A few mm of surface ripple.
- Methane: sewer gas at 0-2 %LEL drifting (AR(1)), a warm-up after power-on, and faults:
  "leak" ramps to `leak_peak_lel` over `leak_rise_s` (a gas main leaking into the chamber),
  "sensor_fault" (the module says so in its status byte and its reading is garbage).
- Cover: a closed cover rests at a small install tilt (the baseline) with traffic vibration;
  `open(t)` / `close(t)` lift it to ~80 degrees pitch (hinged open, or lifted and leant).
- PipePressure: a distribution main at ~3.5 bar, dipping at the morning and evening demand peaks;
  `burst_at` drops it to ~0.4 bar (a main burst); water at ~12 degC with a slow seasonal drift.

Everything steps in fixed sub-steps from a seed: the same seed and times give the same values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["ChamberLevel", "Cover", "CoverState", "Methane", "PipePressure"]


def _hour(t: float, utc_offset_h: float = 8.0) -> float:
    return ((t / 3600.0) + utc_offset_h) % 24.0


class ChamberLevel:
    """Water level (m above the chamber floor); call `advance(t, rain_mmh)` with rising times."""

    STEP_S = 5.0

    def __init__(self, seed: int = 0, start: float = 1_750_000_000.0, *, level_m: float = 0.4,
                 dry_level_m: float = 0.4, depth_m: float = 5.0, rain_gain: float = 0.05,
                 drain_per_h: float = 0.5, inflow_m_per_h: float = 0.0) -> None:
        if not 0 <= dry_level_m <= depth_m or not 0 <= level_m <= depth_m:
            raise ValueError(f"need 0 <= level_m, dry_level_m <= depth_m, "
                             f"got {level_m!r}, {dry_level_m!r}, {depth_m!r}")
        self._rng = random.Random(seed * 7877 + 5)
        self.t, self.level_m, self.dry_level_m, self.depth_m = start, level_m, dry_level_m, depth_m
        self.rain_gain, self.drain_per_h, self.inflow_m_per_h = rain_gain, drain_per_h, inflow_m_per_h
        self.ripple_m = 0.0

    def advance(self, t: float, rain_mmh: float = 0.0) -> float:
        while self.t < t:
            dt = min(self.STEP_S, t - self.t)
            h = dt / 3600.0
            rise = (self.rain_gain * rain_mmh + self.inflow_m_per_h) * h
            self.level_m += rise - self.drain_per_h * (self.level_m - self.dry_level_m) * h
            self.level_m = min(max(self.level_m, 0.0), self.depth_m)
            self.ripple_m = 0.7 * self.ripple_m + 0.002 * self._rng.gauss(0, 1)
            self.t += dt
        return min(max(self.level_m + self.ripple_m, 0.0), self.depth_m)


class Methane:
    """Sewer methane in %LEL with the module's status code (00 warm-up, 01 normal, 03 fault,
    05 low alarm, 06 high alarm, 08 over range) and its alarm levels."""

    STEP_S = 5.0

    def __init__(self, seed: int = 0, start: float = 1_750_000_000.0, *, warmup_s: float = 60.0,
                 low_alarm: float = 20.0, high_alarm: float = 50.0, full_scale: float = 100.0,
                 leak_peak_lel: float = 60.0, leak_rise_s: float = 300.0) -> None:
        self._rng = random.Random(seed * 4243 + 11)
        self.t = self._on = start
        self.warmup_s, self.low_alarm, self.high_alarm, self.full_scale = warmup_s, low_alarm, high_alarm, full_scale
        self.leak_peak_lel, self.leak_rise_s = leak_peak_lel, leak_rise_s
        self.fault: str | None = None  # None, "leak" or "sensor_fault"
        self._fault_at = start
        self._background = 0.5

    def set_fault(self, fault: str | None, at: float) -> None:
        if fault not in (None, "leak", "sensor_fault"):
            raise ValueError(f"methane fault must be None, 'leak' or 'sensor_fault', got {fault!r}")
        self.fault, self._fault_at = fault, at

    def advance(self, t: float) -> tuple[float, int]:
        """(%LEL, status code) at time t."""
        while self.t < t:
            dt = min(self.STEP_S, t - self.t)
            k = dt / 600.0
            self._background += -0.1 * k * (self._background - 0.5) + 0.1 * math.sqrt(k) * self._rng.gauss(0, 1)
            self._background = min(max(self._background, 0.0), 2.0)
            self.t += dt
        if self.t - self._on < self.warmup_s:
            return 0.0, 0x00  # heating up: the module reports nothing useful yet
        if self.fault == "sensor_fault":
            return 999.9, 0x03
        lel = self._background
        if self.fault == "leak":
            lel += self.leak_peak_lel * min(1.0, max(0.0, (self.t - self._fault_at) / self.leak_rise_s))
        if lel > self.full_scale:
            return self.full_scale, 0x08
        return lel, 0x06 if lel >= self.high_alarm else 0x05 if lel >= self.low_alarm else 0x01


@dataclass(frozen=True, slots=True)
class CoverState:
    roll_deg: float
    pitch_deg: float
    yaw_deg: float
    acc_g: tuple[float, float, float]  # gravity (and vibration) in the sensor's x, y, z

    @property
    def open(self) -> bool:
        return abs(self.pitch_deg) > 30 or abs(self.roll_deg) > 30


class Cover:
    """A manhole cover with a tilt sensor under it; `open(t)` / `close(t)` schedule movements."""

    SWING_S = 4.0  # how long lifting it takes

    def __init__(self, seed: int = 0, start: float = 1_750_000_000.0, *, baseline_deg: tuple[float,
                                                                                             float] | None = None,
                 open_pitch_deg: float = 80.0) -> None:
        self._rng = random.Random(seed * 6151 + 3)
        self.baseline = baseline_deg or (self._rng.uniform(-2, 2), self._rng.uniform(-2, 2))
        self.yaw = self._rng.uniform(-180, 180)
        self.open_pitch_deg = open_pitch_deg
        self._moves: list[tuple[float, bool]] = [(start, False)]

    def open(self, t: float) -> None:
        self._moves.append((t, True))

    def close(self, t: float) -> None:
        self._moves.append((t, False))

    def state(self, t: float) -> CoverState:
        done = sorted((m for m in self._moves if m[0] <= t), key=lambda m: m[0]) or self._moves[:1]
        (_, was_open), (at, is_open) = (done[-2] if len(done) > 1 else done[0]), done[-1]
        f = min(1.0, (t - at) / self.SWING_S) if was_open != is_open else 1.0
        lifted = f if is_open else 1.0 - f
        roll = self.baseline[0] + 0.05 * self._rng.gauss(0, 1)
        pitch = self.baseline[1] + (self.open_pitch_deg - self.baseline[1]) * lifted + 0.05 * self._rng.gauss(0, 1)
        r, p = math.radians(roll), math.radians(pitch)
        shake = 0.01 * self._rng.gauss(0, 1)  # a lorry passing over
        acc = (-math.sin(p), math.sin(r) * math.cos(p), math.cos(r) * math.cos(p) + shake)
        return CoverState(roll, pitch, self.yaw, acc)


class PipePressure:
    """Gauge pressure (bar) of a water main and the water temperature (degC)."""

    def __init__(self, seed: int = 0, start: float = 1_750_000_000.0, *, mean_bar: float = 3.5,
                 utc_offset_h: float = 8.0) -> None:
        self._rng = random.Random(seed * 3319 + 7)
        self.mean_bar, self.utc_offset_h, self.start = mean_bar, utc_offset_h, start
        self.burst_at: float | None = None

    def advance(self, t: float) -> tuple[float, float]:
        hour = _hour(t, self.utc_offset_h)
        demand = math.exp(-((hour - 7.5) / 1.5) ** 2) + 0.8 * math.exp(-((hour - 19.0) / 2.0) ** 2)
        bar = self.mean_bar - 0.6 * demand + 0.02 * self._rng.gauss(0, 1)
        if self.burst_at is not None and t >= self.burst_at:
            bar = 0.4 + 0.05 * self._rng.gauss(0, 1)
        temp = 12.0 + 2.0 * math.sin(2 * math.pi * (t - self.start) / (365 * 86400.0)) + 0.05 * self._rng.gauss(0, 1)
        return bar, temp
