"""Settings of an NTCIP 1202 signal controller over SNMP: one frozen object and its parser.

    host, port, community, write_community, timeout_ms, retries, phases, detectors, patterns,
    pattern_time_unit = "s" | "ds", allowed_patterns, allow_standby / allow_free / allow_flash
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers.kind import ParseContext
from drivers.ntcip import mib as ntcip
from drivers.settings_rules import accepts, check_points, common, read_host, int_list, read_timeout


COMMANDS = ("set_pattern",)


@dataclass(frozen=True, slots=True)
class NtcipDeviceConfig:
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
    pattern_time_unit: str = "s"
    allowed_patterns: frozenset[int] = frozenset()
    allow_standby: bool = False
    allow_free: bool = False
    allow_flash: bool = False
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

def parse(t: Table, ctx: ParseContext) -> NtcipDeviceConfig:
    c = common(t, "ntcip", COMMANDS, 1.0)
    cfg = NtcipDeviceConfig(
        host=read_host(t), port=t.int("port", 161, min=1, max=65535), community=t.str("community", "public"),
        write_community=t.str("write_community", "private"), timeout_s=read_timeout(t, 1000),
        retries=t.int("retries", 1, min=0, max=5), phases=t.int("phases", 8, min=1, max=255),
        detectors=int_list(t, "detectors", 1, 255), patterns=int_list(t, "patterns", 1, 253),
        pattern_time_unit=t.str("pattern_time_unit", "s", choices=("s", "ds")),
        allowed_patterns=frozenset(int_list(t, "allowed_patterns", 1, 253)),
        allow_standby=t.bool("allow_standby", False), allow_free=t.bool("allow_free", False),
        allow_flash=t.bool("allow_flash", False), **c)
    check_points(t, cfg.points, accepts(ntcip.validate_point),
                 "phase<n>_color/ped/vehcall/pedcall, det<n>_volume/occupancy, pattern<n>_cycle/offset, "
                 "coord_pattern, local_free, coord_cycle or coord_sync")
    return cfg

