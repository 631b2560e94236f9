"""A Vaisala WXT530 on Modbus, fed by the shared weather physics.

The register map is the shipped profile drivers/modbus/profiles/vaisala_wxt530.toml, and every value is
written with drivers.modbus.codec.encode_point from that profile, so the simulator and the profile cannot
drift apart silently; the tests also check the raw registers against devices.md's table so that a
wrong profile is caught too.

`weather` passes climate settings to WeatherModel (e.g. {"mean_temp_c": -20.0} for a winter
station). Time: the weather advances with the wall clock (times `time_factor`). On every read the
simulator samples the model on a `sample_s` grid of model time and keeps a running window of
`window_s` for the min/max/avg registers (wind direction's average is the circular mean).

Registers 0x0017, 0x0018, 0x0024 and 0x0025 are not in the table but lie inside the manual's own
example query (01 04 00 0A 00 1C), so they exist and read as invalid (32767); 0x0001-0x0009 do not
exist here (exception 02), so a driver that spans them is caught.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from drivers.modbus.codec import encode_point
from drivers.modbus.profile import Profile, load_profile
from drivers.modbus.sim_slave import SimSlave, serving
from drivers.physics.weather import WeatherModel, WeatherState

__all__ = ["RESERVED_REGISTERS", "Wxt530Registers", "make_wxt530", "precipitation_code", "serve_wxt530"]

PROFILE = "vaisala_wxt530"
RESERVED_REGISTERS = (0x0017, 0x0018, 0x0024, 0x0025)
_STATS = ("", "_min", "_max", "_avg")


def precipitation_code(rain_mmh: float) -> int:
    """WMO 4680 present-weather code: 0 none, 61/62/63 slight/moderate/heavy rain."""
    if rain_mmh <= 0:
        return 0
    return 61 if rain_mmh < 2.5 else 62 if rain_mmh < 10 else 63


def _circular_mean(degrees: Iterable[float]) -> float:
    xs = list(degrees)
    s = sum(math.sin(math.radians(d)) for d in xs)
    c = sum(math.cos(math.radians(d)) for d in xs)
    return math.degrees(math.atan2(s, c)) % 360.0


class Wxt530Registers:
    """The WXT530 input-register table, recomputed from the weather model on each refresh()."""

    def __init__(
        self, *, seed: int = 0, time_factor: float = 1.0, start: float | None = None,
        window_s: float = 60.0, sample_s: float = 1.0, model_number: int = 6, software_version: int = 3,
        missing: Iterable[str] = (), clock: Callable[[], float] = time.time,
        weather: dict[str, float] | None = None,
    ) -> None:
        if not time_factor > 0 or not window_s > 0 or not 0 < sample_s <= window_s:
            raise ValueError(f"need time_factor > 0 and 0 < sample_s <= window_s, got "
                             f"{time_factor!r}, {sample_s!r}, {window_s!r}")
        if not 1 <= model_number <= 6 or not 0 <= software_version <= 255:
            raise ValueError(f"model_number is 1..6 (WXT531..536), software_version 0..255; "
                             f"got {model_number!r}, {software_version!r}")
        self.profile: Profile = load_profile(PROFILE)
        names = {p.name for p in self.profile.points}
        self.missing = frozenset(missing)
        for m in self.missing:
            if not any(n == m or n.startswith(m + "_") for n in names):
                raise ValueError(f"missing={m!r} names no WXT530 point; points: {', '.join(sorted(names))}")
        self.clock = clock
        self.time_factor = float(time_factor)
        self.window_s, self.sample_s = float(window_s), float(sample_s)
        self.model_version = (model_number << 8) | software_version
        self.model = WeatherModel(seed, start=clock() if start is None else start, **(weather or {}))
        self._wall0, self._t0 = clock(), self.model.t
        self._window: deque[WeatherState] = deque()
        self.input: dict[int, int] = {a: 0x7FFF for a in RESERVED_REGISTERS}
        self.values: dict[str, float | None] = {}
        self.refresh()

    @property
    def state(self) -> WeatherState:
        return self.model.state

    def model_time(self) -> float:
        return self._t0 + (self.clock() - self._wall0) * self.time_factor

    def _sample(self) -> None:
        t = self.model_time()
        last = self._window[-1].t if self._window else self.model.t - self.sample_s
        grid = max(math.floor(last / self.sample_s) + 1, math.ceil((t - self.window_s) / self.sample_s))
        while grid * self.sample_s < t:
            self._window.append(self.model.advance(grid * self.sample_s))
            grid += 1
        if not self._window or t > self._window[-1].t:
            self._window.append(self.model.advance(t))
        while self._window[0].t < t - self.window_s:
            self._window.popleft()

    def _physical(self) -> dict[str, float]:
        win, now = list(self._window), self._window[-1]
        out: dict[str, float] = {"model_number": float(self.model_version >> 8),
                                 "software_version": float(self.model_version & 0xFF)}

        def stats(name: str, pick: Callable[[WeatherState], float]) -> None:
            xs = [pick(s) for s in win]
            for suffix, v in zip(_STATS, (pick(now), min(xs), max(xs), sum(xs) / len(xs))):
                out[name + suffix] = v

        stats("relative_humidity", lambda s: s.humidity_pct)
        stats("air_pressure", lambda s: s.pressure_hpa)
        stats("global_radiation", lambda s: s.radiation_wm2)
        stats("air_temperature", lambda s: s.temperature_c)
        stats("wind_direction", lambda s: s.wind_dir_deg)
        out["wind_direction_avg"] = _circular_mean(s.wind_dir_deg for s in win)
        out["wind_direction_raw"] = now.wind_dir_deg
        out["precipitation_type"] = float(precipitation_code(now.rain_rate_mmh))
        out["wind_quality"] = 100.0
        out["dew_point"] = now.dew_point_c
        return out

    def _is_missing(self, name: str) -> bool:
        return any(name == m or name.startswith(m + "_") for m in self.missing)

    def refresh(self) -> None:
        """Advance the weather to now and rewrite every register (the SimSlave refresh hook)."""
        self._sample()
        physical = self._physical()
        fields: dict[int, int] = {}  # registers shared by bit fields (0x0000: model, software)
        for spec in self.profile.points:
            value = None if self._is_missing(spec.name) else physical[spec.name]
            regs = encode_point(spec, value)
            self.values[spec.name] = value
            for i, r in enumerate(regs):
                address = spec.address + i
                if spec.bits is not None:
                    r = fields[address] = fields.get(address, 0) | r
                self.input[address] = r


def make_wxt530(unit: int = 1, *, deaf_s: float = 0.0, unmapped: int | None = None,
                **kwargs: Any) -> tuple[SimSlave, Wxt530Registers]:
    """A WXT530 slave ready to serve; kwargs go to Wxt530Registers.

    As the manual's table: registers it does not list answer exception 02. `deaf_s` and `unmapped`
    give it the traits of the third-party slave of issue 11 (see SimSlave)."""
    regs = Wxt530Registers(**kwargs)
    return SimSlave(unit, holding={}, input=regs.input, refresh=regs.refresh, deaf_s=deaf_s, unmapped=unmapped), regs


async def serve_wxt530(
    *, tcp_port: int | None = None, rtu: bool = False, units: Iterable[int] = (1,), baudrate: int = 19200,
    parity: str = "N", seed: int = 0, control_port: int | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None, time_factor: float = 1.0, host: str = "127.0.0.1",
) -> None:
    """Serve WXT530 units (unit i gets weather seed + i) until cancelled.

    tcp_port=0 / control_port=0 pick free ports. on_ready gets {"tcp_port", "rtu_path",
    "control_port"} once everything listens (None for what is not served).
    """
    if tcp_port is None and not rtu:
        raise ValueError("serve_wxt530 needs tcp_port and/or rtu=True")
    slaves = [make_wxt530(u, seed=seed + i, time_factor=time_factor)[0] for i, u in enumerate(units)]
    async with serving(slaves, tcp_port=tcp_port, rtu=rtu, control_port=control_port,
                       baudrate=baudrate, parity=parity, host=host) as info:
        if on_ready is not None:
            on_ready(dict(info))
        await asyncio.Event().wait()
