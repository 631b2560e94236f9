"""The box's side of the check-in contract (hawkBit-style polling with ETag), over httpx.

    GET  {server}/api/v1/boxes/{box}/checkin   If-None-Match: "<etag>"  -> 200 {poll_interval_s, action} | 304
    PUT  {server}/api/v1/boxes/{box}/inventory {agent_version, models, firmware, hardware}
    POST {server}/api/v1/boxes/{box}/actions/{action_id}/status {state, reason, reason_code, detail}
         200 recorded | 409 the server already closed the action (its final state in the body)

Every call carries `Authorization: Bearer <credential>`. httpx errors and status codes become
our errors here and nowhere else:

    connection error, timeout, 408, 429, 5xx   -> ServerUnavailable (retry with backoff)
    401, 403, other 4xx, 3xx                   -> ServerRefused (logged; retried slowly)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from agent.updater.journal import Action
from core.box_health import HEADER as HEALTH_HEADER
from core.errors import QuanedgeError

__all__ = ["CheckinAnswer", "CheckinClient", "Delivery", "ServerRefused", "ServerUnavailable", "UpdaterError"]


class UpdaterError(QuanedgeError):
    """The updater could not talk to the fleet server."""


class ServerUnavailable(UpdaterError):
    """Transient: unreachable, timeout, 5xx, 408/429."""


class ServerRefused(UpdaterError):
    """The server refused the call (bad credential, not this box's, malformed)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class CheckinAnswer:
    poll_interval_s: float | None
    action: Action | None
    invalid: tuple[str, str] | None = None  # (action_id, why) of an action this box cannot parse
    changed: bool = True                    # False on 304


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the server said to a status report: recorded, closed (409: its final state), gone (404)."""

    outcome: str
    state: str | None = None
    reason_code: str | None = None


class CheckinClient:
    def __init__(self, server: str, box_id: str, credential: str, *, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = f"{server.rstrip('/')}/api/v1/boxes/{box_id}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), transport=transport, follow_redirects=False,
            headers={"Authorization": f"Bearer {credential}", "User-Agent": "quanedge-agent"})
        self._etag: str | None = None
        self._last: CheckinAnswer | None = None

    async def __aenter__(self) -> CheckinClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def checkin(self, health: str | None = None) -> CheckinAnswer:
        """`health`: the box's health figures (core.box_health header value), sent along."""
        headers = {"If-None-Match": self._etag} if self._etag and self._last is not None else {}
        if health is not None:
            headers[HEALTH_HEADER] = health
        resp = await self._call("GET", "/checkin", headers=headers)
        if resp.status_code == 304 and self._last is not None:
            return CheckinAnswer(self._last.poll_interval_s, self._last.action, self._last.invalid, changed=False)
        data = self._json(resp)
        interval = data.get("poll_interval_s") if isinstance(data, dict) else None
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 1 <= interval <= 86400:
            interval = None
        raw = data.get("action") if isinstance(data, dict) else None
        action, invalid = None, None
        if raw is not None:
            try:
                action = Action.from_json(raw)
            except ValueError as exc:
                aid = raw.get("action_id") if isinstance(raw, dict) else None
                invalid = (aid if isinstance(aid, str) else "", str(exc))
        answer = CheckinAnswer(interval, action, invalid)
        self._etag, self._last = resp.headers.get("ETag"), answer
        return answer

    async def put_inventory(self, inventory: dict[str, Any]) -> None:
        self._json(await self._call("PUT", "/inventory", json=inventory))

    async def post_status(self, action_id: str, body: dict[str, Any]) -> Delivery:
        resp = await self._call("POST", f"/actions/{action_id}/status", json=body, ok=(200, 404, 409))
        if resp.status_code == 409:
            data = _loads(resp)
            return Delivery("closed", data.get("state"), data.get("reason_code"))
        if resp.status_code == 404:
            return Delivery("gone")
        return Delivery("ok", body.get("state"))

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response:
        url = self.base + path
        try:
            resp = await self._client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"{method} {url}: {type(exc).__name__}: {exc or 'no detail'}") from exc
        status = resp.status_code
        if status in ok or (status == 304 and method == "GET"):
            return resp
        if status >= 500 or status in (408, 429):
            raise ServerUnavailable(f"{method} {url}: server answered {status}")
        raise ServerRefused(f"{method} {url}: server refused with {status}: {resp.text[:300]}", status)

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServerRefused(f"{resp.request.url}: {resp.status_code} without a JSON body "
                                f"(wrong server URL?): {resp.text[:200]!r}") from exc


def _loads(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
