"""The rollout state machines without a database (fleet_server.rollout.transitions)."""

from __future__ import annotations

import pytest

from fleet_server.rollout.errors import RolloutConflict
from fleet_server.rollout.model import ActionView, StatusReport
from fleet_server.rollout.transitions import command_status, on_report

NOW = 1_700_000_000.0


def action(state: str = "assigned", deadline: float | None = NOW + 60, reason: str | None = None) -> ActionView:
    return ActionView("r-1.b1", "r-1", "b1", 0, state, reason=reason, deadline=deadline)


@pytest.mark.parametrize(("before", "report", "kind", "state"), [
    (action(), StatusReport("downloading"), "progress", "downloading"),
    (action("downloading"), StatusReport("downloading"), "repeat", "downloading"),
    (action("downloading", reason="50%"), StatusReport("downloading", reason="80%"), "progress", "downloading"),
    (action("installing"), StatusReport("success"), "close", "success"),
    (action("installing"), StatusReport("failure", reason="disk"), "close", "failure"),
    (action("assigned"), StatusReport("rejected"), "close", "rejected"),
    (action("success"), StatusReport("success"), "repeat", "success"),       # the box repeats its final report
    (action("success"), StatusReport("failure"), "refuse", "success"),       # a closed action never reopens
    (action("canceled"), StatusReport("downloading"), "refuse", "canceled"),
    (action("installing", deadline=NOW), StatusReport("success"), "expire_then_refuse", "failure"),
    (action("installing", deadline=None), StatusReport("success"), "close", "success"),
])
def test_a_report_moves_an_action_by_the_rules(before: ActionView, report: StatusReport, kind: str,
                                              state: str) -> None:
    step = on_report(before, report, NOW)
    assert (step.kind, step.state) == (kind, state)
    assert step.writes == (kind in ("progress", "close", "expire_then_refuse"))


@pytest.mark.parametrize(("status", "command", "to"), [
    ("running", "pause", "paused"), ("paused", "resume", "running"),
    ("running", "cancel", "canceled"), ("paused", "cancel", "canceled"),
])
def test_admin_commands_move_a_rollout(status: str, command: str, to: str) -> None:
    assert command_status(status, command, "r-1") == to


@pytest.mark.parametrize(("status", "command"), [
    ("paused", "pause"), ("running", "resume"), ("finished", "cancel"), ("canceled", "resume"),
    ("finished", "pause"), ("canceled", "cancel"),
])
def test_a_command_the_status_refuses_is_a_conflict(status: str, command: str) -> None:
    with pytest.raises(RolloutConflict, match=f"cannot {command} rollout 'r-1': it is {status}"):
        command_status(status, command, "r-1")
