"""Timing-pattern decisions at a junction, from the traffic-demand forecast, behind guard rules.

    volume_15min_forecast[.n] --mean over detectors--> recommended pattern (1 off-peak, 2 normal,
    3 peak, with hysteresis) --PatternGuard--> send_command(device, "set_pattern", {"pattern": n})

A change is commanded only when ALL of these hold, and every decision, whatever it is, becomes an
EVENT record (`pattern_decision`, value = recommended pattern, text = JSON with the reason):
- the junction's policy allows it (`allow_pattern_change`, off unless configured);
- the controller's state is known and fresh (pattern and pedestrian bitmaps read within
  `max_state_age_s` of the forecast);
- no pedestrian phase is active: the walk and pedestrian-clearance bitmaps are all zero;
- at least `min_dwell_s` passed since the last change (ours, or one we saw on the controller;
  after a restart the dwell counts from the first state we saw, so a rebooting box cannot flap
  the plan);
- the recommendation differs from the running pattern.

Times are the readings' timestamps, not the wall clock, so decisions replay deterministically.
`send_command` is injected (the lead wires it to the signal-controller driver); a DriverError or
a timeout from it is recorded as a failed decision, never raised into the data path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config_reader import Table
from core.errors import ConfigError, DriverError
from core.reading import Quality, Reading, RecordClass
from drivers.registry import KINDS

log = logging.getLogger(__name__)

SendCommand = Callable[[str, str, Mapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PatternThresholds:
    """Junction mean forecast per detector (veh per 5 min) at which the plan steps up."""

    normal_from: float = 12.0
    peak_from: float = 28.0
    hysteresis: float = 0.1  # fraction: stepping down needs the volume this far below the threshold

    def __post_init__(self) -> None:
        if not 0 < self.normal_from < self.peak_from or not 0 <= self.hysteresis < 0.5:
            raise ValueError(f"need 0 < normal_from < peak_from and 0 <= hysteresis < 0.5, got {self}")

    @classmethod
    def from_manifest(cls, thresholds: Mapping[str, float]) -> PatternThresholds:
        """The defaults shipped in the traffic_demand manifest's [thresholds]."""
        d = cls()
        return cls(float(thresholds.get("pattern_normal_from", d.normal_from)),
                   float(thresholds.get("pattern_peak_from", d.peak_from)))

    def level(self, volume: float, current_level: int | None = None) -> int:
        """0 off-peak, 1 normal, 2 peak; holds the current level inside the hysteresis band."""
        raw = 0 if volume < self.normal_from else 1 if volume < self.peak_from else 2
        if current_level is None or raw >= current_level:
            return raw
        down = (self.normal_from, self.peak_from)[current_level - 1] * (1 - self.hysteresis)
        return raw if volume < down else current_level


@dataclass(frozen=True, slots=True)
class JunctionPolicy:
    device: str
    allow_pattern_change: bool = False
    min_dwell_s: float = 900.0
    max_state_age_s: float = 60.0
    patterns: tuple[int, int, int] = (1, 2, 3)  # the controller's off-peak, normal and peak plans
    thresholds: PatternThresholds = PatternThresholds()
    forecast_point: str = "volume_15min_forecast"
    pattern_point: str = "pattern"
    ped_walk_point: str = "ped_walk"
    ped_clear_point: str = "ped_clear"
    max_forecast_age_s: float = 600.0
    command: str = "set_pattern"        # the driver command that changes the plan
    command_arg: str = "pattern"        # ... and the name of its argument

    def __post_init__(self) -> None:
        if self.min_dwell_s < 0 or self.max_state_age_s <= 0:
            raise ValueError(f"min_dwell_s must be >= 0 and max_state_age_s > 0 for {self.device}")


@dataclass
class _Junction:
    policy: JunctionPolicy
    pattern: int | None = None
    pattern_ts: float | None = None
    ped: dict[str, tuple[int, float]] = field(default_factory=dict)  # point -> (bitmap, ts)
    forecasts: dict[str, tuple[float, float]] = field(default_factory=dict)  # point -> (veh, ts)
    first_seen: float | None = None
    last_change: float | None = None
    decisions: int = 0
    changes: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    action: str            # "changed" | "held" | "unchanged" | "failed"
    recommended: int
    current: int | None
    reason: str


class PatternGuard:
    """The guard rules, as a pure function of the junction's state (easy to test exhaustively)."""

    @staticmethod
    def check(j: _Junction, now: float, target: int) -> tuple[bool, str]:
        p = j.policy
        if not p.allow_pattern_change:
            return False, "pattern changes not allowed by this box's config"
        if j.pattern is None or j.pattern_ts is None:
            return False, "controller pattern unknown"
        walk = [(pt, v) for pt, v in j.ped.items() if _matches(pt, p.ped_walk_point)]
        clear = [(pt, v) for pt, v in j.ped.items() if _matches(pt, p.ped_clear_point)]
        if not walk or not clear:
            return False, "pedestrian phase state unknown"
        oldest = min([j.pattern_ts] + [ts for _, (_, ts) in walk + clear])
        if now - oldest > p.max_state_age_s:
            return False, f"controller state stale ({now - oldest:.0f} s old > {p.max_state_age_s:.0f} s)"
        active = [f"{pt}=0x{bits:x}" for pt, (bits, _) in walk + clear if bits]
        if active:
            return False, "pedestrian phase active (" + ", ".join(active) + ")"
        if target == j.pattern:
            return False, f"already running pattern {target}"
        since = now - (j.last_change if j.last_change is not None else j.first_seen or now)
        if since < p.min_dwell_s:
            return False, f"minimum dwell: {since:.0f} s since the last change < {p.min_dwell_s:.0f} s"
        return True, "guards passed"


_NTCIP_PED = re.compile(r"^phase(\d{1,3})_ped$")
_PED_CLEAR, _PED_WALK = 2, 3  # drivers.ntcip.mib.Ped


def _matches(point: str, base: str) -> bool:
    return point == base or point.startswith(base + ".")


class PatternDecider:
    """A pipeline stage after the inference stage: reads forecasts and controller state, decides."""

    def __init__(self, policies: Sequence[JunctionPolicy], send_command: SendCommand, *,
                 command_timeout_s: float = 5.0) -> None:
        self._junctions = {p.device: _Junction(p) for p in policies}
        if len(self._junctions) != len(policies):
            raise ValueError("one policy per junction device")
        self._send = send_command
        self._timeout = command_timeout_s
        self._audits: list[Reading] = []

    def bind(self, send_command: SendCommand) -> None:
        """Set the command path (the runtime builds the router after the pipeline this stage is in)."""
        self._send = send_command

    async def process(self, readings: list[Reading]) -> list[Reading]:
        due: dict[str, float] = {}
        for r in readings:
            j = self._junctions.get(r.device)
            if j is None or r.value is None:
                continue
            p = j.policy
            if _matches(r.point, p.forecast_point) and r.quality & Quality.DERIVED:
                j.forecasts[r.point] = (r.value, r.ts)
                due[r.device] = max(due.get(r.device, r.ts), r.ts)
            elif r.point == p.pattern_point:
                self._observe_pattern(j, int(r.value), r.ts)
            elif _matches(r.point, p.ped_walk_point) or _matches(r.point, p.ped_clear_point):
                j.ped[r.point] = (int(r.value), r.ts)
            elif (m := _NTCIP_PED.match(r.point)) is not None:  # one phase's Ped state (drivers.ntcip.mib)
                state = int(r.value)
                j.ped[f"{p.ped_walk_point}.{m[1]}"] = (int(state == _PED_WALK), r.ts)
                j.ped[f"{p.ped_clear_point}.{m[1]}"] = (int(state == _PED_CLEAR), r.ts)
        if not due:
            return readings
        out = list(readings)
        for device, now in due.items():
            out.append(await self.decide(device, now))
        out.extend(self._audits)  # the command router's audit records of the commands just sent
        self._audits.clear()
        return out

    async def audit(self, records: list[Reading]) -> None:
        """The command router's emit for our commands: audit records join the batch being judged
        (queueing them on the pipeline from inside the pipeline could wait on itself)."""
        self._audits.extend(records)

    def _observe_pattern(self, j: _Junction, pattern: int, ts: float) -> None:
        if j.pattern is not None and pattern != j.pattern and (j.last_change is None or ts > j.last_change):
            j.last_change = ts  # someone (the central system, the local plan or we) changed it
        if j.first_seen is None:
            j.first_seen = ts
        j.pattern, j.pattern_ts = pattern, ts

    def recommend(self, device: str, now: float) -> tuple[int, float] | None:
        j = self._junctions[device]
        fresh = [v for v, ts in j.forecasts.values() if now - ts <= j.policy.max_forecast_age_s]
        if not fresh:
            return None
        volume = sum(fresh) / len(fresh)
        pats = j.policy.patterns
        current = pats.index(j.pattern) if j.pattern in pats else None
        return pats[j.policy.thresholds.level(volume, current)], volume

    async def decide(self, device: str, now: float) -> Reading:
        j = self._junctions[device]
        rec = self.recommend(device, now)
        if rec is None:
            d = Decision("held", 0, j.pattern, "no fresh forecast")
            return self._record(j, d, now, None)
        target, volume = rec
        ok, reason = PatternGuard.check(j, now, target)
        if not ok:
            action = "unchanged" if reason.startswith("already running") else "held"
            return self._record(j, Decision(action, target, j.pattern, reason), now, volume)
        try:
            await asyncio.wait_for(self._send(device, j.policy.command, {j.policy.command_arg: target}), self._timeout)
        except (DriverError, asyncio.TimeoutError) as exc:
            reason = f"command failed: {type(exc).__name__}: {exc}"
            log.warning("%s: set_pattern %d failed: %s", device, target, exc)
            return self._record(j, Decision("failed", target, j.pattern, reason), now, volume)
        previous = j.pattern
        j.last_change = now
        j.changes += 1
        return self._record(j, Decision("changed", target, previous, f"pattern {previous} -> {target}"), now, volume)

    def _record(self, j: _Junction, d: Decision, now: float, volume: float | None) -> Reading:
        j.decisions += 1
        text = json.dumps({"decision": d.action, "recommended": d.recommended, "current": d.current,
                           "forecast_veh_5min": None if volume is None else round(volume, 1),
                           "reason": d.reason}, separators=(",", ":"))
        return Reading(j.policy.device, "pattern_decision", float(d.recommended), "pattern", now,
                       Quality.DERIVED, RecordClass.EVENT, text)

    def stats(self) -> dict[str, Any]:
        return {dev: {"decisions": j.decisions, "changes": j.changes, "pattern": j.pattern,
                      "last_change": j.last_change} for dev, j in self._junctions.items()}


# --- config: [[junction]] -------------------------------------------------------------------------


def parse_junctions(raw: Any, devices: Mapping[str, Any], file: str) -> tuple[JunctionPolicy, ...]:
    """Validate `[[junction]]` tables against the box's devices.

        [[junction]]
        device = "sig-1"                # an ntcip or gbt20999 [[device]]
        allow_pattern_change = true     # off unless said; needs the command in allow_commands
        min_dwell_s = 900
        patterns = [1, 2, 3]            # the controller's off-peak, normal and peak plans
        normal_from = 12.0              # junction mean forecast (veh / 5 min) stepping up a plan
        peak_from = 28.0
    """
    if not isinstance(raw, list) or not all(isinstance(x, Mapping) for x in raw):
        raise ConfigError("must be an array of tables", file=file, key="junction", value=raw,
                          expected="[[junction]] sections")
    out: list[JunctionPolicy] = []
    for i, item in enumerate(raw):
        t = Table(item, file, f"junction[{i}]")
        name = t.str("device")
        dev = devices.get(name)
        if dev is None:
            raise t.error("device", "no such device", name, "the name of an ntcip or gbt20999 [[device]]")
        kind = getattr(dev, "kind", "modbus")
        plan = KINDS[kind].signal_plan if kind in KINDS else None  # the kind says how its plan is set
        if plan is None:
            raise t.error("device", f"is a {kind} device, not a signal controller", name,
                          "an ntcip or gbt20999 [[device]]")
        pattern_point, command, arg = plan.point, plan.command, plan.argument
        allow = t.bool("allow_pattern_change", False)
        if allow and command not in dev.allow_commands:
            raise t.error("allow_pattern_change", f"device {name!r} does not allow the {command!r} command", True,
                          f'"{command}" in that [[device]]\'s allow_commands (or allow_pattern_change = false)')
        pats = t.raw("patterns", [1, 2, 3])
        if (not isinstance(pats, list) or len(pats) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 253 for x in pats)):
            raise t.error("patterns", "must be three plan numbers", pats, "[off-peak, normal, peak], each 1..253")
        d = PatternThresholds()
        normal = t.float("normal_from", d.normal_from, min=0, max=10_000, exclusive_min=True)
        peak = t.float("peak_from", d.peak_from, min=0, max=10_000)
        hyst = t.float("hysteresis", d.hysteresis, min=0, max=0.5, exclusive_min=False)
        if not normal < peak:
            raise t.error("peak_from", "must be above normal_from", peak, f"a volume above {normal}")
        try:
            policy = JunctionPolicy(
                device=name, allow_pattern_change=allow,
                min_dwell_s=t.float("min_dwell_s", 900.0, min=0, max=86400, exclusive_min=False),
                max_state_age_s=t.float("max_state_age_s", 60.0, min=0, max=3600, exclusive_min=True),
                patterns=(pats[0], pats[1], pats[2]), thresholds=PatternThresholds(normal, peak, hyst),
                pattern_point=t.str("pattern_point", pattern_point),
                ped_walk_point=t.str("ped_walk_point", "ped_walk"), ped_clear_point=t.str("ped_clear_point",
                                                                                          "ped_clear"),
                max_forecast_age_s=t.float("max_forecast_age_s", 600.0, min=0, max=86400),
                command=command, command_arg=arg)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, key=f"junction[{i}]") from None
        t.reject_unknown()
        if any(p.device == name for p in out):
            raise t.error("device", "junction declared twice", name, "one [[junction]] per controller")
        out.append(policy)
    return tuple(out)
