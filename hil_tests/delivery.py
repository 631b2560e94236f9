"""Delivery scenarios on real processes: mosquitto, `quanedge fleet serve`, and a box under load
(hil_tests.load_box), with kill -9 where the field does it. Used by tests/test_e2e_zero_loss.py
(small) and `python -m bench.delivery` (>= 20,000 readings each).

The broker runs the SHIPPED config (deploy/mosquitto/mosquitto.conf: dynamic security, per-box
accounts, persistence), with only the port, the data directory and, where a scenario asks for the
failure it studies, `autosave_interval` / `max_queued_messages` rewritten:
- queue_overflow: the fleet server is killed (-9) and stays down while the box keeps sending and
  re-sending into a broker whose queue for the bridge holds only a few messages: the broker drops
  messages (its log says so) and the box must re-send them once the server is back.
- broker_crash: mosquitto's default autosave (1800 s): the fleet server is killed, then the broker
  is killed before it ever saved its queue; both come back empty-handed but the box still has
  every unacknowledged row.
- server_down: the fleet server is down for a while with the shipped config.
Afterwards: `lost` = readings the box took (every seq its buffer assigned) that the fleet server
does not hold; `gaps` = seq_gap alerts the server raised for the box (when it tracks them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
PY = [sys.executable, "-m", "quanedge"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))


def _kill(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Outcome:
    scenario: str
    taken: int
    stored: int
    lost: int
    gaps: int
    broker_dropped: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Rig:
    """One broker, one fleet server, one box, in `work` (a fresh directory)."""

    def __init__(self, work: Path, *, autosave_s: int | None = None, max_queued: int | None = None,
                 batch_size: int = 500, window: int = 4, ack_timeout_s: float = 3.0, ack: str = "fleet") -> None:
        if shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None:
            raise RuntimeError("mosquitto and mosquitto_ctrl are needed (apt-get install mosquitto mosquitto-clients)")
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.prefix = f"qd{secrets.token_hex(3)}"
        self.box_id = "load-box"
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.admin = ("quanedge-admin", secrets.token_urlsafe(16))
        self.bridge = ("quanedge-fleet", secrets.token_urlsafe(16))
        self.admin_token = secrets.token_urlsafe(24)
        self.broker_dir = work / "broker"
        self.broker_dir.mkdir(exist_ok=True)
        self.broker_log = self.broker_dir / "log"
        self.conf = self.broker_dir / "mosquitto.conf"
        self.conf.write_text(self._broker_config(autosave_s, max_queued))
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(self.broker_dir / "dynamic-security.json"),
                        *self.admin],
                       check=True, capture_output=True)
        self.batch_size, self.window, self.ack_timeout_s, self.ack = batch_size, window, ack_timeout_s, ack
        self.broker: subprocess.Popen | None = None
        self.fleet: subprocess.Popen | None = None
        self.box: subprocess.Popen | None = None
        self.box_state: dict[str, Any] = {}
        self._box_lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.http_port}"

    # -- the broker ----------------------------------------------------------------------------
    def _broker_config(self, autosave_s: int | None, max_queued: int | None) -> str:
        text = SHIPPED.read_text()
        text, n1 = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {self.mqtt_port} 127.0.0.1", text, flags=re.M)
        text, n2 = re.subn(r"/var/lib/mosquitto/", f"{self.broker_dir}/", text)
        if (n1, n2) != (1, 2):
            raise RuntimeError("the shipped broker config changed shape: update hil_tests/delivery.py")
        if autosave_s is not None:
            text, n = re.subn(r"^autosave_interval \d+$", f"autosave_interval {autosave_s}", text, flags=re.M)
            assert n == 1
        if max_queued is not None:
            text, n = re.subn(r"^max_queued_messages \d+$", f"max_queued_messages {max_queued}", text, flags=re.M)
            assert n == 1
        return ("user root\n" if os.geteuid() == 0 else "") + text + "\nlog_type all\n"

    def start_broker(self) -> None:
        with open(self.broker_log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.broker = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=0.5):
                return True
        wait_for(up, 15, f"mosquitto on {self.mqtt_port} (log {self.broker_log})")

    def kill_broker(self) -> None:
        _kill(self.broker)
        self.broker = None

    def broker_dropped(self) -> bool:
        """True when the broker logged dropping queued messages (the overflow really happened)."""
        try:
            return "are being dropped" in self.broker_log.read_text(errors="replace")
        except OSError:
            return False

    # -- the fleet server ----------------------------------------------------------------------
    def start_fleet(self, *, first: bool = False) -> None:
        if first:
            out = subprocess.run(
                [*PY, "fleet", "broker", "init", "--mqtt-port", str(self.mqtt_port), "--admin-username", self.admin[0],
                 "--admin-password", self.admin[1], "--bridge-username", self.bridge[0],
                 "--bridge-password", self.bridge[1], "--topic-prefix", self.prefix],
                capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"fleet broker init failed: {out.stderr[-2000:]}")
        args = [*PY, "fleet", "serve", "--db", str(self.work / "fleet.db"), "--port", str(self.http_port),
                "--admin-token", self.admin_token, "--topic-prefix", self.prefix, "--mqtt-host", "127.0.0.1",
                "--mqtt-port", str(self.mqtt_port), "--mqtt-username", self.bridge[0],
                "--mqtt-password", self.bridge[1], "--broker-admin-username", self.admin[0],
                "--broker-admin-password", self.admin[1], "--mqtt-public-host", "127.0.0.1",
                "--mqtt-public-port", str(self.mqtt_port)]
        with open(self.work / "fleet.log", "ab") as log:
            self.fleet = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: httpx.get(self.url + "/healthz", timeout=1).json().get("mqtt") == "connected", 60,
                 f"the fleet server and its bridge (log {self.work / 'fleet.log'})")

    def kill_fleet(self) -> None:
        _kill(self.fleet)
        self.fleet = None

    # -- the box -------------------------------------------------------------------------------
    def enroll_box(self) -> Path:
        from agent.config import load_config
        from agent.enroll import enroll

        config = self.work / "box.toml"
        config.write_text(
            f'[box]\nid = "{self.box_id}"\ndata_dir = "{self.work / "box"}"\n\n[buffer]\nmax_bytes = "256MB"\n\n'
            f'[uplink]\nkind = "mqtt"\nbatch_size = {self.batch_size}\n\n[uplink.mqtt]\nhost = "127.0.0.1"\n'
            f'port = {self.mqtt_port}\ntopic_prefix = "{self.prefix}"\nack_timeout_s = {self.ack_timeout_s}\n'
            f'window = {self.window}\nack = "{self.ack}"\n\n[uplink.http]\nserver = "{self.url}"\n')
        r = httpx.post(self.url + "/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {self.admin_token}"},
                       json={"ttl_s": 600, "max_uses": 1}, timeout=15)
        r.raise_for_status()
        enroll(load_config(config), self.url, r.json()["token"])
        return config

    def start_box(self, config: Path, readings: int, rate: float, *, prefill: bool = False) -> None:
        args = [sys.executable, "-m", "hil_tests.load_box", "--config", str(config), "--readings", str(readings),
                "--rate", str(rate)] + (["--prefill"] if prefill else [])
        with open(self.work / "box.log", "ab") as log:
            self.box = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        threading.Thread(target=self._read_box, args=(self.box,), daemon=True).start()

    def _read_box(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                state = json.loads(line)
            except ValueError:
                continue
            with self._box_lock:
                self.box_state = state

    def box_status(self) -> dict[str, Any]:
        with self._box_lock:
            return dict(self.box_state)

    def wait_box(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        return wait_for(lambda: (lambda s: s if s and pred(s) else None)(self.box_status()), timeout, what)

    def stop_box(self) -> None:
        _kill(self.box, signal.SIGTERM)
        self.box = None

    # -- the verdict ---------------------------------------------------------------------------
    def count(self, base: int, next_seq: int) -> tuple[int, int]:
        """(readings stored for the box within [base, next_seq), seq_gap alerts raised for it)."""
        db = sqlite3.connect(f"file:{self.work / 'fleet.db'}?mode=ro", uri=True, timeout=30)
        try:
            stored = db.execute("SELECT count(*) FROM readings WHERE box_id = ? AND seq >= ? AND seq < ?",
                                (self.box_id, base, next_seq)).fetchone()[0]
            has_alerts = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alerts'").fetchone()
            gaps = db.execute("SELECT count(*) FROM alerts WHERE box_id = ? AND kind = 'seq_gap'",
                              (self.box_id,)).fetchone()[0] if has_alerts else 0
        finally:
            db.close()
        return stored, gaps

    def close(self) -> None:
        self.stop_box()
        _kill(self.fleet, signal.SIGTERM)
        self.kill_broker()


def _finish(rig: Rig, name: str, t0: float, timeout: float) -> Outcome:
    if rig.ack == "broker":  # PUBACK-only: the box empties its buffer whatever the server got; let it settle
        rig.wait_box(lambda s: bool(s.get("done")), timeout, f"{name}: the box to empty its buffer")
        time.sleep(3.0)
    state = rig.wait_box(lambda s: bool(s.get("done")), timeout, f"{name}: the box to take and deliver everything "
                         f"(last status: {rig.box_status()})")
    base, next_seq = state["base"], state["next_seq"]
    taken = next_seq - base
    stored, gaps = rig.count(base, next_seq)
    return Outcome(name, taken, stored, taken - stored, gaps, rig.broker_dropped(), round(time.monotonic() - t0, 1))


def _started(rig: Rig, readings: int, rate: float) -> float:
    """Broker, fleet server and an enrolled box taking readings; returns once the first arrived."""
    rig.start_broker()
    rig.start_fleet(first=True)
    config = rig.enroll_box()
    t0 = time.monotonic()
    rig.start_box(config, readings, rate)
    rig.wait_box(lambda s: s.get("sent", 0) >= min(1000, readings // 4), 60, "the first readings to arrive")
    return t0


def queue_overflow(work: Path, readings: int, *, rate: float = 2000.0, down_s: float = 10.0,
                   timeout: float = 300.0, ack: str = "fleet") -> Outcome:
    """Fleet server killed while the box goes on; the broker's queue for it holds 5 messages.
    (ack="broker" runs the same with PUBACK-only delivery, to show what it loses.)"""
    rig = Rig(work, max_queued=5, batch_size=100, window=8, ack_timeout_s=2.0, ack=ack)
    try:
        t0 = _started(rig, readings, rate)
        rig.kill_fleet()
        time.sleep(down_s)
        rig.start_fleet()
        return _finish(rig, "queue_overflow", t0, timeout)
    finally:
        rig.close()


def broker_crash(work: Path, readings: int, *, rate: float = 2000.0, gap_s: float = 10.0,
                 timeout: float = 300.0, ack: str = "fleet") -> Outcome:
    """Fleet server kill -9, then the broker kill -9 `gap_s` later, with mosquitto's default autosave."""
    rig = Rig(work, autosave_s=1800, ack_timeout_s=3.0, ack=ack)
    try:
        t0 = _started(rig, readings, rate)
        rig.kill_fleet()
        time.sleep(gap_s)
        rig.kill_broker()
        time.sleep(1.0)
        rig.start_broker()
        rig.start_fleet()
        return _finish(rig, "broker_crash", t0, timeout)
    finally:
        rig.close()


def server_down(work: Path, readings: int, *, rate: float = 2000.0, down_s: float = 15.0,
                timeout: float = 300.0) -> Outcome:
    """The fleet server is down for `down_s` (shipped broker config)."""
    rig = Rig(work, ack_timeout_s=3.0)
    try:
        t0 = _started(rig, readings, rate)
        rig.kill_fleet()
        time.sleep(down_s)
        rig.start_fleet()
        return _finish(rig, "server_down", t0, timeout)
    finally:
        rig.close()


def drain_e2e(work: Path, readings: int, *, timeout: float = 600.0) -> tuple[float, Outcome]:
    """A full buffer drained through the broker to the fleet server with end-to-end acks: rows/s."""
    rig = Rig(work, batch_size=1000, window=4, ack_timeout_s=30.0)
    try:
        rig.start_broker()
        rig.start_fleet(first=True)
        config = rig.enroll_box()
        t0 = time.monotonic()
        rig.start_box(config, readings, rate=1e9, prefill=True)
        outcome = _finish(rig, "drain_e2e", t0, timeout)
        state = rig.box_status()
        return outcome.taken / max(state["drain_s"], 1e-9), outcome
    finally:
        rig.close()
