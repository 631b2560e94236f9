"""Plausible, seeded weather at one station.

One model feeds every weather simulator (WXT530 registers, ASCII, NMEA, low-cost transmitters,
rain gauges) and the training data of the edge models, so a model trained here sees the same
physics the HIL tests throw at it.

What it models, in the proportions a Jinan summer shows:
- temperature: diurnal cycle (min near 05:00, max near 14:00) plus an AR(1) anomaly;
- relative humidity: anti-correlated with temperature, rising to saturation in rain;
- pressure: a slow random walk around 1010 hPa; a storm is preceded by a fall of 2-6 hPa over
  the 30-120 minutes before onset and followed by a recovery (the nowcast's main precursor);
- wind: an AR(1) mean with gusts; storms bring a gust front shortly before the rain;
- rain: storms arrive as a Poisson process; each has a peak intensity (5-80 mm/h), a rise to the
  peak and a decay; the rain accumulator never decreases.

`advance(t)` steps the model to time t in fixed sub-steps, so the same seed and the same
sequence of times always give the same weather.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Storm:
    onset: float          # unix seconds when rain starts
    peak: float           # unix seconds of peak intensity
    end: float            # unix seconds when rain stops
    peak_mmh: float       # peak intensity, mm/h
    pressure_drop: float  # hPa fall ahead of onset
    lead_s: float         # how long before onset the precursors start


@dataclass(frozen=True, slots=True)
class WeatherState:
    t: float
    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    wind_speed_ms: float
    wind_gust_ms: float
    wind_dir_deg: float
    rain_rate_mmh: float
    rain_total_mm: float
    radiation_wm2: float

    @property
    def dew_point_c(self) -> float:
        """Magnus formula."""
        a, b = 17.62, 243.12
        rh = min(max(self.humidity_pct, 1.0), 100.0)
        g = math.log(rh / 100.0) + a * self.temperature_c / (b + self.temperature_c)
        return b * g / (a - g)


class WeatherModel:
    """Seeded weather; call `advance(t)` with non-decreasing times."""

    STEP_S = 10.0

    def __init__(
        self,
        seed: int = 0,
        start: float = 1_750_000_000.0,
        *,
        mean_temp_c: float = 24.0,
        diurnal_amp_c: float = 5.0,
        storms_per_day: float = 0.6,
        utc_offset_h: float = 8.0,
    ) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._storm_rng = random.Random(seed * 7919 + 17)
        self.mean_temp_c = mean_temp_c
        self.diurnal_amp_c = diurnal_amp_c
        self.storms_per_day = storms_per_day
        self.utc_offset_h = utc_offset_h
        self.t = start
        self._temp_anom = 0.0
        self._pressure_walk = 1010.0
        self._wind_mean = 3.0
        self._wind_dir = 120.0
        self._rain_total = 0.0
        self.storms: list[Storm] = []
        self._next_storm_from = start
        self._schedule_storms(start + 3 * 86400)
        self.state = self._compute()

    # --- storms -------------------------------------------------------------------------------
    def _schedule_storms(self, until: float) -> None:
        rate = self.storms_per_day / 86400.0
        t = self._next_storm_from
        while t < until:
            if rate <= 0:
                t = until
                break
            t += self._storm_rng.expovariate(rate)
            peak_mmh = min(80.0, 4.0 + self._storm_rng.expovariate(1 / 14.0))
            rise = self._storm_rng.uniform(600, 2400)
            decay = self._storm_rng.uniform(1200, 5400)
            drop = self._storm_rng.uniform(1.5, 3.0) + peak_mmh / 20.0
            lead = self._storm_rng.uniform(1800, 7200)
            self.storms.append(Storm(t, t + rise, t + rise + decay, peak_mmh, drop, lead))
        self._next_storm_from = t

    def _storm_effects(self, t: float) -> tuple[float, float, float, float, float]:
        """(rain mm/h, pressure offset hPa, humidity push %, wind push m/s, temp offset C)."""
        rain = press = hum = wind = temp = 0.0
        for s in self.storms:
            if t < s.onset - s.lead_s or t > s.end + 3 * 3600:
                continue
            if t < s.onset:  # precursors: pressure falls, humidity rises, wind picks up late
                f = (t - (s.onset - s.lead_s)) / s.lead_s
                press -= s.pressure_drop * f
                hum += 18.0 * f * f
                if s.onset - t < 1200:
                    wind += 4.0 * (1 - (s.onset - t) / 1200)
            elif t <= s.end:
                if t <= s.peak:
                    f = (t - s.onset) / max(s.peak - s.onset, 1.0)
                else:
                    f = max(0.0, 1 - (t - s.peak) / max(s.end - s.peak, 1.0)) ** 1.5
                rain += s.peak_mmh * f
                press -= s.pressure_drop * (1 - 0.3 * (t - s.onset) / max(s.end - s.onset, 1.0))
                hum += 30.0
                wind += 3.0 + 0.08 * s.peak_mmh * f
                temp -= 2.0 + 0.06 * s.peak_mmh
            else:  # recovery over three hours
                f = 1 - (t - s.end) / (3 * 3600)
                press -= 0.7 * s.pressure_drop * f
                hum += 15.0 * f
                temp -= 2.0 * f
        return rain, press, hum, wind, temp

    # --- stepping -----------------------------------------------------------------------------
    def advance(self, t: float) -> WeatherState:
        if t < self.t:
            return self.state
        while self.t + self.STEP_S <= t:
            self._step(self.STEP_S)
        if t > self.t:
            self._step(t - self.t)
        return self.state

    def _step(self, dt: float) -> None:
        rng = self._rng
        k = dt / 600.0
        self._temp_anom += -0.02 * k * self._temp_anom + 0.15 * math.sqrt(k) * rng.gauss(0, 1)
        self._pressure_walk += -0.01 * k * (self._pressure_walk - 1010.0) + 0.05 * math.sqrt(k) * rng.gauss(0, 1)
        self._wind_mean += -0.05 * k * (self._wind_mean - 3.0) + 0.2 * math.sqrt(k) * rng.gauss(0, 1)
        self._wind_mean = max(0.0, self._wind_mean)
        self._wind_dir = (self._wind_dir + 4.0 * math.sqrt(k) * rng.gauss(0, 1)) % 360.0
        if self.t + dt > self._next_storm_from - 2 * 86400:
            self._schedule_storms(self.t + 3 * 86400)
        rain_before = self._storm_effects(self.t)[0]
        self.t += dt
        rain_after = self._storm_effects(self.t)[0]
        self._rain_total += 0.5 * (rain_before + rain_after) * dt / 3600.0
        self.state = self._compute()

    def _compute(self) -> WeatherState:
        t = self.t
        hour = ((t / 3600.0) + self.utc_offset_h) % 24.0
        diurnal = math.sin(2 * math.pi * (hour - 8.0) / 24.0)
        rain, press, hum, wind, temp_off = self._storm_effects(t)
        temperature = self.mean_temp_c + self.diurnal_amp_c * diurnal + self._temp_anom + temp_off
        humidity = min(100.0, max(8.0, 62.0 - 14.0 * diurnal - 1.5 * self._temp_anom + hum))
        gust_noise = abs(self._rng.gauss(0, 1))
        wind_speed = max(0.0, self._wind_mean + wind)
        gust = wind_speed * (1.2 + 0.3 * gust_noise)
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 13.0)) if 6.0 <= hour <= 19.0 else 0.0
        radiation = 850.0 * sun * (0.25 if rain > 0 else 1.0)
        return WeatherState(
            t=t,
            temperature_c=temperature,
            humidity_pct=humidity,
            pressure_hpa=self._pressure_walk + press,
            wind_speed_ms=wind_speed,
            wind_gust_ms=gust,
            wind_dir_deg=self._wind_dir,
            rain_rate_mmh=rain,
            rain_total_mm=self._rain_total,
            radiation_wm2=radiation,
        )
