"""Store-and-forward benchmark (issue 2). Prints one JSON object.

- durable_ingest_per_s: readings/s through the agent's real ingest path (50 devices submitting
  30-reading polls into the Pipeline, which group-commits them into the DurableBuffer); a reading
  counts only when its append was acknowledged after the fsynced commit.
- buffer_append_1000_per_s: DurableBuffer.append with batches of 1000 (same shape as the raw figure).
- sqlite_limit_per_s: raw sqlite3 inserts of the same rows into the same schema, WAL +
  synchronous=FULL, 1000 rows per transaction, measured in the same run.
- drain_mqtt_per_s: readings/s from a full buffer to a real mosquitto at QoS 1 (PUBACK-confirmed),
  through the agent's Drain and MqttUplink; raw_broker_per_s is paho publishing the same payloads
  at QoS 1 (the broker's limit, same run).
- encode_batch_rows_per_s: the uplink codec alone (agent.uplink.codec.encode_batch, 1000-row
  batches, 1 s); both uplinks spend it on every batch they send.
- agent_rss_mb: RSS of a real `quanedge agent run` process polling 20 simulated WXT530s
  (Modbus TCP) once a second, after QUANEDGE_BENCH_RSS_S seconds (default 60).

Environment: QUANEDGE_BENCH_BROKER (default 127.0.0.1:1883), QUANEDGE_BENCH_ROWS (default 200000).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.buffer import BufferSettings, DurableBuffer
from agent.pipeline import Pipeline
from core.reading import Reading

ROWS = int(os.environ.get("QUANEDGE_BENCH_ROWS", "200000"))
BROKER = os.environ.get("QUANEDGE_BENCH_BROKER", "127.0.0.1:1883")
RSS_S = float(os.environ.get("QUANEDGE_BENCH_RSS_S", "60"))


def _readings(n: int, device: str = "wxt-1") -> list[Reading]:
    now = time.time()
    return [Reading(device, f"point_{i % 30}", 20.0 + (i % 97) / 10, "degC", now + i * 1e-3) for i in range(n)]


def sqlite_limit(path: Path, rows: int) -> float:
    from agent.buffer import _INSERT, _SCHEMA, _to_row

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    data = [(i + 1, *_to_row(r)) for i, r in enumerate(_readings(rows))]
    t0 = time.perf_counter()
    for i in range(0, rows, 1000):
        db.execute("BEGIN")
        db.executemany(_INSERT, data[i:i + 1000])
        db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.close()
    return rows / dt


async def buffer_append_1000(path: Path, rows: int) -> float:
    batches = [_readings(1000) for _ in range(rows // 1000)]
    async with DurableBuffer(BufferSettings(path, max_bytes=2 * 1024**3)) as buf:
        t0 = time.perf_counter()
        for b in batches:
            await buf.append(b)
        return rows / (time.perf_counter() - t0)


async def pipeline_ingest(path: Path, rows: int) -> float:
    devices, per_poll = 50, 30
    polls = rows // (devices * per_poll)
    polls_by_device = [[_readings(per_poll, f"wxt-{d}") for _ in range(polls)] for d in range(devices)]
    async with DurableBuffer(BufferSettings(path, max_bytes=2 * 1024**3)) as buf:
        pipeline = Pipeline(buf)
        runner = asyncio.create_task(pipeline.run())

        async def device(batches: list[list[Reading]]) -> None:
            for b in batches:
                await pipeline.submit(b)
                await asyncio.sleep(0)

        t0 = time.perf_counter()
        await asyncio.gather(*(device(b) for b in polls_by_device))
        total = devices * per_poll * polls
        while pipeline.stored_total < total:  # acknowledged = durably committed
            await asyncio.sleep(0.001)
        dt = time.perf_counter() - t0
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return total / dt


async def drain_mqtt(path: Path, rows: int) -> dict:
    from agent.drain import Drain
    from agent.uplink.codec import encode_batch
    from agent.uplink.mqtt import MqttSettings, MqttUplink

    host, _, port = BROKER.rpartition(":")
    prefix = f"bench-{secrets.token_hex(3)}"
    # PUBACK only: bench.delivery measures end to end
    settings = MqttSettings(host=host, port=int(port), topic_prefix=prefix, ack="broker")
    async with DurableBuffer(BufferSettings(path, max_bytes=2 * 1024**3)) as buf:
        for _i in range(0, rows, 5000):
            await buf.append(_readings(5000))
        drain = Drain(buf, lambda: MqttUplink(settings, "bench-box"), name="mqtt", batch_size=1000)
        t0 = time.perf_counter()
        task = asyncio.create_task(drain.run())
        while drain.sent_total < rows:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        dt = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    payload = encode_batch("bench-box", [r.with_seq(i + 1) for i, r in enumerate(_readings(1000))])
    return {"drain_mqtt_per_s": rows / dt, "raw_broker_per_s": _raw_broker(host, int(port), prefix, payload, rows)}


def _raw_broker(host: str, port: int, prefix: str, payload: bytes, rows: int) -> float:
    """paho, QoS 1, one message in flight at a time (what the drain does): the broker's limit."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-raw")
    c.connect(host, port)
    c.loop_start()
    try:
        t0 = time.perf_counter()
        for _ in range(rows // 1000):
            c.publish(f"{prefix}/raw/telemetry", payload, qos=1).wait_for_publish(10)
        return rows / (time.perf_counter() - t0)
    finally:
        c.loop_stop()
        c.disconnect()


def encode_rate(seconds: float = 1.0) -> float:
    from agent.uplink.codec import encode_batch

    batch = [Reading(f"ws-{i % 10}", "air_temp", 21.5 + i * 0.01, "degC", 1.7e9 + i, seq=i + 1) for i in range(1000)]
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode_batch("box-1", batch)
        rows += len(batch)
    return rows / (time.perf_counter() - started)


def agent_rss(work: Path) -> float:
    """RSS (MB) of a real agent process polling 20 simulated WXT530s once a second."""
    from agent.demo import free_port

    sim = subprocess.Popen([sys.executable, "-m", "quanedge", "sim", "wxt530", "--tcp", "0",
                            *sum((["--unit", str(u)] for u in range(1, 21)), [])],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    agent = None
    try:
        sim_port = json.loads(sim.stdout.readline())["tcp_port"]  # type: ignore[union-attr]
        host, _, port = BROKER.rpartition(":")
        devices = "".join(f'\n[[device]]\nname = "wxt-{u}"\nbus = "gw"\nprofile = "vaisala_wxt530"\nunit = {u}\n'
                          for u in range(1, 21))
        cfg = work / "box.toml"
        cfg.write_text(f"""[box]\nid = "rss-bench"\ndata_dir = "{work / 'box'}"\n
[uplink]\nkind = "mqtt"\n[uplink.mqtt]\nhost = "{host}"\nport = {port}\n\
topic_prefix = "bench-rss-{secrets.token_hex(3)}"\n
[health]\nlisten = "127.0.0.1:{free_port()}"\n
[[bus]]\nname = "gw"\nkind = "tcp"\nhost = "127.0.0.1"\nport = {sim_port}\n{devices}""")
        agent = subprocess.Popen([sys.executable, "-m", "quanedge", "agent", "run", "--config", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(RSS_S)
        if agent.poll() is not None:
            raise RuntimeError("agent exited during the RSS run")
        status = Path(f"/proc/{agent.pid}/status").read_text()
        kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        return kb / 1024
    finally:
        for p in (agent, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="qe-bench-"))
    out: dict = {"rows": ROWS}
    out["sqlite_limit_per_s"] = round(sqlite_limit(work / "raw.db", ROWS))
    out["buffer_append_1000_per_s"] = round(asyncio.run(buffer_append_1000(work / "b1.db", ROWS)))
    out["durable_ingest_per_s"] = round(asyncio.run(pipeline_ingest(work / "p.db", ROWS)))
    out["ingest_vs_raw"] = round(out["durable_ingest_per_s"] / out["sqlite_limit_per_s"], 3)
    out.update({k: round(v) for k, v in asyncio.run(drain_mqtt(work / "d.db", ROWS)).items()})
    out["encode_batch_rows_per_s"] = round(encode_rate())
    out["agent_rss_mb"] = round(agent_rss(work), 1)
    out["agent_rss_after_s"] = RSS_S
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
