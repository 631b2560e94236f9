"""HTTP uplink: POSTs telemetry batches to the fleet server and returns its acknowledgement.

    POST {server}/api/v1/telemetry
    Authorization: Bearer <credential>
    Content-Type: application/json
    body: `encode_batch(box_id, batch)`

Outcomes (httpx errors and status codes are translated here and nowhere else):
    2xx + {"accepted", "duplicates", "max_seq"} covering the batch -> confirmed, ack returned
    connection error, timeout, 408, 429, 5xx                       -> UplinkUnavailable (retry later)
    400, 413, 422, or a batch the encoder refuses                  -> UplinkMalformed (the batch is bad;
                                                                      the 422 body's "row"/"field" name the row)
    401, 403, any other 4xx, 3xx, a 2xx that is not an ack          -> UplinkRejected (server's reason)
A 2xx whose body is not our ack (a captive portal, a wrong server URL) is NOT taken as a
confirmation: the batch stays in the buffer.
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import urlsplit

import httpx

from agent.buffer_drops import DeliveryMarks
from agent.uplink.codec import encode_batch
from core.errors import ConfigError, UplinkMalformed, UplinkRejected, UplinkUnavailable
from core.reading import Reading

__all__ = ["HttpSettings", "HttpUplink", "IngestAck", "TELEMETRY_PATH"]

TELEMETRY_PATH = "/api/v1/telemetry"
_TRANSIENT_4XX = {408, 429}
#: The batch itself is refused (not the credential: 401/403 stay UplinkRejected and are retried slowly).
_MALFORMED = {400, 413, 422}
_REASON_MAX = 300


class IngestAck(TypedDict):
    accepted: int      # rows stored for the first time
    duplicates: int    # rows the server already had (a resend after a lost confirmation)
    max_seq: int | None


@dataclass(frozen=True)
class HttpSettings:
    server: str                                  # e.g. "https://fleet.example.org"
    credential: str = field(repr=False)          # the box's bearer token
    timeout_s: float = 10.0
    verify: bool | str = True                    # True = system CAs, False = no check, str = CA bundle path

    def __post_init__(self) -> None:
        parts = urlsplit(self.server) if isinstance(self.server, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError("fleet server URL is not usable", key="uplink.http.server", value=self.server,
                              expected="http(s)://host[:port][/base-path]")
        if not isinstance(self.credential, str) or not self.credential.strip():
            raise ConfigError("box credential is empty", key="uplink.http.credential",
                              expected="the bearer token issued at enrollment")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not 0 < self.timeout_s < math.inf:
            raise ConfigError("timeout must be positive", key="uplink.http.timeout_s", value=self.timeout_s,
                              expected="a number of seconds > 0")
        if not isinstance(self.verify, (bool, str)) or self.verify == "":
            raise ConfigError("bad TLS verify setting", key="uplink.http.verify", value=self.verify,
                              expected="true, false or the path of a CA bundle")

    @property
    def url(self) -> str:
        return self.server.rstrip("/") + TELEMETRY_PATH


class HttpUplink:
    """The `Uplink` over HTTP(S): one httpx.AsyncClient, opened on enter, closed on exit.

    `transport` is for tests (httpx.MockTransport); production leaves it None.
    """

    def __init__(self, settings: HttpSettings, box_id: str, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not isinstance(box_id, str) or not box_id:
            raise ConfigError("box id is empty", key="box.id", value=box_id, expected="a non-empty string")
        self.name = "http"
        self.window = 1  # one POST at a time: its answer is the confirmation
        self.settings = settings
        self.box_id = box_id
        self._verify = _verify_setting(settings.verify)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HttpUplink:
        if self._client is not None:
            raise RuntimeError("HttpUplink is already open")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.timeout_s),
            verify=self._verify,
            transport=self._transport,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {self.settings.credential}",
                "Content-Type": "application/json",
                "User-Agent": "quanedge-agent",
            },
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, batch: Sequence[Reading], marks: DeliveryMarks | None = None) -> IngestAck:
        """POST one batch; return the server's ack once it has stored every row."""
        if self._client is None:
            raise RuntimeError("HttpUplink.send() outside its `async with` block")
        if not batch:
            return IngestAck(accepted=0, duplicates=0, max_seq=None)
        try:
            body = encode_batch(self.box_id, batch, marks)
        except ValueError as exc:
            raise UplinkMalformed(str(exc)) from exc
        url = self.settings.url
        try:
            response = await self._client.post(url, content=body)
        except httpx.TransportError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise UplinkRejected(f"POST {url}: TLS verification of the server failed: {exc}") from exc
            raise UplinkUnavailable(f"POST {url}: {type(exc).__name__}: {exc or 'no detail'}") from exc
        return _ack(response, url, len(batch))


def _ack(response: httpx.Response, url: str, rows: int) -> IngestAck:
    status = response.status_code
    if status >= 500 or status in _TRANSIENT_4XX:
        retry = response.headers.get("Retry-After")
        hint = f" (Retry-After: {retry})" if retry else ""
        raise UplinkUnavailable(f"POST {url}: server answered {status}{hint}: {_reason(response)}")
    if 300 <= status < 400:
        raise UplinkRejected(f"POST {url}: unexpected redirect {status} to {response.headers.get('Location')!r}; "
                             "check the server URL")
    if status in _MALFORMED:
        row, field = _bad_row(response, rows)
        raise UplinkMalformed(f"POST {url}: server refused the batch as malformed ({status}): {_reason(response)}",
                              row=row, field=field)
    if not 200 <= status < 300:
        raise UplinkRejected(f"POST {url}: server refused the batch with {status}: {_reason(response)}")
    try:
        data: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UplinkRejected(f"POST {url}: {status} but the body is not a telemetry ack "
                             f"(captive portal or wrong server?): {response.text[:_REASON_MAX]!r}") from exc
    if not _is_ack(data):
        raise UplinkRejected(f"POST {url}: {status} but the body is not a telemetry ack: {str(data)[:_REASON_MAX]}")
    if data["accepted"] + data["duplicates"] != rows:
        raise UplinkRejected(f"POST {url}: server confirmed {data['accepted']} new + {data['duplicates']} duplicate "
                             f"rows of {rows} sent; batch not marked sent")
    return IngestAck(accepted=data["accepted"], duplicates=data["duplicates"], max_seq=data["max_seq"])


def _is_ack(data: Any) -> bool:
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (isinstance(data, dict) and count(data.get("accepted")) and count(data.get("duplicates"))
            and (data.get("max_seq") is None or count(data.get("max_seq"))))


def _bad_row(response: httpx.Response, rows: int) -> tuple[int | None, str | None]:
    """The fleet server's 422 names the bad row: {"error", "detail", "row": i, "field"}."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    row, field = data.get("row"), data.get("field")
    if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < rows:
        row = None
    return row, field[:64] if isinstance(field, str) else None


def _reason(response: httpx.Response) -> str:
    """The server's reason: FastAPI's {"detail": ...} when present, else the body text."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail, separators=(",", ":"))
    else:
        text = response.text.strip() or response.reason_phrase
    return text[:_REASON_MAX]


def _verify_setting(verify: bool | str) -> bool | ssl.SSLContext:
    if isinstance(verify, bool):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA bundle: {exc}", key="uplink.http.verify", value=verify,
                          expected="a readable PEM file") from exc
