"""Settings of a GB/T 20999 signal controller over TCP: one frozen object and its parser.

    host, port, centre, controller_id, road, timeout_ms, heartbeat_s, detectors, plans,
    allowed_plans, allowed_stages, allowed_modes (codes or names)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers.kind import ParseContext
from drivers.gbt20999.codec import MODES
from drivers.gbt20999.points import point_item
from drivers.settings_rules import accepts, check_points, common, read_host, int_list, read_timeout


COMMANDS = ("set_plan", "set_stage", "set_mode")


@dataclass(frozen=True, slots=True)
class GbtDeviceConfig:
    kind: ClassVar[str] = "gbt20999"
    name: str
    host: str
    port: int
    centre: int = 1
    controller_id: int = 1
    road: int = 1
    timeout_s: float = 2.0
    heartbeat_s: float = 0.0
    detectors: tuple[int, ...] = ()
    plans: tuple[int, ...] = ()
    allowed_plans: frozenset[int] = frozenset()
    allowed_stages: frozenset[int] = frozenset()
    allowed_modes: frozenset[int] = frozenset()
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

def _modes(t: Table) -> frozenset[int]:
    by_name = {v: k for k, v in MODES.items()}
    raw = t.raw("allowed_modes", [])
    out = set()
    for v in raw if isinstance(raw, list) else [raw]:
        code = by_name.get(v) if isinstance(v, str) else v if isinstance(v, int) and not isinstance(v, bool) else None
        if code not in MODES:
            raise t.error("allowed_modes", "unknown run mode", v, "mode codes or names: " + ", ".join(sorted(by_name)))
        out.add(code)
    return frozenset(out)

def parse(t: Table, ctx: ParseContext) -> GbtDeviceConfig:
    c = common(t, "gbt20999", COMMANDS, 1.0)
    cfg = GbtDeviceConfig(
        host=read_host(t), port=t.int("port", min=1, max=65535), centre=t.int("centre", 1, min=0, max=255),
        controller_id=t.int("controller_id", 1, min=0, max=0xFFFFFFFF), road=t.int("road", 1, min=0, max=255),
        timeout_s=read_timeout(t, 2000, 60_000), heartbeat_s=t.float("heartbeat_s", 0.0, min=0, max=3600),
        detectors=int_list(t, "detectors", 1, 255), plans=int_list(t, "plans", 1, 255),
        allowed_plans=frozenset(int_list(t, "allowed_plans", 1, 255)),
        allowed_stages=frozenset(int_list(t, "allowed_stages", 1, 255)), allowed_modes=_modes(t), **c)
    check_points(t, cfg.points, accepts(point_item),
                 "run_mode, current_plan, current_stage, det<n>_flow/occupancy/speed or plan<n>_cycle/offset/coord_seq")
    return cfg

