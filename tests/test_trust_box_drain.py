"""Issue 9, finding 7, on a real agent process: the fleet server refuses one row of a batch as
malformed (422 {"error","detail","row","field"}); the agent quarantines that row in its buffer file,
delivers every other row, and /healthz and /metrics show the quarantine.

The "fleet server" here is a small loopback HTTP server speaking the ingest contract, so the test
decides which row is bad (a plate the server's validation would refuse).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from agent.enroll import Credential, save_credential
from drivers.plate_camera.sim import PlateCameraSim
from tests.e2e_support import free_port, start_agent, stop, wait_for

BAD_PLATE = "京X00000"

CONFIG = """
[box]
id = "drain-box"
data_dir = "{data}"

[uplink]
kind = "http"
batch_size = 20
[uplink.http]
server = "{server}"

[health]
listen = "127.0.0.1:{hport}"

[[device]]
name = "gate"
kind = "plate_camera"
listen = "127.0.0.1:{port}"
allow_list = ["鲁A12345"]
cameras = [{{ serial = "cam-1", sources = ["127.0.0.1"] }}]
poll_s = 60
"""


class Ingest(BaseHTTPRequestHandler):
    stored: list[list] = []
    refused: list[list] = []

    def do_POST(self) -> None:
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["readings"]
        for i, row in enumerate(rows):
            if row[8] and BAD_PLATE in row[8]:
                Ingest.refused.append(row)
                self._answer(422, {"error": "invalid_row", "detail": f"row {i}: text refused", "row": i,
                                   "field": "text"})
                return
        Ingest.stored.extend(rows)
        self._answer(200, {"accepted": len(rows), "duplicates": 0, "max_seq": rows[-1][0]})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Ingest.stored, Ingest.refused = [], []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_row_the_server_refuses_is_quarantined_and_the_rest_delivered(tmp_path: Path, server: str) -> None:
    port, hport = free_port(), free_port()
    config = tmp_path / "box.toml"
    config.write_text(CONFIG.format(data=tmp_path / "box", server=server, hport=hport, port=port), encoding="utf-8")
    save_credential(tmp_path / "box" / "credential.json", Credential("drain-box", "box-token", server))
    agent = start_agent(tmp_path, config)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{hport}/healthz", timeout=1).json()["devices"]["gate"]
                 .get("listening"), 30, "the receiver listening")

        async def cars() -> list:
            async with PlateCameraSim(f"http://127.0.0.1:{port}/", serialno="cam-1", timeout_s=5) as cam:
                return [await cam.recognise(p) for p in ("鲁A12345", BAD_PLATE, "鲁A12345", "鲁B22222")]

        assert asyncio.run(cars()) == [True, False, True, False]  # all four acknowledged (stored)

        def delivered() -> list:
            plates = [json.loads(r[8])["plate"] for r in Ingest.stored if r[3] == "plate"]
            return plates if len(plates) == 3 else []

        assert wait_for(delivered, 30, "the three good plate events delivered") == ["鲁A12345", "鲁A12345", "鲁B22222"]
        health = wait_for(lambda: (h := httpx.get(f"http://127.0.0.1:{hport}/healthz", timeout=2).json())
                          ["uplink"]["quarantined"] == 1 and h, 10, "the quarantine in /healthz")
        assert health["buffer"]["quarantined"] == 1 and "field text" in health["uplink"]["last_quarantine"]
        metrics = httpx.get(f"http://127.0.0.1:{hport}/metrics", timeout=2).text
        assert 'quanedge_readings_quarantined_total{uplink="http"} 1.0' in metrics
        assert "quanedge_quarantine_rows 1.0" in metrics
        assert len(Ingest.refused) == 1  # refused once, then quarantined: not retried round and round
    finally:
        stop(agent)
    db = sqlite3.connect(tmp_path / "box" / "buffer.db")
    [(row, reason)] = db.execute("SELECT row, reason FROM quarantine").fetchall()
    db.close()
    assert BAD_PLATE in json.loads(json.loads(row)[8])["plate"] and "422" in reason  # kept, with its reason
