"""The rollout state machines as pure functions: what a report, a deadline, an admin command or a
closed action does to an action or a rollout. No I/O.

A store backend reads the rows inside its transaction (after taking the rollouts lock), asks
these functions what happens, and writes the answer; SQLite and PostgreSQL therefore persist the
same decisions, and the rules are tested here without a database (tests/test_fleet_transitions.py).
Which wave a box joins, and when a wave breaches its threshold, are `planner`'s rules.

Action:   pending --assign--> assigned --report--> (any box state) --final report--> success |
          failure | rejected;  an open action past its deadline --> failure (timeout);
          rollout canceled --> canceled. A closed action never reopens.
Rollout:  running <--pause/resume--> paused;  running | paused --cancel--> canceled;
          a breached wave pauses a running rollout; every box final --> finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_server.rollout import planner
from fleet_server.rollout.errors import RolloutConflict
from fleet_server.rollout.model import FINAL_STATES, ActionView, RolloutView, StatusReport

__all__ = ["COMMANDS", "TIMEOUT_REASON", "ReportStep", "after_final", "breach_reason", "command_status", "on_report"]

#: admin command -> (the statuses it applies to, the status it leads to)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("running", "paused"), "canceled"),
}

TIMEOUT_REASON = "no final state before the deadline"


@dataclass(frozen=True, slots=True)
class ReportStep:
    """What one status report does to its action.

    kind: "repeat" (nothing changes: the box said it before), "refuse" (the action is already
    closed in another state: ActionClosed), "expire_then_refuse" (the deadline passed: close it as
    a timeout, then refuse the report), "progress" (a new non-final state), "close" (a final state:
    count it, maybe pause or finish the rollout)."""

    kind: str
    state: str

    @property
    def writes(self) -> bool:
        return self.kind in ("progress", "close", "expire_then_refuse")


def on_report(action: ActionView, report: StatusReport, now: float) -> ReportStep:
    """The transition a box's report makes on its (assigned, not pending) action."""
    if action.open and action.deadline is not None and action.deadline <= now:
        return ReportStep("expire_then_refuse", "failure")
    if not action.open:
        if action.state == report.state:   # the box repeating its own final report
            return ReportStep("repeat", action.state)
        return ReportStep("refuse", action.state)
    if action.state == report.state and action.reason == report.reason:
        return ReportStep("repeat", action.state)
    return ReportStep("close" if report.state in FINAL_STATES else "progress", report.state)


def command_status(status: str, command: str, rollout_id: str = "") -> str:
    """The status an admin command leads to; RolloutConflict when the rollout's status refuses it."""
    allowed, to = COMMANDS[command]
    if status not in allowed:
        raise RolloutConflict(f"cannot {command} rollout {rollout_id!r}: it is {status}")
    return to


def after_final(rollout: RolloutView) -> tuple[str, str | None] | None:
    """After an action closed (counters already updated): (new status, reason) when the rollout
    pauses on a breached wave or is finished, None when it goes on as it is."""
    if rollout.status == "running":
        breached = planner.breached_wave(rollout)
        if breached is not None:
            return "paused", breach_reason(rollout)
    if rollout.active and planner.is_finished(rollout):
        return "finished", None
    return None


def breach_reason(rollout: RolloutView) -> str:
    """Why a rollout pauses on its breached wave (shown to the admin)."""
    wave = planner.breached_wave(rollout)
    assert wave is not None
    return (f"error threshold: wave {wave.no} has {wave.errors - wave.errors_acked} failed or rejected of "
            f"{wave.finished - wave.errors_acked} finished ({wave.capacity} in the wave, "
            f"threshold {wave.error_pct:g} %)")
