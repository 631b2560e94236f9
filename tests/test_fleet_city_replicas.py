"""Replicas as real processes: two `quanedge fleet serve` on one PostgreSQL and one mosquitto.

1,000 simulated boxes check in (half through each replica) while a rollout runs in waves, and send
telemetry over MQTT (the replicas split it through their shared subscription). One replica is
killed with -9 mid-rollout and restarted. Then: every reading is stored exactly once, every box's
action is in one final state, no box was assigned twice, and no wave took more than its size.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiomqtt
import httpx
import psycopg
import pytest
from e2e_support import Mosquitto, free_port, stop, wait_for
from pg_support import pg_schema

from core.reading import Reading
from fleet_server.rollout.model import Inventory
from fleet_server.store.pg import PgStore
from hil_tests.fleet_harness import agent_target, make_update_repo
from hil_tests.fleet_sim import FleetSim, SimConfig

BOXES = 1000
MESSAGES_PER_BOX = 3
ROWS_PER_MESSAGE = 4
ADMIN = "city-replicas-admin-token-0123456789"
PREFIX = "city"
WAVES = ["2%", "20%", "100%"]
# 1 % of installs fail at random; a wave pauses above 20 % errors, judged early after 50 finished
# (or the whole of a smaller wave): a fair run never breaches, a broken one (double assignment,
# lost reports) would


def serve(tmp: Path, db: str, port: int, replica: str, mqtt_port: int, repo: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "quanedge", "fleet", "serve", "--db", db, "--port", str(port), "--admin-token",
            ADMIN, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port), "--topic-prefix", PREFIX,
            "--replica-id", replica, "--tuf-repo", str(repo), "--checkin-interval", "2"]
    with open(tmp / f"{replica}.log", "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz", timeout=1).json().get("mqtt") == "connected", 60,
             f"replica {replica} up with its MQTT bridge")
    return proc


def telemetry(box_id: str, message: int) -> bytes:
    first = message * ROWS_PER_MESSAGE + 1
    rows = [Reading("wx", "air_temperature", 20.0 + s / 100, "degC", 1_700_000_000.0 + s, seq=s).to_row()
            for s in range(first, first + ROWS_PER_MESSAGE)]
    return json.dumps({"box_id": box_id, "readings": rows}).encode()


async def publish_all(port: int, boxes: list[str]) -> None:
    """Every box's messages, QoS 1, spread over a few seconds (the rollout runs meanwhile)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="city-publisher") as client:
        for message in range(MESSAGES_PER_BOX):
            for box_id in boxes:
                await client.publish(f"{PREFIX}/{box_id}/telemetry", telemetry(box_id, message), qos=1)
            await asyncio.sleep(1.0)


@pytest.mark.slow
def test_two_replicas_a_thousand_boxes_a_rollout_and_a_kill(tmp_path: Path) -> None:
    with pg_schema() as (url, schema):
        db = f"{url}?options={quote(f'-c search_path={schema}')}"
        store = PgStore(url, schema=schema, max_size=2)
        config = SimConfig(boxes=BOXES, prefix="c", failure_rate=0.01, step_s=0.3, seed=7, connections=16)
        inventory = Inventory(config.agent_version, config.hardware, {}, {})
        credentials = dict(zip(config.box_ids(), store.provision_boxes(
            [(b, config.hardware, config.site, config.tags, inventory) for b in config.box_ids()])))
        store.close()
        repo = make_update_repo(tmp_path / "repo")
        broker = Mosquitto(tmp_path)
        with broker.conf.open("a") as conf:  # as deploy/mosquitto: a slow consumer's queue is not cut at 1,000
            conf.write("max_queued_messages 1000000\nmax_inflight_messages 100\n")
        broker.start()
        ports = [free_port(), free_port()]
        replicas = [serve(tmp_path, db, ports[i], f"replica-{i}", broker.port, repo) for i in range(2)]
        try:
            r = httpx.post(f"http://127.0.0.1:{ports[0]}/api/v1/rollouts", timeout=60,
                           headers={"Authorization": f"Bearer {ADMIN}"},
                           json={"kind": "agent", "target_name": agent_target("0.2.0"), "waves": WAVES,
                                 "timeout_s": 60, "error_pct": 20, "min_finished": 50})
            assert r.status_code in (200, 201), r.text
            rollout_id = r.json()["rollout_id"]
            ids = config.box_ids()
            halves = [dict((b, credentials[b]) for b in ids[i::2]) for i in range(2)]
            sims = [FleetSim(f"http://127.0.0.1:{ports[i]}", config, halves[i]) for i in range(2)]

            def progress() -> dict[str, Any]:
                view: dict[str, Any] = httpx.get(f"http://127.0.0.1:{ports[0]}/api/v1/rollouts/{rollout_id}",
                                                 timeout=10, headers={"Authorization": f"Bearer {ADMIN}"}).json()
                return view

            async def run() -> None:
                tasks = [asyncio.create_task(s.run()) for s in sims]
                try:
                    await publish_all(broker.port, ids)
                    # mid-rollout: kill replica 1 and bring it back on the same port and replica id
                    await asyncio.to_thread(wait_for, lambda: _finished(progress()) > 100, 120,
                                            "the rollout past its first waves")
                    replicas[1].send_signal(signal.SIGKILL)
                    replicas[1].wait()
                    await asyncio.sleep(2.0)
                    replicas[1] = await asyncio.to_thread(serve, tmp_path, db, ports[1], "replica-1", broker.port,
                                                          repo)
                    await asyncio.to_thread(wait_for, lambda: progress()["status"] in ("finished", "paused"),
                                            240, "the rollout to end")
                finally:
                    for s in sims:
                        s.stop()
                    await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(run())
            view = progress()
            with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
                def count() -> int:
                    return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])

                try:
                    wait_for(lambda: count() >= BOXES * MESSAGES_PER_BOX * ROWS_PER_MESSAGE, 60,
                             "every telemetry message stored")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {count()} readings stored") from None
                stored, distinct = conn.execute(
                    "SELECT count(*), count(DISTINCT (box_id, seq)) FROM readings").fetchone()
                states = dict(conn.execute(
                    "SELECT state, count(*) FROM rollout_boxes WHERE rollout_id = %s GROUP BY state",
                    (rollout_id,)).fetchall())
                per_box = conn.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM rollout_boxes"
                                       " WHERE rollout_id = %s GROUP BY box_id) t", (rollout_id,)).fetchone()[0]
                waves = conn.execute("SELECT wave, capacity, assigned FROM rollout_waves WHERE rollout_id = %s"
                                     " ORDER BY wave", (rollout_id,)).fetchall()
                rows_per_wave = dict(conn.execute(
                    "SELECT wave, count(*) FROM rollout_boxes WHERE rollout_id = %s AND wave IS NOT NULL"
                    " GROUP BY wave", (rollout_id,)).fetchall())
                still_open = conn.execute("SELECT count(*) FROM rollout_boxes WHERE open = 1").fetchone()[0]
                reasons = conn.execute("SELECT reason_code, reason, count(*) FROM rollout_boxes WHERE rollout_id = %s"
                                       " AND state = 'failure' GROUP BY 1, 2", (rollout_id,)).fetchall()
            assert stored == distinct == BOXES * MESSAGES_PER_BOX * ROWS_PER_MESSAGE, "a reading lost or doubled"
            assert per_box == 1, "a box has two rows in one rollout"
            assert still_open == 0 and set(states) <= {"success", "failure", "rejected"}, (
                states, reasons, view["status"], view.get("pause_reason"),
                [(w["assigned"], w["capacity"]) for w in view["waves"]])
            assert sum(states.values()) == BOXES
            for wave, capacity, assigned in waves:
                assert assigned <= capacity, f"wave {wave} took {assigned} boxes for {capacity} places"
                assert rows_per_wave.get(wave, 0) == assigned
            assert view["status"] == "finished", view
        finally:
            for proc in replicas:
                stop(proc)
            broker.stop()


def _finished(view: dict[str, object]) -> int:
    waves = view.get("waves") or []
    return sum(int(w.get("succeeded", 0)) + int(w.get("failed", 0)) + int(w.get("rejected", 0))
               for w in waves if isinstance(w, dict))
