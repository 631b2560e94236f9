"""Wiring: builds the data path from an AgentConfig and runs it under one TaskGroup.

    bus schedulers ----+
    push listeners ----+-> pipeline (inference stage) -> durable buffer -> drain -> uplink
    command router ----+   (audit records)
                      health server (/healthz, /metrics, loopback POST /commands)      TTL expiry

Devices are built by agent.devices: Modbus devices share one link and one scheduler per [[bus]];
every other polled device (WXT serial, NTCIP, GB/T, the gates) has its own scheduler task; push
devices (plate camera receiver, access-controller event listener) have a listener task and an
event task each. All of them, and the command router's drivers, close through the exit stack.

Every task has one owner (the TaskGroup) and runs under the `Supervisor` (agent.supervise): a task
that dies unexpectedly is restarted with capped backoff, and /healthz answers 503 with the
component's state and last error while it is down; a failing buffer (commits failing, writer
down) is 503 as well. Stopping (SIGTERM/SIGINT or the `stop` event) cancels the producers, stores
whatever the pipeline still holds (for at most SHUTDOWN_FLUSH_S: what was acknowledged is already
committed, so a buffer that cannot take more no longer holds the process), and closes the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from agent.buffer import DurableBuffer
from agent.commands import CommandRouter, ControlEndpoint, write_control_token
from agent.config import AgentConfig
from agent.devices import DeviceSet, build_devices
from agent.drain import Drain
from agent.enroll import load_credential
from agent.health import Metrics, health_header, serve_health, uplink_status
from agent.pipeline import Pipeline
from agent.supervise import Supervisor
from core.compat import TaskGroup
from core.errors import ConfigError
from core.reading import Reading, RecordClass

log = logging.getLogger(__name__)

TTL_INTERVAL_S = 60.0
#: At SIGTERM, queued readings (none of them acknowledged yet) get this long to reach the buffer.
SHUTDOWN_FLUSH_S = 5.0


def make_uplink_factory(cfg: AgentConfig, on_command: Callable[[bytes], None] | None = None):
    """Returns (name, factory) for the configured uplink; checks what it needs up front. The MQTT
    uplink hands the fleet's commands to `on_command` (HTTP boxes long-poll: `fleet_commands.poll_http`)."""
    box_id = cfg.box.id
    if cfg.uplink.kind == "mqtt":
        from agent.uplink.mqtt import MqttSettings, MqttUplink

        m = cfg.uplink.mqtt
        assert m is not None
        username, password, client_id = m.username, m.password, f"quanedge-agent-{box_id}"
        cred = load_credential(cfg.credential_path) if username is None else None
        if cred is not None and cred.mqtt_username is not None:  # the box's own account, from enrolment
            username, password = cred.mqtt_username, cred.mqtt_password
            client_id = cred.mqtt_client_id or client_id
        settings = MqttSettings(host=m.host, port=m.port, username=username, password=password, tls=m.tls,
                                ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
                                topic_prefix=m.topic_prefix, keepalive_s=m.keepalive_s,
                                client_id=client_id, ack=m.ack, ack_timeout_s=m.ack_timeout_s, window=m.window)
        return "mqtt", lambda: MqttUplink(settings, box_id, on_command=on_command)
    from agent.uplink.http import HttpSettings, HttpUplink

    cred = load_credential(cfg.credential_path)
    if cred is None:
        raise ConfigError("the HTTP uplink needs this box's credential: run `quanedge agent enroll` first",
                          file=str(cfg.path), key="uplink.kind", value="http")
    server = (cfg.uplink.http.server if cfg.uplink.http and cfg.uplink.http.server else cred.server)
    timeout = cfg.uplink.http.timeout_s if cfg.uplink.http else 10.0
    http = HttpSettings(server=server, credential=cred.credential, timeout_s=timeout)
    return "http", lambda: HttpUplink(http, box_id)


#: GIL switch interval for the agent process (CPython's default is 0.005 s); see bench/RESULTS.md, delivery.
GIL_SWITCH_INTERVAL_S = 0.0005


async def run_agent(cfg: AgentConfig, stop: asyncio.Event | None = None, *, install_signals: bool = True,
                    on_started: Callable[[dict[str, Any]], None] | None = None,
                    supervisor: Supervisor | None = None) -> None:
    """Run the box until `stop` is set (or SIGTERM/SIGINT). `on_started` gets the running parts
    ({"supervisor", "buffer", "pipeline", "drain", "devices"}) for diagnostics and tests."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:  # the process's own run (not a test's): the buffer writer thread and the loop
        # hand the GIL back and forth all the time; CPython's 5 ms default stalls each hand-over
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    from agent.fleet_commands import LEDGER_FILE, FleetCommands

    fleet_commands = FleetCommands(cfg.box.data_dir / LEDGER_FILE)
    uplink_name, make_uplink = make_uplink_factory(cfg, fleet_commands.submit)
    metrics = Metrics()
    stage = _inference_stage(cfg)
    decider = None
    if cfg.junctions:
        from agent.traffic_control import PatternDecider

        decider = PatternDecider(cfg.junctions, _late_sender)  # bound to the router below
    async with AsyncExitStack() as stack:
        if stage is not None:
            stack.callback(stage.close)
        buffer = DurableBuffer(cfg.buffer)  # drop counts reach /metrics via buffer.stats (durable)
        await buffer.open()
        stack.push_async_callback(buffer.close)
        chain = ChainStage([s for s in (stage, decider) if s is not None])
        from agent.alarms import AlarmEvaluator

        pipeline = Pipeline(buffer, stage=chain or None, observer=metrics,
                            alarms=AlarmEvaluator.for_config(cfg.alarms))
        if stage is not None and stage.load_errors:
            await pipeline.submit([Reading(cfg.box.id, "model_status.load", 1.0, "", time.time(), cls=RecordClass.EVENT,
                                           text=err[:1000]) for err in stage.load_errors])
        devices = build_devices(cfg, pipeline.submit, metrics, stack, store=pipeline.store)
        router = CommandRouter(devices.drivers, {d.name: d.allow_commands for d in cfg.devices}, pipeline.submit,
                               config_file=str(cfg.path))
        fleet_commands.router = router
        if decider is not None:
            decider.bind(router.sender("traffic_control", emit=decider.audit))
        drain = Drain(buffer, make_uplink, name=uplink_name, batch_size=cfg.uplink.batch_size, observer=metrics)
        metrics.buffer_stats = buffer.stats
        log.info("agent %s starting: %d line(s), %d device(s), %d listener(s), uplink %s, buffer %s",
                 cfg.box.id, len(devices.schedulers), len(cfg.devices), len(devices.listeners), uplink_name,
                 cfg.buffer.path)
        sup = supervisor or Supervisor()
        metrics.components = sup.status
        producers: list[asyncio.Task] = []
        async with TaskGroup() as tg:
            def supervised(name: str, factory: Callable[[], Any]) -> asyncio.Task:
                return tg.create_task(sup.run(name, factory), name=name)

            for s in devices.schedulers:
                producers.append(supervised(f"bus:{s.bus}", s.run))
            for lst in devices.listeners:
                producers.append(supervised(f"listen:{lst.name}", lst.run))
            for sink in devices.sinks:
                producers.append(supervised(f"events:{sink.name}", sink.run))
            others = [
                supervised("pipeline", pipeline.run),
                supervised("drain", drain.run),
                supervised("ttl", lambda: _expire_loop(buffer)),
                supervised("fleet-commands", fleet_commands.run),
            ]
            poll = _command_poll(cfg, fleet_commands.submit)
            if poll is not None:
                others.append(supervised("fleet-commands-poll", poll))
            if cfg.health.enabled:
                control = ControlEndpoint(router, write_control_token(cfg.control_token_path))
                ready = lambda: _readiness(devices, drain, buffer, pipeline, stage, decider, sup)  # noqa: E731
                others.append(supervised("health", lambda: serve_health(
                    metrics, cfg.health.host, cfg.health.port, ready, post={"/commands": control})))
            updater = None
            if cfg.updater is not None and cfg.updater.enabled:
                from agent.updater.service import UpdaterService

                updater = UpdaterService(cfg, cfg.updater, emit=buffer.append, inference_stage=stage,
                                         health=lambda: health_header(devices, buffer, cfg.box.data_dir))
                others.append(supervised("updater", updater.run))
            if on_started is not None:
                on_started({"supervisor": sup, "buffer": buffer, "pipeline": pipeline, "drain": drain,
                            "devices": devices})
            await stop.wait()
            log.info("stopping: finishing the pipeline, then closing the buffer")
            for t in producers + others:
                t.cancel()
        pushed = [r for sink in devices.sinks for r in sink.leftovers()]  # events taken, not yet queued
        if pushed:
            pipeline.requeue(pushed)
        try:
            stored = await asyncio.wait_for(pipeline.flush(), SHUTDOWN_FLUSH_S)
        except asyncio.TimeoutError:
            log.error("the buffer did not take the %d queued (unacknowledged) batch(es) within %.0f s; "
                      "stopping without them", pipeline.queued(), SHUTDOWN_FLUSH_S)
            stored = 0
        if stored:
            log.info("stored %d queued readings before exit", stored)


def _command_poll(cfg: AgentConfig, submit: Callable[[bytes], None]) -> Callable[[], Any] | None:
    """An HTTP box's long-poll for fleet commands (an MQTT box gets them on its connection)."""
    if cfg.uplink.kind != "http":
        return None
    from agent.fleet_commands import poll_http

    cred = load_credential(cfg.credential_path)
    if cred is None:
        return None
    server = cfg.uplink.http.server if cfg.uplink.http and cfg.uplink.http.server else cred.server
    return lambda: poll_http(server, cred.credential, cfg.box.id, submit)


async def _expire_loop(buffer: DurableBuffer) -> None:
    while True:
        await buffer.expire()
        await asyncio.sleep(TTL_INTERVAL_S)


def _inference_stage(cfg: AgentConfig) -> Any:
    """The models declared in the config (committed OTA model updates win over older versions).

    A missing, corrupt or mismatched model is logged as a clear error and reported (/healthz
    "models.load_errors", a `model_status` event) while the box keeps reading its devices:
    exiting would make the service manager restart it into the same error, a crash loop in which
    no reading is stored. `quanedge agent check-config` fails on the same model, for installers.
    """
    if not cfg.models:
        return None
    from agent.inference import InferenceStage

    specs, models_dir = tuple(cfg.models), None
    if cfg.updater is not None and cfg.updater.enabled:
        from agent.updater.models import runtime_models

        specs, models_dir = runtime_models(cfg.models, cfg.updater)
    return InferenceStage.from_config(specs, models_dir, strict=False, status_device=cfg.box.id)


async def _late_sender(device: str, command: str, args: Any) -> None:
    raise RuntimeError("PatternDecider used before it was bound to the command router")


class ChainStage:
    """Pipeline stages in order (the inference stage, then the pattern decider)."""

    def __init__(self, stages: list[Any]) -> None:
        self.stages = stages

    def __bool__(self) -> bool:
        return bool(self.stages)

    async def process(self, readings: list[Any]) -> list[Any]:
        for stage in self.stages:
            readings = await stage.process(readings)
        return readings


def _readiness(device_set: DeviceSet, drain: Drain, buffer: DurableBuffer, pipeline: Pipeline,
               stage: Any = None, decider: Any = None, sup: Supervisor | None = None) -> dict:
    devices = device_set.status()
    st = buffer.stats()
    oldest = st["oldest_unsent_ts"]
    buffer_health = buffer.health()
    uplink = uplink_status(drain, st["depth"])
    status = "ok"
    if any(d["online"] is False for d in devices.values()) or not uplink["healthy"]:
        status = "degraded"
    if buffer_health["state"] != "ok" or (sup is not None and not sup.healthy()):
        status = "failing"
    return {
        "status": status,
        "buffer": {**buffer_health, "quarantined": st.get("quarantined", 0)},
        **({"components": sup.status()} if sup is not None else {}),
        "devices": devices,
        "buffer_depth": st["depth"],
        "last_seq": st["next_seq"] - 1,
        "buffer_bytes": st["bytes"],
        "oldest_unsent_age_s": None if oldest is None else round(time.time() - oldest, 3),
        "dropped": {f"{r}:{c}": n for (r, c), n in st["dropped"].items()},
        "uplink": uplink,
        "pipeline": pipeline.stats(),
        **({"models": stage.stats()} if stage is not None else {}),
        **({"junctions": decider.stats()} if decider is not None else {}),
    }
