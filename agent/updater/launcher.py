"""The supervisor: runs the agent from its current slot, restarts it, and owns the risky half of
an agent update (restart into the new version, health check, commit or roll back).

    quanedge agent supervise --config box.toml [--root DIR]      (or python -m agent.updater.launcher)

It runs `python -m quanedge agent run --config box.toml` with `PYTHONPATH=<root>/versions/<v>`
(`-m agent.cli` for a bundle built before the root CLI moved to quanedge/, so a rollback to one still starts)
(the real directory, resolved at start, so later switches never change a running process's
code), `QUANEDGE_SUPERVISED_ROOT=<root>`, and PR_SET_PDEATHSIG so a killed supervisor takes its
child along (the next supervisor never finds two agents on one buffer). A child that exits is
restarted with capped backoff.

Every 0.25 s it reads the update journal. When the agent has switched `current` to a new version
(state `restarting`) it:
  1. stops the old agent (SIGTERM: the pipeline is flushed into the durable buffer, no reading
     is lost; SIGKILL after `stop_grace_s`), journals `health_check` (boot attempt n, deadline),
     starts the new version;
  2. reads the new agent's /healthz until every configured device is online and the uplink has
     sent something (`sent > 0`: this process reached the fleet), within `health_deadline_s`;
  3. healthy: commits (history + `success` report + installed version, one transaction) and
     keeps the old version as `previous`;
     not healthy by the deadline, or it exited on its last allowed boot (`max_boot_attempts`;
     a supervisor restarted mid-check counts as a boot): journals `rolling_back`, switches
     `current` back, starts the old version, reports `failure` with the reason.
Each of these is resumable: a supervisor killed at any point picks the job up from the journal.

Only [box], [health] and [updater] of the config are read here: the supervisor (the base
image's code) must still start an agent whose newer config keys it does not know.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from agent import __version__ as base_version
from agent.updater.checkpoints import Checkpoints
from agent.updater.config import UpdaterConfig, parse_updater
from agent.updater.journal import Job, Journal, JournalConflict, State
from agent.updater.service import SUPERVISED_ROOT_ENV
from agent.updater.slots import Slots
from agent.updater.steps import agent_owns
from core.backoff import Backoff
from core.config_reader import NAME_RE, load_toml
from core.errors import ConfigError, QuanedgeError
from core.logs import setup_logging

__all__ = ["LaunchSettings", "Supervisor", "judge_health", "main", "read_settings"]

log = logging.getLogger(__name__)
_TICK_S = 0.25
_STABLE_S = 60.0


class LaunchSettings:
    def __init__(self, config: Path, health_host: str, health_port: int, updater: UpdaterConfig) -> None:
        self.config, self.health_host, self.health_port, self.updater = config, health_host, health_port, updater


def read_settings(path: Path) -> LaunchSettings:
    """[box] data_dir, [health] listen and [updater] from the box config (validated)."""
    from agent.config import _health

    path = Path(path).resolve()
    root = load_toml(path, "config file")
    box = root.table("box", required=True)
    box_id = box.str("id", pattern=NAME_RE)
    data_dir = Path(box.str("data_dir", f"var/{box_id}"))
    data_dir = data_dir if data_dir.is_absolute() else path.parent / data_dir
    health = _health(root.table("health"))
    if not health.enabled or health.port == 0:
        raise ConfigError("the supervisor health-checks new versions through /healthz", file=str(path),
                          key="health.listen", value=f"{health.host}:{health.port}",
                          expected="health enabled on a fixed port")
    updater = parse_updater(root.table("updater"), data_dir=data_dir, base_dir=path.parent)
    host = "127.0.0.1" if health.host in ("0.0.0.0", "") else health.host
    return LaunchSettings(path, host, health.port, updater)


def judge_health(doc: Any) -> tuple[bool, str]:
    """Healthy: every configured device online (push devices: listening) and the uplink confirmed
    something since this process started (the updater emits a `booted` event, so there is always
    something to send)."""
    if not isinstance(doc, dict):
        return False, "/healthz answered without a JSON object"
    devices = doc.get("devices") or {}
    offline = sorted(n for n, d in devices.items() if not _up(d))
    uplink = doc.get("uplink") or {}
    problems = []
    if offline:
        problems.append("devices not online: " + ", ".join(offline))
    sent = uplink.get("sent")
    if not (isinstance(sent, int) and not isinstance(sent, bool) and sent > 0):
        problems.append(f"uplink sent nothing yet (last error: {uplink.get('last_error')})")
    return not problems, "; ".join(problems) or "healthy"


def _up(device: Any) -> bool:
    """Polled devices must be online; a push device (camera, controller) must at least listen."""
    if not isinstance(device, dict):
        return False
    return device.get("online") is True or (device.get("online") is None and device.get("listening") is True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


class Supervisor:
    def __init__(self, settings: LaunchSettings, root: Path | None = None, *, python: str = sys.executable,
                 agent_main: Sequence[str] | None = None, checkpoints: Checkpoints | None = None) -> None:
        """`agent_main`: how `python` starts the agent's CLI from a slot (`<agent_main> agent run --config ...`);
        by default `-m quanedge`, or `-m agent.cli` for a slot whose bundle predates the root CLI."""
        self.settings = settings
        self.agent_main = tuple(agent_main) if agent_main is not None else None
        self.checkpoints = checkpoints or Checkpoints()
        self.ucfg = settings.updater
        self.root = Path(root or self.ucfg.root).resolve()
        self.slots = Slots(self.root)
        self.python = python
        self.journal = Journal(self.root / "journal.db")
        self.child: subprocess.Popen | None = None
        self.child_version: str | None = None
        self._child_started = 0.0
        self._next_start = 0.0
        self._restarts = Backoff(base_s=0.5, cap_s=30.0)
        self._watching: str | None = None   # action whose new version this process started
        self._last_probe = 0.0
        self._last_summary = "not probed yet"
        self._stopping = False

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "_stopping", True))
        src = Path(__file__).resolve().parents[2]
        if self.slots.bootstrap(src, base_version):
            log.info("supervisor: first start, agent %s installed as the current slot", base_version)
        log.info("supervisor: root %s, current agent %s", self.root, self.slots.current_version())
        try:
            while not self._stopping:
                try:
                    self.tick()
                except (QuanedgeError, OSError, subprocess.SubprocessError):
                    # journal locked too long, a slot or disk error: keep supervising, retry soon
                    log.exception("supervisor: step failed; retrying in 2 s")
                    time.sleep(2.0)
                time.sleep(_TICK_S)
        finally:
            self._stop_child()
            self.journal.close()
        return 0

    def tick(self) -> None:
        job = self.journal.current()
        try:
            if job is not None and not agent_owns(job):
                if job.state is State.RESTARTING:
                    self._restart_into_new(job)
                elif job.state is State.HEALTH_CHECK:
                    self._health(job)
                elif job.state is State.ROLLING_BACK:
                    self._roll_back(job)
                return
        except JournalConflict as exc:
            log.warning("supervisor: journal changed under us: %s", exc)
            return
        self._keep_running()

    def _keep_running(self) -> None:
        now = time.monotonic()
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                if now - self._child_started > _STABLE_S:
                    self._restarts.reset()
                return
            log.warning("supervisor: agent %s exited with %s; restarting", self.child_version, code)
            self.child = None
            self._next_start = now + self._restarts.next_delay()
        if now >= self._next_start:
            self._start_child()

    # --- the update's second half ----------------------------------------------------------
    def _restart_into_new(self, job: Job) -> None:
        self.checkpoints.reached("restarting")
        self._stop_child()
        self._boot(job)
        self.checkpoints.reached("health_check")

    def _boot(self, job: Job) -> Job:
        job = self.journal.advance(job, State.HEALTH_CHECK, boot_attempts=job.boot_attempts + 1,
                                   health_deadline=time.time() + self.ucfg.health_deadline_s)
        self._start_child()
        self._watching = job.action.action_id
        log.info("supervisor: update %s: agent %s started (boot %d), health check for %.0f s",
                 job.action.action_id, self.child_version, job.boot_attempts, self.ucfg.health_deadline_s)
        return job

    def _health(self, job: Job) -> None:
        exited = None if self.child is None else self.child.poll()
        if self._watching != job.action.action_id or self.child is None or exited is not None:
            why = ("the supervisor restarted during the health check" if exited is None
                   else f"agent {job.slot_to} exited with code {exited} during its health check")
            if job.boot_attempts >= self.ucfg.max_boot_attempts:
                self._begin_rollback(job, f"{why}; {job.boot_attempts} boot(s) used")
            else:
                log.warning("supervisor: update %s: %s; booting it again", job.action.action_id, why)
                self._stop_child()
                self._boot(job)
            return
        now = time.time()
        if time.monotonic() - self._last_probe >= 0.5:
            self._last_probe = time.monotonic()
            healthy, self._last_summary = self._probe()
            if healthy:
                self._commit(job)
                return
        if now >= min(job.health_deadline or now, job.deadline):
            self._begin_rollback(job, f"not healthy within {self.ucfg.health_deadline_s:.0f} s: {self._last_summary}")

    def _probe(self) -> tuple[bool, str]:
        url = f"http://{self.settings.health_host}:{self.settings.health_port}/healthz"
        try:
            doc = httpx.get(url, timeout=2.0).json()
        except (httpx.HTTPError, ValueError) as exc:
            return False, f"/healthz does not answer ({type(exc).__name__})"
        return judge_health(doc)

    def _commit(self, job: Job) -> None:
        self.journal.finish(job, "success", installed=("agent", "", job.slot_to or job.action.version),
                            detail={"from": job.slot_from, "to": job.slot_to, "boots": job.boot_attempts})
        self._watching = None
        removed = self.slots.prune()
        if job.file_path:
            Path(job.file_path).unlink(missing_ok=True)  # the verified bundle; the slot holds its contents
        log.info("supervisor: update %s committed: agent %s is healthy (%s); pruned %s", job.action.action_id,
                 job.slot_to, self._last_summary, removed or "nothing")

    def _begin_rollback(self, job: Job, reason: str) -> None:
        log.error("supervisor: update %s fails its health check, rolling back to %s: %s",
                  job.action.action_id, job.slot_from, reason)
        job = self.journal.advance(job, State.ROLLING_BACK, reason=reason, reason_code="health_check_failed")
        self._roll_back(job)

    def _roll_back(self, job: Job) -> None:
        self.checkpoints.reached("rolling_back")
        self._stop_child()
        if job.slot_from:
            self.slots.switch(job.slot_from, previous=None)
        self._start_child()
        self.journal.finish(job, "failure", reason=job.reason, reason_code=job.reason_code or "health_check_failed",
                            detail={"rolled_back_to": job.slot_from, "boots": job.boot_attempts})
        if job.file_path:
            Path(job.file_path).unlink(missing_ok=True)
        if job.slot_to and job.slot_to != job.slot_from:
            self.slots.discard(job.slot_to)
        self._watching = None
        log.info("supervisor: update %s rolled back; agent %s runs", job.action.action_id, self.child_version)

    # --- the child ---------------------------------------------------------------------------
    def _start_child(self) -> None:
        slot = self.slots.resolve_current()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(slot), env.get("PYTHONPATH")) if p)
        env[SUPERVISED_ROOT_ENV] = str(self.root)
        cmd = [self.python, *self._agent_main(slot), "agent", "run", "--config", str(self.settings.config)]
        self.child = subprocess.Popen(cmd, cwd=slot, env=env, preexec_fn=_die_with_parent)
        self.child_version = slot.name
        self._child_started = time.monotonic()
        log.info("supervisor: agent %s started (pid %d)", slot.name, self.child.pid)

    def _agent_main(self, slot: Path) -> tuple[str, ...]:
        if self.agent_main is not None:
            return self.agent_main
        if (slot / "quanedge" / "__main__.py").is_file():
            return ("-m", "quanedge")
        return ("-m", "agent.cli")  # a bundle built before the root CLI moved to quanedge/

    def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(self.ucfg.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("supervisor: agent %s ignored SIGTERM for %.0f s; killing it", self.child_version,
                        self.ucfg.stop_grace_s)
            child.kill()
            child.wait()


def supervise(config: Path, root: Path | None = None) -> int:
    """Entry point for `quanedge agent supervise` (and `python -m agent.updater.launcher`)."""
    return Supervisor(read_settings(config), root).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quanedge agent supervise", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=None, help="slots + journal (default: [updater] root)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return supervise(args.config, args.root)
    except QuanedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
