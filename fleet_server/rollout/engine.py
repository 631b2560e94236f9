"""`RolloutEngine`: the box-facing side of rollouts, with check-in answers cached in memory.

The store is the truth; memory only lets most check-ins skip it. What is kept (one process):
- credential hash -> (box_id, site): `CredentialCache` (fleet_server.rollout.credentials), filled
  whole at start and after every credential change, emptied whenever the store's generation moves;
- each box's open action (loaded at start, updated from every store result for that box);
- each active rollout's counters and its not-yet-assigned target boxes.
A check-in is answered from memory when the box has an open action (same answer, same ETag,
until it closes), or when no active rollout could give it one now (rollout not running, wave
full and next not open, rate limit, maintenance window, box not targeted). Otherwise the store
decides in one transaction (`Store.checkin`), and its answer and the counters it read replace
the memory copy. Store calls for one box run under that box's lock, so answers cannot be
applied out of order; the sweeper marks boxes it changed as dirty (next check-in asks the store)
instead of guessing their state. Box-side store calls (assign, report, inventory) go through one
writer task that runs whatever has queued up in a single worker-thread hop (a hop costs more
than the SQLite transaction itself), in arrival order. Another process changing the same database (PostgreSQL replicas)
is seen by the sweeper's refresh, every `sweep_s`, on every replica; closing timed-out actions is
store-wide work, which one replica at a time does under the "rollout-timeouts" lease.

Replicas (`store.shared`: PostgreSQL, other server processes write the same database). What this
process remembers may then be changed by another, so:
- the credential cache is emptied whenever `store.credential_generation()` moves, and on
  PostgreSQL that generation moves on every replica when any replica re-keys, admits or revokes
  (LISTEN/NOTIFY, fleet_server.store.pg_notify; while not listening it moves on every read, so
  the cache is then not used);
- every refresh (each `sweep_s`) re-reads the site policies, and marks dirty every box whose open
  action belongs to a rollout that changed (its `rev` moved) or ended, so that box's next
  check-in asks the store. An action closed or canceled on another replica is therefore served
  from memory for at most `sweep_s` more; assignments are always decided by the store, under its
  rollouts lock, so no box is assigned twice and no wave passes its size whatever memory says.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from prometheus_client import CollectorRegistry, Counter

from fleet_server.errors import Forbidden, NotAuthenticated, PayloadError, StoreError
from fleet_server.rollout import planner
from fleet_server.rollout.credentials import BoxRef, CredentialCache
from fleet_server.rollout.errors import ActionClosed, RepositoryUnavailable
from fleet_server.rollout.model import (
    KINDS,
    ActionView,
    Inventory,
    RolloutSpec,
    RolloutView,
    StatusReport,
    TargetFilter,
    WaveSpec,
)
from fleet_server.rollout.windows import SitePolicy
from fleet_server.store.base import Store

if TYPE_CHECKING:
    from fleet_server.leases import LeasedJob

__all__ = ["Answer", "BoxRef", "RolloutEngine", "resolve_target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    etag: str
    body: bytes


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=10).hexdigest() + '"'


def resolve_target(repo_dir: Path | None, kind: str, target_name: str,
                   version: str | None) -> tuple[str, tuple[str, ...]]:
    """(version, hardware) of a published, signed target; PayloadError naming what is wrong."""
    if repo_dir is None:
        raise RepositoryUnavailable("this fleet server has no update repository (settings.tuf_repo_dir)")
    from firmware_manifests.repository import Repository
    from firmware_manifests.schema import ManifestError, TargetMeta, Version

    try:
        published = Repository(repo_dir).targets().signed.targets
    except ManifestError as exc:
        raise RepositoryUnavailable(f"cannot read the update repository: {exc}") from None
    info = published.get(target_name)
    if info is None:
        raise PayloadError("unknown_target", f"no published target named {target_name!r} (sign it first)",
                           field="target_name")
    try:
        meta = TargetMeta.from_custom(info.custom)
    except ValueError as exc:
        raise PayloadError("unknown_target", f"target {target_name!r} has no valid Quanedge fields: {exc}",
                           field="target_name") from None
    if meta.kind.value != KINDS[kind]:
        raise PayloadError("kind_mismatch", f"target {target_name!r} is a {meta.kind.value}, not a {KINDS[kind]}",
                           field="kind")
    if version is not None:
        try:
            wanted = Version.parse(version)
        except ValueError as exc:
            raise PayloadError("bad_body", str(exc), field="version") from None
        if wanted != meta.version:
            raise PayloadError("version_mismatch", f"target {target_name!r} is version {meta.version}, not {version}",
                               field="version")
    return str(meta.version), meta.hardware


def _run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    """Run calls in order in the worker thread; one failing does not stop the others."""
    out: list[tuple[bool, Any]] = []
    for fn, args in calls:
        try:
            out.append((True, fn(*args)))
        except Exception as exc:  # handed to the caller's future, re-raised there
            out.append((False, exc))
    return out


class RolloutEngine:
    """Check-ins, status reports, inventory and admin commands, on top of a `Store`."""

    def __init__(self, store: Store, *, poll_interval_s: int, repo_dir: Path | None = None,
                 public_url: str | None = None, sweep_s: float = 1.0,
                 clock: Callable[[], float] = time.time, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.repo_dir = repo_dir
        self.public_url = public_url.rstrip("/") if public_url else None
        self.sweep_s = sweep_s
        self.clock = clock
        body = json.dumps({"poll_interval_s": poll_interval_s, "action": None}, separators=(",", ":")).encode()
        self.idle = Answer(_etag(body), body)
        self.shared = bool(getattr(store, "shared", False))
        self.credentials = CredentialCache(store)
        self._open: dict[str, ActionView] = {}
        self._dirty: set[str] = set()
        self._rollouts: dict[str, RolloutView] = {}
        self._pending: dict[str, set[str]] = {}
        self._sites: dict[str, SitePolicy] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.store_checkins = 0   # check-ins the store had to decide (the rest came from memory)
        checkins = Counter("quanedge_fleet_checkins", "Box check-ins, by who answered (memory or store).",
                           ["source"], registry=registry)
        self._from_memory, self._from_store = checkins.labels("memory"), checkins.labels("store")
        self._reports = Counter("quanedge_fleet_action_reports", "Status reports recorded, by state.",
                                ["state"], registry=registry)
        self._timeouts = Counter("quanedge_fleet_action_timeouts",
                                 "Actions closed as failed by the per-box deadline (sweeper).", registry=registry)
        self._writes: asyncio.Queue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = asyncio.Queue()

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Fill memory from the store (at start, before the first request)."""
        await self.credentials.load()
        actions = await to_thread.run_sync(self.store.open_actions)
        self._open = {a.box_id: a for a in actions}
        self._sites = {p.site: p for p in await to_thread.run_sync(self.store.site_policies)}
        await self.refresh()

    async def refresh(self) -> None:
        views = await to_thread.run_sync(lambda: self.store.list_rollouts(active_only=True))
        active = {v.rollout_id for v in views}
        if self.shared:  # another replica may have changed them since this process last looked
            changed = {r for r, known in self._rollouts.items() if r not in active}
            changed |= {v.rollout_id for v in views
                        if v.rollout_id in self._rollouts and v.rev != self._rollouts[v.rollout_id].rev}
            self._dirty |= {box for box, action in self._open.items() if action.rollout_id in changed}
            self._sites = {p.site: p for p in await to_thread.run_sync(self.store.site_policies)}
        for gone in [r for r in self._rollouts if r not in active]:
            self._drop(gone)
        for view in views:
            if view.rollout_id not in self._pending:
                self._pending[view.rollout_id] = set(
                    await to_thread.run_sync(self.store.pending_boxes, view.rollout_id))
            self._absorb(view)

    async def expire(self) -> None:
        """Close timed-out actions, store-wide (not only the boxes this process talks to): with
        replicas, one of them does it, under the "rollout-timeouts" lease (`run_sweeper`)."""
        boxes, views = await to_thread.run_sync(self.store.expire_actions, self.clock())
        self._timeouts.inc(len(boxes))
        for box_id in boxes:
            async with self._lock(box_id):
                self._dirty.add(box_id)
        for view in views:
            self._absorb(view)

    async def sweep(self) -> None:
        """Close timed-out actions, then re-read active rollouts' counters (`expire`, `refresh`)."""
        await self.expire()
        await self.refresh()

    async def run_writer(self, max_batch: int = 256) -> None:
        """Run queued box-side store calls, a batch per thread hop, until cancelled (lifespan-owned)."""
        while True:
            batch = [await self._writes.get()]
            while len(batch) < max_batch and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            outcomes = await to_thread.run_sync(_run_all, [(fn, args) for fn, args, _ in batch])
            for (_, _, future), (ok, value) in zip(batch, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writes.put_nowait((fn, args, future))
        return await future

    async def run_sweeper(self, timeouts: LeasedJob | None = None) -> None:
        """Run `sweep` every `sweep_s` until cancelled (owned by the app lifespan).

        With `timeouts` (a `LeasedJob` whose step is `expire`; fleet_server.leases), a round runs
        that job's round instead of `expire`: the timeouts are closed only while this replica holds
        the job's lease, and `refresh` follows on every replica, since it refreshes this process's
        memory. The lease is released when the sweeper stops."""
        failing = False
        try:
            while True:
                await asyncio.sleep(self.sweep_s)
                try:
                    if timeouts is None:
                        await self.expire()
                    else:
                        await timeouts.round()
                    await self.refresh()
                except StoreError as exc:
                    if not failing:
                        log.error("rollout sweeper: store failing, timeouts wait: %s", exc)
                    failing = True
                else:
                    if failing:
                        log.info("rollout sweeper: store back")
                    failing = False
        finally:
            if timeouts is not None:
                await timeouts.release()

    # -- the box's side ------------------------------------------------------------------------

    async def authenticate(self, credential: str | None, box_id: str) -> BoxRef:
        if not credential:
            raise NotAuthenticated("missing box credential")
        ref = await self.credentials.lookup(credential)
        if ref is None:
            raise NotAuthenticated("missing or unknown box credential")
        if ref.box_id != box_id:
            raise Forbidden(f"this credential belongs to box {ref.box_id!r}, not {box_id!r}")
        return ref

    def _window_open(self, site: str, kind: str, now: float | None = None) -> bool:
        policy = self._sites.get(site)
        return policy is None or policy.allows(kind, self.clock() if now is None else now)

    def _may_assign(self, box: BoxRef, now: float) -> bool:
        for rollout_id, rollout in self._rollouts.items():
            if (rollout.status == "running" and box.box_id in self._pending.get(rollout_id, ())
                    and (not rollout.respect_windows or self._window_open(box.site, rollout.kind, now))
                    and planner.can_assign(rollout, now)):
                return True
        return False

    async def checkin(self, box: BoxRef, base_url: str) -> Answer:
        now = self.clock()
        box_id = box.box_id
        action = self._open.get(box_id)
        if box_id not in self._dirty:
            if action is not None and (action.deadline is None or action.deadline > now):
                self._from_memory.inc()
                return self._answer(action, base_url)
            if action is None and not self._may_assign(box, now):
                self._from_memory.inc()
                return self.idle
        async with self._lock(box_id):
            self._dirty.discard(box_id)
            self.store_checkins += 1
            self._from_store.inc()
            outcome = await self._write(self.store.checkin, box_id, now, self._window_open)
            self._set_open(box_id, outcome.action)
            for view in outcome.rollouts:
                self._absorb(view)
            if outcome.assigned and outcome.action is not None:
                self._pending.get(outcome.action.rollout_id, set()).discard(box_id)
        return self.idle if outcome.action is None else self._answer(outcome.action, base_url)

    def _answer(self, action: ActionView, base_url: str) -> Answer:
        repo = (self.public_url or base_url.rstrip("/")) + "/tuf"
        fields: dict[str, Any] = {
            "action_id": action.action_id, "rollout_id": action.rollout_id, "kind": action.kind,
            "target_name": action.target_name, "version": action.version, "repo_url": repo,
            "deadline_s": action.timeout_s}
        if action.component:   # model / device name (an addition to the contract; absent for the agent)
            fields["component"] = action.component
        body = json.dumps({"poll_interval_s": self.poll_interval_s, "action": fields},
                          separators=(",", ":")).encode()
        return Answer(_etag(body), body)

    async def report(self, box: BoxRef, action_id: str, payload: bytes) -> dict[str, Any]:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise PayloadError("bad_json", f"body is not valid JSON: {exc}") from None
        report = StatusReport.from_json(body)
        async with self._lock(box.box_id):
            try:
                outcome = await self._write(self.store.report_action, box.box_id, action_id, report, self.clock())
            except ActionClosed:
                self._dirty.add(box.box_id)
                raise
            if not outcome.action.open:
                current = self._open.get(box.box_id)
                if current is not None and current.action_id == action_id:
                    del self._open[box.box_id]
            if outcome.changed:
                self._reports.labels(report.state).inc()
            if outcome.rollout is not None:
                self._absorb(outcome.rollout)
        return {"action_id": action_id, "state": outcome.action.state, "recorded": outcome.changed}

    async def save_inventory(self, box: BoxRef, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise PayloadError("bad_json", f"body is not valid JSON: {exc}") from None
        inventory = Inventory.from_json(body)
        await self._write(self.store.save_inventory, box.box_id, inventory, self.clock())

    # -- the admin's side ----------------------------------------------------------------------

    async def create(self, *, name: str, kind: str, target_name: str, version: str | None, component: str,
                     filter: TargetFilter, waves: tuple[WaveSpec, ...], timeout_s: int,
                     rate_per_min: float | None, respect_windows: bool, min_finished: int) -> RolloutView:
        # the request's rules are RolloutSpec's (checked before the repository is read); the signed
        # target then supplies the version and hardware
        draft = RolloutSpec(name=name, kind=kind, target_name=target_name, version="", hardware=(),
                            component=component, filter=filter, waves=waves, timeout_s=timeout_s,
                            rate_per_min=rate_per_min, respect_windows=respect_windows, min_finished=min_finished)
        target_version, hardware = await to_thread.run_sync(
            resolve_target, self.repo_dir, kind, target_name, version)
        spec = replace(draft, name=name or f"{target_name} {target_version}", version=target_version,
                       hardware=hardware)
        rollout_id = "r-" + secrets.token_hex(5)

        def create_and_list() -> tuple[RolloutView, list[str]]:
            view = self.store.create_rollout(spec, rollout_id, self.clock())
            return view, self.store.pending_boxes(rollout_id)

        view, pending = await to_thread.run_sync(create_and_list)
        self._pending[rollout_id] = set(pending)
        self._absorb(view)
        log.info("rollout %s created: %s %s to %d boxes in %d waves", rollout_id, kind, target_version,
                 view.total, len(view.waves))
        return view

    async def command(self, rollout_id: str, command: str) -> RolloutView:
        view, closed = await to_thread.run_sync(self.store.command_rollout, rollout_id, command, self.clock())
        for box_id in closed:
            async with self._lock(box_id):
                self._dirty.add(box_id)
        self._absorb(view)
        log.info("rollout %s %s -> %s", rollout_id, command, view.status)
        return view

    async def put_site(self, policy: SitePolicy) -> None:
        await to_thread.run_sync(self.store.put_site_policy, policy, self.clock())
        self._sites[policy.site] = policy

    # -- memory --------------------------------------------------------------------------------

    def _lock(self, box_id: str) -> asyncio.Lock:
        lock = self._locks.get(box_id)
        if lock is None:
            lock = self._locks[box_id] = asyncio.Lock()
        return lock

    def _set_open(self, box_id: str, action: ActionView | None) -> None:
        if action is None or not action.open:
            self._open.pop(box_id, None)
        else:
            self._open[box_id] = action

    def _absorb(self, view: RolloutView) -> None:
        if not view.active:
            self._drop(view.rollout_id)
            return
        known = self._rollouts.get(view.rollout_id)
        if known is None or view.rev >= known.rev:
            self._rollouts[view.rollout_id] = view

    def _drop(self, rollout_id: str) -> None:
        self._rollouts.pop(rollout_id, None)
        self._pending.pop(rollout_id, None)
