"""Settings of a GB/T 20999 signal controller over TCP: one frozen object, its rules and its parser.
The driver takes this object; the config file and code that builds it directly meet the same rules.

    host, port, centre, controller_id, road, timeout_ms, heartbeat_s, detectors, plans,
    allowed_plans, allowed_stages, allowed_modes (codes or names)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers.gbt20999.codec import MODES
from drivers.gbt20999.points import point_item
from drivers.kind import ParseContext
from drivers.settings_rules import HOST_RE, SettingError, accepts, common, construct, int_list, read_host, read_timeout

__all__ = ["COMMANDS", "POINTS_EXPECTED", "GbtSettings", "parse"]

COMMANDS = ("set_plan", "set_stage", "set_mode")
POINTS_EXPECTED = "run_mode, current_plan, current_stage, det<n>_flow/occupancy/speed or plan<n>_cycle/offset/coord_seq"
_MODES_EXPECTED = "mode codes or names: " + ", ".join(sorted(MODES.values()))
_valid_point = accepts(point_item)


def _check_ids(key: str, values: Iterable[int]) -> None:
    values = list(values)
    if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 255 for v in values):
        raise SettingError(key, "must be a list of integers", sorted(values, key=str),
                           "integers from 1 to 255, e.g. [1, 2]")
    if len(set(values)) != len(values):
        raise SettingError(key, "holds a number twice", values, "distinct numbers")


@dataclass(frozen=True, slots=True)
class GbtSettings:
    kind: ClassVar[str] = "gbt20999"
    name: str
    host: str
    port: int
    centre: int = 1
    controller_id: int = 1
    road: int = 1
    timeout_s: float = 2.0
    heartbeat_s: float = 0.0          # >0: we also send heartbeats (0x70) at this interval
    detectors: tuple[int, ...] = ()
    plans: tuple[int, ...] = ()
    allowed_plans: frozenset[int] = frozenset()   # set_plan guard; empty = refuse every plan
    allowed_stages: frozenset[int] = frozenset()
    allowed_modes: frozenset[int] = frozenset()
    poll_s: float = 1.0
    points: tuple[str, ...] = ()      # empty: default_points()
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not HOST_RE.match(self.host):
            raise SettingError("host", "invalid format", self.host, "a host name or IP address")
        if not 0 < self.port < 65536:
            raise SettingError("port", "out of range", self.port, "an integer from 1 to 65535")
        for key in ("centre", "road"):
            if not 0 <= getattr(self, key) <= 255:
                raise SettingError(key, "out of range", getattr(self, key), "an integer from 0 to 255")
        if not 0 <= self.controller_id <= 0xFFFFFFFF:
            raise SettingError("controller_id", "out of range", self.controller_id, "an integer from 0 to 4294967295")
        if not 0.01 <= self.timeout_s <= 60:
            raise SettingError("timeout_ms", "out of range", round(self.timeout_s * 1000),
                               "an integer from 10 to 60000")
        if not 0 <= self.heartbeat_s <= 3600:
            raise SettingError("heartbeat_s", "out of range", self.heartbeat_s, "a number from 0 to 3600")
        for key in ("detectors", "plans", "allowed_plans", "allowed_stages"):
            _check_ids(key, getattr(self, key))
        for m in sorted(self.allowed_modes, key=str):
            if m not in MODES or isinstance(m, bool):
                raise SettingError("allowed_modes", "unknown run mode", m, _MODES_EXPECTED)
        for p in self.points:
            if not _valid_point(p):
                raise SettingError("points", f"unknown point {p!r}", p, POINTS_EXPECTED)

    def default_points(self) -> list[str]:
        """The points a poll reads when none are named: mode, plan, stage, every detector and plan."""
        pts = ["run_mode", "current_plan", "current_stage"]
        pts += [f"det{d}_{k}" for d in self.detectors for k in ("flow", "occupancy", "speed")]
        return pts + [f"plan{p}_{k}" for p in self.plans for k in ("cycle", "offset")]


def _modes(t: Table) -> frozenset[int]:
    """allowed_modes as codes: the config may name a mode or give its code."""
    by_name = {v: k for k, v in MODES.items()}
    raw = t.raw("allowed_modes", [])
    out = set()
    for v in raw if isinstance(raw, list) else [raw]:
        code = by_name.get(v) if isinstance(v, str) else v if isinstance(v, int) and not isinstance(v, bool) else None
        if code not in MODES:
            raise t.error("allowed_modes", "unknown run mode", v, _MODES_EXPECTED)
        out.add(code)
    return frozenset(out)


def parse(t: Table, ctx: ParseContext) -> GbtSettings:
    c = common(t, "gbt20999", COMMANDS, 1.0)
    return construct(
        t, GbtSettings,
        host=read_host(t), port=t.int("port", min=1, max=65535), centre=t.int("centre", 1, min=0, max=255),
        controller_id=t.int("controller_id", 1, min=0, max=0xFFFFFFFF), road=t.int("road", 1, min=0, max=255),
        timeout_s=read_timeout(t, 2000, 60_000), heartbeat_s=t.float("heartbeat_s", 0.0, min=0, max=3600),
        detectors=int_list(t, "detectors", 1, 255), plans=int_list(t, "plans", 1, 255),
        allowed_plans=frozenset(int_list(t, "allowed_plans", 1, 255)),
        allowed_stages=frozenset(int_list(t, "allowed_stages", 1, 255)), allowed_modes=_modes(t), **c)
