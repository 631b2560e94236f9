"""A mosquitto started from the SHIPPED config (deploy/mosquitto/mosquitto.conf) on a free port.

Only the port, the data paths and (as root) `user root` are rewritten; the dynsec plugin, no
anonymous access, persistence, autosave and queue limits are exactly what ships. The dynsec file
is made by `mosquitto_ctrl dynsec init` and the bridge account by `quanedge fleet broker init`,
as the README's bootstrap says.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e_support import PY, free_port, stop, wait_for

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def shipped_config(port: int, data_dir: Path, tls: tuple[int, Path, Path] | None = None) -> str:
    """The shipped config on `port`; with `tls` = (port, cert, key) its TLS listener example enabled."""
    text = SHIPPED.read_text()
    text, n1 = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text, n2 = re.subn(r"/var/lib/mosquitto/", f"{data_dir}/", text)
    assert (n1, n2) == (1, 2), "the shipped config changed shape: update broker_support"
    if tls is not None:
        tls_port, cert, key = tls
        for old, new in ((r"^#listener 8883$", f"listener {tls_port} 127.0.0.1"),
                         (r"^#certfile .*$", f"certfile {cert}"), (r"^#keyfile .*$", f"keyfile {key}"),
                         (r"^#tls_version (.*)$", r"tls_version \1")):
            text, n = re.subn(old, new, text, flags=re.M)
            assert n == 1, f"the shipped TLS example changed shape: {old}"
    return ("user root\n" if os.geteuid() == 0 else "") + text


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), made with openssl."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class SecureBroker:
    def __init__(self, tmp: Path, prefix: str = "quanedge", *, tls: tuple[Path, Path] | None = None) -> None:
        if shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None:
            raise RuntimeError("mosquitto and mosquitto_ctrl are needed (apt-get install mosquitto mosquitto-clients)")
        self.port = free_port()
        self.dir = tmp / f"broker-{self.port}"
        self.dir.mkdir()
        self.prefix = prefix
        self.admin = ("quanedge-admin", secrets.token_urlsafe(16))
        self.bridge = ("quanedge-fleet", secrets.token_urlsafe(16))
        self.conf = self.dir / "mosquitto.conf"
        self.tls_port = free_port() if tls is not None else None
        self.conf.write_text(shipped_config(self.port, self.dir, None if tls is None else (self.tls_port, *tls)))
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(self.dir / "dynamic-security.json"), *self.admin],
                       check=True, capture_output=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> SecureBroker:
        with open(self.dir / "log", "ab") as log:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_for(up, 10, f"mosquitto on {self.port} (log: {self.dir / 'log'})")
        return self

    def bootstrap(self) -> None:
        out = subprocess.run(
            [*PY, "fleet", "broker", "init", "--mqtt-port", str(self.port), "--admin-username", self.admin[0],
             "--admin-password", self.admin[1], "--bridge-username", self.bridge[0],
             "--bridge-password", self.bridge[1], "--topic-prefix", self.prefix],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class SecureFleet:
    proc: subprocess.Popen
    url: str
    admin: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def token(self, uses: int = 1) -> str:
        r = httpx.post(self.url + "/api/v1/enrollment-tokens", headers=self.headers(),
                       json={"ttl_s": 600, "max_uses": uses}, timeout=10)
        r.raise_for_status()
        return r.json()["token"]

    def readings(self, box: str) -> list[list]:
        r = httpx.get(f"{self.url}/api/v1/boxes/{box}/readings", headers=self.headers(), timeout=10)
        r.raise_for_status()
        return r.json()["readings"]

    def box(self, box: str) -> dict:
        r = httpx.get(f"{self.url}/api/v1/boxes/{box}", headers=self.headers(), timeout=10)
        r.raise_for_status()
        return r.json()


def start_secure_fleet(tmp: Path, broker: SecureBroker, *extra: str) -> SecureFleet:
    port, admin = free_port(), secrets.token_urlsafe(16)
    args = [*PY, "fleet", "serve", "--db", str(tmp / "fleet.db"), "--port", str(port), "--admin-token", admin,
            "--topic-prefix", broker.prefix, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
            "--mqtt-username", broker.bridge[0], "--mqtt-password", broker.bridge[1],
            "--broker-admin-username", broker.admin[0], "--broker-admin-password", broker.admin[1],
            "--mqtt-public-host", "127.0.0.1", "--mqtt-public-port", str(broker.port), *extra]
    with open(tmp / "fleet.log", "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz", timeout=1).json().get("mqtt") == "connected", 30,
             f"fleet server with its bridge (log: {tmp / 'fleet.log'})")
    return SecureFleet(proc, url, admin)
