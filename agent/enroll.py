"""Enrollment: trade an enrollment token for this box's identity, and keep it safely.

The fleet server answers either with the box's identity (HTTP credential, and its own MQTT account
when the fleet runs a broker with per-box accounts), or "pending": the box id is already enrolled
and an admin has to admit this box (`quanedge fleet box admit`). Re-enrolling a box that holds its
current credential re-keys it without an admin (the credential is sent along). A pending request
is kept in `<data_dir>/enroll-request.json`; the next `agent enroll` (or `wait_s`) polls it.

Both files are mode 0600 and written atomically (temp file, fsync, rename), so a power cut during
enrollment leaves either no file or a whole one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent import __version__
from agent.config import AgentConfig
from core.errors import ConfigError, EnrollmentError

__all__ = ["Credential", "EnrollmentPending", "enroll", "load_credential", "save_credential"]


@dataclass(frozen=True, slots=True)
class Credential:
    box_id: str
    credential: str = field(repr=False)
    server: str
    # The box's own broker account, when the fleet server issued one (None: HTTP-only fleet).
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_client_id: str | None = None
    mqtt_host: str | None = None
    mqtt_port: int | None = None


class EnrollmentPending(EnrollmentError):
    """The fleet server holds this box's request until an admin admits it."""


def enroll(cfg: AgentConfig, server: str, token: str | None, *, timeout_s: float = 15.0,
           wait_s: float = 0.0, poll_s: float = 2.0) -> Credential:
    """Enroll (or re-key, or collect an admitted request); raise EnrollmentPending while pending."""
    server = server.rstrip("/")
    request_path = cfg.box.data_dir / "enroll-request.json"
    pending = _load_json(request_path)
    if pending is not None and pending.get("server") == server and pending.get("box_id") == cfg.box.id:
        data = _poll(server, str(pending["request"]), request_path, timeout_s, wait_s, poll_s)
    else:
        current = load_credential(cfg.credential_path)
        body: dict[str, Any] = {
            "token": token, "box_id": cfg.box.id, "hardware": cfg.box.hardware, "site": cfg.box.site,
            "agent_version": __version__, "tags": list(cfg.box.tags),
        }
        if current is not None and current.box_id == cfg.box.id and current.server == server:
            body["credential"] = current.credential  # re-key: proves this is the box itself
        resp = _post(server + "/api/v1/enroll", body, timeout_s)
        data = resp.json()
        if resp.status_code == 202:
            _write_private(request_path, {"server": server, "box_id": cfg.box.id, "request": data["request"]})
            data = _poll(server, data["request"], request_path, timeout_s, wait_s, poll_s)
    cred = _credential(data, server)
    if cred.box_id != cfg.box.id:
        raise EnrollmentError(f"fleet server enrolled box {cred.box_id!r}, but this box is {cfg.box.id!r}")
    save_credential(cfg.credential_path, cred)
    request_path.unlink(missing_ok=True)
    return cred


def _poll(server: str, request: str, path: Path, timeout_s: float, wait_s: float, poll_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            resp = _post(server + "/api/v1/enroll/status", {"request": request}, timeout_s)
        except EnrollmentError:
            path.unlink(missing_ok=True)  # rejected or unknown: the next attempt starts afresh
            raise
        if resp.status_code == 200:
            return resp.json()
        if time.monotonic() >= deadline:
            raise EnrollmentPending(
                "this box id is already enrolled: the request waits for an admin "
                "(`quanedge fleet box pending` / `box admit`); run `agent enroll` again to collect it")
        time.sleep(poll_s)


def _post(url: str, body: dict[str, Any], timeout_s: float) -> httpx.Response:
    try:
        resp = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"cannot reach fleet server at {url}: {exc}") from exc
    if resp.status_code not in (200, 202):
        raise EnrollmentError(f"fleet server refused enrollment ({resp.status_code}): {_reason(resp)}")
    try:
        resp.json()
    except ValueError as exc:
        raise EnrollmentError(f"fleet server answered enrollment with an unexpected body: {resp.text[:200]}") from exc
    return resp


def _credential(data: Any, server: str) -> Credential:
    try:
        mqtt = data.get("mqtt") or {}
        port = mqtt.get("port")
        return Credential(
            box_id=str(data["box_id"]), credential=str(data["credential"]), server=server,
            mqtt_username=_opt(mqtt.get("username")), mqtt_password=_opt(mqtt.get("password")),
            mqtt_client_id=_opt(mqtt.get("client_id")), mqtt_host=_opt(mqtt.get("host")),
            mqtt_port=int(port) if port is not None else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnrollmentError(f"fleet server answered enrollment with an unexpected body: {str(data)[:200]}") from exc


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def save_credential(path: Path, cred: Credential) -> None:
    body: dict[str, Any] = {"box_id": cred.box_id, "credential": cred.credential, "server": cred.server}
    if cred.mqtt_username is not None:
        body["mqtt"] = {"username": cred.mqtt_username, "password": cred.mqtt_password,
                        "client_id": cred.mqtt_client_id, "host": cred.mqtt_host, "port": cred.mqtt_port}
    _write_private(path, body)


def _write_private(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(body).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged pending-request file: start afresh
    return data if isinstance(data, dict) and "request" in data else None


def load_credential(path: Path) -> Credential | None:
    """The stored credential, or None when the box has not enrolled yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"credential file is unreadable ({exc}); enroll again", file=str(path)) from exc
    try:
        mqtt = data.get("mqtt") or {}
        return Credential(box_id=data["box_id"], credential=data["credential"], server=data["server"],
                          mqtt_username=mqtt.get("username"), mqtt_password=mqtt.get("password"),
                          mqtt_client_id=mqtt.get("client_id"), mqtt_host=mqtt.get("host"),
                          mqtt_port=mqtt.get("port"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError("credential file lacks box_id/credential/server; enroll again", file=str(path)) from exc


def _reason(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
        return detail if isinstance(detail, str) else json.dumps(detail)[:300]
    except ValueError:
        return resp.text[:300]
