"""Value objects of the rollout engine: what a rollout asks for, and what the store hands back.

All frozen; everything a client sends is validated once, here or in the API's pydantic models,
and errors name the field. The store and the planner only ever see these types.

Action states (hawkBit's, plus `assigned` for "told, not yet acknowledged" and `pending` for a
target box not yet assigned):
    pending -> assigned -> proceeding -> downloading -> downloaded -> installing -> restarting
            -> success | failure | rejected | canceled        (final: the action is closed)
A box reports any non-final state in any order (a reboot may repeat `downloading`); the first
final state closes the action. The server closes it too: `failure` with reason_code `timeout`
after the per-box deadline, `canceled` when the rollout is canceled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.contracts import BOX_STATES, ERROR_STATES, FINAL_STATES, KIND_TO_TARGET
from core.validate import is_clean_text
from fleet_server.errors import PayloadError

__all__ = [
    "BOX_STATES", "ERROR_STATES", "FINAL_STATES", "KINDS", "ActionView", "CheckinOutcome", "Inventory",
    "ReportOutcome", "RolloutSpec", "RolloutView", "StatusReport", "TargetFilter", "WaveSpec", "WaveView",
]

#: Rollout kind -> TUF target kind, the states a box reports: the contract both sides share.
KINDS: dict[str, str] = KIND_TO_TARGET
ROLLOUT_STATUSES = ("running", "paused", "canceled", "finished")
#: bounds of a rollout request (RolloutSpec checks them; the API's pydantic schema declares the same)
NEEDS_COMPONENT = frozenset({"model", "firmware"})
TIMEOUT_S = (10, 30 * 86400)
RATE_PER_MIN_MAX = 1_000_000
MIN_FINISHED = (1, 1_000_000)
_WAVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
_TEXT_MAX = 200


def _text(value: object, name: str, *, max_len: int = _TEXT_MAX, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value):
        raise PayloadError("bad_body", f"{name} must be a string of at most {max_len} characters"
                           + ("" if empty else ", not empty"), field=name)
    if not is_clean_text(value):  # a lone surrogate would fail at the store's insert (a 500)
        raise PayloadError("bad_body", f"{name} must be valid Unicode text without NUL", field=name)
    return value


def _versions_map(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 256:
        raise PayloadError("bad_body", f"{name} must be an object of at most 256 name: version pairs", field=name)
    return {_text(k, name, max_len=128, empty=False): _text(v, f"{name}.{k}", max_len=64, empty=False)
            for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a box reports it runs (PUT .../inventory)."""

    agent_version: str
    hardware: str
    models: Mapping[str, str] = field(default_factory=dict)
    firmware: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: object) -> Inventory:
        if not isinstance(body, dict):
            raise PayloadError("bad_body", "inventory must be a JSON object")
        unknown = set(body) - {"agent_version", "models", "firmware", "hardware"}
        if unknown:
            raise PayloadError("bad_body", f"unknown inventory field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        for key in ("agent_version", "hardware"):
            if key not in body:
                raise PayloadError("bad_body", f"inventory is missing {key!r}", field=key)
        return cls(
            agent_version=_text(body["agent_version"], "agent_version", max_len=64, empty=False),
            hardware=_text(body["hardware"], "hardware", max_len=64, empty=False),
            models=_versions_map(body.get("models", {}), "models"),
            firmware=_versions_map(body.get("firmware", {}), "firmware"),
        )

    def versions(self) -> list[tuple[str, str, str]]:
        """(kind, component, version) rows: the agent has component ''."""
        return ([("agent", "", self.agent_version)]
                + [("model", k, v) for k, v in sorted(self.models.items())]
                + [("firmware", k, v) for k, v in sorted(self.firmware.items())])


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One status report of a box about one action."""

    state: str
    reason: str | None = None
    reason_code: str | None = None
    detail: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, body: object) -> StatusReport:
        if not isinstance(body, dict):
            raise PayloadError("bad_body", "status report must be a JSON object")
        unknown = set(body) - {"state", "reason", "reason_code", "detail"}
        if unknown:
            raise PayloadError("bad_body", f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        state = body.get("state")
        if state not in BOX_STATES:
            raise PayloadError("bad_state", f"state must be one of {', '.join(BOX_STATES)}, got {state!r:.40}",
                               field="state")
        reason, code, detail = body.get("reason"), body.get("reason_code"), body.get("detail")
        if reason is not None:
            _text(reason, "reason", max_len=1000)
        if code is not None:
            _text(code, "reason_code", max_len=64)
        if detail is not None and (not isinstance(detail, dict) or len(repr(detail)) > 4000):
            raise PayloadError("bad_body", "detail must be an object (at most ~4 KB) or null", field="detail")
        return cls(state, reason, code, detail)


@dataclass(frozen=True, slots=True)
class TargetFilter:
    """Which boxes a rollout targets. Every given criterion must hold (empty: no constraint).

    tags: the box has ALL of them; sites / hardware / box_ids: one of them; current_versions: the
    box's installed version of the rollout's (kind, component) is one of them (from inventory).
    """

    tags: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    current_versions: tuple[str, ...] = ()
    box_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in ("tags", "sites", "hardware", "current_versions", "box_ids")}


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """A wave: `size` is the CUMULATIVE share of the target set reached by the end of this wave,
    "N" boxes or "P%"; success_pct of the wave's boxes must succeed to open the next wave;
    more than error_pct failing pauses the whole rollout."""

    size: str
    success_pct: float = 90.0
    error_pct: float = 10.0

    def __post_init__(self) -> None:
        match = _WAVE.match(self.size) if isinstance(self.size, str) else None
        if match is None or (match[2] and not 0 < float(match[1]) <= 100) or (not match[2] and "." in match[1]):
            raise PayloadError("bad_wave", f"wave size must be 'N' boxes or 'P%' (0 < P <= 100), got {self.size!r:.40}",
                               field="waves")
        for name in ("success_pct", "error_pct"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise PayloadError("bad_wave", f"{name} must be 0..100, got {value!r}", field=name)

    def reach(self, total: int) -> int:
        """How many boxes of `total` the rollout covers by the end of this wave."""
        match = _WAVE.match(self.size)
        assert match is not None
        if match[2]:
            return min(total, math.ceil(float(match[1]) * total / 100))
        return min(total, int(match[1]))

    @property
    def is_everything(self) -> bool:
        match = _WAVE.match(self.size)
        return bool(match and match[2] and float(match[1]) == 100)


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """A validated rollout request, with `version` and `hardware` taken from the signed target."""

    name: str
    kind: str
    target_name: str
    version: str
    hardware: tuple[str, ...]
    component: str = ""
    filter: TargetFilter = TargetFilter()
    waves: tuple[WaveSpec, ...] = (WaveSpec("100%"),)
    timeout_s: int = 3600
    rate_per_min: float | None = None
    respect_windows: bool = True
    min_finished: int = 10

    def __post_init__(self) -> None:
        """The rules of a rollout request, in one place (the API's schema reuses the bounds below)."""
        if self.kind not in KINDS:
            raise PayloadError("bad_kind", f"kind must be one of {', '.join(KINDS)}, got {self.kind!r:.40}",
                               field="kind")
        if self.kind in NEEDS_COMPONENT and not self.component:
            raise PayloadError("bad_body", f"a {self.kind} rollout needs `component` (the {self.kind} name the box "
                               "reports in its inventory)", field="component")
        if not self.waves or not self.waves[-1].is_everything:
            raise PayloadError("bad_wave", "the last wave must be '100%' (a rollout covers its target set)",
                               field="waves")
        if not TIMEOUT_S[0] <= self.timeout_s <= TIMEOUT_S[1]:
            raise PayloadError("bad_body", "timeout_s must be 10 s .. 30 days", field="timeout_s")
        if self.rate_per_min is not None and not 0 < self.rate_per_min <= RATE_PER_MIN_MAX:
            raise PayloadError("bad_body", "rate_per_min must be positive or null", field="rate_per_min")
        if not MIN_FINISHED[0] <= self.min_finished <= MIN_FINISHED[1]:
            raise PayloadError("bad_body", f"min_finished must be {MIN_FINISHED[0]}..{MIN_FINISHED[1]}",
                               field="min_finished")

    def capacities(self, total: int) -> list[tuple[WaveSpec, int]]:
        """Per-wave capacity (boxes newly covered by each wave); waves that add nobody are dropped."""
        out, reached = [], 0
        for wave in self.waves:
            reach = max(reached, wave.reach(total))
            if reach > reached:
                out.append((wave, reach - reached))
            reached = reach
        return out


@dataclass(frozen=True, slots=True)
class WaveView:
    no: int
    capacity: int
    success_pct: float
    error_pct: float
    assigned: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    canceled: int = 0
    errors_acked: int = 0   # errors the admin accepted by resuming; thresholds count only newer ones

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.rejected + self.canceled

    @property
    def errors(self) -> int:
        return self.failed + self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {"wave": self.no, "capacity": self.capacity, "success_pct": self.success_pct,
                "error_pct": self.error_pct, "assigned": self.assigned, "succeeded": self.succeeded,
                "failed": self.failed, "rejected": self.rejected, "canceled": self.canceled,
                "errors_acked": self.errors_acked}


@dataclass(frozen=True, slots=True)
class RolloutView:
    rollout_id: str
    name: str
    kind: str
    target_name: str
    version: str
    component: str
    status: str
    total: int
    current_wave: int
    waves: tuple[WaveView, ...]
    timeout_s: int
    rate_per_min: float | None
    respect_windows: bool
    min_finished: int
    created_at: float
    updated_at: float
    rev: int = 0
    pause_reason: str | None = None
    tokens: float = 0.0
    tokens_at: float = 0.0
    filter: Mapping[str, Any] = field(default_factory=dict)
    hardware: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.status in ("running", "paused")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id, "name": self.name, "kind": self.kind,
            "target_name": self.target_name, "version": self.version, "component": self.component,
            "status": self.status, "pause_reason": self.pause_reason, "total": self.total,
            "current_wave": self.current_wave, "waves": [w.to_dict() for w in self.waves],
            "timeout_s": self.timeout_s, "rate_per_min": self.rate_per_min,
            "respect_windows": self.respect_windows, "min_finished": self.min_finished,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "filter": dict(self.filter), "hardware": list(self.hardware),
        }


@dataclass(frozen=True, slots=True)
class ActionView:
    action_id: str
    rollout_id: str
    box_id: str
    wave: int | None
    state: str
    kind: str = ""
    target_name: str = ""
    version: str = ""
    timeout_s: int = 0
    reason: str | None = None
    reason_code: str | None = None
    assigned_at: float | None = None
    updated_at: float | None = None
    deadline: float | None = None
    component: str = ""

    @property
    def open(self) -> bool:
        return self.state not in FINAL_STATES and self.state != "pending"

    def to_dict(self) -> dict[str, Any]:
        return {"action_id": self.action_id, "rollout_id": self.rollout_id, "box_id": self.box_id,
                "wave": self.wave, "state": self.state, "reason": self.reason,
                "reason_code": self.reason_code, "assigned_at": self.assigned_at,
                "updated_at": self.updated_at, "deadline": self.deadline}


@dataclass(frozen=True, slots=True)
class CheckinOutcome:
    """A check-in decision: the box's open action (maybe newly assigned) and the rollouts it read."""

    action: ActionView | None
    rollouts: tuple[RolloutView, ...] = ()
    assigned: bool = False


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """The action after a report; `rollout` when the report changed its counters (final states)."""

    action: ActionView
    rollout: RolloutView | None
    changed: bool
