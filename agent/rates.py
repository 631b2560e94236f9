"""Rates from counters: wrap-safe, reset-aware, derived on the box from consecutive readings.

A profile point with a `counter` (drivers.modbus.profile.CounterSpec) is a value that only counts up and
wraps at a modulus: tipping-bucket tips, accumulated rain in 0.01 mm, pulses. What the fleet wants is
the rate, and a rate computed naively across a wrap is a huge negative number. `CounterRates` keeps
the last good raw count of each counter point of one device and, for every new good reading, adds a
derived reading `<point>_rate`:

    rate = counter_delta(previous raw, current raw, wrap) * scale / seconds * rate_per_s

- the counter reading itself gets Quality.WRAPPED when the raw count went down in between, and so
  does its rate (the rate is still right: that is the point of the modulus);
- a rate above the spec's max_rate is a reset (someone cleared the gauge) or a jump, not data: the
  rate reading is then missing (value None, MISSING | DERIVED) with the reason in `text`;
- the first reading, a missing or failed reading, or a non-increasing timestamp give no rate; the
  next good reading is compared with the last good one, so a short outage does not break the rate.

The scheduler owns one CounterRates per device (a driver knows frames, not history).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from core.reading import Quality, Reading
from drivers.modbus.codec import counter_delta, raw_count
from drivers.modbus.profile import PointSpec

__all__ = ["CounterRates", "counter_points"]

_BAD = Quality.MISSING | Quality.COMM_FAILURE


def counter_points(points: Iterable[PointSpec]) -> list[PointSpec]:
    """The points of a profile that are counters."""
    return [p for p in points if p.counter is not None]


@dataclass(slots=True)
class _Last:
    raw: int
    ts: float


class CounterRates:
    """Derives `<point>_rate` readings for the counter points of one device."""

    def __init__(self, points: Sequence[PointSpec]) -> None:
        self._specs = {p.name: p for p in counter_points(points)}
        self._last: dict[str, _Last] = {}

    def __bool__(self) -> bool:
        return bool(self._specs)

    def derive(self, readings: Sequence[Reading]) -> list[Reading]:
        """Return the readings (counters flagged WRAPPED where they wrapped) plus the derived rates."""
        out: list[Reading] = []
        rates: list[Reading] = []
        for r in readings:
            spec = self._specs.get(r.point)
            if spec is None or r.value is None or r.quality & _BAD:
                out.append(r)
                continue
            rate = self._rate(spec, r)
            if rate is not None and rate.quality & Quality.WRAPPED:
                r = replace(r, quality=r.quality | Quality.WRAPPED)
            out.append(r)
            if rate is not None:
                rates.append(rate)
        return out + rates

    def _rate(self, spec: PointSpec, r: Reading) -> Reading | None:
        counter = spec.counter
        assert counter is not None and r.value is not None
        raw = raw_count(spec, r.value) % counter.wrap  # signed counters: count on the modulus
        last = self._last.get(spec.name)
        if last is not None and r.ts <= last.ts:
            return None  # the same or an older sample: nothing to learn
        self._last[spec.name] = _Last(raw, r.ts)
        if last is None:
            return None
        delta, wrapped = counter_delta(last.raw, raw, counter.wrap)
        dt = r.ts - last.ts
        value = delta * spec.scale / dt * counter.rate_per_s
        name = f"{spec.name}_rate"
        quality = Quality.DERIVED | (Quality.WRAPPED if wrapped else Quality.GOOD)
        if counter.max_rate is not None and value > counter.max_rate:
            text = (f"counter went from {last.raw} to {raw} in {dt:.3g} s: a rate of {value:.4g} "
                    f"{counter.rate_unit} is above max_rate {counter.max_rate:g}; taken as a reset")
            return Reading(r.device, name, None, counter.rate_unit, r.ts, Quality.DERIVED | Quality.MISSING,
                           r.cls, text)
        return Reading(r.device, name, value, counter.rate_unit, r.ts, quality, r.cls)
