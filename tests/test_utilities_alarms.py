"""Per-device alarm rules (agent.alarms): clear config errors, properties of the evaluator, and a
real agent whose simulated radar gauge floods a chamber past the threshold."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.alarms import AlarmEvaluator, AlarmRule, parse_alarm_rules, usable
from agent.buffer import DurableBuffer
from agent.config import load_config
from agent.runtime import run_agent
from core.errors import ConfigError
from core.reading import Quality, Reading, RecordClass
from drivers.modbus.sim import make_model
from drivers.modbus.sim_slave import serving

POINTS = ["level", "distance", "status", "pitch"]
GOOD_RULE = {"name": "flood_risk", "point": "level", "above": 3.5, "clear_below": 3.2}


def rules(*tables: dict[str, Any]) -> tuple[AlarmRule, ...]:
    return parse_alarm_rules(list(tables), POINTS, "box.toml")


BAD_RULES = [
    ({"point": "level", "above": 1, "clear_below": 0}, "alarm[0].name", "required key is missing"),
    ({**GOOD_RULE, "name": "Flood Risk"}, "alarm[0].name", "lower_snake_case"),
    ({**GOOD_RULE, "point": "levle"}, "alarm[0].point", "one of distance, level, pitch, status"),
    ({**GOOD_RULE, "below": 1.0}, "alarm[0].below", "exactly one of `above` and `below`"),
    ({"name": "x", "point": "level", "clear_below": 1.0}, "alarm[0].above", "exactly one of"),
    ({**GOOD_RULE, "clear_above": 4.0}, "alarm[0].clear_above", "clear_below (the hysteresis band"),
    ({"name": "x", "point": "level", "above": 3.5}, "alarm[0].clear_below", "a number below 3.5"),
    ({**GOOD_RULE, "clear_below": 3.5}, "alarm[0].clear_below", "a number < 3.5"),
    ({"name": "x", "point": "level", "below": 0.2, "clear_above": 0.1}, "alarm[0].clear_above", "a number > 0.2"),
    ({**GOOD_RULE, "above": "3.5"}, "alarm[0].above", "must be a number"),
    ({**GOOD_RULE, "min_duration_s": -1}, "alarm[0].min_duration_s", "from 0.0 to 86400.0"),
    ({"name": "x", "point": "pitch", "below": 5, "clear_above": 6, "baseline": 1},
     "alarm[0].baseline", "needs `above`"),
    ({**GOOD_RULE, "inhibit": {"point": "status", "values": 0}}, "alarm[0].inhibit.values", "e.g. [0, 3]"),
    ({**GOOD_RULE, "inhibit": {"point": "state", "values": [0]}}, "alarm[0].inhibit.point", "one of"),
    ({**GOOD_RULE, "inhibit": {"point": "status", "values": [0], "when": 1}}, "alarm[0].inhibit.when", "one of"),
    ({**GOOD_RULE, "thresold": 3}, "alarm[0].thresold", "one of"),
]


@pytest.mark.parametrize("table, key, words", BAD_RULES, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_RULES)])
def test_bad_rules_name_file_key_and_expectation(table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        rules(table)
    assert err.value.key == key and err.value.file == "box.toml" and words in str(err.value), str(err.value)


def test_good_rules_and_duplicate_names() -> None:
    got = rules(GOOD_RULE, {"name": "cover_open", "point": "pitch", "above": 20, "clear_below": 10, "baseline": -1.5,
                            "min_duration_s": 5, "inhibit": {"point": "status", "values": [0, 3]}})
    assert got == (AlarmRule("flood_risk", "level", True, 3.5, 3.2),
                   AlarmRule("cover_open", "pitch", True, 20.0, 10.0, 5.0, -1.5, "status", (0.0, 3.0)))
    with pytest.raises(ConfigError) as err:
        rules(GOOD_RULE, GOOD_RULE)
    assert err.value.key == "alarm[1].name" and "already used by alarm[0]" in str(err.value)


BOX = """
[box]
id = "u-box"
data_dir = "data"
[uplink]
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"
port = {mqtt}
[health]
enabled = false
[[bus]]
name = "chambers"
kind = "rtu"
port = "{port}"
baudrate = 9600
parity = "N"
timeout_ms = 300
[[device]]
name = "chamber-3"
bus = "chambers"
profile = "vega_vegapuls_c21"
poll_s = 0.1
{extra}
[[device.alarm]]
name = "flood_risk"
point = "{point}"
above = 3.5
clear_below = 3.2
"""


def box(tmp_path: Path, *, point: str = "level", extra: str = "", port: str = "/dev/null") -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mqtt = s.getsockname()[1]  # nothing listens there: readings stay in the buffer
    path = tmp_path / "box.toml"
    path.write_text(BOX.format(point=point, extra=extra, port=port, mqtt=mqtt))
    return path


def test_the_box_config_carries_the_rules_and_names_the_bad_key(tmp_path: Path) -> None:
    cfg = load_config(box(tmp_path))
    assert cfg.alarms[cfg.devices[0].name] == (AlarmRule("flood_risk", "level", True, 3.5, 3.2),)
    with pytest.raises(ConfigError) as err:
        load_config(box(tmp_path, point="depth"))
    assert err.value.key == "device[0].alarm[0].point" and str(tmp_path / "box.toml") in str(err.value)
    with pytest.raises(ConfigError) as err:  # a point the device does not poll can never raise
        load_config(box(tmp_path, point="distance", extra='points = ["level"]'))
    assert err.value.key == "device[0].alarm[0].point" and "one of level" in str(err.value)


# --- the evaluator's properties ------------------------------------------------------------------

QUALITIES = [Quality.GOOD, Quality.GOOD, Quality.MISSING, Quality.COMM_FAILURE, Quality.OUT_OF_RANGE,
             Quality.SUSPECT]
samples = st.lists(st.tuples(st.floats(0.0, 10.0), st.sampled_from(QUALITIES), st.floats(0.0, 5.0)), max_size=60)


def stream(device: str, values: list[tuple[float, Quality, float]]) -> list[Reading]:
    out, ts = [], 1_750_000_000.0
    for v, q, dt in values:
        ts += dt
        bad_value = q & (Quality.MISSING | Quality.COMM_FAILURE)
        out.append(Reading(device, "level", None if bad_value else v, "m", ts, q))
    return out


def transitions(out: list[Reading]) -> list[Reading]:
    return [r for r in out if r.point.startswith("alarm.")]


@settings(max_examples=300, deadline=None)
@given(samples, st.floats(1.0, 9.0), st.floats(0.0, 3.0), st.sampled_from([0.0, 0.0, 4.0]), st.booleans(),
       st.integers(1, 7))
def test_alarms_alternate_follow_a_good_reading_and_respect_the_band(
        values: list, trigger: float, band: float, min_s: float, rising: bool, batch: int) -> None:
    clear = trigger - band if rising else trigger + band
    if band == 0:
        return  # the parser refuses a rule without a band
    rule = AlarmRule("flood", "level", rising, trigger, clear, min_s)
    readings = stream("g", values)
    ev = AlarmEvaluator({"g": (rule,)})
    out = [r for i in range(0, len(readings), batch) for r in ev.apply(readings[i:i + batch])]
    assert [r for r in out if not r.point.startswith("alarm.")] == readings  # nothing lost, nothing reordered
    alarms = transitions(out)
    states = [r.value for r in alarms if r.cls is RecordClass.ALARM]
    assert all(a != b for a, b in zip(states, states[1:]))  # never raised twice without a clear between
    assert [r for r in alarms if r.cls is RecordClass.EVENT] == [r for r in alarms[:1] if r.cls is RecordClass.EVENT]
    for i, r in enumerate(out):
        if not r.point.startswith("alarm."):
            continue
        cause = out[i - 1]
        assert usable(cause) and cause.ts == r.ts and r.quality == Quality.DERIVED  # a good reading caused it
        info = json.loads(r.text or "")
        if r.value == 1.0:
            assert (cause.value > trigger) if rising else (cause.value < trigger)
            assert info["state"] == "raised"
        elif r.cls is RecordClass.ALARM:
            assert (cause.value < clear) if rising else (cause.value > clear)
            assert info["state"] == "cleared"
    # bad readings are invisible: the same transitions come from the good readings alone
    again = AlarmEvaluator({"g": (rule,)}).apply([r for r in readings if usable(r)])
    assert [(r.value, r.ts, r.cls) for r in transitions(again)] == [(r.value, r.ts, r.cls) for r in alarms]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 10.0), st.sampled_from([Quality.MISSING, Quality.COMM_FAILURE,
                                                                   Quality.OUT_OF_RANGE, Quality.SUSPECT]),
                          st.floats(0.0, 5.0)), max_size=40))
def test_bad_quality_never_raises_or_clears(values: list) -> None:
    ev = AlarmEvaluator({"g": (AlarmRule("flood", "level", True, 3.5, 3.2),)})
    assert ev.apply(stream("g", values)) == stream("g", values)
    assert ev.active() == {"g/alarm.flood": None}


def test_hysteresis_duration_restart_baseline_and_inhibit() -> None:
    rule = AlarmRule("flood", "level", True, 3.5, 3.2, min_duration_s=10.0)
    ev = AlarmEvaluator({"g": (rule,), "other": ()})

    def feed(*pairs: tuple[float, float], device: str = "g", point: str = "level") -> list[tuple]:
        out = ev.apply([Reading(device, point, v, "m", t) for t, v in pairs])
        return [(r.value, r.cls.value, r.ts) for r in transitions(out)]

    assert feed((0, 1.0)) == [(0.0, "event", 0)]  # first judgement after start: clear as of now
    assert feed((1, 3.6), (5, 3.7), (8, 3.4), (9, 3.6), (18, 3.6)) == []  # 3.4 broke the run; 9 s < 10 s
    assert feed((19, 3.8)) == [(1.0, "alarm", 19)]
    assert feed((20, 3.3), (30, 4.0), (40, 3.21)) == []  # inside the band: still raised
    assert feed((41, 3.19), (42, 3.1)) == [(0.0, "alarm", 41)]
    assert feed((35, 9.0), (43, 1.0), device="g") == []  # an older reading (a replay) is not judged
    assert ev.active() == {"g/alarm.flood": False}
    restarted = AlarmEvaluator({"g": (AlarmRule("flood", "level", True, 3.5, 3.2),)})
    [raised] = transitions(restarted.apply([Reading("g", "level", 3.9, "m", 50.0)]))
    assert raised.cls is RecordClass.ALARM and json.loads(raised.text or "")["initial"] is True

    cover = AlarmEvaluator({"c": (AlarmRule("cover_open", "pitch", True, 20.0, 10.0, baseline=-2.0),)})
    got = [(r.value, r.ts) for r in transitions(cover.apply(
        [Reading("c", "pitch", v, "deg", float(t)) for t, v in enumerate([-1.0, -25.0, -5.0, 30.0, 5.0])]))]
    assert got == [(0.0, 0.0), (1.0, 1.0), (0.0, 2.0), (1.0, 3.0), (0.0, 4.0)]  # either way off the baseline

    gas = AlarmEvaluator({"m": (AlarmRule("methane", "concentration", True, 10.0, 5.0, inhibit_point="status",
                                          inhibit_values=(0.0, 3.0)),)})

    def poll(ts: float, lel: float, status: float) -> list[float | None]:  # status after the value, as polled
        return [r.value for r in transitions(gas.apply([Reading("m", "concentration", lel, "%LEL", ts),
                                                        Reading("m", "status", status, "", ts)]))]
    assert poll(1, 80.0, 0) == []       # warm-up garbage: frozen
    assert poll(2, 0.5, 1) == [0.0]     # warmed up: judged (initial clear)
    assert poll(3, 999.9, 3) == []      # sensor fault: frozen
    assert poll(4, 40.0, 6) == [1.0]    # a real leak


async def test_a_flooding_chamber_raises_one_alarm_in_the_agents_buffer(tmp_path: Path) -> None:
    slave, sim = make_model("vega_vegapuls_c21", seed=5, level_m=2.0, time_factor=1.0)
    async with serving([slave], rtu=True, baudrate=9600, parity="N") as info:
        cfg = load_config(box(tmp_path, port=info["rtu_path"]))
        stop, parts = asyncio.Event(), {}
        task = asyncio.create_task(run_agent(cfg, stop, install_signals=False, on_started=parts.update))

        async def rows(until: Any, what: str, timeout: float = 20.0) -> list[Reading]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                if "buffer" in parts:
                    got = [r for r in await parts["buffer"].peek(100_000) if r.device == "chamber-3"]
                    if until(got):
                        return got
                assert not task.done(), task
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}")

        try:
            await rows(lambda rs: any(r.point == "alarm.flood_risk" for r in rs), "the initial alarm state")
            sim.level.inflow_m_per_h = 3600.0  # a burst main: 1 m/s
            got = await rows(lambda rs: any(r.cls is RecordClass.ALARM for r in rs), "the alarm")
            await rows(lambda rs: sum(r.point == "level" and (r.value or 0) > 4.5 for r in rs) >= 5, "a full chamber")
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    async with DurableBuffer(cfg.buffer) as buffer:
        got = [r for r in await buffer.peek(100_000) if r.device == "chamber-3"]
    alarms = [r for r in got if r.point == "alarm.flood_risk"]
    assert [(r.cls, r.value) for r in alarms] == [(RecordClass.EVENT, 0.0), (RecordClass.ALARM, 1.0)]
    raised = alarms[1]
    cause = got[got.index(raised) - 1]
    assert cause.point == "level" and cause.value > 3.5 and cause.ts == raised.ts
    assert max(r.value for r in got if r.point == "level" and r.ts < raised.ts) <= 3.5
    assert json.loads(raised.text or "") == {"state": "raised", "point": "level", "value": cause.value, "unit": "m",
                                             "above": 3.5, "clear_below": 3.2}


def test_the_documented_alarm_example_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "devices" / "utilities.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    head = box(tmp_path).read_text().split("[[device]]", 1)[0].replace('name = "chambers"', 'name = "rs485-1"')
    (tmp_path / "doc.toml").write_text(head + example)
    cfg = load_config(tmp_path / "doc.toml")
    assert [(d.name, [r.name for r in cfg.alarms.get(d.name, ())]) for d in cfg.devices] == [
        ("chamber-3", ["flood_risk"]), ("cover-17", ["cover_open"]), ("gas-3", ["methane_high"])]
    assert cfg.alarms[cfg.devices[1].name][0].baseline == -1.4
    assert cfg.alarms[cfg.devices[2].name][0].inhibit_values == (0, 2, 3, 9)
