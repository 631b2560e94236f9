"""The updater inside the agent: check-in loop, state machine driver, durable status reports.

    UpdaterService(cfg, cfg.updater, emit=buffer.append, inference_stage=stage).run()

`emit` takes a list of EVENT readings; `buffer.append` (durable: returns after the commit) is the
intended one, so an event is marked emitted only once it is on disk; `pipeline.submit` works too
(queued, not yet durable).

`run()` is one task of the runtime's TaskGroup and runs two tasks of its own:

    worker    check in (ETag, the server's poll_interval_s), PUT the inventory when it changes,
              accept ONE action at a time into the journal, drive it with `JobRunner` until it
              finishes or is handed to the supervisor (agent bundles, after the switch).
              An update that passes its deadline is rolled back and reported as failure, so a
              stuck update never blocks the next one (Greengrass #807).
    reporter  delivers the journal's outbox in order until the server answers (200, 404, 409),
              emits each report once as an EVENT reading through `emit` (so the box's telemetry
              carries the audit trail, durably, through the buffer), and sends progress
              heartbeats while downloading; a 409 means the server closed the action: the
              running update is stopped and cleaned up.

Reports written by the supervisor (restart, commit, rollback) land in the same outbox and are
delivered by whichever agent version runs next. Nothing is reported from memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent import __version__ as running_version
from agent.enroll import load_credential
from agent.updater.checkin import CheckinClient, ServerRefused, ServerUnavailable, UpdaterError
from agent.updater.checkpoints import Checkpoints
from agent.updater.config import UpdaterConfig
from agent.updater.journal import Job, Journal, JournalConflict, Report, State
from agent.updater.slots import Slots
from agent.updater.steps import JobRunner, agent_owns
from core.backoff import Backoff
from core.compat import TaskGroup, timeout
from core.errors import ConfigError
from core.reading import Quality, Reading, RecordClass

__all__ = ["SUPERVISED_ROOT_ENV", "UpdaterService"]

log = logging.getLogger(__name__)

SUPERVISED_ROOT_ENV = "QUANEDGE_SUPERVISED_ROOT"
EMIT_TIMEOUT_S = 10.0
_PROGRESS = {State.ACCEPTED: "proceeding", State.DOWNLOADING: "downloading", State.DOWNLOADED: "downloaded",
             State.INSTALLING: "installing", State.INSTALLED: "installing", State.SWITCHING: "installing",
             State.HEALTH_CHECK: "installing", State.ROLLING_BACK: "installing"}

Emit = Callable[[list[Reading]], Awaitable[Any]]


class UpdaterService:
    def __init__(self, cfg: Any, ucfg: UpdaterConfig, emit: Emit | None = None, inference_stage: Any = None, *,
                 transport: Any = None, checkpoints: Checkpoints | None = None,
                 health: Callable[[], str] | None = None) -> None:
        """`health`: the box's health figures as the check-in header (agent.health.health_header)."""
        self.box_id = cfg.box.id
        self.hardware = cfg.box.hardware
        self.credential_path = Path(cfg.credential_path)
        self.ucfg = ucfg
        self.stage = inference_stage
        self.model_specs = {s.name: s for s in getattr(cfg, "models", ())}
        self.device_kinds = {d.name: d.kind for d in getattr(cfg, "devices", ())}
        self._emit = emit
        self._transport = transport
        self.checkpoints = checkpoints
        self.health = health
        supervised = os.environ.get(SUPERVISED_ROOT_ENV)
        self.supervised = bool(supervised)
        self.root = Path(supervised) if supervised else ucfg.root
        self.journal: Journal | None = None
        self.runner: JobRunner | None = None
        self.poll_interval_s = ucfg.poll_interval_s
        self._closed: dict[str, str] = {}
        self._wakeup = asyncio.Event()
        self._inventory_sent: dict | None = None
        self._refused: set[str] = set()
        self.last_error: str | None = None

    def _health(self) -> str | None:
        if self.health is None:
            return None
        try:
            return self.health()
        except Exception:  # health is a courtesy: a fault in it must not stop the check-in
            log.exception("could not gather the health figures for the check-in")
            return None

    # --- life cycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled. Never raises: an updater fault must not take the data path down."""
        if not self.ucfg.enabled:
            return
        while True:
            try:
                await self._run_once()
            except Exception as exc:  # logged with its traceback, then retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("updater stopped by an unexpected error; restarting it in 60 s")
                await asyncio.sleep(60.0)

    async def _run_once(self) -> None:
        assert self.ucfg.trusted_root is not None  # UpdaterConfig refuses an enabled updater without one
        try:
            bootstrap = self.ucfg.trusted_root.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the fleet's TUF root: {exc}", key="updater.trusted_root",
                              value=str(self.ucfg.trusted_root)) from exc
        self.journal = await asyncio.to_thread(Journal, self.root / "journal.db")
        self.runner = JobRunner(
            self.journal, self.root, hardware=self.hardware, supervised=self.supervised, bootstrap_root=bootstrap,
            clock_slack_s=self.ucfg.clock_slack_s, model_health_s=self.ucfg.model_health_s, stage=self.stage,
            model_specs=self.model_specs, device_kinds=self.device_kinds, closed=self._closed.get,
            wake=self._wakeup.set, checkpoints=self.checkpoints)
        try:
            client = await self._client()
            async with client, TaskGroup() as tg:
                tg.create_task(self._worker(client), name="updater-worker")
                tg.create_task(self._reporter(client), name="updater-reporter")
        finally:
            self.journal.close()
            self.journal = None

    async def _client(self) -> CheckinClient:
        warned = False
        while True:
            cred = await asyncio.to_thread(load_credential, self.credential_path)
            if cred is not None:
                return CheckinClient(self.ucfg.server or cred.server, self.box_id, cred.credential,
                                     transport=self._transport)
            if not warned:
                log.warning("updater waits for this box's credential (%s): enroll the box", self.credential_path)
                warned = True
            await asyncio.sleep(self.poll_interval_s)

    def stats(self) -> dict[str, Any]:
        job = self.journal.current() if self.journal is not None else None
        return {"state": None if job is None else job.state.value,
                "action_id": None if job is None else job.action.action_id,
                "undelivered_reports": self.journal.undelivered() if self.journal is not None else 0,
                "last_error": self.last_error}

    # --- worker -------------------------------------------------------------------------------
    async def _worker(self, client: CheckinClient) -> None:
        backoff, down = Backoff(base_s=1.0, cap_s=300.0), False
        await self._announce_boot()
        while True:
            try:
                delay = await self._cycle(client)
            except UpdaterError as exc:
                self.last_error = str(exc)
                if not down:
                    log.warning("updater cannot check in, retrying: %s", exc)
                    down = True
                delay = backoff.next_delay() if isinstance(exc, ServerUnavailable) else max(60.0, self.poll_interval_s)
            except Exception as exc:  # a journal or slot fault: keep the data path up, retry later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("updater: unexpected error, retrying in 30 s")
                delay = 30.0
            else:
                if down:
                    log.info("updater checks in again")
                    down = False
                backoff.reset()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _cycle(self, client: CheckinClient) -> float:
        """One round: drive the current job, or check in (and maybe accept an action). Returns the pause."""
        assert self.journal is not None and self.runner is not None
        job = await asyncio.to_thread(self.journal.current)
        if job is not None and agent_owns(job):
            await self.runner.run(job)
            after = await asyncio.to_thread(self.journal.current)
            moved = after is None or (after.action.action_id, after.state) != (job.action.action_id, job.state)
            return 0.0 if moved else 1.0  # nothing moved (a lost race): do not spin
        if job is not None and not self.supervised:
            await self._orphaned(job)
        await self._send_inventory(client)
        answer = await client.checkin(self._health())
        self.poll_interval_s = answer.poll_interval_s or self.ucfg.poll_interval_s
        if answer.invalid is not None:
            await self._refuse_invalid(client, *answer.invalid)
        action = answer.action
        if action is not None and job is None and self.journal.final_state(action.action_id) is None:
            try:
                await asyncio.to_thread(self.journal.begin, action)
                log.info("update %s accepted: %s %s %s", action.action_id, action.kind, action.target_name,
                         action.version)
            except JournalConflict:
                pass
            self._wakeup.set()
            return 0.0
        return self.poll_interval_s

    async def _announce_boot(self) -> None:
        """A new agent version under its health check says so: an EVENT reading the uplink must
        carry (the supervisor's `sent > 0` test), and an audit record of the boot."""
        assert self.journal is not None
        try:
            job = await asyncio.to_thread(self.journal.current)
        except Exception as exc:  # the worker will meet the same fault and log it
            log.error("updater: cannot read the journal: %s", exc)
            return
        if (job is None or self._emit is None or job.action.kind != "agent" or job.state is not State.HEALTH_CHECK
                or job.slot_to != running_version):
            return
        a = job.action
        text = json.dumps({"action_id": a.action_id, "rollout_id": a.rollout_id, "kind": a.kind,
                           "target": a.target_name, "version": a.version, "state": "booted",
                           "boot": job.boot_attempts}, separators=(",", ":"))
        try:
            await self._emit([Reading("agent", "update.agent", None, "", time.time(), Quality.DERIVED,
                                      RecordClass.EVENT, text)])
        except Exception as exc:  # the health check will say the uplink sent nothing
            log.error("could not store the boot event of agent %s: %s", running_version, exc)

    async def _send_inventory(self, client: CheckinClient) -> None:
        inventory = {"agent_version": running_version, "hardware": self.hardware, "firmware": {},
                     "models": dict(self.stage.versions()) if self.stage is not None else {}}
        if inventory != self._inventory_sent:
            await client.put_inventory(inventory)
            self._inventory_sent = inventory

    async def _refuse_invalid(self, client: CheckinClient, action_id: str, why: str) -> None:
        if not action_id or action_id in self._refused:
            return
        log.error("update %s refused: the action is malformed: %s", action_id, why)
        body = {"state": "rejected", "reason": why[:1000], "reason_code": "bad_action", "detail": None}
        try:
            await client.post_status(action_id, body)
            self._refused.add(action_id)
        except ServerRefused:
            self._refused.add(action_id)

    async def _orphaned(self, job: Job) -> None:
        """An agent update handed to a supervisor that is gone: past its deadline, switch back."""
        if time.time() < job.deadline:
            return
        assert self.journal is not None
        if job.slot_from:
            Slots(self.root).switch(job.slot_from, previous=None)
        with contextlib.suppress(JournalConflict):
            await asyncio.to_thread(self.journal.finish, job, "failure", reason_code="supervisor_missing",
                                    reason="the agent no longer runs under its supervisor; switched back")

    # --- reporter -----------------------------------------------------------------------------
    async def _reporter(self, client: CheckinClient) -> None:
        backoff, last_beat, down = Backoff(base_s=1.0, cap_s=60.0), time.monotonic(), False
        while True:
            delay = 1.0
            try:
                await self._flush(client)
                if time.monotonic() - last_beat >= self.poll_interval_s:
                    last_beat = time.monotonic()
                    await self._heartbeat(client)
                backoff.reset()
                if down:
                    log.info("update reports are delivered again")
                    down = False
            except UpdaterError as exc:
                self.last_error = str(exc)
                if not down:
                    log.warning("update reports wait in the journal: %s", exc)
                    down = True
                delay = backoff.next_delay() if isinstance(exc, ServerUnavailable) else 30.0
            except Exception as exc:  # a journal or emit fault: keep the data path up, retry later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("update reports: unexpected error, retrying in 30 s")
                delay = 30.0
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives as the wake-up is set (both happen when a job finishes), so the service
            # would outlive its owner's cancel() and loop on.
            try:
                async with timeout(delay):
                    await self._wakeup.wait()
            except (TimeoutError, asyncio.TimeoutError):
                pass
            self._wakeup.clear()

    async def _flush(self, client: CheckinClient) -> None:
        """Deliver the outbox in order, then store new reports as EVENT readings (a slow or failing
        buffer never holds a report back)."""
        assert self.journal is not None
        reports = await asyncio.to_thread(self.journal.pending_reports)
        try:
            await self._deliver(client, [r for r in reports if not r.delivered])
        finally:
            fresh = [r for r in reports if not r.emitted]
            if fresh:
                try:
                    if self._emit is not None:
                        async with timeout(EMIT_TIMEOUT_S):  # not wait_for: see _reporter
                            await self._emit([self._event(r) for r in fresh])
                    await asyncio.to_thread(self.journal.mark_emitted, [r.id for r in fresh])
                except Exception as exc:  # retried at the next flush
                    log.error("update events not stored (retried at the next flush): %r", exc)

    async def _deliver(self, client: CheckinClient, reports: list[Report]) -> None:
        assert self.journal is not None
        for r in reports:
            try:
                delivery = await client.post_status(r.action.action_id, r.body())
            except ServerRefused as exc:
                if exc.status not in (400, 422):
                    raise
                log.error("update report %s/%s dropped, the server cannot parse it: %s", r.action.action_id,
                          r.state, exc)
            else:
                if delivery.outcome == "closed":
                    self._server_closed(r.action.action_id, delivery.state)
            await asyncio.to_thread(self.journal.mark_delivered, r.id)

    async def _heartbeat(self, client: CheckinClient) -> None:
        assert self.journal is not None
        job = await asyncio.to_thread(self.journal.current)
        if job is None or not agent_owns(job) or job.state not in _PROGRESS:
            return
        detail = {"bytes": job.offset, "attempts": job.attempts} if job.state is State.DOWNLOADING else None
        body = {"state": _PROGRESS[job.state], "reason": None, "reason_code": None, "detail": detail}
        delivery = await client.post_status(job.action.action_id, body)
        if delivery.outcome == "closed":
            self._server_closed(job.action.action_id, delivery.state)

    def _server_closed(self, action_id: str, state: str | None) -> None:
        self._closed[action_id] = state or "canceled"
        job = self.journal.current() if self.journal is not None else None
        if job is not None and job.action.action_id == action_id and self.runner is not None:
            self.runner.stop.set()

    def _event(self, r: Report) -> Reading:
        a = r.action
        text = json.dumps({"action_id": a.action_id, "rollout_id": a.rollout_id, "kind": a.kind,
                           "target": a.target_name, "version": a.version, "state": r.state,
                           "reason_code": r.reason_code, "reason": r.reason}, separators=(",", ":"))
        return Reading("agent", f"update.{a.kind}", None, "", r.created_at, Quality.DERIVED, RecordClass.EVENT, text)
