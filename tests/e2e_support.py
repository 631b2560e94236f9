"""Launchers for end-to-end tests: real processes (fleet server, simulators, agent, mosquitto)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PY = [sys.executable, "-m", "quanedge"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Fleet:
    proc: subprocess.Popen
    url: str
    admin: str

    def token(self) -> str:
        r = httpx.post(self.url + "/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {self.admin}"},
                       json={"ttl_s": 600, "max_uses": 1, "note": "test"}, timeout=10)
        r.raise_for_status()
        return r.json()["token"]

    def readings(self, box: str) -> list[list]:
        rows, after = [], 0
        while True:
            r = httpx.get(f"{self.url}/api/v1/boxes/{box}/readings", params={"after_seq": after, "limit": 10000},
                          headers={"Authorization": f"Bearer {self.admin}"}, timeout=30)
            r.raise_for_status()
            batch = r.json()["readings"]
            if not batch:
                return rows
            rows.extend(batch)
            after = batch[-1][0]


def start_fleet(tmp: Path, *, mqtt_port: int | None = None, prefix: str = "quanedge", port: int | None = None,
                admin: str | None = None, db: str | None = None, log_name: str = "fleet.log") -> Fleet:
    """A `quanedge fleet serve` on `port` (a free one by default), its database in `tmp` or `db` (a
    PostgreSQL URL); a restart with the same tmp, port and admin token is the same server."""
    port, admin = port or free_port(), admin or secrets.token_urlsafe(12)
    args = [*PY, "fleet", "serve", "--db", db or str(tmp / "fleet.db"), "--port", str(port), "--admin-token", admin,
            "--topic-prefix", prefix]
    if mqtt_port is not None:
        args += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port)]
    with open(tmp / log_name, "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz", timeout=1).status_code == 200, 30, "fleet server")
    return Fleet(proc, url, admin)


def start_sim(tmp: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    with open(tmp / "sim.log", "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen([*PY, "sim", "wxt530", *args], stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line, f"simulator did not start: {(tmp / 'sim.log').read_text()[-2000:]}"
    return proc, json.loads(line)


def box_config(tmp: Path, *, box: str, bus: str, devices: list[tuple[str, int]], uplink: str, poll_s: float = 0.2,
               max_bytes: str = "64MB") -> tuple[Path, int]:
    """Writes box.toml; returns (path, health port)."""
    health = free_port()
    devs = "".join(f'\n[[device]]\nname = "{n}"\nbus = "b1"\nprofile = "vaisala_wxt530"\n'
                   f'unit = {u}\npoll_s = {poll_s}\n'
                   for n, u in devices)
    path = tmp / "box.toml"
    path.write_text(f'[box]\nid = "{box}"\ndata_dir = "{tmp / "box"}"\n\n[buffer]\nmax_bytes = "{max_bytes}"\n\n'
                    f'{uplink}\n\n[health]\nlisten = "127.0.0.1:{health}"\n\n{bus}\n{devs}')
    return path, health


def http_uplink(url: str, batch_size: int = 500) -> str:
    return f'[uplink]\nkind = "http"\nbatch_size = {batch_size}\n\n[uplink.http]\nserver = "{url}"'


def mqtt_uplink(port: int, prefix: str, batch_size: int = 500) -> str:
    return (f'[uplink]\nkind = "mqtt"\nbatch_size = {batch_size}\n\n[uplink.mqtt]\nhost = "127.0.0.1"\n'
            f'port = {port}\ntopic_prefix = "{prefix}"')


def tcp_bus(port: int) -> str:
    return f'[[bus]]\nname = "b1"\nkind = "tcp"\nhost = "127.0.0.1"\nport = {port}\ntimeout_ms = 300'


def rtu_bus(path: str, baudrate: int = 19200) -> str:
    return f'[[bus]]\nname = "b1"\nkind = "rtu"\nport = "{path}"\nbaudrate = {baudrate}\ntimeout_ms = 300'


def start_agent(tmp: Path, config: Path, env: dict | None = None, main: list[str] | None = None) -> subprocess.Popen:
    """`main`: how python starts the agent CLI (default `-m agent.cli`; pause_points.py adds test hooks)."""
    cmd = [sys.executable, *main] if main else PY
    with open(tmp / "agent.log", "ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen([*cmd, "agent", "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                stderr=log, env={**os.environ, **(env or {})})


def health(port: int) -> dict:
    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    return r.json()


def enroll(fleet: Fleet, config: Path) -> None:
    from agent.config import load_config
    from agent.enroll import enroll as do_enroll

    do_enroll(load_config(config), fleet.url, fleet.token())


class Mosquitto:
    """A private broker on a free port (with persistence), for tests that stop or configure one."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.port = port or free_port()
        self.dir = tmp / f"mosquitto-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        # As root, mosquitto drops to its own user and then cannot write persistence into our temp
        # dir: the broker would "persist" nothing and lose the fleet bridge's session on restart.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {self.dir}/\nautosave_interval 1\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        with open(self.dir / "log", "ab") as log:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_for(up, 10, f"mosquitto on {self.port}")
        return self

    def stop(self) -> None:
        stop(self.proc)
