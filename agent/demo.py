"""`quanedge demo`: a simulated WXT530 -> agent -> fleet server, as real processes.

1. starts the fleet server (SQLite file, embedded default; the MQTT bridge too when a broker answers),
2. starts the WXT530 simulator over Modbus TCP,
3. writes a box config, creates an enrollment token and enrolls the box,
4. runs the agent (MQTT uplink when the broker answers, HTTP otherwise) and shows progress,
5. prints what the fleet server stored and checks it: every seq once, none missing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from core.errors import QuanedgeError

console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "quanedge", *args], stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise QuanedgeError(f"{url} did not come up within {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_demo(*, seconds: float = 20.0, workdir: Path | None = None, broker: str = "127.0.0.1:1883") -> int:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="quanedge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    admin = secrets.token_urlsafe(16)
    use_mqtt = broker_reachable(broker)
    prefix = f"quanedge-demo-{secrets.token_hex(3)}"
    server_port, health_port = free_port(), free_port()
    server_url = f"http://127.0.0.1:{server_port}"
    procs: list[subprocess.Popen] = []
    console.rule("[bold]Quanedge demo")
    console.print(f"work dir: {work}")
    console.print(f"uplink: {'MQTT via ' + broker if use_mqtt else 'HTTP (no broker reachable at ' + broker + ')'}")
    try:
        fleet_args = ["fleet", "serve", "--db", str(work / "fleet.db"), "--port", str(server_port),
                      "--admin-token", admin, "--topic-prefix", prefix]
        if use_mqtt:
            host, _, port = broker.rpartition(":")
            fleet_args += ["--mqtt-host", host, "--mqtt-port", port]
        fleet = _spawn(fleet_args, work / "fleet.log")
        procs.append(fleet)
        _wait_http(server_url + "/healthz")
        console.print(f"[green]fleet server[/] up at {server_url} (SQLite {work / 'fleet.db'})")

        sim = _spawn(["sim", "wxt530", "--tcp", "0", "--seed", "7"], work / "sim.log")
        procs.append(sim)
        line = sim.stdout.readline().decode() if sim.stdout else ""
        if not line:
            raise QuanedgeError(f"simulator did not start; see {work / 'sim.log'}")
        sim_port = json.loads(line)["tcp_port"]
        console.print(f"[green]WXT530 simulator[/] serving Modbus TCP on 127.0.0.1:{sim_port}")

        config = work / "box.toml"
        config.write_text(_box_toml(work, sim_port, health_port, server_url, use_mqtt, broker, prefix))
        r = httpx.post(server_url + "/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"},
                       json={"ttl_s": 600, "max_uses": 1, "note": "demo"}, timeout=10)
        r.raise_for_status()
        token = r.json()["token"]
        from agent.config import load_config
        from agent.enroll import enroll

        enroll(load_config(config), server_url, token)
        console.print("[green]box demo-pole-01[/] enrolled")

        agent = _spawn(["agent", "run", "--config", str(config)], work / "agent.log")
        procs.append(agent)
        _wait_http(f"http://127.0.0.1:{health_port}/metrics")
        with console.status("agent running") as status:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if agent.poll() is not None:
                    raise QuanedgeError(f"agent exited early; see {work / 'agent.log'}")
                h = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2).json()
                status.update(f"agent running: buffer depth {h['buffer_depth']}, sent {h['uplink']['sent']}, "
                              f"uplink connected {h['uplink']['connected']}  ({end - time.monotonic():.0f} s left)")
                time.sleep(1)
        _stop(agent)  # SIGTERM: stores what is queued, closes the buffer
        # Let the last batch travel; then read back everything the server stored.
        time.sleep(2)
        return _summary(server_url, admin)
    finally:
        for p in reversed(procs):
            _stop(p)


def _summary(server_url: str, admin: str) -> int:
    rows: list[list] = []
    after = 0
    headers = {"Authorization": f"Bearer {admin}"}
    while True:
        r = httpx.get(f"{server_url}/api/v1/boxes/demo-pole-01/readings",
                      params={"after_seq": after, "limit": 5000}, headers=headers, timeout=10)
        r.raise_for_status()
        batch = r.json()["readings"]
        if not batch:
            break
        rows.extend(batch)
        after = batch[-1][0]
    seqs = [row[0] for row in rows]
    latest: dict[str, list] = {}
    for row in rows:
        latest[row[3]] = row
    table = Table(title=f"fleet server: {len(rows)} readings stored for demo-pole-01 (latest per point)")
    for col in ("point", "value", "unit", "quality", "class", "seq"):
        table.add_column(col)
    for point in sorted(latest):
        row = latest[point]
        table.add_row(point, "missing" if row[4] is None else f"{row[4]:.1f}", row[5], str(row[6]), row[7], str(row[0]))
    console.print(table)
    complete = bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    if complete:
        console.print(f"[bold green]OK[/]: {len(seqs)} readings, seq {seqs[0]}..{seqs[-1]}, "
                      "each stored exactly once, none missing")
        return 0
    console.print(f"[bold red]FAILED[/]: stored seqs are not contiguous ({len(seqs)} rows)")
    return 1


def _box_toml(work: Path, sim_port: int, health_port: int, server_url: str, use_mqtt: bool, broker: str,
              prefix: str) -> str:
    host, _, port = broker.rpartition(":")
    uplink = (f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "{host}"\nport = {port}\n'
              f'topic_prefix = "{prefix}"\n' if use_mqtt else
              f'[uplink]\nkind = "http"\n\n[uplink.http]\nserver = "{server_url}"\n')
    return f"""# Written by `quanedge demo`.
[box]
id = "demo-pole-01"
site = "lixia-demo"
hardware = "{os.uname().machine}"
data_dir = "{work / 'box'}"

[buffer]
max_bytes = "64MB"

{uplink}
[health]
listen = "127.0.0.1:{health_port}"

[[bus]]
name = "gateway-1"
kind = "tcp"
host = "127.0.0.1"
port = {sim_port}
timeout_ms = 300

[[device]]
name = "wxt-1"
bus = "gateway-1"
profile = "vaisala_wxt530"
unit = 1
poll_s = 1.0
"""
