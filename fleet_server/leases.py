"""Periodic jobs that one server replica at a time runs, through a lease that fails over.

    leases = Leases(store, settings.replica, registry=metrics.registry)   # in the app factory
    job = leases.job("tuf-timestamp", keeper.check, period_s=60)             # ttl: 3 periods, >= 10 s
    supervisor.start("tuf-timestamp-keeper", job.run)                         # in the lifespan
    leases.report()   # {job: {"leader": bool, "expires_at": unix s | None}}, for /healthz

Every replica runs every job's loop; a round (`LeasedJob.round`, every `period_s`, the first at
once) acquires or renews the job's lease (`LeaseStore.acquire_lease`, held for `ttl_s`) and runs
the step only when this replica holds it. So:
- one leader: the store's acquire is atomic, so of the replicas asking, one holds the lease;
- failover: a leader that dies stops renewing; its lease runs out at most `ttl_s` after its last
  renewal and a standby, asking every `period_s`, takes it over within `ttl_s + period_s`. A
  leader that stops cleanly (cancelled: shutdown) releases the lease, and a standby takes over
  at its next round;
- the ttl is a few periods (`TTL_PERIODS`, at least `MIN_TTL_S`), so a late round (a slow step, a
  busy event loop, a store hiccup) does not hand the job over. Rounds are `period_s` apart after
  the step returns, so a step that runs longer than ttl - period lets the lease lapse while it
  runs and another replica may start the job meanwhile: the jobs run this way are idempotent and
  serialise on the database anyway (rollout timeouts under the "rollouts" lock, partitions under
  theirs), so an overlap costs work, not correctness. Keep steps well under a period;
- a store failure while renewing makes this replica stop acting as leader (it cannot know) until
  a renewal succeeds; a `StoreError` from the step is logged (once per failing streak) and the
  next round tries again; any other exception ends `run` (the supervisor restarts it, and the
  lease is released on the way out so another replica can try).

Holders are replica ids (`ServerSettings.replica_id`); lease times come from `clock`, each
replica's own (see `fleet_server.store.leases` on clock agreement).
Metric: quanedge_fleet_lease_held{job} (1 while this replica holds the job's lease).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from anyio import to_thread
from prometheus_client import CollectorRegistry, Gauge

from fleet_server.errors import StoreError
from fleet_server.store.leases import Lease, LeaseStore, check_lease_args

__all__ = ["MIN_TTL_S", "TTL_PERIODS", "LeasedJob", "Leases", "Step", "default_ttl"]

log = logging.getLogger(__name__)

#: One round of a job's work. It may return a number of seconds to come back sooner than
#: `period_s` (a retry after a failure); None (or anything longer) waits the full period.
Step = Callable[[], Awaitable[float | None]]

TTL_PERIODS = 3      # the lease outlives this many rounds without a renewal
MIN_TTL_S = 10.0     # ... and never less than this (a 1 s sweeper must not change hands on a hiccup)


def default_ttl(period_s: float) -> float:
    return max(TTL_PERIODS * period_s, MIN_TTL_S)


class LeasedJob:
    """Run `step` every `period_s` while replica `holder` holds lease `name` (module doc)."""

    def __init__(self, store: LeaseStore, name: str, holder: str, step: Step, *, period_s: float,
                 ttl_s: float | None = None, clock: Callable[[], float] = time.time,
                 held: Gauge | None = None) -> None:
        ttl = default_ttl(period_s) if ttl_s is None else ttl_s
        check_lease_args(name, holder, ttl)
        if not 0 < period_s < ttl:
            raise ValueError(f"period_s must be positive and shorter than the lease ttl ({ttl} s), got {period_s!r}")
        self.store, self.name, self.holder, self.step = store, name, holder, step
        self.period_s, self.ttl_s, self.clock = period_s, ttl, clock
        self.lease: Lease | None = None    # as last acquired or renewed; None: not the leader
        self._may_hold = False             # the store may have this replica as holder (a failed renewal)
        self.rounds = self.steps = 0       # rounds run, and those in which this replica ran the step
        self._held = None if held is None else held.labels(name)
        if self._held is not None:
            self._held.set(0)

    @property
    def leader(self) -> bool:
        """Whether this replica holds the lease right now (as of its last renewal)."""
        return self.lease is not None and self.lease.expires_at > self.clock()

    async def hold(self) -> bool:
        """Acquire or renew the lease; True when this replica holds it. StoreError (and not the
        leader any more) when the store fails."""
        try:
            lease = await to_thread.run_sync(self.store.acquire_lease, self.name, self.holder, self.ttl_s,
                                             self.clock())
        except StoreError:
            self._set(None)   # it may still hold the row: `release` tries anyway
            raise
        self._set(lease)
        self._may_hold = lease is not None
        return lease is not None

    async def round(self) -> float | None:
        """One round: `hold`, then the step if this replica holds the lease; returns the step's
        answer (None when it did not run)."""
        self.rounds += 1
        if not await self.hold():
            return None
        self.steps += 1
        return await self.step()

    async def release(self) -> None:
        """Give the lease up if this replica may hold it (a store failure is logged, not raised:
        the lease then simply expires)."""
        if not self._may_hold:
            return
        self._set(None)
        self._may_hold = False
        try:
            await to_thread.run_sync(self.store.release_lease, self.name, self.holder)
        except StoreError as exc:
            log.warning("job %s: cannot release its lease (it expires within %.0f s): %s", self.name, self.ttl_s,
                        exc)

    async def run(self) -> None:
        """A round at once, then every `period_s`, until cancelled; the lease is released on the
        way out (cancellation or a step's bug)."""
        failing = False
        try:
            while True:
                delay: float | None = None
                try:
                    delay = await self.round()
                except StoreError as exc:
                    if not failing:
                        log.error("job %s: store failing, the job waits: %s", self.name, exc)
                    failing = True
                else:
                    if failing:
                        log.info("job %s: store back", self.name)
                    failing = False
                await asyncio.sleep(self.period_s if delay is None else min(max(delay, 0.0), self.period_s))
        finally:
            await self.release()

    def _set(self, lease: Lease | None) -> None:
        was, self.lease = self.lease is not None, lease
        if lease is not None and not was:
            log.info("replica %s now leads job %s (lease until %.0f)", self.holder, self.name, lease.expires_at)
        elif lease is None and was:
            log.info("replica %s no longer leads job %s", self.holder, self.name)
        if self._held is not None:
            self._held.set(1 if lease is not None else 0)

    def report(self) -> dict[str, object]:
        return {"leader": self.leader, "expires_at": None if self.lease is None else self.lease.expires_at}


class Leases:
    """This replica's leased jobs (made through `job`), for /healthz and the lease_held gauge."""

    def __init__(self, store: LeaseStore, replica_id: str, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.replica_id, self.clock = store, replica_id, clock
        self.jobs: dict[str, LeasedJob] = {}
        self._held = Gauge("quanedge_fleet_lease_held", "1 while this replica holds the job's lease (and runs it).",
                           ["job"], registry=registry)

    def job(self, name: str, step: Step, *, period_s: float, ttl_s: float | None = None) -> LeasedJob:
        if name in self.jobs:
            raise ValueError(f"a leased job named {name!r} exists already")
        job = LeasedJob(self.store, name, self.replica_id, step, period_s=period_s, ttl_s=ttl_s, clock=self.clock,
                        held=self._held)
        self.jobs[name] = job
        return job

    def leading(self) -> list[str]:
        """The jobs this replica leads now."""
        return sorted(name for name, job in self.jobs.items() if job.leader)

    def report(self) -> dict[str, dict[str, object]]:
        return {name: job.report() for name, job in sorted(self.jobs.items())}
