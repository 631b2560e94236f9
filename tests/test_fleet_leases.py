"""Leases: the store's one-statement acquire (fleet_server.store.leases), on both backends - a
free lease is taken, a valid one is refused to others, its holder renews it, an expired one is
taken over, release frees it, and of holders racing for it exactly one wins; the runner
(fleet_server.leases.LeasedJob) - of two replicas one runs the job, the other takes over when the
leader dies (within the ttl) or stops (at its next round). The app's leased jobs:
tests/test_fleet_replica_jobs.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS
from prometheus_client import CollectorRegistry
from test_fleet_helpers import Clock

from fleet_server.errors import StoreError
from fleet_server.leases import MIN_TTL_S, LeasedJob, Leases, default_ttl
from fleet_server.store.leases import Lease, LeaseStore
from fleet_server.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


def race(store: Any, name: str, holders: list[str], now: float, ttl_s: float = 10.0) -> list[Lease | None]:
    """Every holder asks for `name` at the same moment, each in its own thread."""
    barrier = threading.Barrier(len(holders))
    results: list[Any] = [None] * len(holders)

    def ask(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = store.acquire_lease(name, holders[i], ttl_s, now)
        except Exception as exc:  # handed to the test, which fails on it
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(holders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "an acquire hung"
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


@BOTH_BACKENDS
def test_a_free_lease_is_taken_and_refused_to_others_while_valid(store: Any) -> None:
    assert isinstance(store, LeaseStore)
    assert store.leases() == []
    lease = store.acquire_lease("sweeper", "replica-a", 10, T0)
    assert lease == Lease("sweeper", "replica-a", T0 + 10, T0)
    assert store.acquire_lease("sweeper", "replica-b", 10, T0 + 9.9) is None
    assert store.leases() == [lease]  # the refusal changed nothing
    # another name is another lease
    assert store.acquire_lease("upkeep", "replica-b", 5, T0) == Lease("upkeep", "replica-b", T0 + 5, T0)
    assert [x.name for x in store.leases()] == ["sweeper", "upkeep"]


@BOTH_BACKENDS
def test_renewal_extends_the_lease_and_keeps_the_tenure(store: Any) -> None:
    store.acquire_lease("sweeper", "replica-a", 10, T0)
    renewed = store.acquire_lease("sweeper", "replica-a", 10, T0 + 8)
    assert renewed == Lease("sweeper", "replica-a", T0 + 18, T0)
    # renewed, it is still refused to others after the first expiry
    assert store.acquire_lease("sweeper", "replica-b", 10, T0 + 12) is None
    assert store.leases() == [renewed]


@BOTH_BACKENDS
def test_an_expired_lease_is_taken_over(store: Any) -> None:
    store.acquire_lease("sweeper", "replica-a", 10, T0)
    taken = store.acquire_lease("sweeper", "replica-b", 30, T0 + 10)  # expires_at <= now: expired
    assert taken == Lease("sweeper", "replica-b", T0 + 40, T0 + 10)
    assert store.acquire_lease("sweeper", "replica-a", 10, T0 + 11) is None  # the old holder lost it
    assert store.leases() == [taken]
    # its own expired lease: taken again, but as a new tenure
    assert store.acquire_lease("sweeper", "replica-b", 5, T0 + 100) == Lease("sweeper", "replica-b", T0 + 105,
                                                                             T0 + 100)


@BOTH_BACKENDS
def test_release_frees_the_lease_for_its_holder_only(store: Any) -> None:
    store.acquire_lease("sweeper", "replica-a", 10, T0)
    assert store.release_lease("sweeper", "replica-b") is False
    assert store.release_lease("nothing", "replica-a") is False
    assert [x.holder for x in store.leases()] == ["replica-a"]
    assert store.release_lease("sweeper", "replica-a") is True
    assert store.leases() == []
    assert store.release_lease("sweeper", "replica-a") is False
    assert store.acquire_lease("sweeper", "replica-b", 10, T0 + 1) == Lease("sweeper", "replica-b", T0 + 11, T0 + 1)


@BOTH_BACKENDS
def test_holders_racing_for_a_lease_exactly_one_wins(store: Any) -> None:
    holders = [f"replica-{i}" for i in range(4)]
    for round_ in range(15):
        name = f"job-{round_}"
        # a free lease, then the same one expired: both are contested
        for now in (T0, T0 + 100):
            won = [r for r in race(store, name, holders, now) if r is not None]
            assert len(won) == 1, (name, now, won)
            assert {x.name: x for x in store.leases()}[name] == won[0] and won[0].acquired_at == now


@BOTH_BACKENDS
def test_bad_arguments_are_refused_and_change_nothing(store: Any) -> None:
    store.acquire_lease("sweeper", "replica-a", 10, T0)
    before = store.leases()
    for name, holder, ttl, now in (("", "a", 1, T0), ("a/b", "a", 1, T0), ("x" * 65, "a", 1, T0),
                                   ("a", "", 1, T0), ("a", "b c", 1, T0), ("a", None, 1, T0),
                                   ("a", "b", 0, T0), ("a", "b", -1, T0), ("a", "b", float("inf"), T0),
                                   ("a", "b", True, T0), ("a", "b", 1, float("nan"))):
        with pytest.raises(ValueError):
            store.acquire_lease(name, holder, ttl, now)
    with pytest.raises(ValueError):
        store.release_lease("sweeper", "replica a")
    assert store.leases() == before


@BOTH_BACKENDS
def test_a_closed_store_raises_store_error(store: Any) -> None:
    store.close()
    for call in (lambda: store.acquire_lease("a", "b", 1, T0), lambda: store.release_lease("a", "b"), store.leases):
        with pytest.raises(StoreError):
            call()


# -- the runner ------------------------------------------------------------------------------------

def counting(ran: list[str], who: str) -> Callable[[], Any]:
    async def step() -> None:
        ran.append(who)

    return step


@BOTH_BACKENDS
async def test_one_of_two_replicas_runs_the_job_and_the_other_takes_over_within_the_ttl(store: Any) -> None:
    clock, ran = Clock(), []
    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    a = Leases(store, "replica-a", registry=registry_a, clock=clock).job("sweep", counting(ran, "a"),
                                                                          period_s=1, ttl_s=3)
    b = Leases(store, "replica-b", registry=registry_b, clock=clock).job("sweep", counting(ran, "b"),
                                                                          period_s=1, ttl_s=3)
    start = clock.now
    for _ in range(5):
        await a.round()
        await b.round()
        clock.now += 1
    assert ran == ["a"] * 5 and (a.leader, b.leader) == (True, False)
    assert (a.rounds, a.steps, b.rounds, b.steps) == (5, 5, 5, 0)
    held = [r.get_sample_value("quanedge_fleet_lease_held", {"job": "sweep"}) for r in (registry_a, registry_b)]
    assert held == [1.0, 0.0]
    last_renewal = start + 4

    # a dies: no more rounds and no release. b keeps asking every period and gets the lease the
    # moment a's runs out: ttl after a's last renewal.
    while not await b.round() and b.lease is None:
        assert clock.now < last_renewal + 3, "b did not take over when the lease ran out"
        clock.now += 1
    assert clock.now == last_renewal + 3 and ran == ["a"] * 5 + ["b"]
    assert b.lease == Lease("sweep", "replica-b", clock.now + 3, clock.now)
    assert not a.leader  # a's own view expired with its lease
    # a comes back (it was paused, not dead): it finds the job taken and does not run it
    assert await a.round() is None and a.lease is None and ran[-1] == "b"
    held = [r.get_sample_value("quanedge_fleet_lease_held", {"job": "sweep"}) for r in (registry_a, registry_b)]
    assert held == [0.0, 1.0]


class NoRelease:
    """A replica killed with -9: it never gets to release its lease."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def acquire_lease(self, *args: Any) -> Any:
        return self.store.acquire_lease(*args)

    def release_lease(self, name: str, holder: str) -> bool:
        return False

    def leases(self) -> list[Lease]:
        return list(self.store.leases())


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took `condition` to hold (polled every 10 ms); fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("killed", [False, True], ids=["cancelled", "killed"])
@BOTH_BACKENDS
async def test_running_replicas_hand_the_job_over_when_the_leader_stops(store: Any, killed: bool) -> None:
    period, ttl = 0.1, 1.5  # real time: slack for a loaded CI machine
    ran: list[str] = []
    jobs = {who: LeasedJob(NoRelease(store) if killed else store, "job", f"replica-{who}", counting(ran, who),
                           period_s=period, ttl_s=ttl) for who in "ab"}
    tasks = {who: asyncio.create_task(job.run()) for who, job in jobs.items()}
    try:
        await wait_until(lambda: len(ran) >= 5, 10, "five rounds")
        leader = ran[0]
        other = "b" if leader == "a" else "a"
        assert set(ran) == {leader}  # only one replica runs the step
        renewed = store.leases()[0]
        assert renewed.holder == f"replica-{leader}"

        await stop(tasks[leader])
        left = store.leases()  # a killed leader's last lease; nothing when it released it
        took = await wait_until(lambda: other in ran, 10, "the other replica to take over")
        (lease,) = store.leases()
        assert lease.holder == f"replica-{other}"
        if killed:  # the dead leader's lease had to run out first: taken over within ttl (+ a period)
            assert left[0].holder == f"replica-{leader}" and lease.acquired_at >= left[0].expires_at
            assert ttl - 2 * period - 0.05 <= took <= ttl + period + 1.0, took
        else:       # released on cancellation: taken over at the other's next round
            assert left == [] and took < ttl - period, took
        count = ran.count(other)
        await wait_until(lambda: ran.count(other) >= count + 3, 10, "the new leader's rounds")
        assert ran.count(leader) == ran.index(other)  # the old leader never ran again
    finally:
        for task in tasks.values():
            await stop(task)
    if not killed:
        assert store.leases() == []  # released on the way out


async def test_a_failing_store_or_step_does_not_end_the_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    ran: list[int] = []

    async def step() -> float | None:
        ran.append(1)
        if len(ran) <= 2:
            raise StoreError("the store is down")
        return None

    job = LeasedJob(store, "job", "replica-a", step, period_s=0.02, ttl_s=1)
    task = asyncio.create_task(job.run())
    await wait_until(lambda: len(ran) >= 4, 10, "the step to run on")
    assert job.leader and not task.done()
    assert sum("store failing" in r.getMessage() for r in caplog.records) == 1  # once per failing streak
    store.close()  # now renewing fails: not the leader any more, and the job waits
    await wait_until(lambda: not job.leader, 10, "the lease to be given up")
    count = len(ran)
    await asyncio.sleep(0.1)
    assert len(ran) == count and not task.done() and job.lease is None
    await stop(task)


async def test_a_step_may_come_back_sooner(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    ran: list[float] = []

    async def step() -> float | None:  # a retry after a failure (the TUF keeper's retry_s)
        ran.append(time.monotonic())
        return 0.01

    task = asyncio.create_task(LeasedJob(store, "job", "replica-a", step, period_s=60).run())
    await wait_until(lambda: len(ran) >= 3, 10, "three rounds long before the period")
    await stop(task)
    store.close()


def test_ttl_and_arguments() -> None:
    assert default_ttl(1) == MIN_TTL_S == 10 and default_ttl(60) == 180 and default_ttl(3600) == 10800

    async def step() -> None: ...

    for kwargs in ({"period_s": 0}, {"period_s": 5, "ttl_s": 5}, {"period_s": 1, "ttl_s": -1}):
        with pytest.raises(ValueError):
            LeasedJob(None, "job", "replica-a", step, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holder"):
        LeasedJob(None, "job", "replica a", step, period_s=1)  # type: ignore[arg-type]
    leases = Leases(None, "replica-a", registry=CollectorRegistry())  # type: ignore[arg-type]
    leases.job("job", step, period_s=1)
    with pytest.raises(ValueError, match="exists"):
        leases.job("job", step, period_s=1)
