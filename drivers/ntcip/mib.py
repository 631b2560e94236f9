"""NTCIP 1202 actuated signal controller objects: OIDs, bitmap decoding, point mapping, green wave.

Pure functions only; SNMP I/O lives in drivers/ntcip_driver.py. OIDs exactly as devices.md gives
them under the ASC node 1.3.6.1.4.1.1206.4.2.1 (source: mmitss-az StandardMib.py):

    phaseStatusGroup{Reds,Yellows,Greens,DontWalks,PedClears,Walks,VehCalls,PedCalls,PhaseNexts}
        .1.4.1.{2,3,4,5,6,7,8,9,11}.<group>   bitmap: bit 0 = phase 8*(group-1)+1
    phaseControlGroup{VehOmit,PedOmit,Hold,ForceOff,VehCall,PedCall}  .1.5.1.{2..7}.<group>
    detectorVolume / detectorOccupancy                                 .2.5.4.1.{1,2}.<det>
    coordPatternStatus / localFreeStatus / coordCycleStatus / coordSyncStatus  .4.{10,11,12,13}.0
    systemPatternControl (write)                                       .4.14.0
    patternCycleTime / patternOffsetTime / splitTime   .4.7.1.2.<p> / .4.7.1.3.<p> / .4.9.1.3.<s>.<ph>

Pattern times are seconds in some controller versions and tenths in others: `time_unit` ("s" or
"ds") is a profile setting. systemPatternControl / coordPatternStatus: 0 standby (not used),
1-253 pattern, 254 free, 255 flash. detectorOccupancy: 0-200 = 0-100 % in 0.5 % steps, 210-217
detector fault codes (reported as missing with the fault's name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

from core.reading import Quality

__all__ = [
    "ASC", "Oid", "oid_str", "phase_status_oid", "phase_control_oid", "detector_volume_oid",
    "detector_occupancy_oid", "pattern_cycle_oid", "pattern_offset_oid", "split_time_oid",
    "COORD_PATTERN_STATUS", "LOCAL_FREE_STATUS", "COORD_CYCLE_STATUS", "COORD_SYNC_STATUS",
    "SYSTEM_PATTERN_CONTROL", "PHASE_STATUS", "PHASE_CONTROL", "Color", "Ped", "phases_in", "bitmap_of",
    "decode_occupancy", "pattern_name", "LOCAL_FREE", "PointValue", "oids_for", "decode_points",
    "green_wave_offsets", "validate_point",
]

Oid = tuple[int, ...]
ASC: Oid = (1, 3, 6, 1, 4, 1, 1206, 4, 2, 1)
PHASE_STATUS = {"reds": 2, "yellows": 3, "greens": 4, "dontwalks": 5, "pedclears": 6, "walks": 7,
                "vehcalls": 8, "pedcalls": 9, "nexts": 11}
PHASE_CONTROL = {"vehomit": 2, "pedomit": 3, "hold": 4, "forceoff": 5, "vehcall": 6, "pedcall": 7}
COORD_PATTERN_STATUS: Oid = ASC + (4, 10, 0)
LOCAL_FREE_STATUS: Oid = ASC + (4, 11, 0)
COORD_CYCLE_STATUS: Oid = ASC + (4, 12, 0)
COORD_SYNC_STATUS: Oid = ASC + (4, 13, 0)
SYSTEM_PATTERN_CONTROL: Oid = ASC + (4, 14, 0)
LOCAL_FREE = {1: "other", 2: "notFree", 3: "commandFree", 4: "transitionFree", 5: "inputFree", 6: "coordFree",
              7: "badPlan", 8: "badCycleTime", 9: "splitOverrun", 10: "invalidOffset", 11: "failed"}
OCCUPANCY_FAULTS = {210: "max presence fault", 211: "no activity fault", 212: "open loop fault",
                    213: "shorted loop fault", 214: "excessive change fault", 216: "watchdog fault",
                    217: "erratic output fault"}


def oid_str(oid: Oid) -> str:
    return ".".join(map(str, oid))


def phase_status_oid(kind: str, group: int) -> Oid:
    return ASC + (1, 4, 1, PHASE_STATUS[kind], group)


def phase_control_oid(kind: str, group: int) -> Oid:
    return ASC + (1, 5, 1, PHASE_CONTROL[kind], group)


def detector_volume_oid(det: int) -> Oid:
    return ASC + (2, 5, 4, 1, 1, det)


def detector_occupancy_oid(det: int) -> Oid:
    return ASC + (2, 5, 4, 1, 2, det)


def pattern_cycle_oid(pattern: int) -> Oid:
    return ASC + (4, 7, 1, 2, pattern)


def pattern_offset_oid(pattern: int) -> Oid:
    return ASC + (4, 7, 1, 3, pattern)


def split_time_oid(split: int, phase: int) -> Oid:
    return ASC + (4, 9, 1, 3, split, phase)


class Color(IntEnum):
    DARK = 0
    RED = 1
    YELLOW = 2
    GREEN = 3


class Ped(IntEnum):
    DARK = 0
    DONT_WALK = 1
    PED_CLEAR = 2
    WALK = 3


def group_of(phase: int) -> tuple[int, int]:
    """(group, bit) for a phase number 1..255."""
    return (phase - 1) // 8 + 1, (phase - 1) % 8


def phases_in(group: int, bitmap: int) -> set[int]:
    return {8 * (group - 1) + bit + 1 for bit in range(8) if bitmap >> bit & 1}


def bitmap_of(group: int, phases: Iterable[int]) -> int:
    return sum(1 << bit for g, bit in map(group_of, phases) if g == group)


def decode_occupancy(raw: int) -> tuple[float | None, str | None]:
    """(percent, None) for 0..200, (None, fault name) for the fault/reserved codes."""
    if 0 <= raw <= 200:
        return raw / 2.0, None
    return None, OCCUPANCY_FAULTS.get(raw, f"reserved occupancy code {raw}")


def pattern_name(value: int) -> str:
    return {0: "standby", 254: "free", 255: "flash"}.get(value, f"pattern {value}")


@dataclass(frozen=True, slots=True)
class PointValue:
    point: str
    value: float | None
    unit: str = ""
    quality: Quality = Quality.GOOD
    text: str | None = None


_PHASE = re.compile(r"^phase(\d{1,3})_(color|ped|vehcall|pedcall)$")
_DET = re.compile(r"^det(\d{1,3})_(volume|occupancy)$")
_PATTERN = re.compile(r"^pattern(\d{1,3})_(cycle|offset)$")
_SCALARS = {"coord_pattern": COORD_PATTERN_STATUS, "local_free": LOCAL_FREE_STATUS,
            "coord_cycle": COORD_CYCLE_STATUS, "coord_sync": COORD_SYNC_STATUS}
_PHASE_KINDS = {"color": ("greens", "yellows", "reds"), "ped": ("walks", "pedclears", "dontwalks"),
                "vehcall": ("vehcalls",), "pedcall": ("pedcalls",)}


def _needs(point: str) -> list[Oid]:
    if point in _SCALARS:
        return [_SCALARS[point]]
    if m := _PHASE.match(point):
        phase = int(m.group(1))
        if not 1 <= phase <= 255:
            raise ValueError(f"phase number in {point!r} must be 1..255")
        group = group_of(phase)[0]
        return [phase_status_oid(k, group) for k in _PHASE_KINDS[m.group(2)]]
    if m := _DET.match(point):
        det = int(m.group(1))
        if not 1 <= det <= 255:
            raise ValueError(f"detector number in {point!r} must be 1..255")
        return [(detector_volume_oid if m.group(2) == "volume" else detector_occupancy_oid)(det)]
    if m := _PATTERN.match(point):
        p = int(m.group(1))
        if not 1 <= p <= 253:
            raise ValueError(f"pattern number in {point!r} must be 1..253")
        return [(pattern_cycle_oid if m.group(2) == "cycle" else pattern_offset_oid)(p)]
    raise ValueError(f"unknown NTCIP point {point!r}")


def validate_point(point: str) -> None:
    _needs(point)


def oids_for(points: Sequence[str]) -> list[Oid]:
    """The distinct OIDs one GET must fetch for these points, in first-use order."""
    seen: dict[Oid, None] = {}
    for p in points:
        for oid in _needs(p):
            seen.setdefault(oid, None)
    return list(seen)


def _phase_value(kind: str, phase: int, values: Mapping[Oid, int | None]) -> PointValue:
    point = f"phase{phase}_{kind}"
    group, bit = group_of(phase)
    maps = [values.get(phase_status_oid(k, group)) for k in _PHASE_KINDS[kind]]
    if any(m is None for m in maps):
        return PointValue(point, None, "", Quality.MISSING, "controller has no such phase group")
    if any(not 0 <= m <= 255 for m in maps):  # type: ignore[operator]
        return PointValue(point, None, "", Quality.SUSPECT, f"phase group {group} bitmap outside 0..255: {maps}")
    on = [bool(m >> bit & 1) for m in maps]  # type: ignore[operator]
    if kind in ("vehcall", "pedcall"):
        return PointValue(point, float(on[0]))
    states = (Color.GREEN, Color.YELLOW, Color.RED) if kind == "color" else (Ped.WALK, Ped.PED_CLEAR, Ped.DONT_WALK)
    lit = [s for s, flag in zip(states, on) if flag]
    if len(lit) > 1:
        names = "+".join(s.name.lower() for s in lit)
        return PointValue(point, None, "", Quality.SUSPECT, f"phase {phase} shows {names} at once")
    state = lit[0] if lit else type(states[0])(0)
    return PointValue(point, float(state), "", text=state.name.lower())


def decode_points(points: Sequence[str], values: Mapping[Oid, int | None], *, time_unit: str = "s") -> list[PointValue]:
    """Map fetched OID values (None = noSuchObject/Instance) to one PointValue per point."""
    scale = {"s": 1.0, "ds": 0.1}[time_unit]
    out = []
    for point in points:
        oids = _needs(point)
        if (m := _PHASE.match(point)) is not None:
            out.append(_phase_value(m.group(2), int(m.group(1)), values))
            continue
        raw = values.get(oids[0])
        unit = "veh" if point.endswith("_volume") else "%" if point.endswith("_occupancy") else (
            "" if point in ("coord_pattern", "local_free") else "s")
        if raw is None:
            out.append(PointValue(point, None, unit, Quality.MISSING, "controller has no such object"))
        elif point == "coord_pattern":
            out.append(PointValue(point, float(raw), unit, text=pattern_name(raw)))
        elif point == "local_free":
            out.append(PointValue(point, float(raw), unit, text=LOCAL_FREE.get(raw, f"unknown {raw}")))
        elif point.endswith("_occupancy"):
            pct, fault = decode_occupancy(raw)
            out.append(PointValue(point, pct, unit, Quality.MISSING if fault else Quality.GOOD, fault))
        elif point.startswith("pattern"):
            out.append(PointValue(point, round(raw * scale, 1), unit))
        else:  # volume, coord cycle / sync
            out.append(PointValue(point, float(raw), unit))
    return out


def green_wave_offsets(distances_m: Sequence[float], speed_ms: float, cycle_s: float) -> list[float]:
    """Offsets for a one-way green wave: offset_i = (d_i / v) mod C, all signals sharing cycle C.

    devices.md: 0, 450, 900 m at 12.5 m/s with C = 120 s give 0, 36, 72 s.
    """
    if not (math.isfinite(speed_ms) and speed_ms > 0):
        raise ValueError(f"speed_ms must be a positive number, got {speed_ms!r}")
    if not (math.isfinite(cycle_s) and cycle_s > 0):
        raise ValueError(f"cycle_s must be a positive number, got {cycle_s!r}")
    out = []
    for d in distances_m:
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"distances must be finite and >= 0 m, got {d!r}")
        out.append(round((d / speed_ms) % cycle_s, 6) % cycle_s)
    return out
