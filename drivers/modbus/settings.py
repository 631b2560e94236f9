"""Settings of a Modbus slave on a [[bus]]: one frozen object and its parser.

    bus (a [[bus]] name), profile (a shipped profile name or a path to a .toml), unit (1-247;
    default: the profile's), poll_s, points (of the profile), allow_commands (of the profile)

The register map is data: drivers/modbus/profiles/*.toml (drivers.modbus.profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.config_reader import NAME_RE, Table
from drivers.kind import ParseContext
from drivers.settings_rules import NAME_EXPECTED

if TYPE_CHECKING:
    from drivers.modbus.profile import Profile


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A Modbus device (kind = "modbus", the default) on a [[bus]]."""

    kind: ClassVar[str] = "modbus"
    name: str
    bus: str
    profile_name: str
    profile: Profile
    unit: int
    poll_s: float
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()


ModbusDeviceConfig = DeviceConfig


def parse(t: Table, ctx: ParseContext) -> DeviceConfig:
    from drivers.modbus.profile import load_profile

    name = t.str("name", pattern=NAME_RE, expected=NAME_EXPECTED)
    bus = t.str("bus")
    if bus not in ctx.buses:
        raise t.error("bus", "no [[bus]] with this name", bus,
                      "one of " + ", ".join(sorted(ctx.buses)) if ctx.buses else "a [[bus]] section first")
    profile_name = t.str("profile")
    candidate = ctx.base_dir / profile_name
    profile = load_profile(str(candidate) if candidate.suffix == ".toml" and candidate.exists() else profile_name)
    unit = t.int("unit", profile.default_unit, min=1, max=247)
    poll_s = t.float("poll_s", 1.0, min=0.01, max=86400)
    points = t.str_list("points", [])
    known = {p.name for p in profile.points}
    for pt in points:
        if pt not in known:
            raise t.error("points", f"profile {profile_name} has no point {pt!r}", pt,
                          "one of " + ", ".join(sorted(known)))
    allow = t.str_list("allow_commands", [])
    return DeviceConfig(name, bus, profile_name, profile, unit, poll_s, points, allow)
