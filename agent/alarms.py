"""Per-device alarm rules: a threshold with hysteresis on one point, evaluated on the box.

    [[device.alarm]]
    name = "flood_risk"           # the alarm's point is "alarm.flood_risk"
    point = "level"               # a point of the device (its profile, or its `points` selection)
    above = 3.5                   # raise when the value goes above 3.5 ...
    clear_below = 3.2             # ... clear when it goes below 3.2 (or: below / clear_above)
    min_duration_s = 30           # optional: the condition must hold this long (between readings)
    baseline = 1.2                # optional, with `above`: compare |value - baseline| (a tilt
                                  # against the angle captured at install: a cover lifted either way)
    inhibit = { point = "status", values = [0, 3] }   # optional: while the device's `status`
                                  # reads one of these (warm-up, sensor fault) the rule is frozen

What comes out. Each transition is one Reading on the box's data path, right after the reading
that caused it: point "alarm.<name>", value 1.0 (raised) or 0.0 (cleared), unit "", class ALARM,
quality DERIVED, and a JSON `text` with the state, the measured value and unit and the
thresholds. An alarm is raised once and not again until it has cleared through the hysteresis
band (clear_below < above, clear_above > below, checked at load).

Which readings count. Only ROUTINE readings of the rule's (device, point) with a finite value and
none of MISSING, COMM_FAILURE, OUT_OF_RANGE, SUSPECT: a bad reading never raises, never clears,
and neither starts nor breaks a `min_duration_s` (the duration is measured between good
readings). Readings older than the last one judged (a replay) are skipped. An inhibited rule is
frozen the same way; the inhibit point's reading from the same poll (same timestamp) in the batch
is used when there is one, else the latest seen; an unknown inhibit value does not inhibit.

Restarts. State lives in memory only, by design: after a restart every rule re-evaluates on its
first good reading. If the condition holds then, the alarm is raised again (text "initial": true;
the fleet treats a raise of an already raised alarm as the same alarm); if it does not, one
EVENT-class reading with value 0.0 and "initial": true reports the alarm clear as of the restart
(so an alarm that cleared while the box was down is closed too). Nothing else is persisted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.config_reader import Table
from core.reading import Quality, Reading, RecordClass

__all__ = ["AlarmEvaluator", "AlarmRule", "AlarmState", "BAD_QUALITY", "evaluate", "parse_alarm_rules"]

BAD_QUALITY = Quality.MISSING | Quality.COMM_FAILURE | Quality.OUT_OF_RANGE | Quality.SUSPECT
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True, slots=True)
class AlarmRule:
    name: str
    point: str
    above: bool                       # True: raise above `trigger`; False: raise below it
    trigger: float
    clear: float                      # clear below (above=True) or above (above=False) this
    min_duration_s: float = 0.0
    baseline: float | None = None     # compare |value - baseline| instead of the value
    inhibit_point: str | None = None
    inhibit_values: tuple[float, ...] = ()

    @property
    def alarm_point(self) -> str:
        return f"alarm.{self.name}"

    def measure(self, value: float) -> float:
        return abs(value - self.baseline) if self.baseline is not None else value

    def met(self, x: float) -> bool:
        return x > self.trigger if self.above else x < self.trigger

    def cleared(self, x: float) -> bool:
        return x < self.clear if self.above else x > self.clear


@dataclass(frozen=True, slots=True)
class AlarmState:
    active: bool | None = None        # None: not judged since start
    since: float | None = None        # ts of the first good reading of the current run of "met"
    last_ts: float | None = None      # ts of the last reading judged


def usable(reading: Reading) -> bool:
    """A reading that may raise or clear an alarm."""
    v = reading.value
    return (reading.cls is RecordClass.ROUTINE and not reading.quality & BAD_QUALITY and v is not None
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def evaluate(rule: AlarmRule, state: AlarmState, reading: Reading) -> tuple[AlarmState, Reading | None]:
    """One good reading of the rule's point -> the new state and the transition reading, if any.
    Pure: the caller checks `usable` and the inhibit; this only applies thresholds and time."""
    if state.last_ts is not None and reading.ts < state.last_ts:
        return state, None
    x = rule.measure(float(reading.value))  # type: ignore[arg-type]
    if rule.met(x):
        since = state.since if state.since is not None else reading.ts
        state = replace(state, since=since, last_ts=reading.ts)
        if state.active is not True and reading.ts - since >= rule.min_duration_s:
            initial = state.active is None
            return AlarmState(True, since, reading.ts), _transition(rule, reading, True, initial)
        return state, None
    state = replace(state, since=None, last_ts=reading.ts)
    if state.active is None:  # first judgement after start, condition not met: clear as of now
        return replace(state, active=False), _transition(rule, reading, False, True)
    if state.active and rule.cleared(x):
        return replace(state, active=False), _transition(rule, reading, False, False)
    return state, None


def _transition(rule: AlarmRule, reading: Reading, raised: bool, initial: bool) -> Reading:
    info: dict[str, Any] = {"state": "raised" if raised else "cleared", "point": rule.point,
                            "value": reading.value, "unit": reading.unit,
                            ("above" if rule.above else "below"): rule.trigger,
                            ("clear_below" if rule.above else "clear_above"): rule.clear}
    if rule.baseline is not None:
        info["baseline"] = rule.baseline
    if initial:
        info["initial"] = True
    cls = RecordClass.EVENT if initial and not raised else RecordClass.ALARM
    return Reading(reading.device, rule.alarm_point, 1.0 if raised else 0.0, "", reading.ts, Quality.DERIVED,
                   cls, json.dumps(info, separators=(",", ":")))


class AlarmEvaluator:
    """The rules of every device and their state; `apply` runs on the pipeline's batches."""

    def __init__(self, rules: Mapping[str, Sequence[AlarmRule]]) -> None:
        self.rules = {dev: tuple(rs) for dev, rs in rules.items() if rs}
        self.states: dict[tuple[str, str], AlarmState] = {}
        self._watched = {(dev, r.point) for dev, rs in self.rules.items() for r in rs}
        self._inhibit_points = {(dev, r.inhibit_point) for dev, rs in self.rules.items() for r in rs if r.inhibit_point}
        self._inhibit_last: dict[tuple[str, str], float] = {}
        self.raised_total = self.cleared_total = 0

    @classmethod
    def for_config(cls, rules: Mapping[str, Sequence[AlarmRule]]) -> AlarmEvaluator | None:
        """From the config's rules by device (AgentConfig.alarms); None when no device has a rule."""
        return cls(rules) if any(rules.values()) else None

    def apply(self, readings: list[Reading]) -> list[Reading]:
        """The readings, each followed by the alarm transitions it caused."""
        if not any((r.device, r.point) in self._watched for r in readings):
            self._note_inhibits(readings)
            return readings
        same_poll = {(r.device, r.point, r.ts): float(r.value) for r in readings  # type: ignore[arg-type]
                     if (r.device, r.point) in self._inhibit_points and usable(r)}
        out: list[Reading] = []
        for r in readings:
            out.append(r)
            if (r.device, r.point) in self._inhibit_points and usable(r):
                self._inhibit_last[(r.device, r.point)] = float(r.value)  # type: ignore[arg-type]
            if (r.device, r.point) not in self._watched or not usable(r):
                continue
            for rule in self.rules[r.device]:
                if rule.point != r.point or self._inhibited(rule, r, same_poll):
                    continue
                key = (r.device, rule.name)
                self.states[key], alarm = evaluate(rule, self.states.get(key, AlarmState()), r)
                if alarm is not None:
                    out.append(alarm)
                    if alarm.cls is RecordClass.ALARM:
                        if alarm.value:
                            self.raised_total += 1
                        else:
                            self.cleared_total += 1
        return out

    def _note_inhibits(self, readings: list[Reading]) -> None:
        for r in readings:
            if (r.device, r.point) in self._inhibit_points and usable(r):
                self._inhibit_last[(r.device, r.point)] = float(r.value)  # type: ignore[arg-type]

    def _inhibited(self, rule: AlarmRule, r: Reading, same_poll: dict[tuple[str, str, float], float]) -> bool:
        if rule.inhibit_point is None:
            return False
        v = same_poll.get((r.device, rule.inhibit_point, r.ts), self._inhibit_last.get((r.device, rule.inhibit_point)))
        return v is not None and v in rule.inhibit_values

    def active(self) -> dict[str, bool | None]:
        """'device/alarm.name' -> raised (True), clear (False), not judged yet (None)."""
        return {f"{dev}/alarm.{r.name}": self.states.get((dev, r.name), AlarmState()).active
                for dev, rs in self.rules.items() for r in rs}


def parse_alarm_rules(tables: Sequence[Table | Mapping[str, Any]], points: Iterable[str], file: str,
                      key: str = "alarm") -> tuple[AlarmRule, ...]:
    """[[device.alarm]] tables -> rules; every error names the file, the key and the bad value.
    `tables` are config_reader Tables (from `Table.tables("alarm")`) or plain parsed TOML tables,
    named `<key>[i]` in errors; `points` are the names the device reports (its profile's, or its
    `points` selection, plus `<counter>_rate`)."""
    known = sorted(set(points))
    rules: list[AlarmRule] = []
    seen: dict[str, str] = {}
    for i, t in enumerate(tables):
        if not isinstance(t, Table):
            t = Table(t, file, f"{key}[{i}]")
        rule = _rule(t, known)
        if rule.name in seen:
            raise t.error("name", f"alarm name already used by {seen[rule.name]}", rule.name,
                          "a name unique among the device's alarms")
        seen[rule.name] = t.key
        rules.append(rule)
    return tuple(rules)


def _point(t: Table, key: str, known: list[str]) -> str:
    point = t.str(key)
    if point not in known:
        raise t.error(key, "the device has no such point", point, "one of " + ", ".join(known))
    return point


def _rule(t: Table, known: list[str]) -> AlarmRule:
    name = t.str("name", pattern=_NAME_RE, expected="lower_snake_case, 1-48 chars, starting with a letter")
    point = _point(t, "point", known)
    above, below = t.float("above", None), t.float("below", None)
    if (above is None) == (below is None):
        raise t.error("above" if above is None else "below",
                      "a rule needs exactly one of `above` and `below`", below if below is not None else None,
                      "above = <trigger> with clear_below, or below = <trigger> with clear_above")
    rising = above is not None
    trigger: float = above if rising else below  # type: ignore[assignment]
    clear_key, wrong_key = ("clear_below", "clear_above") if rising else ("clear_above", "clear_below")
    if wrong_key in t.data:
        raise t.error(wrong_key, f"does not go with {'above' if rising else 'below'}", t.data[wrong_key],
                      f"{clear_key} (the hysteresis band is on the other side of the trigger)")
    clear = t.float(clear_key, None)
    if clear is None:
        raise t.error(clear_key, "required key is missing", None,
                      f"a number {'below' if rising else 'above'} {trigger:g} where the alarm clears")
    if (rising and not clear < trigger) or (not rising and not clear > trigger):
        raise t.error(clear_key, f"on the wrong side of the trigger {trigger:g}", clear,
                      f"a number {'<' if rising else '>'} {trigger:g} (a hysteresis band)")
    min_duration = t.float("min_duration_s", 0.0, min=0.0, max=86400.0)
    baseline = t.float("baseline", None)
    if baseline is not None and not rising:
        raise t.error("baseline", "a baseline rule measures |value - baseline|, so it needs `above`", baseline,
                      "above / clear_below with baseline")
    if baseline is not None and clear < 0:
        raise t.error("clear_below", "|value - baseline| is never negative", clear, "a number >= 0")
    inhibit_point: str | None = None
    inhibit_values: tuple[float, ...] = ()
    inhibit = t.table("inhibit")
    if inhibit is not None:
        inhibit_point = _point(inhibit, "point", known)
        raw = inhibit.raw("values", None)
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)):
            raise inhibit.error("values", "must be a non-empty list of numbers", raw, "e.g. [0, 3] (status codes)")
        inhibit_values = tuple(float(v) for v in raw)
        inhibit.reject_unknown()
    t.reject_unknown()
    return AlarmRule(name, point, rising, float(trigger), clear, min_duration, baseline, inhibit_point, inhibit_values)

