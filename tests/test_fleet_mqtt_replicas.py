"""Several fleet server replicas on one broker: MQTT v5 shared subscriptions, one session per replica.

Two bridges (two replica ids, one share group) against a private mosquitto on a free port and ONE
store, as two `quanedge fleet serve` replicas sharing a database would be; boxes publish with MQTT
3.1.1, as the agent does. The store's (box, seq) dedup would hide a message delivered twice, so the
tests also count what each bridge acknowledged and what the store called a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from core.backoff import Backoff
from core.errors import ConfigError
from core.reading import Reading
from fleet_server import mqtt_bridge
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.settings import ServerSettings, default_replica_id
from fleet_server.store.base import IngestResult
from fleet_server.store.sqlite import SqliteStore
from tests.e2e_support import Mosquitto

ADMIN = "admin-token-for-tests-0123456789"
BOXES = ("box-1", "box-2", "box-3", "box-4")
ROWS = 3  # readings per message

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


def telemetry(box_id: str, first: int, count: int = ROWS) -> bytes:
    rows = [Reading("rs1", "air_temp", float(s), "degC", 1_700_000_000.0 + s, seq=s).to_row()
            for s in range(first, first + count)]
    return json.dumps({"box_id": box_id, "readings": rows}).encode()


async def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout} s")
        await asyncio.sleep(0.02)


class SlowIngest(IngestService):
    """A replica whose store commits take a while, so messages are still in flight when it dies."""

    delay_s = 0.0

    def ingest_many(self, batches: Sequence[tuple[str, bytes]], transport: str) -> list[IngestResult | Any]:
        time.sleep(self.delay_s)
        return super().ingest_many(batches, transport)

    def ingest(self, box_id: str, payload: bytes | str, transport: str) -> IngestResult:
        time.sleep(self.delay_s)
        return super().ingest(box_id, payload, transport)


@dataclass
class Fleet:
    """One store, one broker, and the replicas (bridges) started on them."""

    broker: Mosquitto
    store: SqliteStore
    prefix: str
    tmp: Path
    metrics: list[FleetMetrics] = field(default_factory=list)

    def settings(self, replica_id: str, **kw: Any) -> ServerSettings:
        return ServerSettings(db_path=self.tmp / "fleet.db", admin_token=ADMIN, mqtt_host="127.0.0.1",
                              mqtt_port=self.broker.port, topic_prefix=self.prefix, replica_id=replica_id,
                              mqtt_share_group="test-group", **kw)

    @asynccontextmanager
    async def replica(self, replica_id: str, *, delay_s: float = 0.0, **kw: Any) -> AsyncIterator[MqttBridge]:
        """A running bridge (its own IngestService and metrics, as its own process would have)."""
        metrics = FleetMetrics(self.store)
        self.metrics.append(metrics)
        ingest = SlowIngest(self.store, metrics, max_batch=100, max_body_bytes=1_000_000)
        ingest.delay_s = delay_s
        bridge = MqttBridge(self.settings(replica_id, **kw), ingest, backoff=Backoff(0.05, 0.2))
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.connected.wait(), 10)
            yield bridge
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def total(self, name: str) -> float:
        return sum(m.value(name, transport="mqtt") for m in self.metrics)

    def stored(self) -> dict[str, list[int]]:
        return {box: [r.seq for r in self.store.readings(box, limit=100_000)] for box in BOXES}

    def stored_count(self) -> int:
        return sum(len(seqs) for seqs in self.stored().values())


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    if shutil.which("mosquitto") is None:
        pytest.skip("needs mosquitto")
    broker = Mosquitto(tmp_path).start()
    store = SqliteStore(tmp_path / "fleet.db")
    token = store.create_enrollment_token(60, len(BOXES), "")
    for box in BOXES:
        store.enroll(token, box, f"hw-{box}", "", "", [])
    try:
        yield Fleet(broker, store, "qreplicas", tmp_path)
    finally:
        store.close()
        broker.stop()


async def publish(fleet: Fleet, messages: int, *, first_message: int = 0, pause_s: float = 0.0) -> None:
    """`messages` telemetry messages round-robin over the boxes, each box from its own MQTT 3.1.1
    client (as the agent connects), QoS 1; message i of box b carries seqs i*ROWS+1 .. i*ROWS+ROWS."""
    async def box(index: int, box_id: str) -> None:
        async with aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier=f"quanedge-agent-{box_id}") as c:
            for n in range(first_message, first_message + messages):
                if n % len(BOXES) == index:
                    await c.publish(f"{fleet.prefix}/{box_id}/telemetry",
                                    telemetry(box_id, (n // len(BOXES)) * ROWS + 1), qos=1)
                    if pause_s:
                        await asyncio.sleep(pause_s)
    await asyncio.gather(*(box(i, b) for i, b in enumerate(BOXES)))


async def settled(fleet: Fleet, quiet_s: float = 1.0) -> None:
    """Until nothing more is stored for `quiet_s`."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        count = fleet.stored_count()
        if count != last:
            last, since = count, time.monotonic()
        await asyncio.sleep(0.05)


def expected(messages: int) -> dict[str, list[int]]:
    per_box = Counter(n % len(BOXES) for n in range(messages))
    return {box: list(range(1, per_box[i] * ROWS + 1)) for i, box in enumerate(BOXES)}


@needs_mosquitto
async def test_two_replicas_split_the_telemetry_and_each_message_is_handled_once(fleet: Fleet) -> None:
    n = 200
    acks: Counter[str] = Counter()
    async with aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier="ack-listener") as listener:
        await listener.subscribe(f"{fleet.prefix}/+/ack", qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                body = json.loads(m.payload)  # type: ignore[arg-type]
                acks[m.topic.value] += 1
                assert body["stored"] == ROWS and body["duplicates"] == 0, body

        listening = asyncio.create_task(listen())
        async with fleet.replica("replica-a") as a, fleet.replica("replica-b") as b:
            assert a.client_id != b.client_id
            await publish(fleet, n)
            await eventually(lambda: fleet.stored_count() == n * ROWS, what="every reading stored")
            await eventually(lambda: sum(acks.values()) == n, what="an end-to-end ack per message")
            await asyncio.sleep(0.3)  # anything delivered twice would arrive by now
        listening.cancel()
    print(f"\nsplit of {n} messages: replica-a {a.acked}, replica-b {b.acked}")
    assert a.acked > 0 and b.acked > 0, "both replicas get a share"
    assert a.acked + b.acked == n, "each message handled by exactly one replica"
    assert fleet.total("quanedge_fleet_readings_duplicate_total") == 0
    assert fleet.total("quanedge_fleet_readings_ingested_total") == n * ROWS
    assert fleet.stored() == expected(n)
    assert sum(acks.values()) == n and set(acks) == {f"{fleet.prefix}/{b}/ack" for b in BOXES}


@needs_mosquitto
async def test_a_replica_killed_mid_stream_gets_its_queued_share_when_it_restarts(fleet: Fleet) -> None:
    n = 400
    async with fleet.replica("replica-a") as a:
        async with fleet.replica("replica-b", delay_s=0.05) as b1:
            publishing = asyncio.create_task(publish(fleet, n, pause_s=0.005))
            await eventually(lambda: b1.acked >= 20, what="replica-b working")
            assert not publishing.done(), "the kill must happen while boxes are still publishing"
        # replica-b is gone (cancelled mid-stream, its unacknowledged messages back in its session);
        # replica-a keeps running, the boxes keep publishing.
        killed_at = b1.acked
        await publishing
        await settled(fleet)
        a_alone = a.acked
        missing = n - fleet.stored_count() // ROWS
        print(f"\nreplica-b killed after acking {killed_at}; replica-a acked {a_alone} in all; "
              f"{missing} messages not stored while replica-b was down")
        # mosquitto 2.0 hands a shared-subscription message to the next member in turn, connected
        # or not: replica-b's share waits in its persistent session, replica-a does not get it.
        assert missing > 0, "the broker gave the dead replica's share to the live one"
        async with fleet.replica("replica-b") as b2:
            await eventually(lambda: fleet.stored() == expected(n), what="every reading stored")
            await asyncio.sleep(0.3)
    duplicates = fleet.total("quanedge_fleet_readings_duplicate_total")
    print(f"replica-b after its restart acked {b2.acked}; replica-a {a.acked}; sum {a.acked + killed_at + b2.acked} "
          f"for {n} messages; {duplicates / ROWS:.0f} messages replica-b had stored but not acknowledged when "
          "it died came again (stored once: duplicates)")
    assert b2.acked > 0 and a.acked == a_alone, "replica-b's share went to replica-b"
    assert a.acked + killed_at + b2.acked >= n
    assert fleet.total("quanedge_fleet_readings_ingested_total") == n * ROWS


@needs_mosquitto
async def test_two_replicas_with_one_replica_id_throw_each_other_off(
        fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    """One client id, one session: the broker closes the older connection whenever the other
    connects. mosquitto >= 2.0.15 says why (DISCONNECT 0x8E, reported as a take-over); 2.0.11 just
    closes the socket (a lost connection, logged with the client id)."""
    caplog.set_level(logging.WARNING, logger="fleet_server.mqtt_bridge")
    async with fleet.replica("same") as first, fleet.replica("same") as second:
        await eventually(lambda: f"MQTT session {first.client_id} was taken over" in caplog.text
                         or f"as {first.client_id} failed" in caplog.text, what="the lost session reported")
    assert first.client_id == second.client_id == f"quanedge-fleet-{fleet.prefix}@same"


async def test_a_session_taken_over_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What the bridge does with DISCONNECT 0x8E (Session taken over), without a broker that sends it."""
    caplog.set_level(logging.WARNING, logger="fleet_server.mqtt_bridge")
    settings = ServerSettings(db_path=tmp_path / "f.db", admin_token=ADMIN, mqtt_host="127.0.0.1", replica_id="r1")
    store = SqliteStore(settings.db_path)
    bridge = MqttBridge(settings, IngestService(store, FleetMetrics(store), max_batch=10, max_body_bytes=1000),
                        backoff=Backoff(0.001, 0.002))
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        if sessions > 3:
            await asyncio.Event().wait()
        cause = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), "Unexpected disconnection")
        raise aiomqtt.MqttError("Disconnected during message iteration") from cause

    bridge._session = session  # type: ignore[method-assign]
    task = asyncio.create_task(bridge.run())
    try:
        await eventually(lambda: sessions > 3, what="three sessions taken over")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    reports = [r for r in caplog.records if "was taken over" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelno == logging.ERROR
    assert "quanedge-fleet-quanedge@r1" in reports[0].getMessage()
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


@needs_mosquitto
async def test_the_bridge_subscribes_again_after_a_broker_restart(fleet: Fleet) -> None:
    """mosquitto 2.0.11 does not restore a persistent session's SHARED subscriptions from its
    persistence file (plain ones it does): the bridge subscribes on every connection."""
    async with fleet.replica("replica-a") as a:
        fleet.broker.stop()
        await eventually(lambda: not a.connected.is_set(), what="connection lost")
        fleet.broker.start()
        await eventually(a.connected.is_set, what="reconnected")
        await publish(fleet, 8)
        await eventually(lambda: fleet.stored() == expected(8), what="stored after the restart")


@needs_mosquitto
async def test_the_session_of_a_server_before_replicas_is_drained_and_deleted(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade: the previous version's bridge session (fixed client id, MQTT 3.1.1, unshared
    subscription, never expires) holds what was published while the server was being upgraded."""
    monkeypatch.setattr(mqtt_bridge, "LEGACY_IDLE_S", 0.5)
    legacy = f"quanedge-fleet-{fleet.prefix}"
    async with aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier=legacy, clean_session=False) as old:
        await old.subscribe(f"{fleet.prefix}/+/telemetry", qos=1)
        await old.subscribe(f"{fleet.prefix}/+/status", qos=1)
    await publish(fleet, 12)  # queued in the old session only
    async with fleet.replica("replica-a") as a:
        await eventually(lambda: fleet.stored() == expected(12), what="the old session's messages stored")
        await eventually(lambda: a._legacy_id is None, what="the old session retired")
        await publish(fleet, 8, first_message=12)
        await eventually(lambda: fleet.stored() == expected(20), what="new messages stored")
        await asyncio.sleep(0.3)
    assert a.acked == 20 and fleet.total("quanedge_fleet_readings_duplicate_total") == 0
    await publish(fleet, 4, first_message=20)  # the old session would queue these, had it survived
    got: list[str] = []
    async with aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier=legacy, clean_session=False) as old:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for m in old.messages:
                    got.append(m.topic.value)
    async with aiomqtt.Client("127.0.0.1", fleet.broker.port, identifier=legacy, clean_session=True):
        pass
    assert got == []


@needs_mosquitto
async def test_the_session_expiry_reaches_the_broker(fleet: Fleet) -> None:
    async with fleet.replica("short", mqtt_session_expiry_s=1):
        pass
    async with fleet.replica("long"):
        pass
    await asyncio.sleep(2.5)  # "short"'s session (and its place in the group) is gone, "long"'s is not
    await publish(fleet, 8)
    async with fleet.replica("short") as short, fleet.replica("long") as long:
        await eventually(lambda: long.acked == 8, what="every message queued for the one session left")
        await asyncio.sleep(0.5)
    assert short.acked == 0 and fleet.stored() == expected(8)


# -- settings ---------------------------------------------------------------------------------


def base(**kw: Any) -> ServerSettings:
    return ServerSettings(db_path="x.db", admin_token=ADMIN, **kw)


@pytest.mark.parametrize("change, key", [
    ({"mqtt_share_group": ""}, "mqtt_share_group"),
    ({"mqtt_share_group": "fleet/a"}, "mqtt_share_group"),
    ({"mqtt_share_group": "fleet+"}, "mqtt_share_group"),
    ({"mqtt_share_group": "#"}, "mqtt_share_group"),
    ({"mqtt_share_group": " fleet"}, "mqtt_share_group"),
    ({"mqtt_share_group": "g" * 65}, "mqtt_share_group"),
    ({"replica_id": ""}, "replica_id"),
    ({"replica_id": "has space"}, "replica_id"),
    ({"replica_id": "a@b"}, "replica_id"),          # '@' separates prefix and replica in the client id
    ({"replica_id": "x" * 65}, "replica_id"),
    ({"replica_id": "r1", "mqtt_client_id": "fleet-a"}, "replica_id"),   # two names for one session
    ({"mqtt_client_id": "quanedge-agent-box-1"}, "mqtt_client_id"),     # would take over a box's session
    ({"mqtt_session_expiry_s": 0}, "mqtt_session_expiry_s"),
    ({"mqtt_session_expiry_s": 2**32}, "mqtt_session_expiry_s"),
    ({"mqtt_session_expiry_s": True}, "mqtt_session_expiry_s"),
])
def test_bad_replica_settings_fail_naming_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        base(**change)
    assert info.value.key == key and key in str(info.value)


def test_client_ids_differ_per_replica_and_per_prefix() -> None:
    ids = {base(replica_id=r, topic_prefix=p).mqtt_session_id for r in ("r1", "r2") for p in ("city", "town")}
    assert len(ids) == 4
    assert base(replica_id="r1").mqtt_session_id == "quanedge-fleet-quanedge@r1"
    assert base(replica_id="r1", mqtt_share_group="g1").mqtt_share_filters == (
        "$share/g1/quanedge/+/telemetry", "$share/g1/quanedge/+/status")


def test_the_default_replica_id_is_the_host_name_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "fleet-1.city.example")
    assert base(port=8081).replica == "fleet-1.city.example-8081"
    assert base(port=8081).mqtt_session_id == "quanedge-fleet-quanedge@fleet-1.city.example-8081"
    assert base(port=8081).replica != base(port=8082).replica  # two replicas on one host
    monkeypatch.setattr(socket, "gethostname", lambda: "Ünïcode host_" + "x" * 80)
    replica = default_replica_id(65535)
    assert replica.endswith("-65535") and len(replica) == 64
    base(replica_id=replica)  # valid as an explicit replica id too
