"""A simulated fleet: N lightweight boxes in one process against a real fleet server.

Each box is a coroutine speaking the real check-in contract over a shared keep-alive pool
(`fleet_http.HttpPool`): it reports its inventory, polls `GET .../checkin` with If-None-Match at
the interval the server sets (with +-10 % jitter, first poll spread over one interval), and runs
any action through proceeding -> downloading -> downloaded -> installing -> restarting ->
success, spending `step_s` in each state. Its fate per action is drawn from a seeded RNG of
(seed, box, action), so a run is reproducible: `failure_rate` fails at installing,
`reject_rate` rejects at once (reason_code `downgrade`), `stall_rate` goes silent after
downloading (the server's per-box timeout must close it). A 409 from the server (action
canceled or timed out) stops the action, as on a real box. On success the box runs the new
version and reports its inventory again. It downloads nothing (the real agent verifies TUF
metadata; here the server's rollout logic is under test).

Boxes are enrolled in bulk straight into the server's SQLite file (`provision_sqlite`) or one by
one through the API with an admin token (`enroll_via_api`). CLI: `quanedge sim fleet`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hil_tests.fleet_http import HttpPool

__all__ = ["FleetSim", "SimConfig", "enroll_via_api", "provision_sqlite", "summary"]

STEPS = ("proceeding", "downloading", "downloaded", "installing", "restarting")


@dataclass
class SimConfig:
    boxes: int
    prefix: str = "sim"
    hardware: str = "qe-box-a"
    site: str = "sim-site"
    tags: tuple[str, ...] = ("sim",)
    agent_version: str = "0.1.0"
    models: Mapping[str, str] = field(default_factory=dict)
    firmware: Mapping[str, str] = field(default_factory=dict)
    failure_rate: float = 0.0
    reject_rate: float = 0.0
    stall_rate: float = 0.0
    step_s: float = 0.2
    seed: int = 0
    connections: int = 32

    def __post_init__(self) -> None:
        if self.boxes < 1:
            raise ValueError(f"boxes must be at least 1, got {self.boxes}")
        for name in ("failure_rate", "reject_rate", "stall_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.step_s < 0:
            raise ValueError("step_s must not be negative")

    def box_ids(self) -> list[str]:
        return [f"{self.prefix}-{i:06d}" for i in range(self.boxes)]

    def inventory(self) -> dict[str, object]:
        return {"agent_version": self.agent_version, "hardware": self.hardware,
                "models": dict(self.models), "firmware": dict(self.firmware)}


def provision_sqlite(db_path: str | Path, config: SimConfig) -> dict[str, str]:
    """Enroll every simulated box in one transaction (with inventory); box id -> credential."""
    from fleet_server.rollout.model import Inventory
    from fleet_server.store.sqlite import SqliteStore

    inv = Inventory(config.agent_version, config.hardware, dict(config.models), dict(config.firmware))
    store = SqliteStore(db_path)
    try:
        ids = config.box_ids()
        creds = store.provision_boxes([(b, f"sim-serial-{b}", config.site, config.tags, inv) for b in ids])
    finally:
        store.close()
    return dict(zip(ids, creds))


async def enroll_via_api(server: str, admin_token: str, config: SimConfig) -> dict[str, str]:
    """Enroll through POST /api/v1/enroll with one multi-use token. Ids must be new to the server:
    an enrolled id without its current credential becomes an admission request (202), as for a box."""
    pool = HttpPool(server, size=config.connections)
    try:
        r = await pool.send_json("POST", "/api/v1/enrollment-tokens",
                                 {"ttl_s": 3600.0, "max_uses": config.boxes, "note": "fleet simulator"},
                                 {"Authorization": f"Bearer {admin_token}"})
        if r.status != 200:
            raise RuntimeError(f"cannot create an enrollment token ({r.status}): {r.body[:200]!r}")
        token = r.json()["token"]

        async def one(box_id: str) -> tuple[str, str]:
            r = await pool.send_json("POST", "/api/v1/enroll", {
                "token": token, "box_id": box_id, "hardware": f"sim-serial-{box_id}", "site": config.site,
                "agent_version": config.agent_version, "tags": list(config.tags)})
            if r.status == 202:
                raise RuntimeError(f"{box_id} is already enrolled on this server (its request now waits for "
                                   "admission): simulate new box ids or start from a fresh database")
            if r.status != 200:
                raise RuntimeError(f"enrolling {box_id} failed ({r.status}): {r.body[:200]!r}")
            return box_id, r.json()["credential"]

        return dict(await asyncio.gather(*(one(b) for b in config.box_ids())))
    finally:
        await pool.close()


class FleetSim:
    """Run the boxes until `stop()` (or `run(duration_s)` ends); `stats` counts what happened."""

    def __init__(self, server: str, config: SimConfig, credentials: Mapping[str, str]) -> None:
        self.config = config
        self.pool = HttpPool(server, size=config.connections)
        self.credentials = dict(credentials)
        self.stats: Counter[str] = Counter()
        self.versions: dict[str, str] = {}   # box -> agent version it runs now
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _fate(self, box_id: str, action_id: str) -> str:
        rng = random.Random(zlib.crc32(f"{self.config.seed}:{box_id}:{action_id}".encode()))
        draw, c = rng.random(), self.config
        if draw < c.reject_rate:
            return "rejected"
        if draw < c.reject_rate + c.failure_rate:
            return "failure"
        if draw < c.reject_rate + c.failure_rate + c.stall_rate:
            return "stall"
        return "success"

    async def run(self, duration_s: float | None = None) -> Counter[str]:
        tasks = [asyncio.create_task(self._box(b, c), name=f"sim-{b}") for b, c in self.credentials.items()]
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                await asyncio.wait_for(self._stop.wait(), duration_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pool.close()
        return self.stats

    async def _sleep(self, seconds: float) -> bool:
        """Sleep; False when the run was stopped meanwhile (`run` cancels sleeping boxes anyway)."""
        await asyncio.sleep(seconds)
        return not self._stop.is_set()

    async def _box(self, box_id: str, credential: str) -> None:
        auth = {"Authorization": f"Bearer {credential}"}
        rng = random.Random(zlib.crc32(f"{self.config.seed}:{box_id}".encode()))
        interval, etag, done = 10.0, "", set()
        inventory = self.config.inventory()
        if not await self._sleep(rng.random() * 2.0):
            return
        await self._call("PUT", f"/api/v1/boxes/{box_id}/inventory", auth, inventory)
        while not self._stop.is_set():
            try:
                r = await self.pool.get(f"/api/v1/boxes/{box_id}/checkin", {**auth,
                                                                            "If-None-Match": etag} if etag else auth)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.stats["http_errors"] += 1
                r = None
            if r is not None and r.status == 304:
                self.stats["checkin_304"] += 1
            elif r is not None and r.status == 200:
                self.stats["checkin_200"] += 1
                answer = r.json()
                etag, interval = r.headers.get("etag", ""), float(answer["poll_interval_s"])
                action = answer["action"]
                if action is not None and action["action_id"] not in done:
                    done.add(action["action_id"])
                    if await self._execute(box_id, auth, action, inventory):
                        continue   # poll again at once: the next rollout may be waiting
            elif r is not None:
                self.stats[f"checkin_{r.status}"] += 1
            if not await self._sleep(interval * rng.uniform(0.9, 1.1)):
                return

    async def _execute(self, box_id: str, auth: dict[str, str], action: dict[str, object],
                       inventory: dict[str, object]) -> bool:
        action_id = str(action["action_id"])
        fate = self._fate(box_id, action_id)
        self.stats["actions"] += 1
        path = f"/api/v1/boxes/{box_id}/actions/{action_id}/status"
        steps = {"rejected": ("rejected",), "stall": STEPS[:2], "failure": STEPS[:4] + ("failure",),
                 "success": STEPS + ("success",)}[fate]
        for state in steps:
            body: dict[str, object] = {"state": state}
            if state == "failure":
                body.update(reason="simulated install failure", reason_code="install_failed")
            elif state == "rejected":
                body.update(reason="simulated: installed version is newer", reason_code="downgrade")
            status = await self._call("POST", path, auth, body)
            if status == 409:
                self.stats["stopped_by_server"] += 1
                return False
            if state in ("success", "failure", "rejected"):
                self.stats[state] += 1
                break
            if not await self._sleep(self.config.step_s):
                return False
        if fate == "stall":
            self.stats["stalled"] += 1
            return False
        if fate == "success" and action.get("kind") == "agent":
            inventory["agent_version"] = action["version"]
            self.versions[box_id] = str(action["version"])
            await self._call("PUT", f"/api/v1/boxes/{box_id}/inventory", auth, inventory)
        return True

    async def _call(self, method: str, path: str, auth: dict[str, str], payload: object) -> int:
        """Send a report/inventory, retrying transport errors a few times (reports are idempotent)."""
        for attempt in range(5):
            try:
                r = await self.pool.send_json(method, path, payload, auth)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.stats["http_errors"] += 1
                if not await self._sleep(0.5 * (attempt + 1)):
                    return 0
                continue
            if r.status >= 500:
                self.stats[f"http_{r.status}"] += 1
                if not await self._sleep(0.5 * (attempt + 1)):
                    return 0
                continue
            if r.status not in (200, 409):
                self.stats[f"http_{r.status}"] += 1
            return r.status
        return 0


def summary(sim: FleetSim, started: float) -> str:
    return json.dumps({"elapsed_s": round(time.monotonic() - started, 1), **dict(sorted(sim.stats.items()))})
