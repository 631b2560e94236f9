"""Seeded sensor faults, applied on top of the weather physics.

The weather simulators and the fault detector's training data both use this module, so the
model is trained on the faults the HIL tests inject. Four kinds, as field crews report them:

- stuck: the output freezes at the last good value (a hung ADC, a frozen firmware task);
- spike: one sample far off the signal (EMI on a long RS-485 run, a bird on the cup);
- drift: a bias growing linearly in time (a failing humidity film, a pressure cell leak); rates are
  the fast end of what crews see (e.g. 2-6 degC/h): slower drift hides in the weather within an
  hour and needs a comparison with neighbouring stations, not a per-channel window;
- dead: the channel drops to a constant power-on or rail value (0, or the range end) and stays
  there with no noise (a broken sensor head, an open wire).

Values come out quantised to the channel's register resolution (WXT530: 0.1 units), as a real
station sends them. A fault schedule is a list of `Fault`s; `FaultInjector` applies it to a
stream sample by sample (simulators), `inject` applies it to a whole series (training).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class FaultKind(str, Enum):
    OK = "ok"
    STUCK = "stuck"
    SPIKE = "spike"
    DRIFT = "drift"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Physical facts about one weather channel that shape its faults."""

    name: str
    lo: float               # profile range (WXT530 datasheet)
    hi: float
    resolution: float       # register scale
    spike: tuple[float, float]   # spike size range, channel units
    drift: tuple[float, float]   # drift rate range, units per hour
    dead_levels: tuple[float, ...]


CHANNELS: dict[str, ChannelSpec] = {
    "air_temperature": ChannelSpec("air_temperature", -52.0, 60.0, 0.1, (3.0, 15.0), (2.0, 6.0), (0.0, -52.0)),
    "relative_humidity": ChannelSpec("relative_humidity", 0.0, 100.0, 0.1, (10.0, 40.0), (6.0, 20.0), (0.0, 100.0)),
    "air_pressure": ChannelSpec("air_pressure", 600.0, 1100.0, 0.1, (3.0, 20.0), (1.5, 5.0), (600.0, 1100.0)),
    "wind_speed": ChannelSpec("wind_speed", 0.0, 60.0, 0.1, (5.0, 20.0), (2.0, 5.0), (0.0,)),
}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    start: float              # unix seconds
    end: float                # unix seconds (exclusive); a spike lasts one sample
    magnitude: float = 0.0    # spike: offset in units; drift: units per hour; dead: the level

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


def random_faults(
    rng: random.Random,
    channel: ChannelSpec,
    start: float,
    end: float,
    *,
    sample_s: float = 60.0,
    episodes_per_day: float = 2.0,
    spikes_per_day: float = 4.0,
) -> list[Fault]:
    """A seeded schedule: non-overlapping stuck/drift/dead episodes plus isolated spikes."""
    faults: list[Fault] = []
    t = start
    rate = episodes_per_day / 86400.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        kind = rng.choice((FaultKind.STUCK, FaultKind.DRIFT, FaultKind.DEAD))
        duration = rng.uniform(1800.0, 4 * 3600.0)
        if kind is FaultKind.DRIFT:
            magnitude = rng.uniform(*channel.drift) * rng.choice((-1.0, 1.0))
            if channel.name == "wind_speed":
                magnitude = abs(magnitude)
        elif kind is FaultKind.DEAD:
            magnitude = rng.choice(channel.dead_levels)
        else:
            magnitude = 0.0
        faults.append(Fault(kind, t, min(t + duration, end), magnitude))
        t += duration + 1800.0  # at least half an hour of good data between episodes
    t = start
    rate = spikes_per_day / 86400.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        if any(f.active(t) for f in faults):
            continue
        size = rng.uniform(*channel.spike) * rng.choice((-1.0, 1.0))
        faults.append(Fault(FaultKind.SPIKE, t, t + sample_s, size))
    faults.sort(key=lambda f: f.start)
    return faults


def quantise(values: np.ndarray, channel: ChannelSpec) -> np.ndarray:
    q = np.round(np.clip(values, channel.lo, channel.hi) / channel.resolution) * channel.resolution
    return np.round(q, 6)


def inject(
    t: np.ndarray, truth: np.ndarray, channel: ChannelSpec, faults: Sequence[Fault]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a schedule to a sampled series. Returns (quantised output, per-sample fault code).

    Codes index `list(FaultKind)`: 0 ok, 1 stuck, 2 spike, 3 drift, 4 dead.
    """
    out = quantise(np.asarray(truth, dtype=float), channel)
    code = np.zeros(len(t), dtype=np.int8)
    kinds = list(FaultKind)
    for f in faults:
        m = (t >= f.start) & (t < f.end)
        if not m.any():
            continue
        idx = np.flatnonzero(m)
        if f.kind is FaultKind.STUCK:
            out[idx] = out[idx[0] - 1] if idx[0] > 0 else out[idx[0]]
        elif f.kind is FaultKind.SPIKE:
            out[idx] = quantise(out[idx] + f.magnitude, channel)
        elif f.kind is FaultKind.DRIFT:
            out[idx] = quantise(out[idx] + f.magnitude * (t[idx] - f.start) / 3600.0, channel)
        elif f.kind is FaultKind.DEAD:
            out[idx] = f.magnitude
        code[idx] = kinds.index(f.kind)
    return out, code


class FaultInjector:
    """Applies a schedule to one channel's live stream (for the device simulators)."""

    def __init__(self, channel: ChannelSpec, faults: Sequence[Fault]) -> None:
        self.channel = channel
        self.faults = sorted(faults, key=lambda f: f.start)
        self._last: float | None = None
        self._frozen: dict[int, float] = {}

    def apply(self, t: float, value: float) -> tuple[float, FaultKind]:
        ch = self.channel
        out = float(quantise(np.array([value]), ch)[0])
        kind = FaultKind.OK
        for i, f in enumerate(self.faults):
            if not f.active(t):
                continue
            kind = f.kind
            if f.kind is FaultKind.STUCK:
                frozen = self._frozen.setdefault(i, self._last if self._last is not None else out)
                out = frozen
            elif f.kind is FaultKind.SPIKE:
                out = float(quantise(np.array([out + f.magnitude]), ch)[0])
            elif f.kind is FaultKind.DRIFT:
                out = float(quantise(np.array([out + f.magnitude * (t - f.start) / 3600.0]), ch)[0])
            else:
                out = f.magnitude
            break
        if not math.isnan(out):
            self._last = out
        return out, kind
