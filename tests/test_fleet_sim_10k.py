"""10,000 simulated boxes against a real fleet server process: waves advance on success, and a
rollout whose canary fails pauses with no box beyond the canary assigned.

The server runs in its own process (one core); the simulator runs here. Boxes poll every 5 s
(the bench uses 10 s) and spend 0.1 s per update state, so the whole test takes about 1.5-2
minutes on the 2-core reference machine. Set QUANEDGE_SIM_BOXES to run it smaller.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hil_tests.fleet_harness import ServerProcess, agent_target, make_update_repo
from hil_tests.fleet_sim import FleetSim, SimConfig, provision_sqlite

pytestmark = pytest.mark.slow

BOXES = int(os.environ.get("QUANEDGE_SIM_BOXES", "10000"))
POLL_S = 5


async def _wait_for(client: httpx.AsyncClient, rollout_id: str, done: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.get(f"/api/v1/rollouts/{rollout_id}")
        assert r.status_code == 200, r.text
        view = r.json()
        if done(view):
            return dict(view)
        assert time.monotonic() < deadline, f"rollout did not get there in {timeout_s} s: {view}"
        await asyncio.sleep(1.0)


def test_rollout_to_10k_simulated_boxes(tmp_path: Path) -> None:
    repo = make_update_repo(tmp_path / "updates", versions=("0.2.0", "0.3.0"))
    config = SimConfig(boxes=BOXES, step_s=0.1, connections=48, seed=7)
    with ServerProcess(tmp_path, repo_dir=repo, checkin_interval_s=POLL_S) as server:
        creds = provision_sqlite(server.db_path, config)
        asyncio.run(_scenario(server, config, creds))


async def _scenario(server: ServerProcess, config: SimConfig, creds: dict[str, str]) -> None:
    sim = FleetSim(server.url, config, creds)
    running = asyncio.create_task(sim.run())
    async with httpx.AsyncClient(base_url=server.url, headers=server.admin_headers, timeout=60) as client:
        # 1. A good update: every wave advances on success, the rollout finishes.
        started = time.monotonic()
        r = await client.post("/api/v1/rollouts", json={
            "target_name": agent_target("0.2.0"), "kind": "agent", "waves": ["1%", "10%", "50%", "100%"],
            "success_pct": 95, "error_pct": 5, "timeout_s": 600})
        assert r.status_code == 201, r.text
        good = r.json()
        assert good["total"] == BOXES
        assert [w["capacity"] for w in good["waves"]] == [
            BOXES // 100, BOXES // 10 - BOXES // 100, BOXES // 2 - BOXES // 10, BOXES - BOXES // 2]
        seen_waves = set()

        def finished(view: dict[str, Any]) -> bool:
            seen_waves.add(view["current_wave"])
            # never ahead of the success threshold: a later wave only has boxes once the one
            # before it reached 95 %
            for before, after in zip(view["waves"], view["waves"][1:]):
                if after["assigned"]:
                    assert before["succeeded"] >= 0.95 * before["capacity"], view
            return view["status"] == "finished"

        view = await _wait_for(client, good["rollout_id"], finished, 240)
        elapsed = time.monotonic() - started
        assert [w["succeeded"] for w in view["waves"]] == [w["capacity"] for w in view["waves"]]
        assert seen_waves >= {2, 3, 4}
        assert sim.stats["success"] == BOXES and sim.stats["http_errors"] == 0
        assert sum(1 for v in sim.versions.values() if v == "0.2.0") == BOXES
        print(f"\n10k rollout: {elapsed:.1f} s, {dict(sim.stats)}")

        # 2. A bad update: the one-box canary fails; the rollout pauses with nobody else assigned.
        sim.config.failure_rate = 1.0
        r = await client.post("/api/v1/rollouts", json={
            "target_name": agent_target("0.3.0"), "kind": "agent", "waves": ["1", "1%", "100%"],
            "error_pct": 0, "timeout_s": 600})
        assert r.status_code == 201, r.text
        bad = r.json()
        assert bad["total"] == BOXES
        view = await _wait_for(client, bad["rollout_id"], lambda v: v["status"] != "running", 60)
        assert view["status"] == "paused" and "error threshold" in view["pause_reason"]
        await asyncio.sleep(2 * POLL_S)   # every box polls at least once more while paused
        view = (await client.get(f"/api/v1/rollouts/{bad['rollout_id']}")).json()
        assert [w["assigned"] for w in view["waves"]] == [1, 0, 0]
        assert view["counts"] == {"1": {"failure": 1}, "unassigned": {"pending": BOXES - 1}}
        assert sim.stats["failure"] == 1
    sim.stop()
    await running
