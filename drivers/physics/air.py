"""Plausible, seeded air quality and street noise at one roadside station.

Feeds the PM2.5/PM10 transmitter, the six-pollutant outdoor unit and the noise/PM registers of the
all-in-one weather station. Couples to the weather model when one is given (rain washes particles
out, wind disperses them, sunshine makes ozone), so one site's simulators tell one story.

What it models:
- traffic: a weekday profile with rush hours near 08:00 and 18:00 (local time) and a quiet night;
- PM2.5: a regional background that drifts (AR(1)) with haze episodes (Poisson, building up over a
  day and clearing within hours) plus a traffic share; wind and rain lower it; PM10 = PM2.5 times a
  coarse-dust ratio of 1.3-2.0 (dry, windy days raise it), so PM10 >= PM2.5 always;
- NO2 and CO follow traffic (CO in mg/m3); O3 grows with sunshine and is eaten by NO2 (titration);
  SO2 is low with a slow drift;
- noise: 45 dB(A) at night to ~70 dB(A) in rush hour, plus gust and rain noise.

`advance(t)` steps in fixed sub-steps: the same seed and the same times give the same air.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from drivers.physics.weather import WeatherState

__all__ = ["AirModel", "AirState", "traffic_level"]


@dataclass(frozen=True, slots=True)
class AirState:
    t: float
    pm25: float      # ug/m3
    pm10: float      # ug/m3
    no2: float       # ug/m3
    so2: float       # ug/m3
    co: float        # mg/m3
    o3: float        # ug/m3
    noise_db: float  # dB(A)


def traffic_level(hour: float) -> float:
    """Relative traffic 0.1..1.0 by local hour: rush hours at 08:00 and 18:00, quiet at 03:00."""
    morning = math.exp(-((hour - 8.0) / 1.5) ** 2)
    evening = math.exp(-((hour - 18.0) / 2.0) ** 2)
    day = 0.45 if 6.0 <= hour <= 22.0 else 0.0
    return min(1.0, 0.1 + day + 0.5 * morning + 0.45 * evening)


class AirModel:
    """Seeded air quality; call `advance(t, weather)` with non-decreasing times."""

    STEP_S = 30.0

    def __init__(self, seed: int = 0, start: float = 1_750_000_000.0, *, background_pm25: float = 30.0,
                 episodes_per_week: float = 1.0, utc_offset_h: float = 8.0) -> None:
        if background_pm25 <= 0 or episodes_per_week < 0:
            raise ValueError(f"need background_pm25 > 0 and episodes_per_week >= 0, got "
                             f"{background_pm25!r}, {episodes_per_week!r}")
        self._rng = random.Random(seed * 104729 + 3)
        self.background = background_pm25
        self.episode_rate = episodes_per_week / (7 * 86400.0)
        self.utc_offset_h = utc_offset_h
        self.t = start
        self._bg = background_pm25
        self._so2 = 8.0
        self._coarse = 1.5
        self._episode_end = start - 1.0
        self._episode_peak = 0.0
        self._episode_start = start - 1.0
        self._weather: WeatherState | None = None
        self.state = self._compute()

    def advance(self, t: float, weather: WeatherState | None = None) -> AirState:
        """Step to time t (earlier times return the current state); weather couples if given."""
        if weather is not None:
            self._weather = weather
        if t < self.t:
            return self.state
        while self.t + self.STEP_S <= t:
            self._step(self.STEP_S)
        if t > self.t:
            self._step(t - self.t)
        return self.state

    def _step(self, dt: float) -> None:
        rng, k = self._rng, dt / 3600.0
        self._bg += -0.05 * k * (self._bg - self.background) + 1.5 * math.sqrt(k) * rng.gauss(0, 1)
        self._bg = max(3.0, self._bg)
        self._so2 = max(1.0, self._so2 - 0.1 * k * (self._so2 - 8.0) + 0.4 * math.sqrt(k) * rng.gauss(0, 1))
        self._coarse = min(2.0, max(1.3, self._coarse + 0.05 * math.sqrt(k) * rng.gauss(0, 1)))
        if self.t > self._episode_end and rng.random() < self.episode_rate * dt:
            self._episode_start = self.t
            self._episode_peak = rng.uniform(60.0, 220.0)
            self._episode_end = self.t + rng.uniform(12, 60) * 3600.0
        self.t += dt
        self.state = self._compute()

    def _episode(self) -> float:
        if not self._episode_start <= self.t <= self._episode_end:
            return 0.0
        span = self._episode_end - self._episode_start
        x = (self.t - self._episode_start) / span
        return self._episode_peak * (x / 0.8 if x < 0.8 else (1.0 - x) / 0.2)  # slow build-up, fast clear-out

    def _compute(self) -> AirState:
        hour = ((self.t / 3600.0) + self.utc_offset_h) % 24.0
        traffic = traffic_level(hour)
        w = self._weather
        wind = w.wind_speed_ms if w is not None else 3.0
        rain = w.rain_rate_mmh if w is not None else 0.0
        sun = (w.radiation_wm2 / 850.0) if w is not None else max(0.0, math.sin(math.pi * (hour - 6.0) / 13.0))
        dilution = 1.0 / (1.0 + 0.15 * wind)
        washout = 1.0 / (1.0 + 0.08 * rain)
        pm25 = (self._bg + self._episode() + 25.0 * traffic) * dilution * washout
        dust = 1.0 + 0.05 * max(0.0, wind - 6.0) if rain == 0 else 1.0
        no2 = (12.0 + 55.0 * traffic) * dilution
        co = (0.3 + 0.9 * traffic) * dilution
        o3 = max(2.0, 20.0 + 110.0 * sun - 0.6 * no2)
        gust = w.wind_gust_ms if w is not None else 0.0
        noise = 44.0 + 26.0 * traffic + 0.4 * gust + (3.0 if rain > 5 else 0.0)
        return AirState(self.t, pm25, pm25 * self._coarse * dust, no2, self._so2, co, o3, noise)
