"""Wiring: builds the data path from an AgentConfig and runs it under one TaskGroup.

    bus schedulers -> pipeline (inference stage) -> durable buffer -> drain -> uplink
                      health server (/healthz, /metrics)      TTL expiry

Every task has one owner (the TaskGroup). Stopping (SIGTERM/SIGINT or the `stop` event) cancels
the producers, stores whatever the pipeline still holds, and closes the buffer cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from agent._compat import TaskGroup
from agent.buffer import DurableBuffer
from agent.config import AgentConfig, BusConfig
from agent.drain import Drain
from agent.enroll import load_credential
from agent.errors import ConfigError
from agent.health import Metrics, serve_health
from agent.pipeline import Pipeline
from agent.scheduler import BusScheduler, PolledDevice
from agent.uplink.base import Uplink

log = logging.getLogger(__name__)

TTL_INTERVAL_S = 60.0


def make_link(bus: BusConfig) -> Any:
    from drivers.modbus import ModbusLink

    if bus.kind == "rtu":
        return ModbusLink.rtu(bus.port, baudrate=bus.baudrate, parity=bus.parity, stopbits=bus.stopbits,
                              bytesize=bus.bytesize, timeout_s=bus.timeout_s)
    return ModbusLink.tcp(bus.host, bus.tcp_port, timeout_s=bus.timeout_s)


def make_uplink_factory(cfg: AgentConfig):
    """Returns (name, factory) for the configured uplink; checks what it needs up front."""
    box_id = cfg.box.id
    if cfg.uplink.kind == "mqtt":
        from agent.uplink.mqtt import MqttSettings, MqttUplink

        m = cfg.uplink.mqtt
        assert m is not None
        settings = MqttSettings(host=m.host, port=m.port, username=m.username, password=m.password, tls=m.tls,
                                ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
                                topic_prefix=m.topic_prefix, keepalive_s=m.keepalive_s,
                                client_id=f"quanedge-agent-{box_id}")
        return "mqtt", lambda: MqttUplink(settings, box_id)
    from agent.uplink.http import HttpSettings, HttpUplink

    cred = load_credential(cfg.credential_path)
    if cred is None:
        raise ConfigError("the HTTP uplink needs this box's credential: run `quanedge agent enroll` first",
                          file=str(cfg.path), key="uplink.kind", value="http")
    server = (cfg.uplink.http.server if cfg.uplink.http and cfg.uplink.http.server else cred.server)
    timeout = cfg.uplink.http.timeout_s if cfg.uplink.http else 10.0
    settings = HttpSettings(server=server, credential=cred.credential, timeout_s=timeout)
    return "http", lambda: HttpUplink(settings, box_id)


def build_schedulers(cfg: AgentConfig, pipeline: Pipeline, metrics: Metrics, stack: AsyncExitStack) -> list[BusScheduler]:
    from drivers.modbus import ModbusDevice

    schedulers = []
    for bus in cfg.buses:
        devs = [d for d in cfg.devices if d.bus == bus.name]
        if not devs:
            log.warning("bus %s has no devices; not polled", bus.name)
            continue
        link = make_link(bus)
        stack.push_async_callback(link.close)
        polled = [PolledDevice(d.name, ModbusDevice(d.name, link, d.unit, d.profile), d.poll_s, d.points or None)
                  for d in devs]
        schedulers.append(BusScheduler(bus.name, polled, pipeline.submit, metrics))
    return schedulers


async def run_agent(cfg: AgentConfig, stop: asyncio.Event | None = None, *, install_signals: bool = True) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    uplink_name, make_uplink = make_uplink_factory(cfg)
    metrics = Metrics()
    stage = None
    if cfg.models:
        from agent.inference import InferenceStage

        stage = InferenceStage.from_config(cfg.models)
    async with AsyncExitStack() as stack:
        buffer = DurableBuffer(cfg.buffer)  # drop counts reach /metrics via buffer.stats (durable)
        await buffer.open()
        stack.push_async_callback(buffer.close)
        ack_log = os.environ.get("QUANEDGE_ACK_LOG")
        pipeline = Pipeline(buffer, stage=stage, observer=metrics, ack_log=Path(ack_log) if ack_log else None)
        schedulers = build_schedulers(cfg, pipeline, metrics, stack)
        drain = Drain(buffer, make_uplink, name=uplink_name, batch_size=cfg.uplink.batch_size, observer=metrics)
        metrics.buffer_stats = buffer.stats
        log.info("agent %s starting: %d bus(es), %d device(s), uplink %s, buffer %s",
                 cfg.box.id, len(schedulers), len(cfg.devices), uplink_name, cfg.buffer.path)
        producers: list[asyncio.Task] = []
        async with TaskGroup() as tg:
            for s in schedulers:
                producers.append(tg.create_task(s.run(), name=f"bus:{s.bus}"))
            others = [
                tg.create_task(pipeline.run(), name="pipeline"),
                tg.create_task(drain.run(), name="drain"),
                tg.create_task(_expire_loop(buffer), name="ttl"),
            ]
            if cfg.health.enabled:
                ready = lambda: _readiness(schedulers, drain, buffer, pipeline)  # noqa: E731
                others.append(tg.create_task(
                    serve_health(metrics, cfg.health.host, cfg.health.port, ready), name="health"))
            await stop.wait()
            log.info("stopping: finishing the pipeline, then closing the buffer")
            for t in producers + others:
                t.cancel()
        stored = await pipeline.flush()
        if stored:
            log.info("stored %d queued readings before exit", stored)


async def _expire_loop(buffer: DurableBuffer) -> None:
    while True:
        await buffer.expire()
        await asyncio.sleep(TTL_INTERVAL_S)


def _readiness(schedulers: list[BusScheduler], drain: Drain, buffer: DurableBuffer, pipeline: Pipeline) -> dict:
    devices = {d.name: {"online": d.online, "failures": d.failures, "last_error": d.last_error,
                        "last_success": d.last_success}
               for s in schedulers for d in s.devices}
    st = buffer.stats()
    oldest = st["oldest_unsent_ts"]
    status = "ok"
    if any(d["online"] is False for d in devices.values()) or not drain.connected:
        status = "degraded"
    return {
        "status": status,
        "devices": devices,
        "buffer_depth": st["depth"],
        "last_seq": st["next_seq"] - 1,
        "buffer_bytes": st["bytes"],
        "oldest_unsent_age_s": None if oldest is None else round(time.time() - oldest, 3),
        "dropped": {f"{r}:{c}": n for (r, c), n in st["dropped"].items()},
        "uplink": {"name": drain.name, "connected": drain.connected, "sent": drain.sent_total,
                   "last_error": drain.last_error},
        "pipeline": pipeline.stats(),
    }
