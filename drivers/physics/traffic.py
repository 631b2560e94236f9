"""Plausible, seeded traffic at one signalised junction.

Shared by the traffic-demand model's training data and the NTCIP / GB/T 20999 simulators, like
`weather.py` for the weather stations. What it models:

- demand per detector (veh/h) by local time of day: a night floor, a daytime plateau and, on
  weekdays, a morning and an evening peak whose sizes differ per approach (inbound traffic peaks
  in the morning, outbound in the evening); weekends have one broad afternoon hump;
- a day-to-day level factor and a slow AR(1) modulation per detector, and over-dispersed
  (gamma-Poisson) counts per 5-minute interval, as loop detectors show;
- incidents (Poisson, ~0.25 a day per junction): one approach loses 40-70 % of its capacity for
  20-90 minutes, a queue builds, served volume drops and occupancy climbs;
- occupancy from flow through a simple speed-flow relation (BPR), plus queue occupancy.

`SignalControllerSim` gives the controller state the pattern guard reads: the running timing
pattern and the pedestrian walk / clearance bitmaps (NTCIP phaseStatusGroupWalk / PedClr),
with seeded pedestrian calls per cycle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

INTERVAL_S = 300.0
_VEH_LENGTH_M = 6.5   # vehicle plus loop length
_FREE_SPEED_MS = 13.9  # 50 km/h


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    peak_vph: float        # weekday peak-hour demand
    capacity_vph: float    # what the approach can discharge per hour of green-weighted time
    am_weight: float = 0.6  # size of the morning peak relative to the plateau
    pm_weight: float = 0.6


DEFAULT_DETECTORS = (
    Detector("1", 620.0, 900.0, am_weight=0.9, pm_weight=0.4),
    Detector("2", 560.0, 850.0, am_weight=0.4, pm_weight=0.9),
    Detector("3", 300.0, 520.0, am_weight=0.6, pm_weight=0.6),
    Detector("4", 260.0, 480.0, am_weight=0.5, pm_weight=0.7),
)


@dataclass(frozen=True, slots=True)
class Interval:
    t_end: float                      # unix seconds, end of the 5-minute interval
    volume: tuple[int, ...]           # vehicles counted per detector
    occupancy: tuple[float, ...]      # percent of time occupied per detector
    demand_vph: tuple[float, ...]     # the underlying demand (for tests; a real box never sees it)
    incident: tuple[bool, ...]


def _gauss(h: float, mu: float, sigma: float) -> float:
    return math.exp(-0.5 * ((h - mu) / sigma) ** 2)


def _ramp(h: float, up: float, down: float, width: float = 0.7) -> float:
    return 1.0 / (1.0 + math.exp(-(h - up) / width)) * 1.0 / (1.0 + math.exp((h - down) / width))


def demand_shape(local_hour: float, weekday: bool, am_weight: float, pm_weight: float) -> float:
    """Demand relative to the detector's peak (about 1.0 at the larger weekday peak)."""
    if weekday:
        base = 0.05 + 0.5 * _ramp(local_hour, 6.0, 21.5)
        return base + am_weight * 0.55 * _gauss(local_hour, 7.8, 0.8) + pm_weight * 0.55 * _gauss(local_hour, 17.8, 1.0)
    return 0.05 + 0.45 * _ramp(local_hour, 8.5, 22.0, 1.0) + 0.2 * _gauss(local_hour, 15.0, 2.5)


@dataclass
class _DetState:
    ar: float = 0.0
    queue: float = 0.0
    incident_until: float = 0.0
    incident_factor: float = 1.0


class TrafficModel:
    """Seeded junction traffic; call `step()` for each 5-minute interval in turn."""

    def __init__(
        self,
        seed: int = 0,
        start: float = 1_750_000_000.0,
        detectors: Sequence[Detector] = DEFAULT_DETECTORS,
        *,
        utc_offset_h: float = 8.0,
        incidents_per_day: float = 0.25,
        dispersion: float = 20.0,
        level: float = 1.0,
    ) -> None:
        self.seed = seed
        self.detectors = tuple(detectors)
        self.utc_offset_h = utc_offset_h
        self.incidents_per_day = incidents_per_day
        self.dispersion = dispersion
        self.level = level
        self._rng = random.Random(seed)
        self._np = np.random.default_rng(seed)
        self.t = start - (start % INTERVAL_S)
        self._day: int | None = None
        self._day_factor = 1.0
        self._states = [_DetState() for _ in self.detectors]

    def local_hour(self, t: float) -> float:
        return ((t / 3600.0) + self.utc_offset_h) % 24.0

    def is_weekday(self, t: float) -> bool:
        days = math.floor((t / 3600.0 + self.utc_offset_h) / 24.0)
        return (days + 3) % 7 < 5  # 1970-01-01 was a Thursday

    def demand_vph(self, det: Detector, t: float) -> float:
        shape = demand_shape(self.local_hour(t), self.is_weekday(t), det.am_weight, det.pm_weight)
        return det.peak_vph * self.level * shape

    def step(self) -> Interval:
        t0 = self.t
        t1 = t0 + INTERVAL_S
        mid = t0 + INTERVAL_S / 2
        day = math.floor((mid / 3600.0 + self.utc_offset_h) / 24.0)
        if day != self._day:
            self._day = day
            self._day_factor = math.exp(self._rng.gauss(0.0, 0.08))
        if self._rng.random() < self.incidents_per_day * INTERVAL_S / 86400.0:
            s = self._states[self._rng.randrange(len(self._states))]
            s.incident_until = t1 + self._rng.uniform(1200.0, 5400.0)
            s.incident_factor = self._rng.uniform(0.3, 0.6)
        vols, occs, dems, incs = [], [], [], []
        for det, s in zip(self.detectors, self._states):
            s.ar = 0.9 * s.ar + self._rng.gauss(0.0, 0.05)
            demand = self.demand_vph(det, mid) * self._day_factor * math.exp(s.ar)
            lam = demand * INTERVAL_S / 3600.0
            arrivals = int(self._np.poisson(lam * self._np.gamma(self.dispersion, 1.0 / self.dispersion)))
            incident = mid < s.incident_until
            cap = det.capacity_vph * (s.incident_factor if incident else 1.0) * INTERVAL_S / 3600.0
            served = int(min(arrivals + s.queue, cap))
            s.queue = max(0.0, s.queue + arrivals - served)
            x = served / max(cap, 1.0)
            speed = _FREE_SPEED_MS / (1.0 + 0.15 * x ** 4)
            occ = 100.0 * (served / INTERVAL_S) * _VEH_LENGTH_M / speed * 1.8  # x1.8: stops at red
            occ += 60.0 * min(1.0, s.queue / max(cap, 1.0))
            occ = min(98.0, max(0.0, occ + self._rng.gauss(0.0, 0.8)))
            vols.append(served)
            occs.append(round(occ, 1))
            dems.append(demand)
            incs.append(incident)
        self.t = t1
        return Interval(t1, tuple(vols), tuple(occs), tuple(dems), tuple(incs))

    def series(self, n: int) -> dict[str, np.ndarray]:
        """n intervals as arrays: t_end (n,), volume / occupancy / demand (n, detectors)."""
        rows = [self.step() for _ in range(n)]
        return {
            "t_end": np.array([r.t_end for r in rows]),
            "volume": np.array([r.volume for r in rows], dtype=float),
            "occupancy": np.array([r.occupancy for r in rows], dtype=float),
            "demand": np.array([r.demand_vph for r in rows], dtype=float),
            "incident": np.array([r.incident for r in rows], dtype=bool),
        }


@dataclass(frozen=True, slots=True)
class ControllerState:
    t: float
    pattern: int
    ped_walk: int    # bitmap, bit (phase - 1) set while that phase shows WALK
    ped_clear: int   # bitmap, bit (phase - 1) set during pedestrian clearance (flashing DON'T WALK)


@dataclass
class SignalControllerSim:
    """A coordinated controller's pedestrian timing, seeded per cycle.

    Pedestrian phases 2 and 6 (the usual NEMA crossings) get a call in a cycle with probability
    `ped_call_prob`; a called phase shows WALK for `walk_s` then clearance for `clear_s`. A
    pattern command takes effect at the next cycle boundary, as coordinated controllers do.
    """

    seed: int = 0
    cycle_s: float = 120.0
    ped_phases: tuple[tuple[int, float], ...] = ((2, 0.0), (6, 60.0))  # (phase, start offset in cycle)
    walk_s: float = 7.0
    clear_s: float = 14.0
    ped_call_prob: float = 0.4
    pattern: int = 2
    origin: float = 0.0
    _pending: tuple[int, float] | None = field(default=None, repr=False)
    commands: list[tuple[float, int]] = field(default_factory=list, repr=False)

    def _called(self, cycle: int, phase: int) -> bool:
        return random.Random(hash((self.seed, cycle, phase)) & 0xFFFFFFFF).random() < self.ped_call_prob

    def state(self, t: float) -> ControllerState:
        if self._pending is not None and t >= self._pending[1]:
            self.pattern = self._pending[0]
            self._pending = None
        cycle, u = divmod(t - self.origin, self.cycle_s)
        walk = clear = 0
        for phase, offset in self.ped_phases:
            if not self._called(int(cycle), phase):
                continue
            if offset <= u < offset + self.walk_s:
                walk |= 1 << (phase - 1)
            elif offset + self.walk_s <= u < offset + self.walk_s + self.clear_s:
                clear |= 1 << (phase - 1)
        return ControllerState(t, self.pattern, walk, clear)

    def set_pattern(self, pattern: int, t: float) -> None:
        cycle = math.floor((t - self.origin) / self.cycle_s)
        self._pending = (pattern, self.origin + (cycle + 1) * self.cycle_s)
        self.commands.append((t, pattern))
