"""The fleet side of the check-in contract for the updater tests: check-in with ETag/304,
inventory, status reports (409 once closed), and the telemetry ingest the agent's HTTP uplink
uses, in memory on a loopback HTTP server (a thread).

The contract is the one fleet_server implements (fleet_server/api/checkin.py); test_updater_fleet.py
runs the updater against the real server too.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FINAL", "ContractServer"]

FINAL = {"success", "failure", "rejected", "canceled"}


class ContractServer:
    """The fleet side of the contract, in memory, on a thread (the agent's HTTP uplink too)."""

    def __init__(self, *, poll_interval_s: int = 1) -> None:
        self.poll_interval_s = poll_interval_s
        self.lock = threading.Lock()
        self.credentials: dict[str, str] = {}
        self.actions: dict[str, dict] = {}
        self.closed: dict[str, tuple[str, str | None]] = {}
        self.reports: list[tuple[str, str, dict]] = []
        self.inventory: dict[str, list[dict]] = {}
        self.rows: dict[str, dict[int, list]] = {}
        self.checkins = self.not_modified = 0
        self.status_down = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_box(self, box_id: str, credential: str) -> None:
        self.credentials[box_id] = credential

    def offer(self, box_id: str, *, kind: str, target_name: str, version: str, repo_url: str,
              deadline_s: int = 600, component: str | None = None) -> str:
        action_id = f"r-{hashlib.sha1(f'{target_name}{version}{time.time()}'.encode()).hexdigest()[:12]}.{box_id}"
        action = {"action_id": action_id, "rollout_id": action_id.split(".")[0], "kind": kind,
                  "target_name": target_name, "version": version, "repo_url": repo_url.rstrip("/"),
                  "deadline_s": deadline_s}
        if component:
            action["component"] = component
        with self.lock:
            self.actions[box_id] = action
        return action_id

    def close_action(self, box_id: str, state: str, reason_code: str | None) -> None:
        with self.lock:
            action = self.actions.pop(box_id)
            self.closed[action["action_id"]] = (state, reason_code)

    def states(self, action_id: str) -> list[str]:
        with self.lock:
            return [b["state"] for _, a, b in self.reports if a == action_id]

    def final(self, action_id: str) -> dict | None:
        with self.lock:
            finals = [b for _, a, b in self.reports if a == action_id and b["state"] in FINAL]
        return finals[0] if finals else None

    def seqs(self, box_id: str) -> list[int]:
        with self.lock:
            return sorted(self.rows.get(box_id, {}))

    def events(self, box_id: str) -> list[dict]:
        with self.lock:
            rows = [r for _, r in sorted(self.rows.get(box_id, {}).items())]
        return [json.loads(r[8]) for r in rows if r[3].startswith("update.") and r[7] == "event"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any = None, headers: dict | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def _box(self) -> str | None:
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                return next((b for b, c in server.credentials.items() if c == token), None)

            def do_GET(self) -> None:
                m = re.fullmatch(r"/api/v1/boxes/([^/]+)/checkin", self.path)
                box = self._box()
                if m is None:
                    return self._send(404, {"detail": "no"})
                if box != m[1]:
                    return self._send(401, {"detail": "bad credential"})
                with server.lock:
                    server.checkins += 1
                    body = {"poll_interval_s": server.poll_interval_s, "action": server.actions.get(box)}
                etag = '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    with server.lock:
                        server.not_modified += 1
                    return self._send(304, None, {"ETag": etag})
                self._send(200, body, {"ETag": etag})

            def do_PUT(self) -> None:
                m = re.fullmatch(r"/api/v1/boxes/([^/]+)/inventory", self.path)
                box = self._box()
                if m is None or box != m[1]:
                    return self._send(401, {"detail": "bad credential"})
                body = self._body()
                if not isinstance(body, dict):  # e.g. the client went away before its body arrived
                    return self._send(400, {"detail": "inventory must be a JSON object"})
                with server.lock:
                    server.inventory.setdefault(box, []).append(body)
                self._send(200, {"box_id": box, "saved": True})

            def do_POST(self) -> None:
                box = self._box()
                if self.path == "/api/v1/telemetry":
                    return self._telemetry(box)
                m = re.fullmatch(r"/api/v1/boxes/([^/]+)/actions/([^/]+)/status", self.path)
                if m is None or box != m[1]:
                    return self._send(401, {"detail": "bad credential"})
                if server.status_down:
                    return self._send(503, {"detail": "maintenance"})
                action_id, body = m[2], self._body()
                if not isinstance(body, dict) or "state" not in body:
                    # e.g. a box killed with -9 while sending: headers arrived, the body did not
                    return self._send(400, {"error": "bad_body", "detail": "a status report is a JSON object"})
                with server.lock:
                    server.reports.append((box, action_id, body))
                    closed = server.closed.get(action_id)
                    if closed is not None and closed[0] != body["state"]:
                        return self._send(409, {"error": "action_closed", "state": closed[0],
                                                "reason_code": closed[1]})
                    if closed is None and body["state"] in FINAL:
                        server.closed[action_id] = (body["state"], body.get("reason_code"))
                        if server.actions.get(box, {}).get("action_id") == action_id:
                            del server.actions[box]
                self._send(200, {"action_id": action_id, "state": body["state"], "recorded": True})

            def _telemetry(self, box: str | None) -> None:
                body = self._body()
                if box is None or body.get("box_id") != box:
                    return self._send(401, {"detail": "bad credential"})
                with server.lock:
                    stored = server.rows.setdefault(box, {})
                    new = sum(1 for r in body["readings"] if r[0] not in stored)
                    for r in body["readings"]:
                        stored.setdefault(r[0], r)
                    top = max(stored) if stored else None
                self._send(200, {"accepted": new, "duplicates": len(body["readings"]) - new, "max_seq": top})

        return Handler


