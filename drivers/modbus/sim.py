"""Simulators for the Modbus device family, fed by the shared physics (weather.py and air.py).

Each model's register map is its shipped profile (drivers/modbus/profiles/<model>.toml), written with
drivers.modbus.codec.encode_point, plus the registers a profile does not poll (identification,
configuration) as devices.md describes them; tests check the raw registers against devices.md's
numbers too, so a wrong profile is caught, not mirrored. Writes the devices understand:

    lufft_ws               holding 7 != 0 resets the rain total
    hilink_ld8001h         0x0005 = installation height (cm): the level is reported against it
    small_weather_station  90 written to 24578 ("24579") resets the rain
    dfrobot_sen0575        holding 6 = rain window in hours (1-24), holding 7 = base rainfall x10000
    renke_*                0x07D0 address / 0x07D1 baud code: stored, applied at the next power-up

Time: the physics runs on model time = start + (wall clock - wall at start) * time_factor, sampled
on reads, at most every UPDATE_S of model time and at once after a write (the SimSlave refresh
hook); everything is seeded, so a scenario repeats exactly.
Counters wrap like the devices' registers; `rain_start_mm` / `tip_start` start them near the top.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from drivers.modbus.codec import RAW_RANGE, encode_point
from drivers.modbus.profile import PointSpec, Profile, load_profile
from drivers.modbus.sim_slave import SimSlave, serving
from drivers.modbus.sim_wxt530 import make_wxt530
from drivers.physics.air import AirModel, AirState
from drivers.physics.utilities import ChamberLevel, Cover, Methane, PipePressure
from drivers.physics.weather import WeatherModel, WeatherState

__all__ = ["MODELS", "ModelSim", "make_model", "parse_slaves", "serve_models"]

RENKE_BAUD_CODES = {2400: 0, 4800: 1, 9600: 2}
TIP_MM = 0.2794  # SEN0575 bucket: 0.2794 mm (0.011 in) per tip


def _register_value(spec: PointSpec, value: float | None) -> list[int]:
    """encode_point, with counters taken modulo their wrap and values clamped to the raw type."""
    if value is not None and spec.type != "f32":  # a float register holds the value itself
        lo, hi = RAW_RANGE[spec.type]
        raw = round((value - spec.offset) / spec.scale)
        if spec.counter is not None:
            raw %= spec.counter.wrap
            if lo < 0 and raw > hi:
                raw -= hi - lo + 1
        raw = min(max(raw, lo), hi)
        while raw in spec.invalid:
            raw -= 1
        value = raw * spec.scale + spec.offset
    return encode_point(spec, value)


class ModelSim:
    """One simulated device: registers recomputed from the physics on every refresh()."""

    profile_name: ClassVar[str]
    uses_air: ClassVar[bool] = False
    UPDATE_S: ClassVar[float] = 0.1  # model seconds between measurement updates seen by reads

    def __init__(self, unit: int, *, seed: int = 0, time_factor: float = 1.0, start: float | None = None,
                 clock: Callable[[], float] = time.time, weather: dict[str, float] | None = None,
                 rain_start_mm: float = 0.0) -> None:
        if not time_factor > 0:
            raise ValueError(f"time_factor must be > 0, got {time_factor!r}")
        self.unit = unit
        self.profile: Profile = load_profile(self.profile_name)
        self.clock, self.time_factor = clock, float(time_factor)
        t0 = clock() if start is None else start
        self.weather = WeatherModel(seed, start=t0, **(weather or {}))
        self.air = AirModel(seed, start=t0) if self.uses_air else None
        self._wall0, self._t0 = clock(), t0
        self.rain_start_mm = rain_start_mm
        self.rain_base_mm = 0.0  # physics total at the last reset
        self.input: dict[int, int] = {}
        self.holding: dict[int, int] = {}
        self.values: dict[str, float | None] = {}
        self._slave: SimSlave | None = None
        self._writes_seen = 0
        self._refreshed_at = float("-inf")
        self.setup()
        self.refresh()

    def setup(self) -> None:
        """Registers that do not come from the profile (identification, configuration)."""

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        raise NotImplementedError(f"{type(self).__name__} must map the physics to its points")

    def model_time(self) -> float:
        return self._t0 + (self.clock() - self._wall0) * self.time_factor

    def rain_since_reset(self, w: WeatherState) -> float:
        return self.rain_start_mm + w.rain_total_mm - self.rain_base_mm

    def refresh(self) -> None:
        """Advance the physics to now and rewrite every register."""
        self._refreshed_at = now = self.model_time()
        w = self.weather.advance(now)
        air = self.air.advance(w.t, w) if self.air is not None else None
        values = self.physical(w, air)
        for spec in self.profile.points:
            regs = _register_value(spec, values[spec.name])
            table = self.input if spec.function == 4 else self.holding
            for i, r in enumerate(regs):
                table[spec.address + i] = r
            self.values[spec.name] = values[spec.name]

    def refresh_if_due(self) -> None:
        """The read hook: like a real station, registers change at its update rate (UPDATE_S of
        model time), not on every request, and at once after a write (a reset, a setting). The
        blocks of one poll then see one consistent measurement, and a busy simulator no longer
        recomputes its whole map for every request."""
        slave = self._slave
        writes = slave.writes if slave is not None else 0
        if writes != self._writes_seen or self.model_time() >= self._refreshed_at + self.UPDATE_S:
            self._writes_seen = writes
            self.refresh()

    def slave(self) -> SimSlave:
        self._slave = SimSlave(self.unit, holding=self.holding, input=self.input, refresh=self.refresh_if_due)
        return self._slave


class _Window:
    """Instant/min/max/avg over the last `window_s` of model time, sampled (on reads) every `sample_s`."""

    def __init__(self, window_s: float = 60.0, sample_s: float = 1.0) -> None:
        self.window_s, self.sample_s = window_s, sample_s
        self.samples: deque[WeatherState] = deque()

    def add(self, w: WeatherState) -> None:
        if not self.samples or w.t >= self.samples[-1].t + self.sample_s:
            self.samples.append(w)
        while self.samples[0].t < w.t - self.window_s:
            self.samples.popleft()

    def stats(self, out: dict[str, float | None], name: str, now: WeatherState,
              pick: Callable[[WeatherState], float]) -> None:
        xs = [pick(s) for s in self.samples] + [pick(now)]
        out[name], out[name + "_min"], out[name + "_max"] = pick(now), min(xs), max(xs)
        out[name + "_avg"] = sum(xs) / len(xs)


class LufftWs(ModelSim):
    profile_name = "lufft_ws"

    def __init__(self, unit: int, *, model_code: int = 6, software: int = 31, **kw: Any) -> None:
        self.model_code, self.software, self._window = model_code, software, _Window()
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.input.update({a: 0x7FFF for a in range(0, 100)})  # the map is dense; unused = invalid
        self.input.update({a: 0 for a in range(2, 8)})        # sensor status words: all fine
        self.holding.update({0: 0, 2: 1, 3: 1, 4: 1, 5: 1, 7: 0, 8: 0})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        if self.holding[7]:  # reset absolute rain
            self.rain_base_mm, self.rain_start_mm, self.holding[7] = w.rain_total_mm, 0.0, 0
        self._window.add(w)
        out: dict[str, float | None] = {"model_version": float(self.model_code << 8 | self.software)}
        for name, pick in (("relative_humidity", lambda s: s.humidity_pct), ("air_pressure", lambda s: s.pressure_hpa),
                           ("wind_direction", lambda s: s.wind_dir_deg), ("air_temperature", lambda s: s.temperature_c),
                           ("wind_speed_kmh", lambda s: s.wind_speed_ms * 3.6)):
            self._window.stats(out, name, w, pick)
        out["wind_speed_kmh_max"] = max(s.wind_gust_ms for s in self._window.samples) * 3.6
        out["precipitation_type"] = 60.0 if w.rain_rate_mmh > 0 else 0.0
        out["global_radiation"] = None if self.model_code < 10 else w.radiation_wm2  # WS501.. have one
        out["dew_point"] = w.dew_point_c
        out["rain_total"] = self.rain_since_reset(w)
        out["rain_intensity"] = w.rain_rate_mmh
        return out


class _Renke(ModelSim):
    def __init__(self, unit: int, *, baudrate: int = 4800, **kw: Any) -> None:
        self.baudrate = baudrate
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.holding.update({0x07D0: self.unit, 0x07D1: RENKE_BAUD_CODES.get(self.baudrate, 1)})


class RenkeWindSpeed(_Renke):
    profile_name = "renke_wind_speed"

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        return {"wind_speed": w.wind_speed_ms}


def sector(deg: float) -> int:
    """0 N, 1 NE, ... 7 NW: the 45-degree sector centred on each direction."""
    return round((deg % 360.0) / 45.0) % 8


class RenkeWindDirection(_Renke):
    profile_name = "renke_wind_direction"

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        deg = round(w.wind_dir_deg) % 360
        return {"wind_sector": float(sector(deg)), "wind_direction": float(deg)}


class SmallWeatherStation(ModelSim):
    profile_name = "small_weather_station"
    uses_air = True

    def setup(self) -> None:
        self.holding.update({512: 0, 2000: self.unit, 2001: 1, 24578: 0})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        assert air is not None
        if self.holding[24578] == 90:  # "write 90 to 24579 resets rain"
            self.rain_base_mm, self.rain_start_mm, self.holding[24578] = w.rain_total_mm, 0.0, 0
        deg = float(round(w.wind_dir_deg) % 360)
        return {"wind_speed": w.wind_speed_ms, "wind_direction": deg, "wind_sector": float(sector(deg)),
                "wind_direction_2": deg, "relative_humidity": w.humidity_pct, "air_temperature": w.temperature_c,
                "noise": air.noise_db, "pm25": air.pm25, "pm10": air.pm10, "air_pressure": w.pressure_hpa / 10.0,
                "illuminance": w.radiation_wm2 * 120.0, "rain": self.rain_since_reset(w)}


class DfrobotRainGauge(ModelSim):
    profile_name = "dfrobot_sen0575"

    def __init__(self, unit: int = 0xC0, *, tip_start: int = 0, **kw: Any) -> None:
        self.tip_start = tip_start
        self._history: deque[tuple[float, int]] = deque()  # (model time, tips) once a minute, 24 h
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.input.update({0: 0x00C0, 1: 0x7343, 2: self.unit, 3: 9600, 4: 0x0001, 5: 0x1000})
        self.holding.update({6: 1, 7: 0})
        self._base_written = 0

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        if self.holding[7] != self._base_written:  # base rainfall written (x10000 mm)
            self._base_written = self.holding[7]
            self.rain_start_mm, self.rain_base_mm = self.holding[7] / 10000.0, w.rain_total_mm
        tips = self.tip_start + int(self.rain_since_reset(w) / TIP_MM + 1e-9)
        if not self._history or w.t - self._history[-1][0] >= 60.0:
            self._history.append((w.t, tips))
        while self._history[0][0] < w.t - 86400.0:
            self._history.popleft()
        hours = min(max(self.holding[6], 1), 24)
        old = next((n for t, n in self._history if t >= w.t - hours * 3600.0), tips)
        return {"rainfall_window": (tips - old) * TIP_MM, "rainfall_total": tips * TIP_MM,
                "tip_count": float(tips), "working_minutes": float(int((w.t - self._t0) / 60.0) % 65536)}


class PmTransmitter(ModelSim):
    profile_name = "pm_transmitter"
    uses_air = True

    def setup(self) -> None:
        self.holding.update({a: 0 for a in range(10)})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        assert air is not None
        return {"pm25": air.pm25, "pm10": air.pm10}


class SixGas(ModelSim):
    profile_name = "outdoor_six_gas"
    uses_air = True

    def setup(self) -> None:
        self.holding.update({a: 0 for a in range(11)})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        assert air is not None
        return {"so2": air.so2, "no2": air.no2, "co": air.co, "o3": air.o3, "pm25": air.pm25, "pm10": air.pm10,
                "air_temperature": w.temperature_c, "relative_humidity": w.humidity_pct}


# --- underground utilities (devices-city.md section 2; physics: hil_tests/physics/utilities.py) ---

class _Chamber(ModelSim):
    """A radar gauge over a drainage chamber that fills with the rain. `level.inflow_m_per_h` adds
    a burst main (or a pump, negative); `level_m` / `depth_m` set the start and the chamber."""

    def __init__(self, unit: int, *, level_m: float = 0.4, depth_m: float = 5.0, **kw: Any) -> None:
        self._seed, self._level_args = kw.get("seed", 0), {"level_m": level_m, "depth_m": depth_m,
                                                          "dry_level_m": min(0.4, level_m)}
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.level = ChamberLevel(self._seed, self._t0, **self._level_args)


class VegapulsC21(_Chamber):
    profile_name = "vega_vegapuls_c21"
    MOUNT_M = 0.3  # sensor above the chamber's top

    def setup(self) -> None:
        super().setup()
        self.input = self.holding  # FC3 and FC4 read the same registers
        self.holding.update({a: 0 for a in range(100, 108)})
        self.holding.update({a: 0 for a in range(2000, 2010)})
        self.holding.update({a: 0 for a in range(2300, 2308)})
        self.holding.update({200: self.unit, 201: 9600, 202: 0, 203: 1, 206: 50, 3000: 0})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        level = self.level.advance(w.t, w.rain_rate_mmh)
        self.holding[2002], self.holding[2003] = encode_point(PointSpec("pv", 3, 2002, "f32"), level)  # ABCD copy
        return {"pv_status": 0.0, "pv_unit": 45.0, "level": level, "ne107_code": 0.0,
                "distance": self.level.depth_m + self.MOUNT_M - level, "device_status": 0.0}


class HilinkRadar(_Chamber):
    profile_name = "hilink_ld8001h"

    def setup(self) -> None:
        super().setup()
        self.holding.update({0: 0, 2: 0, 4: 0, 5: round(self.level.depth_m * 100), 0x03F4: self.unit,
                             0x03F6: 1152, 0x07D4: 10})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        height = self.holding[5] / 100.0  # as installed (written by the installer, FC06)
        gap = self.level.depth_m - self.level.advance(w.t, w.rain_rate_mmh)
        return {"air_gap": gap, "level": max(0.0, height - gap), "install_height": height}


class KellerSeries30(ModelSim):
    profile_name = "keller_series30"

    def __init__(self, unit: int, **kw: Any) -> None:
        self._seed = kw.get("seed", 0)
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.main = PipePressure(self._seed, self._t0)
        self.holding.update({a: 0 for a in range(0, 12)})
        self.holding.update({0x020C: 0, 0x020D: self.unit, 0x020E: 0x0514})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        bar, temp = self.main.advance(w.t)
        for a, v in ((0, bar), (6, temp), (0xA, None)):  # CH0, T, TOB2: not polled
            spec = PointSpec("x", 3, a, "f32", invalid=(0x7FC00000,))
            self.holding[a], self.holding[a + 1] = encode_point(spec, v)
        return {"pressure": bar, "pressure_2": None, "temperature": temp, "status": 0.0}

    def slave(self) -> SimSlave:
        self._slave = _KellerSlave(self.unit, holding=self.holding, input=self.input, refresh=self.refresh_if_due)
        return self._slave


class _KellerSlave(SimSlave):
    """Series 30 read rules: at most 4 registers, from an even address, else exception 02."""

    def handle(self, pdu: bytes) -> bytes:
        if pdu[0] == 3 and len(pdu) == 5:
            address, count = int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
            if count > 4 or address % 2:
                return bytes([0x83, 0x02])
        return super().handle(pdu)


class GasModuleCh4(ModelSim):
    profile_name = "gas_module_ch4"

    def __init__(self, unit: int, *, warmup_s: float = 60.0, **kw: Any) -> None:
        self._seed, self._warmup_s = kw.get("seed", 0), warmup_s
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.gas = Methane(self._seed, self._t0, warmup_s=self._warmup_s)
        self.holding.update({a: 0 for a in range(10)})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        lel, status = self.gas.advance(w.t)
        return {"gas_unit": 2.0, "decimals_code": 4.0, "concentration": lel, "low_alarm_level": self.gas.low_alarm,
                "high_alarm_level": self.gas.high_alarm, "full_scale": self.gas.full_scale, "status": float(status),
                "temperature": 15.0 + 0.2 * (w.temperature_c - 24.0), "gas_type": 11.0,
                "relative_humidity": 95.0}

    def refresh(self) -> None:
        super().refresh()
        self.holding[0] = 2 << 12 | 4 << 8  # two bit fields share register 0: %LEL, one decimal


class WitmotionTilt(ModelSim):
    profile_name = "witmotion_wt901c485"

    def __init__(self, unit: int, **kw: Any) -> None:
        self._seed = kw.get("seed", 0)
        super().__init__(unit, **kw)

    def setup(self) -> None:
        self.cover = Cover(self._seed, self._t0)
        self.holding.update({a: 0 for a in range(0x34, 0x40)})
        self.holding.update({0x37: 3, 0x38: 0xFFFE, 0x39: 1, 0x3A: 210, 0x3B: 0xFF80, 0x3C: 380, 0x00: 0, 0x69: 0})

    def physical(self, w: WeatherState, air: AirState | None) -> dict[str, float | None]:
        c = self.cover.state(w.t)
        return {"acc_x": c.acc_g[0], "acc_y": c.acc_g[1], "acc_z": c.acc_g[2], "roll": c.roll_deg,
                "pitch": c.pitch_deg, "yaw": c.yaw_deg}


MODELS: dict[str, type[ModelSim] | None] = {
    "vaisala_wxt530": None,  # drivers.modbus.sim_wxt530 (its own module, shared with the ASCII/NMEA sims)
    "lufft_ws": LufftWs, "renke_wind_speed": RenkeWindSpeed, "renke_wind_direction": RenkeWindDirection,
    "small_weather_station": SmallWeatherStation, "dfrobot_sen0575": DfrobotRainGauge,
    "pm_transmitter": PmTransmitter, "outdoor_six_gas": SixGas,
    "vega_vegapuls_c21": VegapulsC21, "hilink_ld8001h": HilinkRadar, "keller_series30": KellerSeries30,
    "gas_module_ch4": GasModuleCh4, "witmotion_wt901c485": WitmotionTilt,
}


def make_model(model: str, unit: int | None = None, **kwargs: Any) -> tuple[SimSlave, Any]:
    """A slave for one device model (unit defaults to the profile's), and its simulator."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    unit = load_profile(model).default_unit if unit is None else unit
    cls = MODELS[model]
    if cls is None:
        allowed = {"seed", "time_factor", "start", "clock", "weather"}
        return make_wxt530(unit, **{k: v for k, v in kwargs.items() if k in allowed})
    sim = cls(unit, **kwargs)
    return sim.slave(), sim


def parse_slaves(specs: Iterable[str]) -> list[tuple[str, int]]:
    """'model:unit' strings (unit optional: the profile's default) -> [(model, unit)], checked."""
    out = []
    for spec in specs:
        model, _, unit_s = spec.partition(":")
        if model not in MODELS:
            raise ValueError(f"--slave {spec!r}: unknown model {model!r}; known: {', '.join(MODELS)}")
        if unit_s and (not unit_s.isdigit() or not 1 <= int(unit_s) <= 255):
            raise ValueError(f"--slave {spec!r}: unit must be 1..255")
        out.append((model, int(unit_s) if unit_s else load_profile(model).default_unit))
    if len({u for _, u in out}) != len(out):
        raise ValueError(f"two slaves share a unit id on one bus: {specs!r}")
    return out


async def serve_models(
    slaves: list[tuple[str, int]], *, tcp_port: int | None = None, rtu: bool = False, baudrate: int | None = None,
    parity: str | None = None, seed: int = 0, control_port: int | None = None, time_factor: float = 1.0,
    on_ready: Callable[[dict[str, Any]], None] | None = None, host: str = "127.0.0.1",
    turnaround_s: float = 0.01, **model_kw: Any,
) -> None:
    """Serve several models on one bus until cancelled; the line defaults to the first model's."""
    if not slaves:
        raise ValueError("serve_models needs at least one (model, unit)")
    if tcp_port is None and not rtu:
        raise ValueError("serve_models needs tcp_port and/or rtu=True")
    line = load_profile(slaves[0][0]).line
    made = [make_model(m, u, seed=seed + i, time_factor=time_factor, **model_kw)[0] for i, (m, u) in enumerate(slaves)]
    async with serving(made, tcp_port=tcp_port, rtu=rtu, control_port=control_port, host=host,
                       baudrate=baudrate or line.baudrate, parity=parity or line.parity, stopbits=line.stopbits,
                       turnaround_s=turnaround_s) as info:
        if on_ready is not None:
            on_ready({**info, "line": f"{baudrate or line.baudrate} 8{parity or line.parity}{line.stopbits}",
                      "slaves": [f"{m}:{u}" for m, u in slaves]})
        await asyncio.Event().wait()
