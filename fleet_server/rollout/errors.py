"""Errors of the rollout engine, all `FleetError`s (mapped to HTTP in `fleet_server.app`).

    FleetError
    ├── UnknownRollout        no rollout with that id                          -> 404
    ├── UnknownAction         no such action for this box                      -> 404
    ├── RolloutConflict       command not allowed in the rollout's status      -> 409
    ├── ActionClosed          report for an action closed by timeout/cancel    -> 409 (+ state, reason_code)
    └── RepositoryUnavailable no update repository configured / readable       -> 503
A rollout request naming an unknown target or matching no box is a `PayloadError` (422).
"""

from __future__ import annotations

from fleet_server.errors import FleetError

__all__ = ["ActionClosed", "RepositoryUnavailable", "RolloutConflict", "UnknownAction", "UnknownRollout"]


class UnknownRollout(FleetError):
    code = "unknown_rollout"

    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout with id {rollout_id!r}")


class UnknownAction(FleetError):
    code = "unknown_action"

    def __init__(self, box_id: str, action_id: str) -> None:
        super().__init__(f"box {box_id!r} has no action {action_id!r}")


class RolloutConflict(FleetError):
    code = "rollout_conflict"


class ActionClosed(FleetError):
    """The action is already final (closed by the server: timeout or cancel, or by an earlier
    different final report). `state` / `reason_code` tell the box why, so it can stop."""

    code = "action_closed"

    def __init__(self, action_id: str, state: str, reason_code: str | None) -> None:
        self.state = state
        self.reason_code = reason_code
        super().__init__(f"action {action_id!r} is already closed as {state}"
                         + (f" ({reason_code})" if reason_code else ""))

    def extra(self) -> dict[str, object]:
        return {"state": self.state, "reason_code": self.reason_code}


class RepositoryUnavailable(FleetError):
    code = "repository_unavailable"
