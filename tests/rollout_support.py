"""Helpers for the rollout / check-in / TUF-serving tests (no tests here).

A real signed repository (`make_repo`), boxes provisioned in bulk with inventory, and an app
over a store with an injectable clock. Each test module declares its own fixtures from these.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from test_fleet_helpers import ADMIN, Clock, TestClient, admin, bearer

from firmware_manifests.repository import Repository
from fleet_server.app import create_app
from fleet_server.rollout.model import Inventory
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

__all__ = [
    "AGENT", "FIRMWARE", "MODEL", "TARGETS", "Boxes", "action_of", "checkin", "create", "make_repo", "open_app",
    "provision", "report", "serve_in_thread", "status",
]

AGENT = "agent-0.2.0.tar"
MODEL = "models/loop-anomaly-1.3.0.onnx"
FIRMWARE = "signctl-v2-fw-2.1.0.bin"
TARGETS = [
    (AGENT, "agent_bundle", "0.2.0", ["qe-box-a", "qe-box-b"], "0.1.0", b"agent bundle 0.2.0 " * 50),
    (MODEL, "onnx_model", "1.3.0", ["qe-box-a"], None, b"onnx" * 300),
    (FIRMWARE, "device_firmware", "2.1.0", ["qe-box-a"], "2.0.0", bytes(range(256)) * 40),
]


def make_repo(root: Path) -> Repository:
    """A signed repository with one agent bundle, one model and one firmware target."""
    repo = Repository.init(root / "repo")
    for name, kind, version, hardware, min_from, data in TARGETS:
        src = root / name.replace("/", "_")
        src.write_bytes(data)
        repo.add_target(src, kind=kind, version=version, hardware=hardware, min_from=min_from, name=name)
    repo.sign()
    return repo


Boxes = dict[str, str]   # box id -> credential


def provision(store: SqliteStore, count: int, prefix: str = "b", *, hardware: str = "qe-box-a",
              site: str = "5th-ave", tags: tuple[str, ...] = ("north",), agent_version: str = "0.1.0",
              models: dict[str, str] | None = None, firmware: dict[str, str] | None = None,
              inventory: bool = True) -> Boxes:
    ids = [f"{prefix}{i:05d}" for i in range(count)]
    inv = Inventory(agent_version, hardware, models or {}, firmware or {}) if inventory else None
    creds = store.provision_boxes([(box, f"serial-{box}", site, tags, inv) for box in ids])
    return dict(zip(ids, creds))


def open_app(tmp_path: Path, store: SqliteStore, clock: Clock, repo_dir: Path | None,
             **settings: Any) -> Iterator[TestClient]:
    config = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, tuf_repo_dir=repo_dir,
                            checkin_interval_s=settings.pop("checkin_interval_s", 30),
                            rollout_sweep_s=settings.pop("rollout_sweep_s", 3600), **settings)
    with TestClient(create_app(config, store, clock=clock)) as client:
        yield client


def create(client: TestClient, expect: int = 201, **body: Any) -> dict[str, Any]:
    body.setdefault("target_name", AGENT)
    body.setdefault("kind", "agent")
    r = client.post("/api/v1/rollouts", json=body, headers=admin())
    assert r.status_code == expect, r.text
    return dict(r.json())


def checkin(client: TestClient, boxes: Boxes, box: str, etag: str | None = None) -> Any:
    headers = bearer(boxes[box])
    if etag:
        headers["If-None-Match"] = etag
    return client.get(f"/api/v1/boxes/{box}/checkin", headers=headers)


def action_of(client: TestClient, boxes: Boxes, box: str) -> dict[str, Any] | None:
    r = checkin(client, boxes, box)
    assert r.status_code == 200, r.text
    return r.json()["action"]  # type: ignore[no-any-return]


def report(client: TestClient, boxes: Boxes, box: str, action_id: str, state: str, expect: int = 200,
           **extra: Any) -> Any:
    r = client.post(f"/api/v1/boxes/{box}/actions/{action_id}/status", json={"state": state, **extra},
                    headers=bearer(boxes[box]))
    assert r.status_code == expect, r.text
    return r.json()


def status(client: TestClient, rollout_id: str) -> dict[str, Any]:
    r = client.get(f"/api/v1/rollouts/{rollout_id}", headers=admin())
    assert r.status_code == 200, r.text
    return dict(r.json())


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1:`port` in a thread (lifespan on); yield its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
