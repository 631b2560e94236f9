"""MQTT -> store bridge: telemetry and status from boxes, through the same ingest path as HTTP.

Topics (QoS 1): `{prefix}/{box_id}/telemetry` (payload = the HTTP telemetry body) and
`{prefix}/{box_id}/status` (payload {"state": "online"|"offline", "ts": unix seconds}).

Replicas: N `quanedge fleet serve` replicas on one broker split the boxes' messages. The bridge
speaks MQTT v5 and subscribes to the shared filters `$share/{group}/{prefix}/+/telemetry` and
`.../status` (group: settings.mqtt_share_group, the same on every replica); the broker hands each
message to ONE member of the group, in turn (mosquitto 2.0: strict round robin, whichever box sent
it). Boxes keep publishing with MQTT 3.1.1; a shared subscription receives that as any other.

Delivery: each replica has its OWN persistent session: client id `quanedge-fleet-{prefix}@{replica}`
(settings.mqtt_session_id; the replica id defaults to `<host name>-<HTTP port>`, so two replicas
never share one: a second connection with a client id makes the broker drop the first), connected
with clean_start=False and a Session Expiry Interval (settings.mqtt_session_expiry_s, default 1 h).
A replica's turn keeps coming while it is down: the broker queues its share in its session (not
to the others) until it is back with the same replica id, or its session expires (then that share
is gone from the broker; boxes send it again, see below). Messages are acknowledged (PUBACK) only
AFTER the store committed them, or refused them for good: a message in flight when a replica dies
or the store fails is re-delivered to that replica's session, and the (box_id, seq) key turns that
re-delivery into a duplicate. The subscriptions are made on every connection (mosquitto 2.0.11 does
not restore a session's shared subscriptions after a broker restart; what is published before the
first replica is back has no subscriber and only the box's re-send brings it). A session left by a
server from before replicas (`quanedge-fleet-{prefix}`, unshared, never expiring) is drained into
the store and deleted (`_retire_legacy_session`).
Group commit: the messages already waiting when one is taken (up to GROUP_MAX_MESSAGES / _BYTES)
are stored in one transaction (one fsync), each box's batch under its own savepoint; a bug on one
message sends the group down the one-message path, so only that message is quarantined.
Before that PUBACK the bridge publishes the box's end-to-end ack on `{prefix}/{box_id}/ack`
(`fleet_server.acks`): only that ack lets the box delete the rows, so a broker that drops its
queue or dies before saving it loses nothing; the box sends the rows again.
aiomqtt 2.5.1 has no public manual-ack API yet (aiomqtt issue #345 / PR #346); `_manual_ack` and
`_ack` below are the only two places that reach into its paho client for it (paho-mqtt 2.x
`manual_ack_set` / `ack(mid, qos)`: the same PUBACK under v5, reason code 0 = success).

Poison never blocks. A refused message (malformed, unknown box, topic/body mismatch) is counted,
logged once per box until that box's messages are accepted again, kept in the quarantine
(`fleet_server.quarantine`) and acknowledged. A message that makes the bridge's own code fail
(any exception but a store outage) is quarantined as `internal` and acknowledged too: with a
persistent session an unacknowledged poison message would come back after every restart and stop
the bridge for every box. Only a StoreError leaves a message unacknowledged (the store is down, not
the message bad): the bridge reconnects with capped jittered backoff, as on connection loss.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.backoff import Backoff
from core.validate import check_ts
from fleet_server.acks import refused_ack, stored_ack
from fleet_server.errors import FleetError, Forbidden, PayloadError, StoreError, UnknownBox
from fleet_server.ingest import IngestService
from fleet_server.quarantine import QuarantineKeeper
from fleet_server.settings import ServerSettings
from fleet_server.store.base import IngestResult, check_box_id

__all__ = ["MqttBridge", "parse_status"]

log = logging.getLogger(__name__)

_REFUSALS = (PayloadError, Forbidden, UnknownBox)
_MAX_TRACKED_BOXES = 10_000  # bound on remembered "already logged" boxes (topics are attacker-chosen)
#: Group commit: messages already waiting are stored together, up to this many / this many bytes.
GROUP_MAX_MESSAGES = 32
GROUP_MAX_BYTES = 8 * 1024 * 1024
#: The session of a fleet server before replicas is retired after this long without a message.
LEGACY_IDLE_S = 2.0
_LEGACY_DRAIN_EXPIRY_S = 300  # while it is drained: survives a drain connection taken over by another replica
_NOT_AUTHORIZED = 0x87       # MQTT v5 reason code (CONNACK, SUBACK)
_SESSION_TAKEN_OVER = 0x8E   # MQTT v5 DISCONNECT reason: another client connected with our client id


def parse_status(payload: bytes) -> tuple[bool, float]:
    """Decode a status payload into (online, ts); PayloadError naming the bad field otherwise."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("bad_json", f"status is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError("bad_body", f"status must be a JSON object, got {type(body).__name__}")
    state = body.get("state")
    if state not in ("online", "offline"):
        shown = repr(state)[:40] if isinstance(state, (str, type(None), bool, float)) else type(state).__name__
        raise PayloadError("bad_body", f"status state must be 'online' or 'offline', got {shown}", field="state")
    try:
        ts = check_ts(body.get("ts"), "ts")  # unix seconds within 1970..2100, never a 400-digit int
    except ValueError as exc:
        raise PayloadError("bad_body", f"status {exc}", field="ts") from None
    return state == "online", ts


class MqttBridge:
    """Run with `await bridge.run()` (until cancelled). `connected` is set while subscribed."""

    def __init__(self, settings: ServerSettings, ingest: IngestService, *, backoff: Backoff | None = None,
                 quarantine: QuarantineKeeper | None = None) -> None:
        if settings.mqtt_host is None:
            raise ValueError("MqttBridge needs settings.mqtt_host")
        self.settings = settings
        self._host: str = settings.mqtt_host
        self.ingest = ingest
        self.quarantine = quarantine or QuarantineKeeper(ingest.store, ingest.metrics)
        self.backoff = backoff or Backoff(settings.mqtt_backoff_base_s, settings.mqtt_backoff_cap_s)
        self.connected = asyncio.Event()
        self.prefix = settings.topic_prefix
        self.client_id = settings.mqtt_session_id  # this replica's own persistent session
        self.acked = 0                       # messages this bridge acknowledged to the broker
        self._refusing: dict[str, str] = {}  # box id -> reason already logged
        self._live: aiomqtt.Client | None = None  # the connected client, while subscribed
        self._was_connected = True           # so the first failure is logged once, as a loss
        self._kicked = False                 # the last session was taken over by another client
        # The fixed client id of fleet servers before replicas, when this replica's is derived.
        self._legacy_id: str | None = (
            None if settings.mqtt_client_id is not None else "quanedge-fleet-" + self.prefix.replace("/", "."))

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                if _reason_code(exc) == _SESSION_TAKEN_OVER:
                    self._taken_over(exc)
                else:
                    self._kicked = False
                    self._lost(f"MQTT connection to {self._where()} as {self.client_id} failed: {exc}{_hint(exc)}")
            except StoreError as exc:
                self._kicked = False
                self._lost(f"store failed, reconnecting so the broker re-delivers unacknowledged messages: {exc}")
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        client = self._client(self.client_id)
        _manual_ack(client)  # before connecting: a persistent session delivers right after CONNACK
        legacy: asyncio.Task[None] | None = None
        try:
            async with client:
                await self._subscribe(client)
                self._live = client
                if not self._kicked:  # two replicas with one client id: back off, do not ping-pong
                    self.backoff.reset()
                self._up()
                if self._legacy_id is not None:  # once per process, beside this session's own messages
                    legacy = asyncio.create_task(self._retire_legacy_session(self._legacy_id))
                async for message in client.messages:
                    group = [message]  # and whatever else has already arrived: one commit for all
                    size = len(message.payload or b"")
                    while len(client.messages) and len(group) < GROUP_MAX_MESSAGES and size < GROUP_MAX_BYTES:
                        group.append(await anext(client.messages))
                        size += len(group[-1].payload or b"")
                    await self._handle_group(client, group)
        finally:
            self._live = None
            if legacy is not None:
                legacy.cancel()
                await asyncio.gather(legacy, return_exceptions=True)
            self._down()

    async def publish_command(self, box_id: str, payload: bytes) -> bool:
        """Publish a command on the box's `{prefix}/{box}/commands/run` (QoS 1); False when this
        replica is not connected or the publish failed (the dispatcher re-sends it later)."""
        client = self._live
        if client is None:
            return False
        try:
            await client.publish(f"{self.prefix}/{box_id}/commands/run", payload, qos=1)
        except aiomqtt.MqttError as exc:
            log.info("command for %s not published (%s); it is re-sent later", box_id, exc)
            return False
        return True

    async def _handle_group(self, client: aiomqtt.Client, group: list[aiomqtt.Message]) -> None:
        """Store, tell the boxes (end-to-end acks), then acknowledge to the broker (PUBACK)."""
        items = [(m.topic.value, _payload_bytes(m.payload)) for m in group]
        answers = await asyncio.to_thread(self._process_group, items)
        # The boxes' end-to-end acks, before the broker's PUBACKs.
        await asyncio.gather(*(client.publish(self._ack_topic(topic), answer, qos=1)
                               for (topic, _), answer in zip(items, answers) if answer is not None))
        for m in group:
            if m.qos > 0:
                _ack(client, m.mid, m.qos)
        self.acked += len(group)

    async def _retire_legacy_session(self, legacy_id: str) -> None:
        """End the session a fleet server made before replicas existed (`quanedge-fleet-<prefix>`,
        an unshared subscription, no expiry): left alone, the broker would queue every box's
        messages in it for ever. Its subscriptions are dropped, what it holds is stored like any
        message, and after LEGACY_IDLE_S without one the session is deleted. A failure (the store,
        the broker) leaves it for the next connection; only this replica's own session is at stake."""
        handled = 0
        try:
            drain = self._client(legacy_id, expiry_s=_LEGACY_DRAIN_EXPIRY_S)
            _manual_ack(drain)
            async with drain:
                await drain.unsubscribe([f"{self.prefix}/+/telemetry", f"{self.prefix}/+/status"])
                while True:
                    try:
                        async with asyncio.timeout(LEGACY_IDLE_S):
                            message = await anext(drain.messages)
                    except TimeoutError:
                        break
                    await self._handle_group(drain, [message])
                    handled += 1
            async with self._client(legacy_id, expiry_s=0):  # clean start: the session is deleted
                pass
        except (aiomqtt.MqttError, StoreError) as exc:
            log.info("could not retire the old bridge session %s yet (%s); trying again on the next connection",
                     legacy_id, exc)
            return
        self._legacy_id = None
        if handled:
            log.info("retired the old bridge session %s: stored the %d messages it held", legacy_id, handled)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to this fleet's shared filters (again on every connect: mosquitto 2.0 does not
        restore shared subscriptions after a broker restart), then drop the unshared ones a session
        made by an earlier version still holds: with them, this replica would get every message
        besides its share."""
        for topic in self.settings.mqtt_share_filters:
            granted = await client.subscribe(topic, qos=1)
            code = granted[0] if granted else None
            if code is None or (code.value if isinstance(code, ReasonCode) else code) >= 0x80:
                raise _SubscriptionRefused(f"the broker refused the subscription to {topic} ({code})")
        await client.unsubscribe([f"{self.prefix}/+/telemetry", f"{self.prefix}/+/status"])

    def _process_group(self, items: list[tuple[str, bytes]]) -> list[bytes | None]:
        """`_process` for several messages (in a worker thread), their telemetry stored with ONE
        commit (one fsync instead of one per message). Raises StoreError when none may be acked."""
        if len(items) == 1:
            return [self._process(*items[0])]
        answers: list[bytes | None] = [None] * len(items)
        telemetry: list[tuple[int, str]] = []
        for i, (topic, payload) in enumerate(items):
            segment, kind = self._split(topic)
            try:
                box_id = check_box_id(segment) if kind == "telemetry" else None
            except ValueError:
                box_id = None
            if box_id is None:  # status, or a bad topic: the one-message path handles and counts it
                answers[i] = self._process(topic, payload)
            else:
                telemetry.append((i, box_id))
        if not telemetry:
            return answers
        try:
            outcomes = self.ingest.ingest_many([(box_id, items[i][1]) for i, box_id in telemetry], "mqtt")
        except StoreError:
            raise
        except Exception as exc:  # a bug on one message: take them one by one, so only it is kept
            log.info("group ingest of %d messages failed (%s: %s); processing them one by one",
                     len(telemetry), type(exc).__name__, exc)
            for i, _ in telemetry:
                answers[i] = self._process(*items[i])
            return answers
        for (i, box_id), outcome in zip(telemetry, outcomes):
            topic, payload = items[i]
            if isinstance(outcome, FleetError):
                self._refused(box_id, outcome)
                answers[i] = self._poison(topic, payload, outcome)
            else:
                self._accepted(box_id)
                answers[i] = _stored(outcome)
        return answers

    def _process(self, topic: str, payload: bytes) -> bytes | None:
        """Handle one message (in a worker thread). Returns normally when the message may be acked
        (stored, or refused / failed and quarantined), with the ack for the box if there is one;
        raises StoreError when it must not be (the broker re-delivers it after a reconnect)."""
        try:
            return self._handle(topic, payload)
        except StoreError:
            raise
        except Exception as exc:  # poison: keep it (StoreError if that fails) and go on
            return self._poison(topic, payload, exc)

    def _poison(self, topic: str, payload: bytes, exc: Exception) -> bytes | None:
        """Keep a message that will not be stored in the quarantine, and tell its box (telemetry
        only) that it was refused, so the box isolates the bad row instead of re-sending."""
        self.quarantine.keep("mqtt", topic, payload, exc)
        segment, kind = self._split(topic)
        if kind != "telemetry":
            return None
        try:
            check_box_id(segment)
        except ValueError:
            return None  # no box to tell
        return refused_ack(payload, exc)

    def _ack_topic(self, topic: str) -> str:
        segment, _ = self._split(topic)
        return f"{self.prefix}/{segment}/ack"

    def _handle(self, topic: str, payload: bytes) -> bytes | None:
        """Store one message, returning the box's ack for telemetry; a refusal is counted, logged
        (once per box) and raised."""
        segment, kind = self._split(topic)
        metrics = self.ingest.metrics
        try:
            box_id = check_box_id(segment)
            if kind not in ("telemetry", "status"):
                raise ValueError(f"unexpected message kind {kind!r:.40}")
        except ValueError as exc:
            metrics.rejected("mqtt", "bad_topic")
            refusal = PayloadError("bad_topic", f"topic {topic!r:.120}: {exc}")
            self._refused(repr(segment)[:64], refusal)
            raise refusal from None
        answer = None
        try:
            if kind == "telemetry":
                answer = _stored(self.ingest.ingest(box_id, payload, "mqtt"))  # counts its own refusals
            else:
                try:
                    online, ts = parse_status(payload)
                    self.ingest.store.set_box_status(box_id, online, ts)
                except _REFUSALS as exc:
                    metrics.rejected("mqtt", f"status_{exc.code}")
                    raise
        except _REFUSALS as exc:
            self._refused(box_id, exc)
            raise
        self._accepted(box_id)
        return answer

    def _split(self, topic: str) -> tuple[str, str]:
        """(box id segment, kind) of `{prefix}/{box_id}/{kind}`; segments unchecked."""
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else ""
        segment, _, kind = rest.partition("/")
        return segment, kind

    def _refused(self, box_id: str, exc: FleetError) -> None:
        if self._refusing.get(box_id) == exc.code:
            return
        if box_id not in self._refusing and len(self._refusing) >= _MAX_TRACKED_BOXES:
            return
        self._refusing[box_id] = exc.code
        log.warning("MQTT bridge refuses messages from box %s (%s): %s; "
                    "further refusals for this box are only counted", box_id, exc.code, exc)

    def _accepted(self, box_id: str) -> None:
        if self._refusing.pop(box_id, None) is not None:
            log.info("MQTT bridge accepts messages from box %s again", box_id)

    def _up(self) -> None:
        self.connected.set()
        self.ingest.metrics.mqtt_connected.set(1)
        self._was_connected = True
        log.info("MQTT bridge subscribed at %s as %s to %s/+/{telemetry,status}, shared in group %r",
                 self._where(), self.client_id, self.prefix, self.settings.mqtt_share_group)

    def _down(self) -> None:
        self.connected.clear()
        self.ingest.metrics.mqtt_connected.set(0)

    def _taken_over(self, exc: BaseException) -> None:
        """The broker closed this session because another client connected with the same client id."""
        if not self._kicked:
            log.error("MQTT session %s was taken over by another client with the same client id: two fleet "
                      "server replicas with one replica_id (or mqtt_client_id)? Give each its own; until then "
                      "they take turns, reconnecting with growing backoff (%s)", self.client_id, exc)
        self._kicked = True
        self._was_connected = False

    def _lost(self, message: str) -> None:
        if self._was_connected:
            log.warning("%s; retrying with backoff (logged once until reconnected)", message)
            self._was_connected = False
        else:
            log.debug("%s", message)

    def _where(self) -> str:
        return f"{self._host}:{self.settings.mqtt_port}"

    def _client(self, identifier: str, *, expiry_s: int | None = None) -> aiomqtt.Client:
        """A v5 client resuming `identifier`'s persistent session, kept `expiry_s` (default: the
        setting) after a disconnect; expiry_s=0: a clean start, the session deleted."""
        s = self.settings
        expiry_s = s.mqtt_session_expiry_s if expiry_s is None else expiry_s
        tls = (
            aiomqtt.TLSParameters(ca_certs=s.mqtt_ca_file, certfile=s.mqtt_cert_file, keyfile=s.mqtt_key_file)
            if s.mqtt_tls else None
        )
        # MQTT v5 (shared subscriptions): clean_start=False plus a Session Expiry Interval is v5's
        # persistent session (v3's clean_session=False). aiomqtt's default clean_start would wipe it,
        # since every connection attempt is a new aiomqtt.Client.
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = expiry_s
        return aiomqtt.Client(
            self._host, s.mqtt_port, username=s.mqtt_username, password=s.mqtt_password,
            identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5, clean_start=expiry_s == 0,
            properties=connect, tls_params=tls, keepalive=30,
            # No Nagle: each ack is one small packet, and with Nagle + delayed ACKs every ack waited
            # ~40 ms for the previous one's TCP ACK (end-to-end drain was 17k rows/s, not 50k+).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )


def _stored(result: IngestResult) -> bytes | None:
    if result.first_seq is None or result.last_seq is None:
        return None
    return stored_ack(result.first_seq, result.last_seq, result.rows, result.accepted, result.duplicates)


class _SubscriptionRefused(aiomqtt.MqttError):
    """A SUBACK with a failure reason code (e.g. 0x87: the broker's ACL does not allow $share/...)."""


def _reason_code(exc: BaseException) -> int | None:
    """The MQTT reason code behind an aiomqtt error (it may be the cause of the error raised)."""
    seen: BaseException | None = exc
    while seen is not None:
        rc = getattr(seen, "rc", None)
        if rc is not None:
            return int(getattr(rc, "value", rc))
        seen = seen.__cause__
    return None


def _hint(exc: BaseException) -> str:
    if isinstance(exc, _SubscriptionRefused) or _reason_code(exc) == _NOT_AUTHORIZED:
        return ("; with the shipped broker setup (dynsec), re-run `quanedge fleet broker init`: replicas need a "
                "bridge account not bound to one client id, allowed to subscribe to $share/<group>/...")
    return ""


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return str(payload).encode()


# The two reaches into aiomqtt's paho client (see module docstring); remove once aiomqtt has an API.
def _manual_ack(client: aiomqtt.Client) -> None:
    client._client.manual_ack_set(True)


def _ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    client._client.ack(mid, qos)
