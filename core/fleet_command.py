"""A command from the fleet to one box: its wire form and its rules, written once for both sides.

    fleet API (operator) -> store (one row per box, state "pending") -> MQTT {prefix}/{box}/commands/run
    (QoS 1, the dispatcher re-sends until a result) or the box's long-poll GET .../commands (HTTP boxes)
    -> the agent: deadline check, at-most-once ledger, CommandRouter (allow-list, driver, audit)
    -> the audit EVENT reading (point "_command", text JSON with "id") through the box's buffer
    -> fleet ingest: the command's row takes the box's result, in the same transaction as the reading

States: pending (stored, not yet sent) -> sent -> done | refused | failed | expired. A command
runs at most once: the box records its id durably before running it and never runs an id twice.
The box's own outcome is the truth: a result that arrives after the server marked the command
expired replaces "expired" (the box ran it just before its deadline); "expired" never replaces a
result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.validate import check_float, check_int, check_text, json_object

__all__ = ["AUDIT_POINT", "COMMAND_ID", "FINAL", "OPEN", "RESULTS", "FleetCommand", "check_args", "new_command_id",
           "parse_arg", "result_of_audit", "tag_origin"]

#: The point of every command's audit record (the box writes it, the fleet reads fleet results from it).
AUDIT_POINT = "_command"
COMMAND_ID = re.compile(r"^c-[0-9a-f]{16}$")
OPEN = ("pending", "sent")
RESULTS = ("done", "refused", "failed", "expired")   # what the box reports (the audit record's result)
FINAL = frozenset(RESULTS)
MAX_ARGS = 16
MAX_DEPTH = 3
MAX_DEADLINE_S = 7 * 86400
_ORIGIN_RE = re.compile(r"[^A-Za-z0-9@._:/-]")


def new_command_id() -> str:
    import secrets

    return "c-" + secrets.token_hex(8)


def tag_origin(source: str, who: str, default: str) -> str:
    """`source:who` as audited: characters of `who` outside [A-Za-z0-9@._:/-] become "_", at most 64
    of them; `default` when nothing is left."""
    return f"{source}:" + (_ORIGIN_RE.sub("_", who)[:64] or default)


def parse_arg(text: str) -> tuple[str, Any]:
    """``name=value`` (a CLI's --arg); the value is JSON when it parses as JSON (1, 2.5, true,
    [1, 2]), else a string. ValueError when it is not name=value."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--arg must look like name=value, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def check_args(args: Any, field: str = "args") -> dict[str, Any]:
    """A command's arguments: an object of at most MAX_ARGS plain JSON values, bounded in depth
    and length, clean text; ValueError naming the field otherwise."""
    if not isinstance(args, dict):
        raise ValueError(f"{field} must be an object")
    if len(args) > MAX_ARGS:
        raise ValueError(f"{field} holds at most {MAX_ARGS} entries, got {len(args)}")
    for name, value in args.items():
        check_text(name, f"{field} key", max_len=64, allow_empty=False)
        _check_value(value, f"{field}.{name}", 1)
    return args


def _check_value(value: Any, field: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        check_text(value, field, max_len=1024)
    elif isinstance(value, int):
        check_int(value, field, lo=-(2**53), hi=2**53)
    elif isinstance(value, float):
        check_float(value, field)
    elif isinstance(value, (list, dict)):
        if depth >= MAX_DEPTH or len(value) > 64:
            raise ValueError(f"{field} is nested too deep or too long (at most {MAX_DEPTH} levels, 64 items)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(k, str):
                check_text(k, f"{field} key", max_len=64)
            _check_value(v, f"{field}[{k!r}]" if isinstance(value, list) else f"{field}.{k}", depth + 1)
    else:
        raise ValueError(f"{field} has an unsupported type {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class FleetCommand:
    """What the box receives: run `command` with `args` on `device` before `deadline` (unix s)."""

    command_id: str
    device: str
    command: str
    args: Mapping[str, Any]
    deadline: float
    origin: str           # "fleet:<user>", audited on the box

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.command_id, "device": self.device, "command": self.command, "args": dict(self.args),
                "deadline": self.deadline, "origin": self.origin}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, payload: bytes | bytearray) -> FleetCommand:
        """From the wire; ValueError naming the field."""
        body = json_object(payload, "command message", max_bytes=16 * 1024,
                              fields=("id", "device", "command", "args", "deadline", "origin"))
        missing = {"id", "device", "command", "deadline"} - set(body)
        if missing:
            raise ValueError(f"{sorted(missing)[0]} is required")
        command_id = body["id"]
        if not isinstance(command_id, str) or not COMMAND_ID.match(command_id):
            raise ValueError(f"id must look like c-<16 hex digits>, got {command_id!r:.40}")
        deadline = body["deadline"]
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline < 1e11:
            raise ValueError(f"deadline must be a unix time in seconds, got {deadline!r:.40}")
        return cls(command_id,
                   check_text(body["device"], "device", max_len=64, allow_empty=False),
                   check_text(body["command"], "command", max_len=64, allow_empty=False),
                   check_args(body.get("args", {})), float(deadline),
                   check_text(body.get("origin", "fleet"), "origin", max_len=80))


def result_of_audit(text: str | None) -> tuple[str, str, str] | None:
    """(command id, result, message) from a box's `_command` audit record text, when the command
    came from the fleet (its record carries "id"); None otherwise or when the text is not one."""
    if not text or '"id":"c-' not in text:
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    command_id, result, message = record.get("id"), record.get("result"), record.get("message", "")
    if (not isinstance(command_id, str) or not COMMAND_ID.match(command_id) or result not in FINAL
            or not isinstance(message, str)):
        return None
    return command_id, result, message[:500]
