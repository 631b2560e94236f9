"""Server-side alert rules as pure functions: facts in, the set of alerts that should be open out.

Each rule takes facts (what the store knows about the boxes, already read) plus `now` and its
thresholds, and returns {AlertKey: detail} for every condition that holds right now. Nothing here
reads a clock or the database, so each rule is tested on its own; the "alert-rules" job
(fleet_server.alert_jobs) reads the facts, runs `evaluate`, and `reconcile`s the result with the
unresolved alerts of these kinds: new keys are raised, keys no longer wanted are resolved.

Rules fed today:
    box_silent      a box not heard from (boxes.last_seen; enrolled_at if never) for `silent_s`
    alarm_reading   a point whose latest ALARM-class reading (heavy rain, sensor fault, gate
                    forced, ...) is younger than `alarm_quiet_s` and has no later non-alarm reading
                    of that point; one alert per (box, device/point)
Rules whose facts the box does not send yet (health figures, issue 12): `unsent_backlog`,
`disk_full`, `device_offline` take `BoxHealth` values; the store feeds none for now
(`RuleFacts.health` stays empty), so they raise nothing until that feed exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet_server.alerts import Alert, AlertKey

__all__ = [
    "ALARM_READING", "BOX_SILENT", "DEVICE_OFFLINE", "DISK_FULL", "RULE_KINDS", "UNSENT_BACKLOG", "AlarmPoint",
    "BoxHealth", "BoxSeen", "RuleFacts", "Thresholds", "Wanted", "alarm_reading", "box_silent", "device_offline",
    "disk_full", "evaluate", "reconcile", "unsent_backlog",
]

BOX_SILENT = "box_silent"
ALARM_READING = "alarm_reading"
UNSENT_BACKLOG = "unsent_backlog"
DISK_FULL = "disk_full"
DEVICE_OFFLINE = "device_offline"
#: The kinds the rules own: an unresolved alert of these kinds no rule wants any more is resolved.
RULE_KINDS = (BOX_SILENT, ALARM_READING, UNSENT_BACKLOG, DISK_FULL, DEVICE_OFFLINE)

Wanted = dict[AlertKey, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rules' settings, in seconds and percent (ServerSettings.alert_* give them)."""

    silent_s: float = 15 * 60
    alarm_quiet_s: float = 60 * 60
    unsent_s: float = 30 * 60
    disk_pct: float = 90.0
    offline_s: float = 15 * 60


@dataclass(frozen=True, slots=True)
class BoxSeen:
    box_id: str
    enrolled_at: float
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class AlarmPoint:
    """The latest ALARM reading of one point (reading time `ts`, the box's clock), and whether a
    later reading of another class of that point was stored since."""

    box_id: str
    device: str
    point: str
    ts: float
    seq: int
    text: str | None
    cleared: bool


@dataclass(frozen=True, slots=True)
class BoxHealth:
    """Health figures a box reports (not fed yet): the time of its oldest reading not yet sent,
    its disk use in percent, and each device's last good read (unix seconds)."""

    box_id: str
    oldest_unsent: float | None = None
    disk_used_pct: float | None = None
    devices_last_ok: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What the rules read. `health_fed`: whether `health` holds the boxes' reported figures;
    until it does, the health rules' kinds are not reconciled (`kinds`), so an alert of those
    kinds raised by other means is not resolved merely because no figures came."""

    boxes: tuple[BoxSeen, ...] = ()
    alarms: tuple[AlarmPoint, ...] = ()
    health: tuple[BoxHealth, ...] = ()
    health_fed: bool = False

    def kinds(self) -> tuple[str, ...]:
        """The rule kinds these facts decide (their unresolved alerts may be resolved)."""
        return RULE_KINDS if self.health_fed else (BOX_SILENT, ALARM_READING)


def box_silent(boxes: Iterable[BoxSeen], now: float, silent_s: float) -> Wanted:
    """Boxes not heard from for `silent_s` or more (a box never heard from counts from enrolment)."""
    out: Wanted = {}
    for box in boxes:
        since = box.enrolled_at if box.last_seen is None else box.last_seen
        if now - since >= silent_s:
            out[AlertKey(BOX_SILENT, box.box_id)] = {"last_seen": box.last_seen, "silent_s": round(now - since, 3)}
    return out


def alarm_reading(points: Iterable[AlarmPoint], now: float, quiet_s: float) -> Wanted:
    """Points whose latest alarm is not cleared by a later normal reading and younger than `quiet_s`."""
    return {AlertKey(ALARM_READING, p.box_id, f"{p.device}/{p.point}"):
            {"device": p.device, "point": p.point, "ts": p.ts, "seq": p.seq, "text": p.text}
            for p in points if not p.cleared and now - p.ts < quiet_s}


def unsent_backlog(health: Iterable[BoxHealth], now: float, unsent_s: float) -> Wanted:
    """Boxes whose oldest unsent reading is `unsent_s` old or older."""
    return {AlertKey(UNSENT_BACKLOG, h.box_id): {"oldest_unsent": h.oldest_unsent, "age_s": now - h.oldest_unsent}
            for h in health if h.oldest_unsent is not None and now - h.oldest_unsent >= unsent_s}


def disk_full(health: Iterable[BoxHealth], pct: float) -> Wanted:
    """Boxes whose disk is more than `pct` percent used."""
    return {AlertKey(DISK_FULL, h.box_id): {"used_pct": h.disk_used_pct}
            for h in health if h.disk_used_pct is not None and h.disk_used_pct > pct}


def device_offline(health: Iterable[BoxHealth], now: float, offline_s: float) -> Wanted:
    """Devices of a box without a good read for `offline_s` or more; one alert per device."""
    return {AlertKey(DEVICE_OFFLINE, h.box_id, device): {"device": device, "last_ok": last_ok}
            for h in health for device, last_ok in h.devices_last_ok.items() if now - last_ok >= offline_s}


def evaluate(facts: RuleFacts, now: float, thresholds: Thresholds) -> Wanted:
    """Every rule over the facts: the alerts that should be unresolved now."""
    wanted: Wanted = {}
    wanted.update(box_silent(facts.boxes, now, thresholds.silent_s))
    wanted.update(alarm_reading(facts.alarms, now, thresholds.alarm_quiet_s))
    wanted.update(unsent_backlog(facts.health, now, thresholds.unsent_s))
    wanted.update(disk_full(facts.health, thresholds.disk_pct))
    wanted.update(device_offline(facts.health, now, thresholds.offline_s))
    return wanted


def reconcile(wanted: Wanted, unresolved: Iterable[Alert],
              kinds: Iterable[str] = RULE_KINDS) -> tuple[Wanted, list[AlertKey]]:
    """(to raise, to resolve): wanted keys with no unresolved alert yet, and unresolved alerts of
    `kinds` (the rules' decided ones) no rule wants any more (sorted, so runs are repeatable)."""
    decided = frozenset(kinds)
    have = {a.key for a in unresolved if a.kind in decided}
    to_raise = {key: wanted[key] for key in sorted(wanted.keys() - have, key=_order)}
    return to_raise, sorted(have - wanted.keys(), key=_order)


def _order(key: AlertKey) -> tuple[str, str, str]:
    return key.kind, key.box_id or "", key.subject
