"""The box's updater against the REAL fleet server (check-in, rollouts, TUF serving with Range):
an admin creates a model rollout, the box checks in, verifies and hot-swaps the model, and the
server records the action as success and the box's new version."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("fastapi")

from e2e_support import free_port
from rollout_support import serve_in_thread
from test_fleet_helpers import ADMIN
from updater_support import HW, model_bundle

from agent.enroll import Credential, save_credential
from agent.inference import InferenceStage, ModelSpec
from agent.updater.config import UpdaterConfig
from agent.updater.models import runtime_models
from agent.updater.service import UpdaterService
from firmware_manifests.repository import Repository
from fleet_server.app import create_app
from fleet_server.rollout.model import Inventory
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

BOX = "fleet-upd-1"
TARGET = "models/wx_fault-1.1.0.tar.gz"


async def test_a_model_rollout_from_the_real_fleet_server_ends_in_success(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    repo.add_target(model_bundle("1.1.0", tmp_path / "wx_fault-1.1.0.tar.gz"), kind="onnx_model", version="1.1.0",
                    hardware=[HW], name=TARGET)
    repo.sign()
    store = SqliteStore(tmp_path / "fleet.db")
    [credential] = store.provision_boxes([(BOX, "serial-1", "5th-ave", ("north",),
                                           Inventory("0.1.0", HW, {"wx_fault": "1.0.0"}, {}))])
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, tuf_repo_dir=tmp_path / "repo",
                              checkin_interval_s=1, rollout_sweep_s=3600)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with serve_in_thread(create_app(settings, store), free_port()) as url:
        r = httpx.post(url + "/api/v1/rollouts", headers=admin, json={
            "target_name": TARGET, "kind": "model", "component": "wx_fault", "waves": ["100%"],
            "respect_windows": False, "filter": {"box_ids": [BOX]}})
        assert r.status_code == 201, r.text
        rollout_id = r.json()["rollout_id"]
        save_credential(tmp_path / "box" / "credential.json", Credential(BOX, credential, url))
        ucfg = UpdaterConfig(enabled=True, root=tmp_path / "updater", server=url,
                             trusted_root=tmp_path / "root.json", poll_interval_s=1, model_health_s=0.5,
                             clock_slack_s=0)
        (tmp_path / "root.json").write_bytes(repo.trusted_root(1))
        specs = (ModelSpec("wx_fault", "1.0.0"),)
        stage = InferenceStage.from_config(*runtime_models(specs, ucfg))
        cfg = SimpleNamespace(box=SimpleNamespace(id=BOX, hardware=HW), models=specs,
                              credential_path=tmp_path / "box" / "credential.json")
        task = asyncio.create_task(UpdaterService(cfg, ucfg, None, stage).run())

        def actions() -> list[dict]:
            r = httpx.get(f"{url}/api/v1/rollouts/{rollout_id}/actions", headers=admin)
            return r.json()["actions"]

        try:
            deadline = time.monotonic() + 60
            while not [a for a in actions() if a["state"] == "success"]:
                assert time.monotonic() < deadline, f"no success: {actions()}"
                await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        [action] = actions()
        rollout = httpx.get(f"{url}/api/v1/rollouts/{rollout_id}", headers=admin).json()
    store.close()
    assert (action["box_id"], action["state"]) == (BOX, "success")
    assert rollout["waves"][0]["succeeded"] == 1 and rollout["status"] == "finished", rollout
    assert stage.versions() == {"wx_fault": "1.1.0"}
