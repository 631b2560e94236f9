"""Fleet benchmark (issue 4). Prints one JSON object.

- checkins_per_s: unchanged check-ins (If-None-Match -> 304) answered per second by ONE fleet
  server process on SQLite, measured by a load generator in a SEPARATE process (raw HTTP/1.1
  keep-alive, 32 connections (QUANEDGE_BENCH_CONNECTIONS), 1,000 enrolled boxes in turn, real credentials) for
  QUANEDGE_BENCH_CHECKIN_S seconds (default 10); checkin_p50_ms / checkin_p99_ms are its latencies.
- rollout_10k_s: wall seconds from creating a rollout in waves 1 %, 10 %, 50 %, 100 % (95 % success
  to advance) to every one of 10,000 simulated boxes reporting success; boxes poll every 10 s
  (the server's interval) and spend 0.5 s in each update state; the simulator runs in this
  process, the server in its own.
- rollout_create_100k_s: wall seconds of POST /api/v1/rollouts over 100,000 enrolled boxes with
  inventory (target selection, waves, and the server loading the pending set), seen by the client.

- telemetry_1000_batch_p50_ms / _p99_ms / telemetry_rows_per_s: 1,000-row POST /api/v1/telemetry
  batches sent one after another (each committed durably, deduplicated by (box, seq)) to a server
  process, wall time seen by the client. Each body carries `low` and `base` like the agent's
  (issue 11), so the server's seq tracking runs on every batch (a server without it ignores them).

    python -m bench.fleet [--only checkins|rollout|create|telemetry|commands]
    python -m bench.fleet --db postgresql://user@host/db [--only pg_ingest|pg_checkins|city]
Environment: QUANEDGE_BENCH_BOXES (default 10000) for rollout_10k_s. With --db, the PostgreSQL
figures of bench/fleet_pg.py (ingest against the COPY limit, check-ins across two replicas, the
city simulation) are measured instead, in a schema of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hil_tests.fleet_harness import ServerProcess, agent_target, make_update_repo
from hil_tests.fleet_http import HttpPool
from hil_tests.fleet_sim import FleetSim, SimConfig, provision_sqlite

CHECKIN_S = float(os.environ.get("QUANEDGE_BENCH_CHECKIN_S", "10"))
ROLLOUT_BOXES = int(os.environ.get("QUANEDGE_BENCH_BOXES", "10000"))
CONNECTIONS = int(os.environ.get("QUANEDGE_BENCH_CONNECTIONS", "32"))


# -- the load generator (runs in its own process: `python -m bench.fleet --loadgen ...`) ----------

async def _loadgen(url: str, creds: list[list[str]], seconds: float, connections: int) -> dict[str, Any]:
    pool = HttpPool(url, size=connections)
    etags: dict[str, str] = {}
    for box, cred in creds:
        r = await pool.get(f"/api/v1/boxes/{box}/checkin", {"Authorization": f"Bearer {cred}"})
        etags[box] = r.headers["etag"]
    latencies: list[float] = []
    other = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal other
        while time.perf_counter() < stop:
            box, cred = creds[i % len(creds)]
            i += connections
            t = time.perf_counter()
            r = await pool.get(f"/api/v1/boxes/{box}/checkin",
                               {"Authorization": f"Bearer {cred}", "If-None-Match": etags[box]})
            latencies.append(time.perf_counter() - t)
            other += r.status != 304

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    await pool.close()
    latencies.sort()
    return {"requests": len(latencies), "not_304": other, "per_s": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1e3, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}


def bench_checkins(work: Path) -> dict[str, Any]:
    with ServerProcess(work, checkin_interval_s=60) as server:
        creds = provision_sqlite(server.db_path, SimConfig(boxes=1000, prefix="load"))
        creds_file = work / "creds.json"
        creds_file.write_text(json.dumps(sorted(creds.items())))
        out = subprocess.run([sys.executable, "-m", "bench.fleet", "--loadgen", server.url, str(creds_file),
                              str(CHECKIN_S), str(CONNECTIONS)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"checkins_per_s": round(result["per_s"]), "checkin_p50_ms": round(result["p50_ms"], 2),
            "checkin_p99_ms": round(result["p99_ms"], 2), "checkin_non_304": result["not_304"]}


# -- rollouts -------------------------------------------------------------------------------------

async def _rollout(server: ServerProcess, config: SimConfig, creds: dict[str, str]) -> dict[str, Any]:
    sim = FleetSim(server.url, config, creds)
    running = asyncio.create_task(sim.run())
    await asyncio.sleep(12)   # every box has polled once and reported its inventory
    async with httpx.AsyncClient(base_url=server.url, headers=server.admin_headers, timeout=60) as client:
        started = time.monotonic()
        r = await client.post("/api/v1/rollouts", json={
            "target_name": agent_target("0.2.0"), "kind": "agent", "waves": ["1%", "10%", "50%", "100%"],
            "success_pct": 95, "error_pct": 5})
        r.raise_for_status()
        rollout_id = r.json()["rollout_id"]
        wave_done: dict[int, float] = {}
        while True:
            view = (await client.get(f"/api/v1/rollouts/{rollout_id}")).json()
            for w in view["waves"]:
                if w["succeeded"] == w["capacity"] and w["wave"] not in wave_done:
                    wave_done[w["wave"]] = round(time.monotonic() - started, 1)
            if view["status"] != "running":
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
    sim.stop()
    await running
    assert view["status"] == "finished", view
    return {"rollout_10k_s": round(elapsed, 1), "rollout_boxes": config.boxes,
            "rollout_wave_done_s": [wave_done.get(i + 1) for i in range(len(view["waves"]))],
            "rollout_requests": sim.pool.requests}


def bench_rollout(work: Path) -> dict[str, Any]:
    repo = make_update_repo(work / "updates")
    config = SimConfig(boxes=ROLLOUT_BOXES, step_s=0.5, connections=48)
    with ServerProcess(work, repo_dir=repo, checkin_interval_s=10) as server:
        creds = provision_sqlite(server.db_path, config)
        return asyncio.run(_rollout(server, config, creds))


def bench_create(work: Path, boxes: int = 100_000) -> dict[str, Any]:
    repo = make_update_repo(work / "updates")
    with ServerProcess(work, repo_dir=repo, checkin_interval_s=60) as server:
        provision_sqlite(server.db_path, SimConfig(boxes=boxes, prefix="many"))
        started = time.monotonic()
        r = httpx.post(server.url + "/api/v1/rollouts", headers=server.admin_headers, timeout=120, json={
            "target_name": agent_target("0.2.0"), "kind": "agent", "waves": ["1", "1%", "10%", "50%", "100%"]})
        elapsed = time.monotonic() - started
        r.raise_for_status()
        assert r.json()["total"] == boxes
    return {"rollout_create_100k_s": round(elapsed, 2)}


def bench_telemetry(work: Path, batches: int = 40) -> dict[str, Any]:
    """POST /api/v1/telemetry of 1,000-row batches, one after another, to a server process."""
    import statistics

    from core.reading import Reading

    with ServerProcess(work, checkin_interval_s=60) as server:
        box, credential = next(iter(provision_sqlite(server.db_path, SimConfig(boxes=1, prefix="tele")).items()))
        wall: list[float] = []
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}) as c:
            for i in range(batches):
                first = 1 + i * 1000
                # low/base as the agent sends them (issue 11): every seq below this batch is stored.
                body = json.dumps({"box_id": box, "low": first, "base": 1, "readings": [
                    Reading("rs1", "air_temp", 20.0 + seq / 10, "degC", 1_700_000_000.0 + seq, seq=seq).to_row()
                    for seq in range(first, first + 1000)]}).encode()
                started = time.perf_counter()
                r = c.post("/api/v1/telemetry", content=body)
                wall.append(time.perf_counter() - started)
                r.raise_for_status()
                assert r.json()["accepted"] == 1000, r.text
    wall.sort()
    return {"telemetry_1000_batch_p50_ms": round(statistics.median(wall) * 1000, 2),
            "telemetry_1000_batch_p99_ms": round(wall[int(0.99 * (len(wall) - 1))] * 1000, 2),
            "telemetry_rows_per_s": round(1000 * len(wall) / sum(wall))}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--only", choices=("checkins", "rollout", "create", "telemetry", "commands", "pg_ingest",
                                           "pg_checkins", "city"))
    parser.add_argument("--db", help="a PostgreSQL URL: measure the PostgreSQL figures (bench/fleet_pg.py)")
    parser.add_argument("--loadgen", nargs=4, metavar=("URL", "CREDS", "SECONDS", "CONNECTIONS"))
    args = parser.parse_args()
    if args.loadgen:
        url, creds_file, seconds, conns = args.loadgen
        creds = json.loads(Path(creds_file).read_text())
        print(json.dumps(asyncio.run(_loadgen(url, creds, float(seconds), int(conns)))))
        return
    result: dict[str, Any] = {}
    if args.db:
        from bench.fleet_pg import run

        result.update(run(args.db, args.only))
        result.update(_machine())
        print(json.dumps(result))
        return
    from bench.fleet_commands import bench_commands

    for name, fn in (("checkins", bench_checkins), ("rollout", bench_rollout), ("create", bench_create),
                     ("telemetry", bench_telemetry), ("commands", bench_commands)):
        if args.only in (None, name):
            with tempfile.TemporaryDirectory(prefix=f"qe-bench-{name}-") as work:
                result.update(fn(Path(work)))
    result.update(_machine())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
