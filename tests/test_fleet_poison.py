"""Issue 9, finding 1: one MQTT message stopped the bridge for every box, and again after restart.

Real processes: a private mosquitto on a free port and `quanedge fleet serve` bridging it. Each
poison message (a 400-digit integer, a lone surrogate, garbage bytes, a status with a 400-digit
ts) is acknowledged and quarantined, the next message from another box is stored, and after a
restart of the server (persistent session) nothing poisoned comes back and the bridge still works.
Plus, in-process: an exception outside the FleetError tree (the old UnicodeEncodeError at the
insert) is quarantined as `internal` instead of ending the bridge.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from e2e_support import Fleet, Mosquitto, start_fleet, stop, wait_for

from core.backoff import Backoff
from core.reading import Reading
from fleet_server.ingest import IngestService
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge
from fleet_server.seq_tracking import SeqReport
from fleet_server.settings import ServerSettings
from fleet_server.store.base import IngestResult
from fleet_server.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary")

PREFIX = "qpoison"
HUGE = "1" + "0" * 400


def _rows(first: int, count: int) -> list[list[Any]]:
    return [Reading("rs1", "air_temp", 20.0, "degC", 1_700_000_000.0 + s, seq=s).to_row()
            for s in range(first, first + count)]


def _good(box: str, first: int, count: int = 3) -> bytes:
    return json.dumps({"box_id": box, "readings": _rows(first, count)}).encode()


POISON: list[tuple[str, bytes, str]] = [  # (topic tail, payload, expected quarantine reason)
    ("box-a/telemetry", b'{"box_id": "box-a", "readings": [[1, 1700000000, "rs1", "t", ' + HUGE.encode()
     + b', "degC", 0, "routine", null]]}', "bad_row"),
    ("box-a/telemetry", b'{"box_id": "box-a", "readings": [[' + HUGE.encode()
     + b', 1700000000, "rs1", "t", 1, "degC", 0, "routine", null]]}', "bad_row"),
    ("box-a/telemetry", b'{"box_id": "box-a", "readings": [[1, 1700000000, "rs1\\ud800", "t", 1, "degC", 0,'
     b' "routine", null]]}', "bad_row"),
    ("box-a/telemetry", b'{"box_id": "box-a\\ud800", "readings": []}', "bad_body"),
    ("box-a/status", b'{"state": "online", "ts": ' + HUGE.encode() + b"}", "bad_body"),
    ("box-a/status", b'{"state": "\\ud800", "ts": 1}', "bad_body"),
    ("box-a/telemetry", b"\xff\xfe\x00garbage", "bad_json"),
    ("box-a/telemetry", b"[" * 100_000, "bad_json"),
]


async def _publish(port: int, messages: Sequence[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for tail, payload in messages:
            await client.publish(f"{PREFIX}/{tail}", payload, qos=1)


def _admin(fleet: Fleet) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.admin}"}


def _quarantine(fleet: Fleet) -> dict[str, Any]:
    r = httpx.get(fleet.url + "/api/v1/quarantine", params={"limit": 1000}, headers=_admin(fleet), timeout=10)
    r.raise_for_status()
    return r.json()


def _seqs(fleet: Fleet, box: str) -> list[int]:
    return [row[0] for row in fleet.readings(box)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path).start()
    yield mosquitto
    mosquitto.stop()


def _start(tmp: Path, port: int, http_port: int | None = None) -> Fleet:
    fleet = start_fleet(tmp, mqtt_port=port, prefix=PREFIX, port=http_port)
    wait_for(lambda: httpx.get(fleet.url + "/healthz").json().get("mqtt") == "connected", 20, "bridge connected")
    return fleet


def _enroll(fleet: Fleet, box: str) -> None:
    r = httpx.post(fleet.url + "/api/v1/enroll", json={"token": fleet.token(), "box_id": box, "hardware": f"hw-{box}"})
    r.raise_for_status()


def test_poison_is_quarantined_and_acked_the_next_box_is_stored_and_a_restart_is_clean(
        tmp_path: Path, broker: Mosquitto) -> None:
    fleet = _start(tmp_path, broker.port)
    try:
        _enroll(fleet, "box-a")
        _enroll(fleet, "box-b")
        for n, (tail, payload, _) in enumerate(POISON):
            asyncio.run(_publish(broker.port, [(tail, payload), ("box-b/telemetry", _good("box-b", 3 * n + 1))]))
            wait_for(lambda n=n: _seqs(fleet, "box-b")[-1:] == [3 * n + 3], 10, f"box-b's batch after poison {n}")
        kept = _quarantine(fleet)
        assert [m["reason"] for m in kept["messages"]] == [reason for _, _, reason in POISON]
        assert kept["total"] == len(POISON)
        first = kept["messages"][0]
        assert first["topic"] == f"{PREFIX}/box-a/telemetry" and HUGE in first["payload_text"]
        assert kept["messages"][7]["size"] == 100_000 and kept["messages"][7]["truncated"]
        health = httpx.get(fleet.url + "/healthz").json()
        assert health["status"] == "ok" and health["mqtt"] == "connected"
        metrics = httpx.get(fleet.url + "/metrics").text
        assert 'quanedge_fleet_quarantined_total{reason="bad_row",transport="mqtt"} 3.0' in metrics
        assert _seqs(fleet, "box-a") == []
        cli = subprocess.run([sys.executable, "-m", "quanedge", "fleet", "quarantine", "list", "--server", fleet.url,
                              "--admin-token", fleet.admin, "--reason", "bad_json"],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert len(lines) == 2 and all("bad_json" in line and f"{PREFIX}/box-a/telemetry" in line for line in lines)
        assert "2 shown, 8 in quarantine" in cli.stderr
    finally:
        stop(fleet.proc)

    # While the server is down: one more poison, then box-b's next batch. The session is persistent
    # (the same replica: same host and HTTP port, so the same default replica id and session).
    asyncio.run(_publish(broker.port, [("box-a/telemetry", POISON[0][1]), ("box-b/telemetry", _good("box-b", 100))]))
    fleet = _start(tmp_path, broker.port, int(fleet.url.rsplit(":", 1)[1]))
    try:
        wait_for(lambda: _seqs(fleet, "box-b")[-1:] == [102], 15, "box-b's batch sent while the server was down")
        time.sleep(0.5)  # anything re-delivered would have arrived by now
        assert _quarantine(fleet)["total"] == len(POISON) + 1  # the old poison was acked: not back
        assert httpx.get(fleet.url + "/healthz").json()["mqtt"] == "connected"
        asyncio.run(_publish(broker.port, [("box-a/telemetry", _good("box-a", 1))]))
        wait_for(lambda: _seqs(fleet, "box-a") == [1, 2, 3], 10, "box-a's own good batch")
    finally:
        stop(fleet.proc)


class ExplodingStore(SqliteStore):
    """The old bug: an exception outside the FleetError tree from inside the store."""

    def ingest(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None = None) -> IngestResult:
        if box_id == "box-a":
            "\ud800".encode()  # UnicodeEncodeError, as SQLite's insert raised it
        return super().ingest(box_id, rows, report)

    def ingest_many(self, batches):  # the bridge's group commit meets the same bug
        if any(box_id == "box-a" for box_id, _, _ in batches):
            "\ud800".encode()
        return super().ingest_many(batches)


async def test_an_unexpected_exception_is_quarantined_as_internal_and_the_bridge_goes_on(
        tmp_path: Path, broker: Mosquitto) -> None:
    settings = ServerSettings(db_path=tmp_path / "x.db", admin_token="a" * 32, mqtt_host="127.0.0.1",
                              mqtt_port=broker.port, topic_prefix=PREFIX)
    store = ExplodingStore(settings.db_path)
    for box in ("box-a", "box-b"):
        store.enroll(store.create_enrollment_token(60, 1, ""), box, f"hw-{box}", "", "", [])
    metrics = FleetMetrics(store)
    bridge = MqttBridge(settings, IngestService(store, metrics, max_batch=100, max_body_bytes=10**6),
                        backoff=Backoff(0.05, 0.2))
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.connected.wait(), 10)
        await _publish(broker.port, [("box-a/telemetry", _good("box-a", 1)), ("box-b/telemetry", _good("box-b", 1))])
        deadline = time.monotonic() + 10
        while len(store.readings("box-b")) < 3:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        [kept] = store.quarantined()
        assert (kept.reason, kept.topic) == ("internal", f"{PREFIX}/box-a/telemetry")
        assert kept.detail.startswith("UnicodeEncodeError")
        assert metrics.value("quanedge_fleet_quarantined_total", transport="mqtt", reason="internal") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
