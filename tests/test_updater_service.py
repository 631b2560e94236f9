"""UpdaterService in-process against a real check-in server and a real TUF repository over HTTP:
model hot swap under load with no reading lost, a model that fails to load, refusals, deadline,
a server-side cancel (409), and status reports that survive a restart of the service."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from updater_support import HW, ContractServer, TufRepo, model_bundle

from agent.buffer import BufferSettings, DurableBuffer
from agent.enroll import Credential, save_credential
from agent.inference import InferenceStage, ModelSpec
from agent.pipeline import Pipeline
from agent.updater.config import UpdaterConfig
from agent.updater.journal import Journal
from agent.updater.models import runtime_models
from agent.updater.service import UpdaterService
from core.reading import Reading

BOX = "svc-box"
SPECS = (ModelSpec("wx_fault", "1.0.0"),)
POINTS = (("air_temperature", "degC", 20.0), ("relative_humidity", "%", 60.0), ("air_pressure", "hPa", 1010.0),
          ("wind_speed", "m/s", 3.0), ("rain_intensity", "mm/h", 0.0))


@pytest.fixture
def world(tmp_path: Path):
    repo, server = TufRepo(tmp_path / "repo"), ContractServer(poll_interval_s=1)
    server.add_box(BOX, "cred-svc")
    save_credential(tmp_path / "box" / "credential.json", Credential(BOX, "cred-svc", server.url))
    ucfg = UpdaterConfig(enabled=True, root=tmp_path / "updater", server=server.url,
                         trusted_root=repo.trusted_root(tmp_path / "root.json"), poll_interval_s=1,
                         model_health_s=0.5, clock_slack_s=0)
    yield SimpleNamespace(repo=repo, server=server, ucfg=ucfg, tmp=tmp_path)
    repo.close()
    server.close()


def cfg(world, models=SPECS, devices=()) -> SimpleNamespace:
    return SimpleNamespace(box=SimpleNamespace(id=BOX, hardware=HW),
                           credential_path=world.tmp / "box" / "credential.json", models=models, devices=devices)


def publish_model(world, version: str, **kw) -> str:
    path = model_bundle(version, world.tmp / f"wx_fault-{version}.tar.gz", **kw)
    return world.repo.publish(path, kind="onnx_model", version=version)


def offer(world, kind: str, target: str, version: str, **kw) -> str:
    return world.server.offer(BOX, kind=kind, target_name=target, version=version, repo_url=world.repo.url, **kw)


async def until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def run_until_final(service: UpdaterService, world, action_id: str, timeout: float = 30,
                          then: Callable[[], Any] | None = None) -> dict:
    """Run the service until the action's final report (and `then()`, if given, holds)."""
    task = asyncio.create_task(service.run())
    try:
        final = await until(lambda: world.server.final(action_id), timeout, f"final report of {action_id}")
        if then is not None:
            await until(then, timeout, "what follows the final report")
        return final
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def leftovers(world) -> list[Path]:
    root = world.ucfg.root
    return [p for p in (*root.glob("cache/parts/*"), *root.glob("cache/*.tar.gz"), *root.glob("**/*.tmp"))]


async def test_model_hot_swap_under_load_loses_no_reading(world) -> None:
    specs, models_dir = runtime_models(SPECS, world.ucfg)
    stage = InferenceStage.from_config(specs, models_dir)
    buffer = DurableBuffer(BufferSettings(world.tmp / "buffer.db"))
    await buffer.open()
    pipeline = Pipeline(buffer, stage=stage)
    sent: list[tuple[str, str, float]] = []

    async def produce() -> None:
        t0, i = 1.7e9, 0
        while True:
            batch = [Reading(f"wxt-{d}", p, v + (i % 7) * 0.1, u, t0 + 60 * i) for d in range(3) for p, u, v in POINTS]
            await pipeline.submit(batch)
            sent.extend((r.device, r.point, r.ts) for r in batch)
            i += 1
            await asyncio.sleep(0.002)

    target = publish_model(world, "1.1.0")
    action_id = offer(world, "model", target, "1.1.0")
    service = UpdaterService(cfg(world), world.ucfg, emit=buffer.append, inference_stage=stage)
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(produce())]
    names = {p for p, _, _ in POINTS}

    async def judged() -> set[tuple[str, str, float]]:
        return {(r.device, r.point, r.ts) for r in await buffer.peek(10**7, after_seq=0) if r.point in names}

    try:
        # after success the box reports its inventory; stop the service only once that landed
        final = await run_until_final(service, world, action_id, then=lambda: any(
            inv.get("models") == {"wx_fault": "1.1.0"} for inv in world.server.inventory.get(BOX, [])))
        await asyncio.sleep(0.3)  # keep producing after the swap
    finally:
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
    try:
        deadline = time.monotonic() + 10  # the pipeline stores what it holds (a lost one never arrives)
        while await judged() != set(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
    stored = await buffer.peek(10**7, after_seq=0)
    have = await judged()
    await buffer.close()
    stage.close()
    assert final["state"] == "success", final
    assert stage.versions() == {"wx_fault": "1.1.0"} and stage.stats()["swaps"] == 1
    assert len(sent) > 2000, "too little load to prove anything"
    assert have == set(sent), f"{len(set(sent) - have)} readings lost across the swap"
    events = [r for r in stored if r.point == "update.model"]
    assert [e.text.split('"state":"')[1].split('"')[0] for e in events] == [
        "proceeding", "downloading", "downloaded", "installing", "success"]
    assert world.server.states(action_id) == ["proceeding", "downloading", "downloaded", "installing", "success"]
    assert world.server.inventory[BOX][-1]["models"] == {"wx_fault": "1.1.0"}
    # a restart loads the committed version, not the configured one
    specs2, models_dir2 = runtime_models(SPECS, world.ucfg)
    assert specs2[0].version == "1.1.0"
    assert InferenceStage.from_config(specs2, models_dir2).versions() == {"wx_fault": "1.1.0"}
    assert leftovers(world) == []


async def test_a_model_that_does_not_load_leaves_the_old_one_running(world) -> None:
    specs, models_dir = runtime_models(SPECS, world.ucfg)
    stage = InferenceStage.from_config(specs, models_dir)
    events: list[Reading] = []

    async def emit(readings: list[Reading]) -> None:
        events.extend(readings)

    action_id = offer(world, "model", publish_model(world, "1.1.0", corrupt_onnx=True), "1.1.0")
    final = await run_until_final(UpdaterService(cfg(world), world.ucfg, emit, stage), world, action_id)
    assert (final["state"], final["reason_code"]) == ("failure", "swap_failed"), final
    assert stage.versions() == {"wx_fault": "1.0.0"}
    assert not (world.ucfg.root / "models" / "wx_fault" / "1.1.0").exists()
    assert leftovers(world) == []
    assert events[-1].cls.value == "event" and '"state":"failure"' in events[-1].text
    assert runtime_models(SPECS, world.ucfg)[0][0].version == "1.0.0"


@pytest.mark.parametrize("kind, version, code", [
    ("agent", "0.2.0", "not_supervised"),
    ("firmware", "2.1.0", "device_not_configured"),
    ("model", "1.0.0", "downgrade"),
    ("model", "1.1.0", "target_mismatch"),
])
async def test_updates_this_box_cannot_take_are_rejected_with_a_reason(world, kind, version, code) -> None:
    stage = InferenceStage.from_config(*runtime_models(SPECS, world.ucfg))
    blob = world.tmp / f"wx_fault-{version}.tar.gz"
    if code == "target_mismatch":  # a signed AGENT bundle offered as a model: never installed as one
        blob.write_bytes(os.urandom(5000))
        target = world.repo.publish(blob, kind="agent_bundle", version=version)
    else:
        target = publish_model(world, version)
    action_id = offer(world, kind, target, version)
    final = await run_until_final(UpdaterService(cfg(world), world.ucfg, None, stage), world, action_id)
    assert (final["state"], final["reason_code"]) == ("rejected", code), final
    assert stage.versions() == {"wx_fault": "1.0.0"}
    assert leftovers(world) == []


@pytest.mark.parametrize("kind", ["modbus", "ntcip", "ocpp_charger"])
async def test_device_firmware_is_refused_naming_the_device_its_kind_and_why(world, kind) -> None:
    from drivers.registry import KINDS

    blob = world.tmp / "wx_fault-2.1.0.bin"
    blob.write_bytes(os.urandom(5000))
    target = world.repo.publish(blob, kind="device_firmware", version="2.1.0")
    action_id = offer(world, "firmware", target, "2.1.0", component="wx_fault")   # a device on this box
    box = cfg(world, devices=(SimpleNamespace(name="wx_fault", kind=kind),))
    final = await run_until_final(UpdaterService(box, world.ucfg, None, None), world, action_id)
    assert (final["state"], final["reason_code"]) == ("rejected", "firmware_not_supported"), final
    assert final["reason"] == f"device 'wx_fault' is a {kind}: {KINDS[kind].firmware_refusal}"
    assert leftovers(world) == []


async def test_a_stuck_update_gives_up_at_its_deadline_and_does_not_block_the_next(world) -> None:
    stage = InferenceStage.from_config(*runtime_models(SPECS, world.ucfg))
    world.repo.faults.targets_down = True
    first = offer(world, "model", publish_model(world, "1.1.0"), "1.1.0", deadline_s=3)
    service = UpdaterService(cfg(world), world.ucfg, None, stage)
    task = asyncio.create_task(service.run())
    try:
        final = await until(lambda: world.server.final(first), 20, "the timeout")
        assert (final["state"], final["reason_code"]) == ("failure", "timeout"), final
        assert world.repo.target_requests(), "it never tried"
        world.repo.faults.targets_down = False
        second = offer(world, "model", publish_model(world, "1.2.0"), "1.2.0")
        final = await until(lambda: world.server.final(second), 30, "the next update")
        assert final["state"] == "success" and stage.versions() == {"wx_fault": "1.2.0"}
        assert sorted(p.name for p in (world.ucfg.root / "models" / "wx_fault").iterdir()) == ["1.0.0", "1.2.0"]
        third = offer(world, "model", publish_model(world, "1.3.0"), "1.3.0")
        final = await until(lambda: world.server.final(third), 30, "the third update")
        # With nothing new offered, the next check-ins must be answered 304 from their ETag (the
        # poll after a final report is the first that can be unchanged; a slow host may not get
        # there before the updates above are done, so wait for it rather than assume it).
        await until(lambda: world.server.not_modified > 0, 20, "a check-in that used its ETag")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert final["state"] == "success" and stage.versions() == {"wx_fault": "1.3.0"}
    assert sorted(p.name for p in (world.ucfg.root / "models" / "wx_fault").iterdir()) == ["1.2.0", "1.3.0"]


async def test_an_action_the_server_closes_is_stopped_and_cleaned_up(world) -> None:
    stage = InferenceStage.from_config(*runtime_models(SPECS, world.ucfg))
    world.repo.faults.targets_down = True
    first = offer(world, "model", publish_model(world, "1.1.0"), "1.1.0")
    service = UpdaterService(cfg(world), world.ucfg, None, stage)
    task = asyncio.create_task(service.run())
    journal = Journal(world.ucfg.root / "journal.db")
    try:
        await until(lambda: (j := journal.current()) is not None and j.attempts >= 1, 20, "download retries")
        world.server.close_action(BOX, "canceled", "canceled_by_admin")
        await until(lambda: journal.final_state(first) == "canceled", 20, "the box to drop the action")
        world.repo.faults.targets_down = False
        second = offer(world, "model", publish_model(world, "1.2.0"), "1.2.0")
        final = await until(lambda: world.server.final(second), 30, "the next update")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert final["state"] == "success"
    assert not any(s in ("success", "failure") for s in world.server.states(first))
    assert stage.versions() == {"wx_fault": "1.2.0"}


async def test_status_reports_survive_a_restart_and_arrive_once_in_order(world) -> None:
    stage = InferenceStage.from_config(*runtime_models(SPECS, world.ucfg))
    world.server.status_down = True
    action_id = offer(world, "model", publish_model(world, "1.1.0"), "1.1.0")
    emitted: list[Reading] = []

    async def emit(readings: list[Reading]) -> None:
        emitted.extend(readings)

    journal = Journal(world.ucfg.root / "journal.db")
    task = asyncio.create_task(UpdaterService(cfg(world), world.ucfg, emit, stage).run())
    try:
        await until(lambda: journal.final_state(action_id) == "success", 30, "the update to finish on the box")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert world.server.states(action_id) == [] and journal.undelivered() == 5
    world.server.status_down = False
    task = asyncio.create_task(UpdaterService(cfg(world), world.ucfg, emit, stage).run())
    try:
        await until(lambda: journal.undelivered() == 0, 30, "the outbox to drain")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert world.server.states(action_id) == ["proceeding", "downloading", "downloaded", "installing", "success"]
    assert [r.text.split('"state":"')[1].split('"')[0] for r in emitted] == [
        "proceeding", "downloading", "downloaded", "installing", "success"]
