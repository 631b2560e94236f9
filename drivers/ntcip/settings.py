"""Settings of an NTCIP 1202 signal controller over SNMP: one frozen object, its rules and its parser.
The driver takes this object; the config file and code that builds it directly meet the same rules.

    host, port, community, write_community, timeout_ms, retries, phases, detectors, patterns,
    pattern_time_unit = "s" | "ds", allowed_patterns, allow_standby / allow_free / allow_flash
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers.kind import ParseContext
from drivers.ntcip import mib as ntcip
from drivers.settings_rules import HOST_RE, SettingError, accepts, common, construct, int_list, read_host, read_timeout

__all__ = ["COMMANDS", "POINTS_EXPECTED", "NtcipSettings", "parse"]

COMMANDS = ("set_pattern",)
POINTS_EXPECTED = ("phase<n>_color/ped/vehcall/pedcall, det<n>_volume/occupancy, pattern<n>_cycle/offset, "
                   "coord_pattern, local_free, coord_cycle or coord_sync")
_valid_point = accepts(ntcip.validate_point)


def _check_ids(key: str, values: Iterable[int], top: int) -> None:
    values = list(values)
    if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top for v in values):
        raise SettingError(key, "must be a list of integers", sorted(values, key=str),
                           f"integers from 1 to {top}, e.g. [1, 2]")
    if len(set(values)) != len(values):
        raise SettingError(key, "holds a number twice", values, "distinct numbers")


@dataclass(frozen=True, slots=True)
class NtcipSettings:
    kind: ClassVar[str] = "ntcip"
    name: str
    host: str
    port: int = 161
    community: str = "public"
    write_community: str = "private"
    timeout_s: float = 1.0
    retries: int = 1
    phases: int = 8
    detectors: tuple[int, ...] = ()
    patterns: tuple[int, ...] = ()
    pattern_time_unit: str = "s"          # "s" or "ds" (tenths): differs between 1202 versions
    allowed_patterns: frozenset[int] = frozenset()
    allow_standby: bool = False
    allow_free: bool = False
    allow_flash: bool = False
    max_oids_per_get: int = 32            # driver knob, not read from the config file
    poll_s: float = 1.0
    points: tuple[str, ...] = ()          # empty: default_points()
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not HOST_RE.match(self.host):
            raise SettingError("host", "invalid format", self.host, "a host name or IP address")
        if not 0 < self.port < 65536:
            raise SettingError("port", "out of range", self.port, "an integer from 1 to 65535")
        for key in ("community", "write_community"):
            if not getattr(self, key):
                raise SettingError(key, "must be a non-empty string", getattr(self, key), "a string")
        if not 0.01 <= self.timeout_s <= 30:
            raise SettingError("timeout_ms", "out of range", round(self.timeout_s * 1000),
                               "an integer from 10 to 30000")
        if not 0 <= self.retries <= 5:
            raise SettingError("retries", "out of range", self.retries, "an integer from 0 to 5")
        if not 1 <= self.phases <= 255:
            raise SettingError("phases", "out of range", self.phases, "an integer from 1 to 255")
        if self.pattern_time_unit not in ("s", "ds"):
            raise SettingError("pattern_time_unit", "unknown value", self.pattern_time_unit, "one of ds, s")
        _check_ids("detectors", self.detectors, 255)
        _check_ids("patterns", self.patterns, 253)
        _check_ids("allowed_patterns", self.allowed_patterns, 253)
        if not 1 <= self.max_oids_per_get <= 128:
            raise SettingError("max_oids_per_get", "out of range", self.max_oids_per_get, "an integer from 1 to 128")
        for p in self.points:
            if not _valid_point(p):
                raise SettingError("points", f"unknown point {p!r}", p, POINTS_EXPECTED)

    def default_points(self) -> list[str]:
        """The points a poll reads when none are named: every phase, detector and pattern, and coordination."""
        pts = [f"phase{p}_{k}" for p in range(1, self.phases + 1) for k in ("color", "ped", "vehcall", "pedcall")]
        pts += [f"det{d}_{k}" for d in self.detectors for k in ("volume", "occupancy")]
        pts += ["coord_pattern", "local_free", "coord_cycle", "coord_sync"]
        return pts + [f"pattern{p}_{k}" for p in self.patterns for k in ("cycle", "offset")]


def parse(t: Table, ctx: ParseContext) -> NtcipSettings:
    c = common(t, "ntcip", COMMANDS, 1.0)
    return construct(
        t, NtcipSettings,
        host=read_host(t), port=t.int("port", 161, min=1, max=65535), community=t.str("community", "public"),
        write_community=t.str("write_community", "private"), timeout_s=read_timeout(t, 1000),
        retries=t.int("retries", 1, min=0, max=5), phases=t.int("phases", 8, min=1, max=255),
        detectors=int_list(t, "detectors", 1, 255), patterns=int_list(t, "patterns", 1, 253),
        pattern_time_unit=t.str("pattern_time_unit", "s", choices=("s", "ds")),
        allowed_patterns=frozenset(int_list(t, "allowed_patterns", 1, 253)),
        allow_standby=t.bool("allow_standby", False), allow_free=t.bool("allow_free", False),
        allow_flash=t.bool("allow_flash", False), **c)
