"""MQTT uplink: publishes telemetry batches at QoS 1; a batch counts as sent only when the fleet
server has STORED it (end-to-end acknowledgement), not when the broker took it.

Topics (``prefix`` = `MqttSettings.topic_prefix`):
    {prefix}/{box_id}/telemetry   the `encode_batch` body, QoS 1, not retained
    {prefix}/{box_id}/status      {"state": "online"|"offline", "ts": unix_s}, QoS 1, retained;
                                  "offline" is also the last will, so an abrupt death shows up
    {prefix}/{box_id}/ack         subscribed: the fleet server's answer per stored batch (`agent.uplink.acks`)
    {prefix}/{box_id}/commands/#  subscribed when `on_command` is given: commands from the fleet
                                  (agent.fleet_commands), handed over as raw payloads

Why not the PUBACK: a broker acknowledges what it holds in memory. It drops queued messages past
its per-client queue limit and loses what it had not yet saved when it dies, and the box would
already have deleted the rows. With `ack = "fleet"` (the default) `send` returns only once the
fleet server's ack for exactly that batch arrives; a batch left unacknowledged past
`ack_timeout_s` fails the send (UplinkUnavailable) and the drain re-sends it; the server's dedup
on (box, seq) absorbs the repeats. `ack = "broker"` (PUBACK only) is for a broker read by
something other than a Quanedge fleet server; it loses data whenever the broker does.
Several sends may wait for their acks at once (`window`): publishes go out in order under the lock,
the waits overlap, so one batch's round trip through the server hides behind the next one's.

Design (the drain loop owns retry and backoff; this module owns one connection at a time):
- One aiomqtt.Client per connection, never re-entered: aiomqtt keeps its CONNACK future done after
  an unexpected disconnect, so re-entering a used client could report "connected" before CONNACK.
  A fresh client also drops paho's queue of unacknowledged messages, so nothing is silently
  re-sent behind the drain loop's back (the buffer is the durable store; clean_session=True).
- aiomqtt does not wake a pending publish when the connection drops; it waits for its timeout.
  A watcher task per connection (iterating `client.messages`, which ends on disconnect) lets
  `send` race the PUBACK against the connection's end, so a dead broker fails a send at once.
- `send` makes at most ONE connection attempt when not connected, then raises UplinkUnavailable.
  A publish that times out or loses its connection discards the connection; the next send
  reconnects. aiomqtt errors are translated to our tree in `_translate`, nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from agent.buffer_drops import DeliveryMarks
from agent.uplink.acks import AckWaiters
from agent.uplink.codec import encode_batch
from core.errors import (
    ConfigError,
    UplinkError,
    UplinkMalformed,
    UplinkRejected,
    UplinkUnacknowledged,
    UplinkUnavailable,
)
from core.reading import Reading

__all__ = ["MqttSettings", "MqttUplink"]

log = logging.getLogger(__name__)

# CONNACK reason codes (paho maps MQTT 3.1.1 codes 1..5 onto these v5 values) that retrying cannot
# fix: unsupported protocol, bad client id, bad username/password, not authorised, banned, bad
# auth method. Anything else (server unavailable, busy, quota) is transient.
_REFUSED_FOR_GOOD = {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}
_TOPIC_FORBIDDEN = ("+", "#", "\x00")


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None      # PEM bundle to verify the broker; None = system CAs
    cert_file: str | None = None    # client certificate (mutual TLS), needs key_file
    key_file: str | None = None
    insecure: bool = False          # TLS without hostname check (chain is still verified)
    keepalive_s: int = 30
    topic_prefix: str = "quanedge"
    client_id: str | None = None    # None = "quanedge-agent-{box_id}" (the id a box's broker account is bound to)
    publish_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    ack: str = "fleet"              # "fleet": a batch is sent once the fleet server stored it; "broker": on PUBACK
    ack_timeout_s: float = 30.0     # a batch unacknowledged this long is re-sent
    window: int = 4                 # batches awaiting the fleet server's ack at once

    def __post_init__(self) -> None:
        def bad(key: str, message: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(message, key=f"uplink.mqtt.{key}", value=value, expected=expected)

        if not isinstance(self.host, str) or not self.host.strip():
            raise bad("host", "broker host is empty", self.host, "a host name or IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise bad("port", "port out of range", self.port, "an integer 1..65535")
        if self.password is not None and self.username is None:
            raise bad("password", "a password needs a username", "***", "username set as well")
        if not self.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is not None:
                    raise bad(key, "TLS file given but tls = false", getattr(self, key), "tls = true")
            if self.insecure:
                raise bad("insecure", "insecure only applies to TLS", True, "tls = true, or insecure = false")
        if (self.cert_file is None) != (self.key_file is None):
            key = "key_file" if self.key_file is None else "cert_file"
            raise bad(key, "a client certificate needs both cert_file and key_file", None, "both set, or neither")
        keepalive = self.keepalive_s
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 1 <= keepalive <= 65535:
            raise bad("keepalive_s", "keepalive out of range", self.keepalive_s, "an integer 1..65535 seconds")
        prefix = self.topic_prefix
        if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or prefix.endswith("/") \
                or any(ch in prefix for ch in _TOPIC_FORBIDDEN):
            raise bad("topic_prefix", "invalid topic prefix", prefix,
                      "non-empty, no leading/trailing '/', no '+' or '#'")
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise bad("client_id", "client_id is empty", self.client_id, "a non-empty string, or unset")
        if self.ack not in ("fleet", "broker"):
            raise bad("ack", "unknown acknowledgement mode", self.ack, "'fleet' or 'broker'")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= 64:
            raise bad("window", "window out of range", self.window, "an integer 1..64")
        for key in ("publish_timeout_s", "connect_timeout_s", "ack_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise bad(key, "timeout must be positive", value, "a number of seconds > 0")


@dataclass
class _Connection:
    """One connected aiomqtt client and the task that notices when its connection ends."""

    client: aiomqtt.Client
    watcher: asyncio.Task[str]

    @property
    def lost(self) -> bool:
        return self.watcher.done()

    def reason(self) -> str:
        if self.watcher.done() and not self.watcher.cancelled():
            return self.watcher.result()
        return "connection closed"


class MqttUplink:
    """The `Uplink` over MQTT. Use as ``async with MqttUplink(settings, box_id) as up: await up.send(b)``.

    Entering connects (one attempt): UplinkUnavailable when the broker cannot be reached,
    UplinkRejected when retrying cannot help (bad credential, TLS verification); the drain backs
    off and makes a new uplink. Once in, a send that finds the connection gone makes ONE reconnect
    attempt before raising. Cancelling a connect waits for the connect thread to finish (bounded by
    connect_timeout_s) and closes what it opened.
    """

    def __init__(self, settings: MqttSettings, box_id: str,
                 on_command: Callable[[bytes], None] | None = None) -> None:
        if not isinstance(box_id, str) or not box_id or "/" in box_id or any(c in box_id for c in _TOPIC_FORBIDDEN):
            raise ConfigError("box id cannot be used in an MQTT topic", key="box.id", value=box_id,
                              expected="non-empty, without '/', '+', '#'")
        self.name = "mqtt"
        self.settings = settings
        self.box_id = box_id
        self.telemetry_topic = f"{settings.topic_prefix}/{box_id}/telemetry"
        self.status_topic = f"{settings.topic_prefix}/{box_id}/status"
        self.ack_topic = f"{settings.topic_prefix}/{box_id}/ack"
        self.commands_filter = f"{settings.topic_prefix}/{box_id}/commands/#"
        self.on_command = on_command
        self.end_to_end = settings.ack == "fleet"
        self.window = settings.window if self.end_to_end else 1
        self._acks = AckWaiters(self.ack_topic)
        self._client_id = settings.client_id or f"quanedge-agent-{box_id}"
        self._tls = _tls_context(settings) if settings.tls else None
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._entered = False
        self._closed = False
        self._available: bool | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

    async def __aenter__(self) -> MqttUplink:
        if self._entered:
            raise RuntimeError("an MqttUplink is entered once; make a new one")
        self._entered = True
        try:
            async with self._lock:
                await self._connect()
        except BaseException:
            self._closed = True  # __aexit__ will not run; this uplink is spent
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close(conn, goodbye=True)

    async def send(self, batch: Sequence[Reading], marks: DeliveryMarks | None = None) -> None:
        """Publish one batch at QoS 1; return once the fleet server acknowledged storing it (after
        the PUBACK with ack = "broker"). Raises UplinkUnavailable (also when no ack came within
        ack_timeout_s: send it again), UplinkRejected, or UplinkMalformed (the server refused it)."""
        if not self._entered or self._closed:
            raise RuntimeError("MqttUplink.send() outside its `async with` block")
        if not batch:
            return
        try:
            payload = encode_batch(self.box_id, batch, marks)
        except ValueError as exc:
            raise UplinkMalformed(str(exc)) from exc
        if not self.end_to_end:
            await self._publish_batch(payload)
            return
        seqs: list[int] = [r.seq for r in batch]  # type: ignore[misc]
        first, last = seqs[0], seqs[-1]
        waiter = self._acks.expect(seqs)
        try:
            conn = await self._publish_batch(payload)
            await self._await_ack(conn, waiter, first, last)
        finally:
            self._acks.discard(waiter)

    async def _await_ack(self, conn: _Connection, waiter: asyncio.Future[None], first: int, last: int) -> None:
        timeout = self.settings.ack_timeout_s
        done, _ = await asyncio.wait((waiter, conn.watcher), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            waiter.result()  # raises UplinkMalformed / UplinkRejected for a refusal
            return
        if conn.watcher in done:
            raise UplinkUnavailable(f"MQTT connection lost before the fleet server acknowledged seq {first}..{last}: "
                                    f"{conn.reason()}")
        raise UplinkUnacknowledged(f"the broker took seq {first}..{last} but the fleet server did not acknowledge "
                                f"storing it within {timeout:g} s; it stays buffered and is sent again")

    async def _publish_batch(self, payload: bytes) -> _Connection:
        async with self._lock:
            conn = self._conn
            if conn is None or conn.lost:
                if conn is not None:
                    self._conn = None
                    self._mark(False, f"connection lost: {conn.reason()}")
                    await self._close(conn, goodbye=False)
                conn = await self._connect()  # the one attempt; raises when the broker is down
            try:
                await self._publish(conn, self.telemetry_topic, payload, self.settings.publish_timeout_s)
            except UplinkUnavailable as exc:
                self._conn = None
                self._mark(False, str(exc))
                await self._close(conn, goodbye=False)
                raise
            return conn

    # -- connection lifecycle -------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        s = self.settings
        client = aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password, identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=True, keepalive=s.keepalive_s,
            will=aiomqtt.Will(self.status_topic, _status("offline"), qos=1, retain=True),
            timeout=s.connect_timeout_s,  # aiomqtt's default timeout, used for the CONNACK wait
            tls_context=self._tls, tls_insecure=s.insecure if s.tls else None,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        _paho(client).connect_timeout = s.connect_timeout_s  # TCP connect + TLS handshake
        # aiomqtt connects in an executor thread that cancellation cannot stop (and it keeps its
        # lock on CancelledError), so the connect runs shielded; if we are cancelled we wait for
        # it to finish and close whatever it opened.
        entering = asyncio.ensure_future(client.__aenter__())
        try:
            with self._translated(f"connect to {s.host}:{s.port}"):
                await asyncio.shield(entering)
        except asyncio.CancelledError:
            await asyncio.wait((entering,))
            if entering.exception() is None:
                await _close_client(client, s.connect_timeout_s)
            else:
                _abort(client)
            raise
        except UplinkError as exc:
            _abort(client)  # a refused CONNACK leaves paho's socket open until the broker hangs up
            self._mark(False, str(exc))
            raise
        conn = _Connection(client, asyncio.create_task(_watch(client, self._acks, self.commands_filter[:-1],
                                                              self.on_command),
                                                       name=f"quanedge-mqtt-watch-{self.box_id}"))
        try:
            if self.end_to_end:
                await self._subscribe_acks(conn)
            if self.on_command is not None:
                await self._subscribe_commands(conn)
            await self._publish(conn, self.status_topic, _status("online"), s.connect_timeout_s, retain=True)
            if self._closed:
                raise UplinkUnavailable("the MQTT uplink was closed while connecting")
        except BaseException as exc:
            await self._close(conn, goodbye=self._closed)  # closed meanwhile: do not leave "online" retained
            if isinstance(exc, UplinkError):
                self._mark(False, str(exc))
            raise
        self._conn = conn
        self._mark(True, f"connected to {s.host}:{s.port} as {self._client_id}")
        return conn

    async def _subscribe_acks(self, conn: _Connection) -> None:
        granted = await self._answered(conn, conn.client.subscribe(self.ack_topic, qos=1, timeout=math.inf),
                                       "SUBACK", f"subscribe to {self.ack_topic}", self.settings.connect_timeout_s)
        codes = [getattr(g, "value", g) for g in (granted or [])]
        if not codes or any(not isinstance(c, int) or c >= 0x80 for c in codes):
            raise UplinkRejected(f"the broker refused the subscription to {self.ack_topic} ({codes}): the box's "
                                 "broker account must be allowed to subscribe to its ack topic (deploy/mosquitto), "
                                 'or set [uplink.mqtt] ack = "broker" for a broker no fleet server reads')

    async def _subscribe_commands(self, conn: _Connection) -> None:
        granted = await self._answered(conn, conn.client.subscribe(self.commands_filter, qos=1, timeout=math.inf),
                                       "SUBACK", f"subscribe to {self.commands_filter}",
                                       self.settings.connect_timeout_s)
        codes = [getattr(g, "value", g) for g in (granted or [])]
        if not codes or any(not isinstance(c, int) or c >= 0x80 for c in codes):
            # telemetry still flows; only the fleet's commands cannot reach this box
            log.error("the broker refused the subscription to %s (%s): commands from the fleet will not "
                      "reach this box; its broker account must be allowed to subscribe to it", self.commands_filter,
                      codes)

    async def _close(self, conn: _Connection, *, goodbye: bool) -> None:
        """Close one connection: optional retained "offline", graceful DISCONNECT, else abort."""
        if goodbye and not conn.lost:
            try:
                await self._publish(conn, self.status_topic, _status("offline"), self.settings.publish_timeout_s,
                                    retain=True)
            except UplinkError as exc:
                log.warning("could not publish offline status to %s: %s", self.status_topic, exc)
        if not conn.lost:
            await _close_client(conn.client, self.settings.connect_timeout_s)
        else:
            _abort(conn.client)  # no-op when paho already closed it; else (an error escaped paho) free it now
        # The watcher ends by itself once aiomqtt sees the disconnect (and so collects its error).
        done, _ = await asyncio.wait((conn.watcher,), timeout=1.0)
        if not done:
            conn.watcher.cancel()
            await asyncio.wait((conn.watcher,))

    async def _publish(self, conn: _Connection, topic: str, payload: bytes, timeout_s: float,
                       *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for PUBACK, the connection's end, or the timeout, whichever is first."""
        await self._answered(conn, conn.client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf),
                             "PUBACK", f"publish to {topic}", timeout_s)

    async def _answered(self, conn: _Connection, call: Coroutine[Any, Any, Any], answer: str, doing: str,
                        timeout_s: float) -> Any:
        """Run an aiomqtt call that waits for the broker's `answer` (PUBACK, SUBACK) and return its
        result, racing it against the connection's end (aiomqtt would wait for its own timeout) and
        `timeout_s`; the call is cancelled and collected if it does not win."""
        task = asyncio.create_task(call, name=f"quanedge-mqtt-{answer.lower()}-{self.box_id}")
        try:
            done, _ = await asyncio.wait((task, conn.watcher), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if task in done:
            with self._translated(doing):
                return task.result()
        if conn.watcher in done:
            raise UplinkUnavailable(f"MQTT connection lost before {answer} ({doing}): {conn.reason()}")
        raise UplinkUnavailable(f"no {answer} from {self.settings.host}:{self.settings.port} within {timeout_s:g} s "
                                f"({doing})")

    # -- the one error boundary -----------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except aiomqtt.MqttError as exc:
            raise _translate(exc, doing) from exc

    def _mark(self, available: bool, detail: str) -> None:
        """Log once when the broker becomes unreachable and once when it comes back."""
        if available != self._available:
            if available:
                log.info("MQTT uplink up: %s", detail)
            else:
                log.warning("MQTT uplink down: %s", detail)
            self._available = available


def _translate(exc: aiomqtt.MqttError, doing: str) -> UplinkError:
    if (isinstance(exc, aiomqtt.MqttCodeError) and isinstance(exc.rc, ReasonCode)
            and exc.rc.value in _REFUSED_FOR_GOOD):
        return UplinkRejected(f"{doing}: broker refused the connection: {exc.rc} "
                              "(check username/password, client_id and the broker's ACL)")
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        # aiomqtt re-raises paho's ssl error as a bare MqttError(str(exc)), so the text is all we have.
        return UplinkRejected(f"{doing}: TLS verification of the broker failed: {text} (check ca_file and host)")
    return UplinkUnavailable(f"{doing}: {text or type(exc).__name__}")


async def _watch(client: aiomqtt.Client, acks: AckWaiters, commands_prefix: str,
                 on_command: Callable[[bytes], None] | None) -> str:
    """Hand the fleet server's acks to their waiting sends, and its commands to `on_command`,
    until the connection ends; returns why."""
    try:
        async for message in client.messages:
            topic = message.topic.value
            if on_command is not None and topic.startswith(commands_prefix):
                payload = message.payload
                on_command(payload if isinstance(payload, (bytes, bytearray)) else str(payload).encode())
                continue
            acks.deliver(topic, message.payload)
    except aiomqtt.MqttError as exc:
        return str(exc.__cause__ or exc)
    return "connection closed"  # pragma: no cover - the iterator only ends by raising


async def _close_client(client: aiomqtt.Client, timeout_s: float) -> None:
    """Graceful DISCONNECT (so the broker does not publish the will); abort if that fails."""
    try:
        await asyncio.wait_for(client.__aexit__(None, None, None), timeout_s)
    except (aiomqtt.MqttError, asyncio.TimeoutError) as exc:
        log.debug("MQTT disconnect did not complete (%s); aborting the socket", exc)
        _abort(client)


def _abort(client: aiomqtt.Client) -> None:
    """Shut the socket down; paho's read callback then sees EOF and releases its reader and task."""
    sock = _paho(client).socket()
    if isinstance(sock, socket.socket):  # includes ssl.SSLSocket
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _paho(client: aiomqtt.Client) -> paho.Client:
    # aiomqtt 2.5.1 exposes neither paho's connect_timeout nor its socket; this is the only place
    # that reaches into the wrapped paho client.
    return client._client


def _status(state: str) -> bytes:
    return json.dumps({"state": state, "ts": round(time.time(), 3)}, separators=(",", ":")).encode()


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA bundle: {exc}", key="uplink.mqtt.ca_file", value=settings.ca_file,
                          expected="a readable PEM file") from exc
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client certificate/key: {exc}", key="uplink.mqtt.cert_file",
                              value=settings.cert_file, expected="a PEM certificate matching key_file") from exc
    context.check_hostname = not settings.insecure
    return context
