"""The agent-process half of the update state machine: one `JobRunner.run(job)` per update.

    accepted     pre-checks (kind supported here, supervised for agent bundles, model declared)
    downloading  TUF refresh + policy + resumable download (transient failures retried, with
                 backoff, until the action's deadline)
    downloaded   the verified file is in the cache; its kind and version must match the action
    installing   unpack into a new slot / model version (.tmp, fsync, rename)
    installed    -> switching: the version we come from is journaled first
    switching    agent: flip `current` (then the supervisor restarts into it and health-checks)
                 model: InferenceStage.swap() between two batches
    health_check (model) the new model must run `model_health_s` without failing
    rolling_back (model) swap the old version back; report failure

Every step may be re-run after a crash: each one checks what is already done. Any error ends the
update in a final state with a reason code, after putting the box back on its old version:

    rejected  verification or policy (UpdateRejected reason codes), unsupported here, kind/version mismatch
    failure   timeout (the action's deadline), install_failed, swap_failed, health_check_failed
    (server closed the action: cleanup, no report — the server already knows)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__ as running_version
from agent.updater.bundle import BundleError
from agent.updater.checkpoints import Checkpoints
from agent.updater.download import fetch_target
from agent.updater.journal import Job, Journal, JournalConflict, State
from agent.updater.slots import SlotError, Slots
from agent.updater.verify import ReasonCode, UpdateRejected
from core.backoff import Backoff
from core.compat import timeout
from core.errors import ConfigError
from firmware_manifests.schema import TargetKind, Version

__all__ = ["AGENT_OWNED", "JobRunner", "ServerClosed", "agent_owns"]

log = logging.getLogger(__name__)

SUPERVISOR_STATES = frozenset({State.RESTARTING, State.HEALTH_CHECK, State.ROLLING_BACK})
AGENT_OWNED = frozenset(State) - SUPERVISOR_STATES


def agent_owns(job: Job) -> bool:
    """Agent bundles hand over to the supervisor once `current` is switched; models never do."""
    return job.action.kind != "agent" or job.state in AGENT_OWNED


class ServerClosed(Exception):
    """The server answered 409: it closed this action (timeout, cancel) with `state`."""

    def __init__(self, state: str | None) -> None:
        self.state = state or "canceled"
        super().__init__(self.state)


class _Refuse(Exception):
    def __init__(self, final: str, code: str, reason: str) -> None:
        self.final, self.code, self.reason = final, code, reason
        super().__init__(f"{code}: {reason}")


class JobRunner:
    def __init__(self, journal: Journal, root: Path, *, hardware: str, supervised: bool, bootstrap_root: bytes,
                 clock_slack_s: float, model_health_s: float, stage: Any = None, model_specs: dict | None = None,
                 device_kinds: dict[str, str] | None = None, closed: Callable[[str], str | None] = lambda _id: None,
                 wake: Callable[[], None] = lambda: None, checkpoints: Checkpoints | None = None) -> None:
        self.journal = journal
        self.root = Path(root)
        self.slots = Slots(self.root)
        self.hardware = hardware
        self.supervised = supervised
        self.bootstrap_root = bootstrap_root
        self.clock_slack_s = clock_slack_s
        self.model_health_s = model_health_s
        self.stage = stage
        self.model_specs = dict(model_specs or {})
        self.device_kinds = dict(device_kinds or {})   # device name -> its kind (drivers.registry)
        self._closed = closed
        self._wake = wake
        self.checkpoints = checkpoints or Checkpoints()
        self.stop = threading.Event()

    # --- driving ------------------------------------------------------------------------------
    async def run(self, job: Job) -> None:
        """Drive `job` until it is finished or handed to the supervisor."""
        self.stop.clear()
        current: Job | None = job  # the journal's latest version of it; None once finished
        try:
            async with timeout(max(0.0, job.deadline - time.time())):
                while current is not None and agent_owns(current):
                    self._check_closed(current)
                    current = await self._step(current)
                    self._wake()
        except TimeoutError:
            await self._end(self._latest(current), "failure", "timeout", "the update passed its deadline")
        except ServerClosed as exc:
            latest = self._latest(current)
            if latest is not None:
                await self._undo(latest)
                await asyncio.to_thread(self.journal.drop, latest, exc.state, reason="closed by the server")
            log.warning("update %s closed by the server (%s); cleaned up", job.action.action_id, exc.state)
        except _Refuse as exc:
            await self._end(self._latest(current), exc.final, exc.code, exc.reason)
        except UpdateRejected as exc:
            await self._end(self._latest(current), "rejected", exc.reason_code.value, exc.message)
        except (BundleError, SlotError, ConfigError, OSError) as exc:
            await self._end(self._latest(current), "failure", "install_failed", f"{type(exc).__name__}: {exc}")
        except JournalConflict as exc:
            log.warning("update journal changed under us: %s", exc)
        finally:
            self._wake()

    def _latest(self, job: Job | None) -> Job | None:
        cur = self.journal.current()
        return cur if cur is not None and job is not None and cur.action.action_id == job.action.action_id else None

    def _check_closed(self, job: Job) -> None:
        state = self._closed(job.action.action_id)
        if state is not None:
            raise ServerClosed(state)

    async def _end(self, job: Job | None, final: str, code: str, reason: str) -> None:
        if job is None or not agent_owns(job):
            return  # finished already, or the supervisor's to finish
        await self._undo(job)
        log.error("update %s %s: %s (%s)", job.action.action_id, final, reason, code)
        try:
            await asyncio.to_thread(self.journal.finish, job, final, reason=reason, reason_code=code)
        except JournalConflict as exc:
            log.warning("update journal changed under us: %s", exc)
            return
        self._cleanup(job, keep=set())

    async def _undo(self, job: Job) -> None:
        """Put the box back on its old version if this job had started to switch."""
        if job.state not in (State.SWITCHING, State.HEALTH_CHECK, State.ROLLING_BACK) or not job.slot_from:
            self._cleanup(job, keep=set())
            return
        if job.action.kind == "agent":
            self.slots.switch(job.slot_from, previous=None)
        elif self.stage is not None and self.stage.versions().get(self._component(job)) != job.slot_from:
            with contextlib.suppress(Exception):  # the old version loaded before; if not, the log says why
                await self.stage.swap(self._spec(job, job.slot_from), self._models_dir)

    # --- steps -------------------------------------------------------------------------------
    async def _step(self, job: Job) -> Job | None:
        s = job.state
        if s is State.ACCEPTED:
            self._precheck(job)
            await self.checkpoints.areached("accepted")
            return await asyncio.to_thread(self.journal.advance, job, State.DOWNLOADING)
        if s is State.DOWNLOADING:
            target = await self._download(job)
            job = self.journal.current() or job
            if target.kind.value != job.action.target_kind or target.version != Version.parse(job.action.version):
                target.path.unlink(missing_ok=True)
                raise _Refuse("rejected", "target_mismatch", f"signed target is {target.kind.value} {target.version}, "
                              f"the action asked for {job.action.target_kind} {job.action.version}")
            job = await asyncio.to_thread(self.journal.advance, job, State.DOWNLOADED, file_path=str(target.path),
                                          sha256=target.sha256, length=target.length, offset=target.length)
            await self.checkpoints.areached("downloaded")
            return job
        if s is State.DOWNLOADED:
            if not job.file_path or not Path(job.file_path).is_file():
                raise BundleError(f"verified file {job.file_path} vanished from the cache")
            return await asyncio.to_thread(self.journal.advance, job, State.INSTALLING)
        if s is State.INSTALLING:
            await asyncio.to_thread(self._install, job)
            job = await asyncio.to_thread(self.journal.advance, job, State.INSTALLED, slot_to=job.action.version)
            await self.checkpoints.areached("installed")
            return job
        if s is State.INSTALLED:
            return await asyncio.to_thread(self.journal.advance, job, State.SWITCHING,
                                           slot_from=self._running(job), slot_to=job.action.version)
        if s is State.SWITCHING:
            await self.checkpoints.areached("switching")
            return await self._switch(job)
        if s is State.HEALTH_CHECK:
            return await self._model_health(job)
        if s is State.ROLLING_BACK:
            await self.checkpoints.areached("rolling_back")
            await self._undo(job)
            await self._end(job, "failure", job.reason_code or "health_check_failed", job.reason or "rolled back")
            return None
        raise AssertionError(f"no step for {s}")

    def _precheck(self, job: Job) -> None:
        kind = job.action.kind
        if kind == "firmware":
            self._refuse_firmware(job)
        if kind == "config":
            raise _Refuse("rejected", "unsupported_kind", f"this agent cannot install {kind} updates yet")
        if kind == "agent" and not self.supervised:
            raise _Refuse("rejected", "not_supervised",
                          "the agent does not run under `quanedge agent supervise`; it cannot switch versions")
        if kind == "model":
            name = self._component(job)
            if self.stage is None or name not in self.model_specs:
                raise _Refuse("rejected", "model_not_configured", f"model {name!r} is not declared on this box")

    def _refuse_firmware(self, job: Job) -> None:
        """No device kind has a firmware path (docs/device-firmware.md): refuse, naming the device,
        its kind and that kind's reason, or that this box has no such device."""
        from drivers.registry import KINDS

        name = self._component(job)
        kind = self.device_kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self.device_kinds)[:10]) or "none"
            raise _Refuse("rejected", "device_not_configured",
                          f"firmware for device {name!r}: this box has no such device (its devices: {known})")
        raise _Refuse("rejected", "firmware_not_supported",
                      f"device {name!r} is a {kind}: {KINDS[kind].firmware_refusal}")

    def _installed_version(self, job: Job) -> Callable[[TargetKind], str | None]:
        def installed(kind: TargetKind) -> str | None:
            if kind is TargetKind.AGENT_BUNDLE:
                return running_version
            if kind is TargetKind.ONNX_MODEL and self.stage is not None:
                return self.stage.versions().get(self._component(job))
            return None
        return installed

    async def _download(self, job: Job):
        backoff, warned = Backoff(base_s=2.0, cap_s=60.0), False
        while True:
            try:
                return await self._blocking(
                    fetch_target, job, self.journal, root=self.root, hardware=self.hardware,
                    installed_version=self._installed_version(job), clock_slack_s=self.clock_slack_s,
                    bootstrap_root=self.bootstrap_root, stop=self.stop, pause=self.checkpoints.reached)
            except UpdateRejected as exc:
                if exc.reason_code is not ReasonCode.REPOSITORY_UNREACHABLE:
                    raise
                self._check_closed(job)
                job = self.journal.current() or job
                job = await asyncio.to_thread(self.journal.advance, job, State.DOWNLOADING,
                                              attempts=job.attempts + 1, reason=exc.message[:300])
                if not warned:
                    log.warning("update %s: repository unreachable, retrying until the deadline: %s",
                                job.action.action_id, exc.message)
                    warned = True
                await asyncio.sleep(backoff.next_delay())

    async def _blocking(self, fn: Callable, *args: Any, **kw: Any) -> Any:
        """Run `fn` in a thread; on cancellation ask it to stop and wait for it (it owns files)."""
        fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kw))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.stop.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(fut), 60)
            raise

    def _install(self, job: Job) -> None:
        bundle, version = Path(job.file_path or ""), job.action.version
        if job.action.kind == "agent":
            self.slots.install(bundle, version, job.sha256 or "",
                               on_half=lambda: self.checkpoints.reached("installing"))
        else:
            from agent.updater.models import install_model
            self.checkpoints.reached("installing")
            install_model(bundle, self._models_dir, self._component(job), version, job.sha256 or "")

    async def _switch(self, job: Job) -> Job:
        if job.action.kind == "agent":
            self.slots.switch(job.slot_to or job.action.version, previous=job.slot_from)
            await self.checkpoints.areached("switched")
            return await asyncio.to_thread(self.journal.advance, job, State.RESTARTING)
        await self._swap_in(job)
        await self.checkpoints.areached("switched")
        return await asyncio.to_thread(self.journal.advance, job, State.HEALTH_CHECK,
                                       health_deadline=time.time() + self.model_health_s)

    async def _swap_in(self, job: Job) -> None:
        from edge_models.manifest import ModelLoadError

        if self.stage.versions().get(self._component(job)) == job.action.version:
            return
        try:
            await self.stage.swap(self._spec(job, job.action.version), self._models_dir)
        except ModelLoadError as exc:
            raise _Refuse("failure", "swap_failed", f"the new model does not load: {exc}") from exc

    async def _model_health(self, job: Job) -> Job | None:
        name = self._component(job)
        if self.stage.versions().get(name) != job.action.version:  # a restart loaded the committed version
            await self._swap_in(job)
            job = await asyncio.to_thread(self.journal.advance, job, State.HEALTH_CHECK,
                                          health_deadline=time.time() + self.model_health_s)
        await self.checkpoints.areached("health_check")
        await asyncio.sleep(max(0.0, (job.health_deadline or 0) - time.time()))
        model = self.stage.stats()["models"].get(name, {})
        if model.get("version") != job.action.version or model.get("failing"):
            why = f"model {name}@{job.action.version} is failing: {model.get('last_error')}"
            return await asyncio.to_thread(self.journal.advance, job, State.ROLLING_BACK, reason=why,
                                           reason_code="health_check_failed")
        await asyncio.to_thread(self.journal.finish, job, "success", installed=("model", name, job.action.version),
                                detail={"from": job.slot_from, "to": job.action.version})
        self._cleanup(job, keep={job.action.version, job.slot_from or ""})
        base = self._models_dir / name
        for old in base.iterdir() if base.is_dir() else ():  # keep the new and the one before it
            if old.name not in (job.action.version, job.slot_from):
                shutil.rmtree(old, ignore_errors=True)
        log.info("update %s: model %s@%s committed", job.action.action_id, name, job.action.version)
        return None

    # --- helpers -------------------------------------------------------------------------------
    def _component(self, job: Job) -> str:
        from agent.updater.models import component_of
        return component_of(job.action)

    @property
    def _models_dir(self) -> Path:
        return self.root / "models"

    def _spec(self, job: Job, version: str) -> Any:
        return dataclasses.replace(self.model_specs[self._component(job)], version=version)

    def _running(self, job: Job) -> str | None:
        if job.action.kind == "agent":
            return self.slots.current_version()
        return self.stage.versions().get(self._component(job))

    def _cleanup(self, job: Job, keep: set[str]) -> None:
        """Remove what this job left in the cache and any version it installed that is not kept."""
        cache = self.root / "cache"
        for p in (cache / "parts").glob("*.part") if (cache / "parts").is_dir() else ():
            p.unlink(missing_ok=True)
        if job.file_path:
            Path(job.file_path).unlink(missing_ok=True)
        version = job.action.version
        if job.action.kind == "agent":
            if version not in keep:
                self.slots.discard(version)
        elif job.action.kind == "model":
            base = self._models_dir / self._component(job)
            shutil.rmtree(base / f"{version}.tmp", ignore_errors=True)
            running = self.stage.versions().get(self._component(job)) if self.stage is not None else None
            if version not in keep and version != running:
                shutil.rmtree(base / version, ignore_errors=True)
