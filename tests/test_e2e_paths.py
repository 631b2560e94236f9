"""End to end on real processes: RTU on a pty -> agent -> real mosquitto -> fleet server; and the disk cap."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
from e2e_support import (
    box_config,
    enroll,
    free_port,
    health,
    http_uplink,
    mqtt_uplink,
    rtu_bus,
    start_agent,
    start_fleet,
    start_sim,
    stop,
    tcp_bus,
    wait_for,
)

from agent.enroll import Credential, save_credential


def test_rtu_over_pty_through_the_shared_broker_into_the_fleet_server(tmp_path: Path) -> None:
    prefix = f"qe-rtu-{secrets.token_hex(3)}"
    fleet = start_fleet(tmp_path, mqtt_port=1883, prefix=prefix)
    sim, info = start_sim(tmp_path, "--rtu", "--baudrate", "19200")
    agent = None
    try:
        config, hport = box_config(tmp_path, box="rtu-box", bus=rtu_bus(info["rtu_path"]), devices=[("wxt-1", 1)],
                                   uplink=mqtt_uplink(1883, prefix), poll_s=0.5)
        enroll(fleet, config)
        agent = start_agent(tmp_path, config)
        rows = wait_for(lambda: [r for r in fleet.readings("rtu-box") if r[3] == "air_temperature"], 30,
                        "temperature readings in the fleet server")
        h = health(hport)
        assert h["devices"]["wxt-1"]["online"] is True
        assert all(-50 < r[4] < 60 and r[5] == "degC" for r in rows)
        metrics = httpx.get(f"http://127.0.0.1:{hport}/metrics", timeout=2).text
        assert 'quanedge_device_online{device="wxt-1"} 1.0' in metrics
    finally:
        stop(agent)
        stop(sim)
        stop(fleet.proc)


def test_disk_cap_evicts_routine_first_and_the_counters_say_so(tmp_path: Path) -> None:
    sim, info = start_sim(tmp_path, "--tcp", "0", *sum((["--unit", str(u)] for u in range(1, 6)), []))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the uplink stays down
    agent = None
    try:
        config, hport = box_config(tmp_path, box="cap-box", bus=tcp_bus(info["tcp_port"]),
                                   devices=[(f"wxt-{u}", u) for u in range(1, 6)], uplink=http_uplink(dead),
                                   poll_s=0.02, max_bytes="1MiB")
        save_credential(tmp_path / "box" / "credential.json", Credential("cap-box", "not-used", dead))
        agent = start_agent(tmp_path, config)

        def evicting() -> str | None:
            text = httpx.get(f"http://127.0.0.1:{hport}/metrics", timeout=2).text
            return text if 'reason="disk_cap"' in text else None
        text = wait_for(evicting, 90, "eviction at the disk cap", interval=0.5)
        line = next(ln for ln in text.splitlines()
                    if ln.startswith("quanedge_readings_dropped_total") and 'reason="disk_cap"' in ln)
        assert 'cls="routine"' in line and float(line.split()[-1]) > 0
        assert not any('cls="alarm"' in ln and "dropped" in ln and not ln.startswith("#") for ln in text.splitlines())
        h = health(hport)
        assert h["status"] == "degraded" and h["buffer_depth"] > 0
        db, wal = tmp_path / "box" / "buffer.db", tmp_path / "box" / "buffer.db-wal"
        for _ in range(20):  # while the agent is writing at the cap
            assert db.stat().st_size <= 768 * 1024, db.stat().st_size  # max_page_count: SQLite enforces it
            assert (wal.stat().st_size if wal.exists() else 0) <= 256 * 1024  # the WAL's share of the cap
            time.sleep(0.1)
        stop(agent)
        size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        assert size <= 1024 * 1024, size
    finally:
        stop(agent)
        stop(sim)
