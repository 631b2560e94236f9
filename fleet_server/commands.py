"""Commands to boxes, as the fleet keeps them (the wire form and its rules: core.fleet_command).

An operator sends one command to a selection of boxes (ids, or a site and/or a tag): one
`BoxCommand` per box, each with its own id, deadline and state

    pending -> sent -> done | refused | failed | expired

`sent` means handed to the box's MQTT topic or its long-poll at least once (`sends` counts the
re-sends); the result comes back in the box's audit record (fleet ingest, same transaction as
the reading). A command still open at its deadline is closed `expired` by the dispatcher; a box
result arriving later replaces that (the box ran it just in time: its outcome is the truth).

    FleetError
    └── UnknownCommand    no command with that id    -> 404
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from core.fleet_command import COMMAND_ID, FINAL, MAX_DEADLINE_S, OPEN, FleetCommand, check_args
from core.validate import check_text
from fleet_server.errors import FleetError, PayloadError

__all__ = ["STATES", "BoxCommand", "CommandQuery", "CommandRequest", "UnknownCommand"]

STATES = (*OPEN, *sorted(FINAL))
MAX_BOXES = 10_000          # boxes one request may address
DEFAULT_DEADLINE_S = 300


class UnknownCommand(FleetError):
    code = "unknown_command"

    def __init__(self, command_id: str) -> None:
        super().__init__(f"no command with id {command_id!r:.40}")


@dataclass(frozen=True, slots=True)
class BoxCommand:
    command_id: str
    box_id: str
    device: str
    command: str
    args: dict[str, Any]
    origin: str
    created_at: float
    deadline: float
    state: str = "pending"
    sent_at: float | None = None
    sends: int = 0
    finished_at: float | None = None
    message: str | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN

    def wire(self) -> FleetCommand:
        return FleetCommand(self.command_id, self.device, self.command, self.args, self.deadline, self.origin)

    def to_dict(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "box_id": self.box_id, "device": self.device,
                "command": self.command, "args": self.args, "origin": self.origin, "created_at": self.created_at,
                "deadline": self.deadline, "state": self.state, "sent_at": self.sent_at, "sends": self.sends,
                "finished_at": self.finished_at, "message": self.message}


@dataclass(frozen=True, slots=True)
class CommandQuery:
    """Commands newest first, filtered by box and state; `before` is the paging cursor (the
    `created_at`, `command_id` of the last one seen)."""

    box_id: str | None = None
    state: str | None = None
    before: tuple[float, str] | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A validated POST /api/v1/commands body. Selection: `box_ids`, or `site` and/or `tag`."""

    device: str
    command: str
    args: dict[str, Any]
    deadline_s: int
    box_ids: tuple[str, ...] = ()
    site: str | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, payload: bytes) -> CommandRequest:
        from fleet_server.store.base import check_box_id  # the store seam imports this module

        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise PayloadError("bad_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise PayloadError("bad_body", "body must be a JSON object")
        unknown = set(body) - {"device", "command", "args", "deadline_s", "box_ids", "site", "tag"}
        if unknown:
            raise PayloadError("bad_body", f"unknown field {sorted(unknown)[0][:40]!r}", field=sorted(unknown)[0][:40])
        field = ""
        try:
            field = "device"
            device = check_text(body.get("device"), "device", max_len=64, allow_empty=False)
            field = "command"
            command = check_text(body.get("command"), "command", max_len=64, allow_empty=False)
            field = "args"
            args = check_args(body.get("args", {}))
            field = "deadline_s"
            deadline_s = body.get("deadline_s", DEFAULT_DEADLINE_S)
            if isinstance(deadline_s, bool) or not isinstance(deadline_s, int) or not 1 <= deadline_s <= MAX_DEADLINE_S:
                raise ValueError(f"deadline_s must be an integer 1..{MAX_DEADLINE_S}, got {deadline_s!r:.40}")
            field = "box_ids"
            ids = body.get("box_ids", [])
            if not isinstance(ids, list) or len(ids) > MAX_BOXES:
                raise ValueError(f"box_ids must be a list of at most {MAX_BOXES} box ids")
            box_ids = tuple(dict.fromkeys(check_box_id(b) for b in ids))
            field = "site"
            site = body.get("site")
            if site is not None:
                site = check_text(site, "site", max_len=64, allow_empty=False)
            field = "tag"
            tag = body.get("tag")
            if tag is not None:
                tag = check_text(tag, "tag", max_len=64, allow_empty=False)
        except ValueError as exc:
            raise PayloadError("bad_body", str(exc), field=field) from None
        if not box_ids and site is None and tag is None:
            raise PayloadError("bad_body", "say which boxes: box_ids, or site and/or tag", field="box_ids")
        if box_ids and (site is not None or tag is not None):
            raise PayloadError("bad_body", "give box_ids, or site and/or tag, not both", field="box_ids")
        return cls(device, command, args, deadline_s, box_ids, site, tag)


def check_command_id(command_id: str) -> str:
    if not COMMAND_ID.match(command_id):
        raise PayloadError("bad_path", f"command id must look like c-<16 hex digits>, got {command_id!r:.40}",
                           field="command_id")
    return command_id
