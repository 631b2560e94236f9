"""[[junction]] config and the pattern decider wired to the real command router (audit, refusals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands import AUDIT_POINT, CommandRouter
from agent.config import load_config
from agent.runtime import ChainStage
from agent.traffic_control import PatternDecider
from core.errors import ConfigError, DeviceTimeout
from core.reading import Quality, Reading, RecordClass

T = 1_750_000_000.0

BASE = """
[box]
id = "jn-box"
data_dir = "var"

[uplink]
kind = "http"

[[device]]
name = "sig-1"
kind = "ntcip"
host = "127.0.0.1"
allowed_patterns = [1, 2, 3]
allow_commands = {allow}

[[device]]
name = "tsc-2"
kind = "gbt20999"
host = "127.0.0.1"
port = 5000
controller_id = 2
allowed_plans = [1, 2, 3]
allow_commands = ["set_plan"]

[[bus]]
name = "gw"
kind = "tcp"
host = "127.0.0.1"
port = 5020

[[device]]
name = "wxt"
bus = "gw"
profile = "vaisala_wxt530"
"""


def load(tmp_path: Path, junctions: str, allow: str = '["set_pattern"]'):
    p = tmp_path / "box.toml"
    p.write_text(BASE.replace("{allow}", allow) + junctions)
    return load_config(p)


def test_junction_policies_take_their_controller_kind(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[[junction]]
device = "sig-1"
allow_pattern_change = true
min_dwell_s = 600
patterns = [4, 5, 6]

[[junction]]
device = "tsc-2"
""")
    ntcip, gbt = cfg.junctions
    assert ((ntcip.device, ntcip.allow_pattern_change, ntcip.min_dwell_s, ntcip.patterns)
            == ("sig-1", True, 600, (4, 5, 6)))
    assert (ntcip.pattern_point, ntcip.command, ntcip.command_arg) == ("coord_pattern", "set_pattern", "pattern")
    assert ((gbt.pattern_point, gbt.command, gbt.command_arg, gbt.allow_pattern_change)
            == ("plan", "set_plan", "plan", False))


@pytest.mark.parametrize("junction, allow, says", [
    ('device = "nope"', '["set_pattern"]', r"junction\[0\].device.*no such device"),
    ('device = "wxt"', '["set_pattern"]', r"is a modbus device, not a signal controller"),
    ('device = "sig-1"\nallow_pattern_change = true', "[]", r"does not allow the 'set_pattern' command"),
    ('device = "sig-1"\npatterns = [1, 2]', '["set_pattern"]', r"junction\[0\].patterns.*three plan numbers"),
    ('device = "sig-1"\nnormal_from = 30\npeak_from = 20', '["set_pattern"]', r"must be above normal_from"),
    ('device = "sig-1"\nmin_dwel_s = 10', '["set_pattern"]', r"min_dwel_s\]: unknown key"),
])
def test_bad_junction_config_names_the_key(tmp_path: Path, junction: str, allow: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load(tmp_path, f"\n[[junction]]\n{junction}\n", allow)


class SignalDriver:
    def __init__(self, fail: Exception | None = None) -> None:
        self.writes: list[tuple[str, dict]] = []
        self.fail = fail

    async def write(self, command: str, args: dict) -> None:
        if self.fail:
            raise self.fail
        self.writes.append((command, args))


def ntcip_state(ts: float, pattern: int, peds: dict[int, int]) -> list[Reading]:
    """What the NTCIP driver emits: coord_pattern and one Ped state per phase (3 walk, 2 clear, 1 don't walk)."""
    return [Reading("sig-1", "coord_pattern", float(pattern), "", ts)] + [
        Reading("sig-1", f"phase{n}_ped", float(v), "", ts) for n, v in peds.items()]


def forecast(ts: float, veh: float) -> list[Reading]:
    return [Reading("sig-1", f"volume_15min_forecast.{i}", veh, "veh", ts, Quality.DERIVED) for i in (1, 2)]


async def run(tmp_path: Path, driver: SignalDriver, batches: list[list[Reading]], allow: str = '["set_pattern"]'):
    cfg = load(tmp_path, '\n[[junction]]\ndevice = "sig-1"\nallow_pattern_change = true\nmin_dwell_s = 0\n', allow)
    queued: list[Reading] = []

    async def submit(rs: list[Reading]) -> None:
        queued.extend(rs)

    decider = PatternDecider(cfg.junctions, None)  # type: ignore[arg-type]
    router = CommandRouter({"sig-1": driver}, {d.name: d.allow_commands for d in cfg.devices}, submit)
    decider.bind(router.sender("traffic_control", emit=decider.audit))
    stage = ChainStage([decider])
    outs = [await stage.process(b) for b in batches]
    assert not queued, "audit records travel in the judged batch, not through the pipeline queue"
    return outs


def records(out: list[Reading], point: str) -> list[dict]:
    return [json.loads(r.text) for r in out if r.point == point]


async def test_ntcip_change_goes_through_the_router_and_is_audited(tmp_path: Path) -> None:
    driver = SignalDriver()
    [out] = await run(tmp_path, driver, [ntcip_state(T, 1, {2: 1, 6: 1}) + forecast(T + 1, 40.0)])
    assert driver.writes == [("set_pattern", {"pattern": 3})]
    assert records(out, "pattern_decision")[0]["decision"] == "changed"
    [audit] = [r for r in out if r.point == AUDIT_POINT]
    assert audit.cls is RecordClass.EVENT and json.loads(audit.text)["origin"] == "traffic_control"


async def test_an_ntcip_walk_or_clearance_holds_the_plan(tmp_path: Path) -> None:
    driver = SignalDriver()
    outs = await run(tmp_path, driver, [ntcip_state(T, 1, {2: 3, 6: 1}) + forecast(T + 1, 40.0),
                                        ntcip_state(T + 2, 1, {2: 1, 6: 2}) + forecast(T + 3, 40.0),
                                        ntcip_state(T + 4, 1, {2: 1, 6: 1}) + forecast(T + 5, 40.0)])
    reasons = [records(o, "pattern_decision")[0]["reason"] for o in outs]
    assert "pedestrian phase active (ped_walk.2=0x1)" in reasons[0]
    assert "pedestrian phase active (ped_clear.6=0x1)" in reasons[1]
    assert reasons[2] == "pattern 1 -> 3" and driver.writes == [("set_pattern", {"pattern": 3})]


async def test_a_failing_controller_is_a_failed_decision_and_an_audited_failure(tmp_path: Path) -> None:
    driver = SignalDriver(DeviceTimeout("no SNMP reply"))
    [out] = await run(tmp_path, driver, [ntcip_state(T, 1, {2: 1}) + forecast(T + 1, 40.0)])
    d = records(out, "pattern_decision")[0]
    assert d["decision"] == "failed" and "no SNMP reply" in d["reason"]
    assert json.loads(next(r for r in out if r.point == AUDIT_POINT).text)["result"] == "failed"
