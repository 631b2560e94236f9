"""Enrollment: trade a one-time enrollment token for this box's credential, and keep it safely.

The credential file (`<data_dir>/credential.json`, mode 0600) is written atomically
(temp file, fsync, rename), so a power cut during enrollment leaves either no file or a whole one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent import __version__
from agent.config import AgentConfig
from agent.errors import ConfigError, EnrollmentError


@dataclass(frozen=True, slots=True)
class Credential:
    box_id: str
    credential: str
    server: str


def enroll(cfg: AgentConfig, server: str, token: str, *, timeout_s: float = 15.0) -> Credential:
    body = {
        "token": token,
        "box_id": cfg.box.id,
        "hardware": cfg.box.hardware,
        "site": cfg.box.site,
        "agent_version": __version__,
        "tags": list(cfg.box.tags),
    }
    url = server.rstrip("/") + "/api/v1/enroll"
    try:
        resp = httpx.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EnrollmentError(f"cannot reach fleet server at {url}: {exc}") from exc
    if resp.status_code != 200:
        raise EnrollmentError(f"fleet server refused enrollment ({resp.status_code}): {_reason(resp)}")
    try:
        data = resp.json()
        cred = Credential(box_id=str(data["box_id"]), credential=str(data["credential"]), server=server.rstrip("/"))
    except (ValueError, KeyError, TypeError) as exc:
        raise EnrollmentError(f"fleet server answered enrollment with an unexpected body: {resp.text[:200]}") from exc
    if cred.box_id != cfg.box.id:
        raise EnrollmentError(f"fleet server enrolled box {cred.box_id!r}, but this box is {cfg.box.id!r}")
    save_credential(cfg.credential_path, cred)
    return cred


def save_credential(path: Path, cred: Credential) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps({"box_id": cred.box_id, "credential": cred.credential, "server": cred.server}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_credential(path: Path) -> Credential | None:
    """The stored credential, or None when the box has not enrolled yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"credential file is unreadable ({exc}); enroll again", file=str(path)) from exc
    try:
        return Credential(box_id=data["box_id"], credential=data["credential"], server=data["server"])
    except (KeyError, TypeError) as exc:
        raise ConfigError("credential file lacks box_id/credential/server; enroll again", file=str(path)) from exc


def _reason(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
        return detail if isinstance(detail, str) else json.dumps(detail)[:300]
    except ValueError:
        return resp.text[:300]
