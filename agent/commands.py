"""The one path for commands to devices: allow-list, driver guard, write, and an audit record for every attempt.

    caller (CLI via the control endpoint, fleet, traffic_control) --> CommandRouter.execute
        1. the device exists and its config lists the command in `allow_commands`   else refused
        2. driver.write(command, args): the driver's own guard (allowed patterns, doors, plans)
           raises CommandRefused before anything reaches the device                 -> refused
        3. the write itself: done, or failed (timeout, device exception, link)      -> done / failed
        every attempt -> one EVENT Reading (device, point "_command", value 1 done / 0 refused /
        -1 failed, text = compact JSON {command, args, origin, result, message, ms}) -> pipeline
        (an attempt on a device this box does not have is recorded under device "_box", with the
        requested name in the JSON, so no caller-chosen string becomes a device name)

Refusals raise `CommandRefused` (after the audit record is queued); attempts that reached the
device return a `CommandResult` whose `status` is "done" or "failed". Writes go through the
devices' `ManagedDriver`s, which hold the line's lock: a command on an RS-485 bus waits for the
poll in progress and never interleaves with one.

Local entry point: the running agent serves POST /commands on its health port (loopback only,
agent.health) through `ControlEndpoint`, which also wants the control token the agent writes to
`<data_dir>/control.token` (mode 0600) at start: a local process that cannot read the box's data
directory cannot open a gate. `send_local_command` is the client side (`quanedge agent command`).
The request body is checked with core.validate's rules (`parse_command_request`: clean text,
length caps, numbers in range, bounded nesting) and refused with 400 naming the field, so nothing
unstorable reaches the device or the audit record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import CommandRefused, DeviceTimeout, DriverError
from core.fleet_command import AUDIT_POINT, check_args, parse_arg, tag_origin
from core.reading import Reading, RecordClass
from core.validate import check_text

__all__ = ["CommandResult", "CommandRouter", "ControlEndpoint", "write_control_token", "parse_arg",
           "parse_command_request", "send_local_command", "AUDIT_POINT"]

log = logging.getLogger(__name__)

BOX_DEVICE = "_box"
_VALUE = {"done": 1.0, "refused": 0.0, "failed": -1.0, "expired": -2.0}
Emit = Callable[[list[Reading]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CommandResult:
    device: str
    command: str
    args: Mapping[str, Any]
    origin: str
    status: str          # "done" | "refused" | "failed" | "expired" (a fleet command past its deadline)
    message: str
    ts: float
    took_ms: float
    command_id: str | None = None   # a fleet command's id (core.fleet_command), in its audit record

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "args": dict(self.args)}


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _plain(args: Any) -> dict[str, Any]:
    """The arguments as they will be audited: plain JSON, or their repr when they are not."""
    try:
        return json.loads(_compact(dict(args)))
    except (TypeError, ValueError):
        return {"unprintable": repr(args)[:200]}


class CommandRouter:
    def __init__(self, drivers: Mapping[str, Any], allow: Mapping[str, Sequence[str]], emit: Emit, *,
                 timeout_s: float = 15.0, config_file: str = "the box config",
                 clock: Callable[[], float] = time.time) -> None:
        self._drivers = drivers
        self._allow = {k: tuple(v) for k, v in allow.items()}
        self._emit = emit
        self.timeout_s = timeout_s
        self._file = config_file
        self._clock = clock

    def _check(self, device: str, command: str, args: Any) -> str | None:
        """Why this request is refused before the driver sees it, or None."""
        if device not in self._drivers:
            return f"no device {device!r} on this box; devices: {', '.join(sorted(self._drivers)) or 'none'}"
        allowed = self._allow.get(device, ())
        if command not in allowed:
            return (f"command {command!r} is not allowed for device {device!r} (allow_commands = "
                    f"{list(allowed)}); add it to that [[device]]'s allow_commands in {self._file} to permit it")
        if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
            return f"arguments must be a mapping of names to values, got {args!r:.100}"
        try:
            _compact(args)
        except (TypeError, ValueError):
            return "arguments must be plain JSON values (numbers, strings, booleans, lists)"
        return None

    async def execute(self, device: str, command: str, args: Mapping[str, Any], origin: str, *,
                      emit: Emit | None = None, command_id: str | None = None) -> CommandResult:
        """Run one command; its audit record goes to `emit` (default: the router's). A fleet
        command passes its `command_id`: the audit record carries it back to the fleet."""
        started = time.monotonic()
        status, message = "refused", self._check(device, command, args)
        if message is None:
            try:
                await asyncio.wait_for(self._drivers[device].write(command, dict(args)), self.timeout_s)
                status, message = "done", "ok"
            except CommandRefused as exc:
                message = str(exc)
            except asyncio.TimeoutError:
                late = DeviceTimeout(f"{device}: {command} not finished within {self.timeout_s}s")
                status, message = "failed", str(late)
            except DriverError as exc:
                status, message = "failed", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a driver bug: audit it as a failure, keep the agent running
                log.exception("command %s on %s raised an unexpected error", command, device)
                status, message = "failed", f"unexpected {type(exc).__name__}: {exc}"
        result = CommandResult(device, command, _plain(args), origin, status, message, self._clock(),
                               round((time.monotonic() - started) * 1000, 1), command_id)
        await self._audit(result, emit or self._emit)
        level = logging.INFO if status == "done" else logging.WARNING
        log.log(level, "command %s %s on %s from %s: %s", command, status, device, origin, message)
        if status == "refused":
            refused = CommandRefused(message)
            refused.result = result  # type: ignore[attr-defined]
            raise refused
        return result

    async def expired(self, device: str, command: str, args: Mapping[str, Any], origin: str, command_id: str,
                      deadline: float) -> CommandResult:
        """Audit a fleet command that arrived after its deadline: it is not run."""
        now = self._clock()
        result = CommandResult(device, command, _plain(args), origin, "expired",
                               f"arrived {now - deadline:.1f} s after its deadline; not run", now, 0.0, command_id)
        await self._audit(result, self._emit)
        log.warning("command %s on %s from %s expired before it arrived", command, device, origin)
        return result

    async def _audit(self, r: CommandResult, emit: Emit) -> None:
        record: dict[str, Any] = {"command": r.command[:64], "args": r.args, "origin": r.origin, "result": r.status,
                                  "message": r.message[:500], "ms": r.took_ms}
        if r.command_id is not None:
            record["id"] = r.command_id
        device = r.device
        if device not in self._drivers:
            device, record["device"] = BOX_DEVICE, r.device[:64]
        text = _compact(record)
        if len(text) > 4000:
            text = _compact(record | {"args": "(too long to keep)"})
        await emit([Reading(device, AUDIT_POINT, _VALUE[r.status], "", r.ts, cls=RecordClass.EVENT, text=text)])

    def sender(self, origin: str, *, emit: Emit | None = None) -> Callable[[str, str, Mapping[str, Any]],
                                                                           Awaitable[None]]:
        """`send_command(device, command, args)` for in-process callers (agent.traffic_control):
        raises CommandRefused when refused and the DriverError when the device failed."""
        async def send(device: str, command: str, args: Mapping[str, Any]) -> None:
            result = await self.execute(device, command, args, origin, emit=emit)
            if result.status == "failed":
                raise DriverError(result.message)
        return send


# --- the local control endpoint (server side) ----------------------------------------------------
def write_control_token(path: Path) -> str:
    """A fresh random token, readable by the agent's user only (rename makes it atomic)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


class ControlEndpoint:
    """POST /commands: {"device", "command", "args", "origin"} -> 200 done, 502 failed, 403 refused."""

    def __init__(self, router: CommandRouter, token: str) -> None:
        self.router = router
        self._token = token

    async def __call__(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        given = headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            return 401, _reply("unauthorized", "missing or wrong control token (read it from <data_dir>/control.token)")
        try:
            device, command, args, who = parse_command_request(body)
        except ValueError as exc:
            return 400, _reply("bad_request", f"expected JSON {{device, command, args, origin}}: {exc}"[:300])
        origin = tag_origin("local", who, "cli")
        try:
            result = await self.router.execute(device, command, args, origin)
        except CommandRefused as exc:
            return 403, _reply("refused", str(exc))
        return (200 if result.status == "done" else 502), json.dumps(result.to_json()).encode()


def parse_command_request(body: bytes) -> tuple[str, str, dict[str, Any], str]:
    """(device, command, args, origin) from a POST /commands body; ValueError naming the field."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"body is not JSON ({type(exc).__name__})") from None
    if not isinstance(req, dict):
        raise ValueError("body must be a JSON object")
    for key in ("device", "command"):
        if key not in req:
            raise ValueError(f"{key} is required")
    unknown = set(req) - {"device", "command", "args", "origin"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0][:32]!r}")
    device = check_text(req["device"], "device", max_len=64, allow_empty=False)
    command = check_text(req["command"], "command", max_len=64, allow_empty=False)
    origin = check_text(req.get("origin", "cli"), "origin", max_len=64)
    return device, command, check_args(req.get("args", {})), origin


def _reply(status: str, message: str) -> bytes:
    return json.dumps({"status": status, "message": message}).encode()


# --- the local control endpoint (client side) ----------------------------------------------------
def send_local_command(cfg: Any, device: str, command: str, args: Mapping[str, Any], *, origin: str,
                       timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Ask the running agent (its health port, on loopback) to execute a command. Returns (HTTP status, body).

    Raises ValueError with a clear message when the agent cannot be reached."""
    import httpx

    if not cfg.health.enabled:
        raise ValueError(f"{cfg.path}: [health] is disabled; the agent takes local commands on its health port")
    if cfg.health.port == 0:
        raise ValueError(f"{cfg.path}: [health] listen has port 0 (any free port); set a fixed port to send commands")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.health.host, cfg.health.host)
    try:
        token = cfg.control_token_path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the agent's control token at {cfg.control_token_path} ({exc.strerror}): "
                         "is the agent running with this config, and may this user read its data_dir?") from None
    url = f"http://{'[' + host + ']' if ':' in host else host}:{cfg.health.port}/commands"
    try:
        r = httpx.post(url, json={"device": device, "command": command, "args": dict(args), "origin": origin},
                       headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the agent at {url}: {exc!r}; is it running?") from None
    try:
        body = r.json()
    except ValueError:
        body = {"status": "error", "message": r.text[:300]}
    return r.status_code, body
