"""End to end on the simulators' physics: readings in, flags / alarms / decisions out.

- a stuck (and a dead) temperature sensor is flagged SUSPECT and raises a maintenance alarm
  within its 60-minute window, and healthy channels are not flagged;
- storms raise the rain alarm before the rain peak;
- the junction's pattern decisions respect the guards (tested further in
  test_inference_traffic_control.py).
"""

from __future__ import annotations

import json

import pytest

from agent.inference import InferenceStage, ModelSpec
from agent.traffic_control import JunctionPolicy, PatternDecider
from core.reading import Quality, Reading, RecordClass
from drivers.physics.faults import CHANNELS, Fault, FaultInjector, FaultKind
from drivers.physics.traffic import INTERVAL_S, SignalControllerSim, TrafficModel
from drivers.physics.weather import WeatherModel

UNITS = {"air_temperature": "degC", "relative_humidity": "%", "air_pressure": "hPa", "wind_speed": "m/s",
         "rain_intensity": "mm/h", "rain_accumulation": "mm"}
FIELDS = {"air_temperature": "temperature_c", "relative_humidity": "humidity_pct", "air_pressure": "pressure_hpa",
          "wind_speed": "wind_speed_ms", "rain_intensity": "rain_rate_mmh", "rain_accumulation": "rain_total_mm"}


def poll(device: str, state, injectors: dict | None = None) -> list[Reading]:
    out = []
    for point, unit in UNITS.items():
        v = round(getattr(state, FIELDS[point]), 1)
        if injectors and point in injectors:
            v = injectors[point].apply(state.t, v)[0]
        out.append(Reading(device, point, v, unit, state.t))
    return out


@pytest.mark.parametrize("seed, kind", [(21, FaultKind.STUCK), (22, FaultKind.STUCK), (23, FaultKind.STUCK),
                                        (24, FaultKind.DEAD)])
async def test_a_failed_temperature_sensor_is_flagged_within_its_window(seed: int, kind: FaultKind) -> None:
    model = WeatherModel(seed=seed, storms_per_day=0.0)
    t0 = model.t
    onset = t0 + 120 * 60.0
    fault = Fault(kind, onset, onset + 3 * 3600.0, 0.0)
    inj = {"air_temperature": FaultInjector(CHANNELS["air_temperature"], [fault])}
    stage = InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0")])
    flagged_at = None
    alarms: list[dict] = []
    try:
        for k in range(1, 4 * 60):
            batch = poll("wx-7", model.advance(t0 + 60.0 * k), inj)
            out = await stage.process(batch)
            for r in out[: len(batch)]:
                if r.quality & Quality.SUSPECT:
                    assert r.ts >= onset, f"{r.point} flagged before any fault"
                    assert r.point == "air_temperature", f"healthy {r.point} flagged"
                    flagged_at = flagged_at or r.ts
            for r in out[len(batch):]:
                if r.cls is RecordClass.ALARM:
                    assert r.point == "fault_alarm.air_temperature" and r.ts >= onset
                    alarms.append(json.loads(r.text))
    finally:
        stage.close()
    assert flagged_at is not None and flagged_at - onset <= 60 * 60.0, "flagged within its 60-minute window"
    assert alarms and alarms[0]["state"] == "raised"
    assert alarms[-1]["fault"] == kind.value, "the maintenance alarm names the fault"
    assert len(alarms) <= 3, "one alarm per fault, not one per sample"


def _heavy_storms(seeds: range) -> list[tuple[int, object]]:
    found = []
    for seed in seeds:
        m = WeatherModel(seed=seed)
        for s in m.storms:
            if s.peak_mmh >= 15.0 and s.onset - s.lead_s - 3 * 3600 > m.t:
                found.append((seed, s))
                break
    return found


@pytest.mark.parametrize("seed, storm", _heavy_storms(range(40, 50))[:3])
async def test_a_storm_raises_the_rain_alarm_before_the_peak(seed: int, storm) -> None:
    model = WeatherModel(seed=seed)
    start = storm.onset - storm.lead_s - 2 * 3600.0
    stage = InferenceStage.from_config([ModelSpec("rain_nowcast", "1.0.0")])
    alarm_ts = None
    try:
        t = start
        while t <= storm.peak:
            out = await stage.process(poll("wx-9", model.advance(t)))
            for r in out:
                if r.point == "rain_alarm" and r.cls is RecordClass.ALARM and alarm_ts is None:
                    alarm_ts = r.ts
                    assert json.loads(r.text)["state"] == "raised"
            t += 60.0
    finally:
        stage.close()
    assert alarm_ts is not None, "no alarm before the peak"
    assert alarm_ts < storm.peak
    assert alarm_ts >= storm.onset - storm.lead_s, "not before the precursors even began"


def _junction_readings(ts: float, interval, ctrl: SignalControllerSim) -> list[Reading]:
    s = ctrl.state(ts)
    out = [Reading("jn-1", "pattern", float(s.pattern), "", ts),
           Reading("jn-1", "ped_walk", float(s.ped_walk), "", ts),
           Reading("jn-1", "ped_clear", float(s.ped_clear), "", ts)]
    if interval is not None:
        for d, (v, o) in enumerate(zip(interval.volume, interval.occupancy), start=1):
            out += [Reading("jn-1", f"detector_volume.{d}", float(v), "veh", ts),
                    Reading("jn-1", f"detector_occupancy.{d}", float(o), "%", ts)]
    return out


@pytest.mark.parametrize("allow", [True, False])
async def test_junction_day_pattern_changes_respect_the_guards(allow: bool) -> None:
    traffic = TrafficModel(seed=5, start=1_750_000_000.0)  # a Sunday night, then a weekday
    ctrl = SignalControllerSim(seed=5, pattern=1, origin=traffic.t)
    commands: list[tuple[float, int]] = []
    now = {"t": 0.0}

    async def send(device: str, command: str, args) -> None:
        assert device == "jn-1" and command == "set_pattern"
        commands.append((now["t"], args["pattern"]))
        ctrl.set_pattern(args["pattern"], now["t"])

    stage = InferenceStage.from_config([ModelSpec("traffic_demand", "1.0.0")])
    policy = JunctionPolicy("jn-1", allow_pattern_change=allow, min_dwell_s=1800.0)
    decider = PatternDecider([policy], send)
    decisions = []
    try:
        for _ in range(288 * 2):
            interval = traffic.step()
            now["t"] = interval.t_end
            out = await decider.process(await stage.process(_junction_readings(interval.t_end, interval, ctrl)))
            for r in out:
                if r.point == "pattern_decision":
                    assert r.cls is RecordClass.EVENT
                    decisions.append((r.ts, json.loads(r.text)))
    finally:
        stage.close()
    forecasts = 288 * 2 - 12 + 1
    assert len(decisions) == forecasts, "every forecast leads to one recorded decision"
    changed = [(ts, d) for ts, d in decisions if d["decision"] == "changed"]
    assert len(changed) == len(commands)
    if not allow:
        assert not commands and all("not allowed" in d["reason"] for _, d in decisions)
        return
    assert {p for _, p in commands} >= {2, 3}, "the weekday peak asks for the peak plan"
    for (ts, _), (ts2, _) in zip(changed, changed[1:]):
        assert ts2 - ts >= policy.min_dwell_s
    for ts, _ in changed:
        s = ctrl.state(ts)
        assert s.ped_walk == 0 and s.ped_clear == 0, "never during a pedestrian phase"
    assert any("pedestrian phase active" in d["reason"] for _, d in decisions), "the guard was exercised"
    assert INTERVAL_S == 300.0


async def test_ntcip_detector_names_bind_through_a_numbered_point_map() -> None:
    """NTCIP's driver names detectors det3_volume / det3_occupancy; `{n}` in point_map binds them per
    detector, and the forecasts equal those made from the model's own point names."""
    mapped = ModelSpec("traffic_demand", "1.0.0",
                       point_map={"volume": "det{n}_volume", "occupancy": "det{n}_occupancy"})
    forecasts: dict[str, list[tuple[str, float, float]]] = {}
    for label, spec, rename in (("default", ModelSpec("traffic_demand", "1.0.0"), None), ("ntcip", mapped, True)):
        traffic = TrafficModel(seed=9, start=1_750_000_000.0)
        stage = InferenceStage.from_config([spec])
        got = forecasts.setdefault(label, [])
        try:
            for _ in range(30):
                iv = traffic.step()
                batch = []
                for d, (v, o) in enumerate(zip(iv.volume, iv.occupancy), start=1):
                    names = (f"det{d}_volume", f"det{d}_occupancy") if rename else \
                        (f"detector_volume.{d}", f"detector_occupancy.{d}")
                    batch += [Reading("sig-1", names[0], float(v), "veh", iv.t_end),
                              Reading("sig-1", names[1], float(o), "%", iv.t_end),
                              Reading("sig-1", f"det{d}_volumes", 1.0, "veh", iv.t_end)]  # not a detector point
                out = await stage.process(batch)
                got += [(r.point, r.ts, r.value) for r in out if r.point.startswith("volume_15min_forecast")]
            assert stage.stats()["models"]["traffic_demand"]["bindings"] == len(iv.volume)
        finally:
            stage.close()
    assert forecasts["ntcip"] and forecasts["ntcip"] == forecasts["default"]
    assert {p for p, _, _ in forecasts["ntcip"]} == {f"volume_15min_forecast.{d}" for d in range(1, len(iv.volume) + 1)}
