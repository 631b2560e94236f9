"""The fleet tier on PostgreSQL (issue 10): `python -m bench.fleet --db postgresql://...` adds these.

- pg_ingest_rows_per_s: 1,000-row POST /api/v1/telemetry batches, one after another, through one
  server process into PostgreSQL (each committed, deduplicated, seq-tracked), rows per second.
- pg_copy_limit_rows_per_s: the limit for the same rows in the same run: raw COPY of each
  1,000-row batch into a temporary table plus INSERT ... ON CONFLICT DO NOTHING into the same
  partitioned readings table, committed per batch, from this process (no HTTP, no server).
- pg_checkins_per_s: unchanged check-ins (If-None-Match -> 304) answered per second by TWO
  replicas on one database, load split between them (one load generator process per replica).
- city_sim_boxes / city_sim_checkin_p99_ms / city_sim_checkins / city_sim_lost: N boxes
  (QUANEDGE_BENCH_CITY_BOXES, default 60,000) each polling every 60 s, spread evenly, against two
  replicas for QUANEDGE_BENCH_CITY_S seconds (default 300); a check-in that fails or times out is
  "lost". city_sim_cores_used: the CPU each side used over the run (cores: CPU s / wall s) of the
  two servers, every postgres process and this load generator.

Each run works in a schema of its own (dropped afterwards), so the database given is not changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

from core.reading import Reading
from fleet_server.rollout.model import Inventory
from fleet_server.store.pg import PgStore
from hil_tests.fleet_harness import ServerProcess
from hil_tests.fleet_http import HttpPool

BATCH = 1000
BATCHES = int(os.environ.get("QUANEDGE_BENCH_PG_BATCHES", "40"))
CHECKIN_S = float(os.environ.get("QUANEDGE_BENCH_CHECKIN_S", "10"))
CONNECTIONS = int(os.environ.get("QUANEDGE_BENCH_CONNECTIONS", "32"))
CITY_BOXES = int(os.environ.get("QUANEDGE_BENCH_CITY_BOXES", "60000"))
CITY_S = float(os.environ.get("QUANEDGE_BENCH_CITY_S", "300"))
CITY_POLL_S = 60.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_s() -> float:
    """CPU seconds of every postgres process on this machine (the database's side of the cost;
    only meaningful with the database on this machine and nothing else using it)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "postgres":
                    total += _cpu_s(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    return total


@contextmanager
def _schema(url: str) -> Any:
    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema, f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _provision(url: str, schema: str, count: int, prefix: str) -> dict[str, str]:
    store = PgStore(url, schema=schema, max_size=2)
    try:
        inv = Inventory("0.1.0", "qe-box-a", {}, {})
        ids = [f"{prefix}-{i:06d}" for i in range(count)]
        creds: list[str] = []
        for i in range(0, count, 5000):
            chunk = ids[i:i + 5000]
            creds += store.provision_boxes([(b, "qe-box-a", "bench-site", ("bench",), inv) for b in chunk])
        return dict(zip(ids, creds))
    finally:
        store.close()


def _rows(box: str, first: int) -> list[tuple[Any, ...]]:
    return [(box, seq, 1_700_000_000.0 + seq, "rs1", "air_temp", 20.0 + seq / 10, "degC", 0, "routine", None)
            for seq in range(first, first + BATCH)]


def bench_ingest_and_copy(url: str) -> dict[str, Any]:
    with _schema(url) as (schema, db):
        box, credential = next(iter(_provision(url, schema, 1, "tele").items()))
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"qe-bench-pg-{schema}"
        work.mkdir(parents=True, exist_ok=True)
        with ServerProcess(work, checkin_interval_s=60, db_path=db) as server:
            assert server.pid is not None
            cpu0, db0 = _cpu_s(server.pid), _postgres_cpu_s()
            wall = 0.0
            with httpx.Client(base_url=server.url, timeout=30, headers={
                    "Authorization": f"Bearer {credential}", "Content-Type": "application/json"}) as client:
                for i in range(BATCHES):
                    first = 1 + i * BATCH
                    body = json.dumps({"box_id": box, "low": first, "base": 1, "readings": [
                        Reading("rs1", "air_temp", 20.0 + s / 10, "degC", 1_700_000_000.0 + s, seq=s).to_row()
                        for s in range(first, first + BATCH)]}).encode()
                    started = time.perf_counter()
                    r = client.post("/api/v1/telemetry", content=body)
                    wall += time.perf_counter() - started
                    r.raise_for_status()
                    assert r.json()["accepted"] == BATCH, r.text
            server_us = (_cpu_s(server.pid) - cpu0) / (BATCH * BATCHES) * 1e6
            db_us = (_postgres_cpu_s() - db0) / (BATCH * BATCHES) * 1e6
        ingest = BATCH * BATCHES / wall
        # the limit: the same batches' rows, COPY + dedup into the same table (another box id)
        with psycopg.connect(url, options=f"-c search_path={schema}", autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE incoming (LIKE readings)")
            wall = 0.0
            for i in range(BATCHES):
                rows = _rows("copy-limit", 1 + i * BATCH)
                started = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy("COPY incoming (box_id, seq, ts, device, point, value, unit, quality, cls, text)"
                                  " FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute("INSERT INTO readings SELECT * FROM incoming ON CONFLICT DO NOTHING")
                    assert cur.rowcount == BATCH
                    cur.execute("TRUNCATE incoming")
                wall += time.perf_counter() - started
        limit = BATCH * BATCHES / wall
    return {"pg_ingest_rows_per_s": round(ingest), "pg_copy_limit_rows_per_s": round(limit),
            "pg_ingest_vs_copy_limit": round(ingest / limit, 2),
            "pg_ingest_server_cpu_us_per_row": round(server_us, 1), "pg_ingest_db_cpu_us_per_row": round(db_us, 1)}


@contextmanager
def _replicas(schema: str, db: str, count: int = 2) -> Any:
    """`count` fleet server processes on one database; (their work folder, the servers)."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"qe-bench-pg-{schema}"
    servers: list[ServerProcess] = []
    try:
        for k in range(count):
            (base / str(k)).mkdir(parents=True, exist_ok=True)
            servers.append(ServerProcess(base / str(k), checkin_interval_s=60, db_path=db).start())
        yield base, servers
    finally:
        for server in servers:
            server.stop()


def bench_checkins(url: str) -> dict[str, Any]:
    with _schema(url) as (schema, db):
        creds = sorted(_provision(url, schema, 1000, "load").items())
        with _replicas(schema, db) as (base, servers):
            cpu0 = sum(_cpu_s(s.pid) for s in servers if s.pid is not None)
            db0 = _postgres_cpu_s()
            procs = []
            for k, server in enumerate(servers):
                creds_file = base / f"creds-{k}.json"
                creds_file.write_text(json.dumps(creds[k::2]))
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.fleet", "--loadgen", server.url, str(creds_file), str(CHECKIN_S),
                     str(CONNECTIONS // 2)], stdout=subprocess.PIPE, text=True))
            results = [json.loads((p.communicate()[0] or "").strip().splitlines()[-1]) for p in procs]
            answered = sum(r["requests"] for r in results)
            server_us = (sum(_cpu_s(s.pid) for s in servers if s.pid is not None) - cpu0) / answered * 1e6
            db_us = (_postgres_cpu_s() - db0) / answered * 1e6
    return {"pg_checkins_per_s": round(sum(r["per_s"] for r in results)),
            "pg_checkin_p99_ms": round(max(r["p99_ms"] for r in results), 2),
            "pg_checkin_non_304": sum(r["not_304"] for r in results),
            "pg_checkin_server_cpu_us": round(server_us), "pg_checkin_db_cpu_us": round(db_us)}


async def _city(urls: list[str], creds: list[tuple[str, str]], seconds: float) -> dict[str, Any]:
    pools = [HttpPool(u, size=64, timeout=10.0) for u in urls]
    latencies: list[float] = []
    warm: list[float] = []  # after every box's first check-in (the credential cache filled, ETags known)
    lost = 0
    why_lost: dict[str, int] = {}
    etags: dict[str, str] = {}
    start = time.monotonic()
    n = len(creds)

    async def one(i: int, box: str, cred: str) -> None:
        nonlocal lost
        pool = pools[i % len(pools)]
        headers = {"Authorization": f"Bearer {cred}"}
        if box in etags:
            headers["If-None-Match"] = etags[box]
        t0 = time.perf_counter()
        try:
            r = await pool.get(f"/api/v1/boxes/{box}/checkin", headers)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            lost += 1
            why = f"{type(exc).__name__} at {time.monotonic() - start:.0f} s"
            why_lost[why] = why_lost.get(why, 0) + 1
            return
        latencies.append(time.perf_counter() - t0)
        if time.monotonic() - start > CITY_POLL_S + 5:
            warm.append(latencies[-1])
        if r.status == 200:
            etags[box] = r.headers.get("etag", "")
        elif r.status != 304:
            lost += 1
            why = f"HTTP {r.status} {r.body[:80]!r} at {time.monotonic() - start:.0f} s"
            why_lost[why] = why_lost.get(why, 0) + 1

    tasks: set[asyncio.Task[None]] = set()
    k = 0
    while (now := time.monotonic() - start) < seconds:
        due = int(now / CITY_POLL_S * n)  # box i polls at i/n of every minute
        while k < due:
            i = k % n
            task = asyncio.create_task(one(i, *creds[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    for pool in pools:
        await pool.close()
    latencies.sort()
    warm.sort()
    return {"checkins": len(latencies), "lost": lost, "why_lost": why_lost,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else None,
            "warm_p99_ms": warm[int(0.99 * (len(warm) - 1))] * 1000 if warm else None}


def bench_city(url: str) -> dict[str, Any]:
    with _schema(url) as (schema, db):
        creds = sorted(_provision(url, schema, CITY_BOXES, "city").items())
        with _replicas(schema, db) as (_, servers):
            pids = [s.pid for s in servers if s.pid is not None]
            cpu0, db0, gen0, wall0 = sum(map(_cpu_s, pids)), _postgres_cpu_s(), time.process_time(), time.monotonic()
            result = asyncio.run(_city([s.url for s in servers], creds, CITY_S))
            wall = time.monotonic() - wall0
            cores = {"servers": (sum(map(_cpu_s, pids)) - cpu0) / wall, "postgres": (_postgres_cpu_s() - db0) / wall,
                     "load_generator": (time.process_time() - gen0) / wall}
    return {"city_sim_boxes": CITY_BOXES, "city_sim_seconds": CITY_S, "city_sim_checkins": result["checkins"],
            "city_sim_cores_used": {k: round(v, 2) for k, v in cores.items()},
            "city_sim_checkin_p99_ms": None if result["p99_ms"] is None else round(result["p99_ms"], 1),
            "city_sim_lost": result["lost"], "city_sim_why_lost": result["why_lost"],
            "city_sim_warm_checkin_p99_ms": None if result["warm_p99_ms"] is None else round(result["warm_p99_ms"], 1)}


def run(url: str, only: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, fn in (("pg_ingest", bench_ingest_and_copy), ("pg_checkins", bench_checkins), ("city", bench_city)):
        if only in (None, name):
            result.update(fn(url))
    return result
