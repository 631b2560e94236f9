"""Every long-running server task is supervised: restarted with capped backoff after it dies,
reported by /healthz (503, which task, its last error and time) until it runs again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from test_fleet_helpers import ADMIN, TestClient

from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from fleet_server.supervisor import Supervisor


async def test_a_job_that_keeps_dying_backs_off_to_the_cap_and_recovers() -> None:
    supervisor = Supervisor(CollectorRegistry(), base_s=0.01, cap_s=0.04, settle_s=0.2, clock=lambda: 42.0)
    starts: list[float] = []

    async def job() -> None:
        starts.append(time.monotonic())
        if len(starts) <= 5:
            raise OSError(f"failure {len(starts)}")
        await asyncio.Event().wait()

    supervisor.start("job", job)
    while len(starts) < 6:
        await asyncio.sleep(0.01)
    status = supervisor.status["job"]
    assert supervisor.down() == {"job": status}
    assert (status.last_error, status.last_error_at, status.restarts) == ("OSError: failure 5", 42.0, 5)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) < 0.2  # capped (0.04 s plus scheduling)
    await asyncio.sleep(0.3)
    assert supervisor.down() == {} and status.up and status.last_error == "OSError: failure 5"
    await supervisor.stop()


async def test_a_job_that_returns_is_restarted_too() -> None:
    supervisor = Supervisor(CollectorRegistry(), base_s=0.01, cap_s=0.02, settle_s=0.1)
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1

    supervisor.start("quitter", job)
    await asyncio.sleep(0.1)
    assert runs >= 3 and "must not end" in (supervisor.status["quitter"].last_error or "")
    await supervisor.stop()
    with pytest.raises(ValueError):
        supervisor.start("quitter", job)


class SweepBomb(SqliteStore):
    """The sweeper's store call fails with a bug (not a StoreError) while `armed`."""

    armed = True

    def expire_actions(self, now: float):  # type: ignore[no-untyped-def]
        if self.armed:
            raise RuntimeError("bug in expire_actions")
        return super().expire_actions(now)


def test_a_dead_rollout_sweeper_turns_healthz_503_with_its_error_and_recovery_clears_it(tmp_path: Path) -> None:
    store = SweepBomb(tmp_path / "s.db")
    app = create_app(ServerSettings(db_path=tmp_path / "s.db", admin_token=ADMIN, rollout_sweep_s=0.01), store)
    supervisor = app.state.supervisor
    supervisor.base_s, supervisor.cap_s, supervisor.settle_s = 0.02, 0.05, 0.3
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while (r := client.get("/healthz")).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        body = r.json()
        assert body["failing"] == ["rollout-sweeper"]
        sweeper = body["tasks"]["rollout-sweeper"]
        assert sweeper["state"] == "restarting" and sweeper["last_error"] == "RuntimeError: bug in expire_actions"
        assert sweeper["last_error_at"] > 1e9
        store.armed = False
        while (r := client.get("/healthz")).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert r.json()["tasks"]["rollout-sweeper"]["state"] == "running"
        assert r.json()["tasks"]["rollout-sweeper"]["restarts"] >= 1
    store.close()
