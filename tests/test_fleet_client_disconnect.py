"""A box that dies mid-upload, against a real `quanedge fleet serve` process: the server counts it
in /metrics and logs one line, never a traceback, and stores nothing of the cut body."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx

from tests.e2e_support import PY, free_port, stop, wait_for

ADMIN = "admin-token-for-the-disconnect-test"


def disconnects(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith('quanedge_fleet_client_disconnects_total{route="telemetry"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_box_dying_mid_upload_is_counted_not_shouted(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "fleet.log"
    with open(log, "ab") as err:  # the child has its own copy of the descriptor
        proc = subprocess.Popen([*PY, "fleet", "serve", "--db", str(tmp_path / "fleet.db"), "--port", str(port),
                                 "--admin-token", ADMIN], stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/healthz", timeout=1).status_code == 200, 30, "fleet server")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        token = httpx.post(url + "/api/v1/enrollment-tokens", headers=admin, json={"ttl_s": 600, "max_uses": 1},
                           timeout=10).json()["token"]
        r = httpx.post(url + "/api/v1/enroll", json={"token": token, "box_id": "box-1", "hardware": "hw",
                                                   "agent_version": "0.1.0"}, timeout=10)
        assert r.status_code == 200, r.text
        credential = r.json()["credential"]
        rows = [[seq, 1_700_000_000.0 + seq, "rs1", "t", 20.5, "degC", 0, "routine", None] for seq in range(1, 2001)]
        body = json.dumps({"box_id": "box-1", "readings": rows}).encode()
        for _ in range(3):  # three boxes die, each after sending half of its batch
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"POST /api/v1/telemetry HTTP/1.1\r\nHost: fleet\r\nAuthorization: Bearer {credential}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                s.sendall(body[:len(body) // 2])
        wait_for(lambda: disconnects(url) == 3, 10, "three disconnects counted")
        # the server goes on: a whole batch is stored, and nothing of the cut ones was
        r = httpx.post(url + "/api/v1/telemetry", content=body, timeout=10,
                       headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"})
        assert r.json() == {"accepted": 2000, "duplicates": 0, "max_seq": 2000}
    finally:
        stop(proc)
    text = log.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text and " ERROR " not in text, text[-3000:]
    gone = [line for line in text.splitlines() if "went away during its telemetry upload" in line]
    assert len(gone) == 3 and all(" INFO " in line and "box-1" in line for line in gone), text[-3000:]
