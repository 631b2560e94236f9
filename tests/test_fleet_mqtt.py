"""The MQTT bridge against the real mosquitto at 127.0.0.1:1883, and `serve()` end to end.

Every test uses its own topic prefix and client id, so parallel runs do not collide, and wipes its
persistent session on the broker afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from core.backoff import Backoff
from core.reading import Reading
from fleet_server.errors import PayloadError, StoreError
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge, parse_status
from fleet_server.seq_tracking import SeqReport
from fleet_server.settings import ServerSettings
from fleet_server.store.base import IngestResult
from fleet_server.store.sqlite import SqliteStore

BROKER = ("127.0.0.1", 1883)
ADMIN = "admin-token-for-tests-0123456789"


def _broker_up() -> bool:
    try:
        socket.create_connection(BROKER, timeout=1).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _broker_up(), reason="needs mosquitto on 127.0.0.1:1883")


def rows(first: int, count: int) -> list[list[Any]]:
    return [Reading("rs1", "air_temp", float(s), "degC", 1_700_000_000.0 + s, seq=s).to_row()
            for s in range(first, first + count)]


def telemetry(box_id: str, batch: list[Any]) -> bytes:
    return json.dumps({"box_id": box_id, "readings": batch}).encode()


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class FlakyStore(SqliteStore):
    """Fails the first `failures` ingests, as a locked or full disk would."""

    failures = 0

    def ingest(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None = None) -> IngestResult:
        if self.failures:
            self.failures -= 1
            raise StoreError("disk I/O error (simulated)")
        return super().ingest(box_id, rows, report)

    def ingest_many(self, batches):  # the bridge's group commit fails the same way
        if self.failures:
            self.failures -= 1
            raise StoreError("disk I/O error (simulated)")
        return super().ingest_many(batches)


@dataclass
class Rig:
    settings: ServerSettings
    store: FlakyStore
    service: IngestService
    metrics: FleetMetrics

    @property
    def prefix(self) -> str:
        return self.settings.topic_prefix

    def rejected(self, reason: str) -> float:
        return self.metrics.value("quanedge_fleet_batches_rejected_total", transport="mqtt", reason=reason)

    def stored(self, box_id: str = "box-1") -> list[int]:
        return [r.seq for r in self.store.readings(box_id, limit=10_000)]  # type: ignore[misc]

    @asynccontextmanager
    async def bridge(self) -> AsyncIterator[MqttBridge]:
        bridge = MqttBridge(self.settings, self.service, backoff=Backoff(0.05, 0.2))
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.connected.wait(), 10)
            yield bridge
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def publish(self, topic_tail: str, payload: bytes) -> None:
        async with aiomqtt.Client(*BROKER, identifier=f"pub-{uuid.uuid4().hex[:12]}") as client:
            await client.publish(f"{self.prefix}/{topic_tail}", payload, qos=1)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    tag = uuid.uuid4().hex[:12]
    settings = ServerSettings(
        db_path=tmp_path / "fleet.db", admin_token=ADMIN, mqtt_host=BROKER[0], mqtt_port=BROKER[1],
        topic_prefix=f"qtest-{tag}", mqtt_client_id=f"fleet-test-{tag}", max_batch=500,
    )
    store = FlakyStore(settings.db_path)
    token = store.create_enrollment_token(60, 5, "")
    store.enroll(token, "box-1", "hw-1", "", "", [])
    metrics = FleetMetrics(store)
    service = IngestService(store, metrics, max_batch=settings.max_batch, max_body_bytes=settings.max_body_bytes)
    yield Rig(settings, store, service, metrics)
    store.close()
    # Drop the persistent session this test created on the broker.
    async with aiomqtt.Client(*BROKER, identifier=settings.mqtt_session_id, clean_session=True):
        pass


async def test_telemetry_published_twice_is_stored_once(rig: Rig) -> None:
    async with rig.bridge():
        payload = telemetry("box-1", rows(1, 20))
        await rig.publish("box-1/telemetry", payload)
        await rig.publish("box-1/telemetry", payload)
        await eventually(
            lambda: rig.metrics.value("quanedge_fleet_readings_duplicate_total", transport="mqtt") == 20
        )
    assert rig.stored() == list(range(1, 21))
    assert rig.metrics.value("quanedge_fleet_readings_ingested_total", transport="mqtt") == 20
    assert rig.store.get_box("box-1").max_seq == 20  # type: ignore[union-attr]


async def test_unknown_box_is_rejected_counted_and_logged_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fleet_server.mqtt_bridge")
    async with rig.bridge():
        for first in (1, 2, 3):
            await rig.publish("ghost/telemetry", telemetry("ghost", rows(first, 1)))
        await eventually(lambda: rig.rejected("unknown_box") == 3)
        # The bridge is still serving other boxes.
        await rig.publish("box-1/telemetry", telemetry("box-1", rows(1, 2)))
        await eventually(lambda: rig.stored() == [1, 2])
    assert rig.store.get_box("ghost") is None
    warnings = [r for r in caplog.records if "ghost" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_topic_box_must_match_body_box(rig: Rig) -> None:
    token = rig.store.create_enrollment_token(60, 1, "")
    rig.store.enroll(token, "box-2", "hw-2", "", "", [])
    async with rig.bridge():
        # box-2 publishing on its own topic a batch that claims to be box-1's.
        await rig.publish("box-2/telemetry", telemetry("box-1", rows(1, 3)))
        await eventually(lambda: rig.rejected("forbidden") == 1)
    assert rig.stored("box-1") == [] and rig.stored("box-2") == []


async def test_malformed_payloads_are_counted_and_never_stop_the_bridge(rig: Rig) -> None:
    bad_row = rows(1, 3)
    bad_row[1][4] = "warm"
    async with rig.bridge() as bridge:
        await rig.publish("box-1/telemetry", b"\x00 not json")
        await rig.publish("box-1/telemetry", telemetry("box-1", bad_row))
        await rig.publish("box-1/telemetry", telemetry("box-1", rows(1, 501)))
        await rig.publish("box-1/telemetry", b'{"box_id": "box-1"}')
        await rig.publish("bad%id/telemetry", telemetry("box-1", rows(1, 1)))
        await rig.publish("box-1/status", b'{"state": "sleeping", "ts": 5}')
        await rig.publish("box-1/telemetry", telemetry("box-1", rows(1, 2)))
        await eventually(lambda: rig.stored() == [1, 2])
        assert bridge.connected.is_set()
    assert [rig.rejected(r) for r in ("bad_json", "bad_row", "batch_too_large", "bad_body", "bad_topic",
                                      "status_bad_body")] == [1, 1, 1, 1, 1, 1]


async def test_status_messages_update_online_state(rig: Rig) -> None:
    async with rig.bridge():
        await rig.publish("box-1/status", json.dumps({"state": "online", "ts": 100.0}).encode())
        await eventually(lambda: rig.store.get_box("box-1").online)  # type: ignore[union-attr]
        # The box's last will: stamped at its connect, so older than the "online" above.
        await rig.publish("box-1/status", json.dumps({"state": "offline", "ts": 99.0}).encode())
        await eventually(lambda: rig.store.get_box("box-1").status_ts == 99.0)  # type: ignore[union-attr]
        await rig.publish("ghost/status", json.dumps({"state": "online", "ts": 1.0}).encode())
        await eventually(lambda: rig.rejected("status_unknown_box") == 1)
    assert rig.store.get_box("box-1").online is False  # type: ignore[union-attr]


async def test_messages_published_while_the_server_is_down_arrive_on_restart(rig: Rig) -> None:
    async with rig.bridge():
        pass  # first connection creates the persistent session (and its subscriptions)
    for first in (1, 11, 21):
        await rig.publish("box-1/telemetry", telemetry("box-1", rows(first, 10)))
    assert rig.stored() == []
    async with rig.bridge():
        await eventually(lambda: rig.stored() == list(range(1, 31)))


async def test_store_failure_leaves_message_unacknowledged_and_it_is_redelivered(rig: Rig) -> None:
    rig.store.failures = 1
    async with rig.bridge() as bridge:
        await rig.publish("box-1/telemetry", telemetry("box-1", rows(1, 5)))
        await eventually(lambda: rig.store.failures == 0)
        # The bridge reconnects; the broker re-sends the unacknowledged message.
        await eventually(lambda: rig.stored() == [1, 2, 3, 4, 5])
        await eventually(bridge.connected.is_set)
    assert rig.metrics.value("quanedge_fleet_readings_ingested_total", transport="mqtt") == 5


async def test_bridge_keeps_retrying_an_unreachable_broker(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServerSettings(db_path=tmp_path / "f.db", admin_token=ADMIN, mqtt_host="127.0.0.1", mqtt_port=port)
    store = SqliteStore(settings.db_path)
    service = IngestService(store, FleetMetrics(store), max_batch=10, max_body_bytes=1000)
    backoff = Backoff(0.01, 0.05)
    bridge = MqttBridge(settings, service, backoff=backoff)
    task = asyncio.create_task(bridge.run())
    try:
        await eventually(lambda: backoff.attempts >= 3, timeout=5)
        assert not task.done() and not bridge.connected.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


@pytest.mark.parametrize("payload, field", [
    (b'{"state": "online"}', "ts"), (b'{"state": "up", "ts": 1}', "state"),
    (b'{"state": "online", "ts": NaN}', "ts"), (b'{"state": "online", "ts": true}', "ts"),
])
def test_parse_status_names_the_bad_field(payload: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_status(payload)
    assert info.value.field == field


# -- serve(): uvicorn + lifespan + bridge in one process ------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str, subprocess.Popen[bytes]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tag = uuid.uuid4().hex[:12]
    prefix, client_id = f"qserve-{tag}", f"fleet-serve-{tag}"
    code = (
        "from fleet_server.server import serve; from fleet_server.settings import ServerSettings; "
        f"serve(ServerSettings(db_path={str(tmp_path / 'serve.db')!r}, admin_token={ADMIN!r}, port={port}, "
        f"mqtt_host='127.0.0.1', topic_prefix={prefix!r}, mqtt_client_id={client_id!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield f"http://127.0.0.1:{port}", prefix, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        async with aiomqtt.Client(*BROKER, identifier=client_id, clean_session=True):
            pass


async def test_serve_runs_http_and_bridge_and_stops_cleanly(served: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    base, prefix, proc = served
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        async def healthy() -> bool:
            try:
                return (await http.get("/healthz")).json().get("mqtt") == "connected"
            except httpx.TransportError:
                return False

        await _until(healthy, proc)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        token = (await http.post("/api/v1/enrollment-tokens", json={}, headers=admin)).json()["token"]
        r = await http.post("/api/v1/enroll", json={"token": token, "box_id": "box-9", "hardware": "hw-9"})
        credential = r.json()["credential"]
        # One batch over MQTT, the next over HTTP: one store, one seq space.
        async with aiomqtt.Client(*BROKER) as client:
            await client.publish(f"{prefix}/box-9/telemetry", telemetry("box-9", rows(1, 3)), qos=1)
        r = await http.post("/api/v1/telemetry", content=telemetry("box-9", rows(3, 3)),
                            headers={"Authorization": f"Bearer {credential}"})

        async def all_stored() -> bool:
            page = (await http.get("/api/v1/boxes/box-9/readings", headers=admin)).json()
            return [row[0] for row in page["readings"]] == [1, 2, 3, 4, 5]

        await _until(all_stored, proc)
        assert r.status_code == 200 and r.json()["max_seq"] >= 5
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"Application shutdown complete" in out


async def _until(check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[0].decode()}")
        if time.monotonic() > deadline:
            raise AssertionError("server did not get there in time")
        await asyncio.sleep(0.1)
