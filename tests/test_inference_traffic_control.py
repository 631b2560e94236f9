"""Pattern recommendation and the guard rules, decision by decision."""

from __future__ import annotations

import json

import pytest

from agent.traffic_control import JunctionPolicy, PatternDecider, PatternThresholds
from core.errors import CommandRefused
from core.reading import Quality, Reading, RecordClass
from edge_models.manifest import load_manifest
from edge_models.runtime import default_models_dir

T = 1_750_000_000.0


def test_thresholds_with_hysteresis_and_manifest_defaults() -> None:
    th = PatternThresholds(12.0, 28.0, 0.1)
    assert [th.level(v) for v in (3, 12, 27.9, 28, 60)] == [0, 1, 1, 2, 2]
    assert th.level(26.0, current_level=2) == 2, "inside the band: hold the peak plan"
    assert th.level(25.0, current_level=2) == 1
    assert th.level(11.0, current_level=1) == 1 and th.level(10.0, current_level=1) == 0
    shipped = load_manifest(default_models_dir() / "traffic_demand" / "manifest.toml").thresholds
    assert PatternThresholds.from_manifest(shipped) == PatternThresholds()
    with pytest.raises(ValueError):
        PatternThresholds(30.0, 20.0)


class Controller:
    def __init__(self, fail: Exception | None = None) -> None:
        self.commands: list[tuple[str, str, dict]] = []
        self.fail = fail

    async def __call__(self, device, command, args) -> None:
        if self.fail:
            raise self.fail
        self.commands.append((device, command, dict(args)))


def state(ts: float, pattern: int = 2, walk: int = 0, clear: int = 0, device: str = "jn") -> list[Reading]:
    return [Reading(device, "pattern", float(pattern), "", ts), Reading(device, "ped_walk", float(walk), "", ts),
            Reading(device, "ped_clear", float(clear), "", ts)]


def forecast(ts: float, *volumes: float, device: str = "jn") -> list[Reading]:
    return [Reading(device, f"volume_15min_forecast.{i}", v, "veh", ts, Quality.DERIVED)
            for i, v in enumerate(volumes, start=1)]


async def decide(d: PatternDecider, readings: list[Reading]) -> dict:
    out = await d.process(readings)
    events = [r for r in out[len(readings):] if r.point == "pattern_decision"]
    assert len(events) == 1 and events[0].cls is RecordClass.EVENT and events[0].quality & Quality.DERIVED
    return json.loads(events[0].text) | {"value": events[0].value}


async def test_change_when_every_guard_passes() -> None:
    ctl = Controller()
    d = PatternDecider([JunctionPolicy("jn", allow_pattern_change=True, min_dwell_s=600)], ctl)
    await d.process(state(T))
    r = await decide(d, state(T + 700) + forecast(T + 700, 35.0, 30.0))
    assert r["decision"] == "changed" and r["recommended"] == 3 and r["value"] == 3.0
    assert ctl.commands == [("jn", "set_pattern", {"pattern": 3})]


@pytest.mark.parametrize("policy_kw, readings_kw, reason", [
    ({"allow_pattern_change": False}, {}, "not allowed"),
    ({}, {"walk": 0b10}, "pedestrian phase active (ped_walk=0x2)"),
    ({}, {"clear": 0b100000}, "pedestrian phase active (ped_clear=0x20)"),
    ({"min_dwell_s": 3600}, {}, "minimum dwell"),
    ({}, {"pattern": 3}, "already running pattern 3"),
])
async def test_each_guard_holds_the_plan(policy_kw: dict, readings_kw: dict, reason: str) -> None:
    ctl = Controller()
    policy = JunctionPolicy("jn", **({"allow_pattern_change": True, "min_dwell_s": 600} | policy_kw))
    d = PatternDecider([policy], ctl)
    await d.process(state(T, pattern=readings_kw.get("pattern", 2)))
    r = await decide(d, state(T + 700, **readings_kw) + forecast(T + 700, 40.0))
    assert r["decision"] in ("held", "unchanged") and reason in r["reason"]
    assert ctl.commands == []


async def test_stale_or_unknown_controller_state_refuses() -> None:
    ctl = Controller()
    d = PatternDecider([JunctionPolicy("jn", allow_pattern_change=True, min_dwell_s=0)], ctl)
    r = await decide(d, forecast(T, 40.0))
    assert r["decision"] == "held" and "unknown" in r["reason"]
    await d.process(state(T))
    r = await decide(d, forecast(T + 300, 40.0))
    assert "stale" in r["reason"]
    assert ctl.commands == []


async def test_dwell_counts_from_our_change_and_from_changes_we_observe() -> None:
    ctl = Controller()
    d = PatternDecider([JunctionPolicy("jn", allow_pattern_change=True, min_dwell_s=900)], ctl)
    await d.process(state(T - 1000, pattern=1))
    assert (await decide(d, state(T, pattern=1) + forecast(T, 20.0)))["decision"] == "changed"
    # the controller takes it at the next cycle; forecasts drop; dwell not over yet
    r = await decide(d, state(T + 300, pattern=2) + forecast(T + 300, 2.0))
    assert "minimum dwell" in r["reason"]
    r = await decide(d, state(T + 1300, pattern=2) + forecast(T + 1300, 2.0))
    assert r["decision"] == "changed" and r["recommended"] == 1
    # someone else changes the plan: that restarts the dwell too
    await d.process(state(T + 1500, pattern=3))
    r = await decide(d, state(T + 1600, pattern=3) + forecast(T + 1600, 2.0))
    assert "minimum dwell" in r["reason"]
    assert d.stats()["jn"]["changes"] == 2


async def test_failed_command_is_recorded_not_raised() -> None:
    d = PatternDecider([JunctionPolicy("jn", allow_pattern_change=True, min_dwell_s=0)],
                       Controller(CommandRefused("controller in manual control")))
    await d.process(state(T - 10))
    r = await decide(d, state(T) + forecast(T, 40.0))
    assert r["decision"] == "failed" and "manual control" in r["reason"]


async def test_junctions_are_independent_and_other_readings_pass() -> None:
    ctl = Controller()
    d = PatternDecider([JunctionPolicy("a", allow_pattern_change=True, min_dwell_s=0),
                        JunctionPolicy("b", allow_pattern_change=False)], ctl)
    other = [Reading("wx", "air_temperature", 20.0, "degC", T)]
    await d.process(state(T - 10, device="a") + state(T - 10, device="b"))
    batch = other + state(T, device="a") + state(T, device="b") + forecast(T, 40.0, device="a") + forecast(
        T, 40.0, device="b")
    out = await d.process(batch)
    assert out[: len(batch)] == batch
    decisions = {r.device: json.loads(r.text)["decision"] for r in out[len(batch):]}
    assert decisions == {"a": "changed", "b": "held"}
    assert ctl.commands == [("a", "set_pattern", {"pattern": 3})]
    assert await d.process(other) == other
