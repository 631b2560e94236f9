"""Training and hold-out data from the shared physics (dev only: imports hil_tests).

Never imported on a box. The train scripts and the metric tests call these with fixed seeds, so a
data set is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np

from drivers.physics.weather import WeatherModel

WEATHER_START = 1_750_000_000.0
WEATHER_FIELDS = {
    "air_temperature": "temperature_c",
    "relative_humidity": "humidity_pct",
    "air_pressure": "pressure_hpa",
    "wind_speed": "wind_speed_ms",
    "rain_intensity": "rain_rate_mmh",
}


def simulate_weather(seed: int, days: float, period_s: float = 60.0) -> dict[str, np.ndarray]:
    """One station sampled every period_s: {"t": ..., point name: truth values}.

    Stations start at different hours of the day (seeded) so that storms and the diurnal cycle
    do not line up across the data set.
    """
    start = WEATHER_START + (seed * 7919 % 24) * 3600.0
    model = WeatherModel(seed=seed, start=start)
    n = int(days * 86400 / period_s)
    t = start + period_s * np.arange(1, n + 1)
    cols: dict[str, list[float]] = {k: [] for k in WEATHER_FIELDS}
    for ti in t:
        s = model.advance(float(ti))
        for k, attr in WEATHER_FIELDS.items():
            cols[k].append(getattr(s, attr))
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["t"] = t
    out["storms"] = model.storms  # type: ignore[assignment]
    return out
