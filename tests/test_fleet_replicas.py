"""Two fleet server processes' engines on one PostgreSQL database: what one replica changes, the
other sees (credentials at once; rollout state within its refresh), and decisions stay the store's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pg_support import pg_schema
from rollout_support import provision
from test_fleet_helpers import Clock

from fleet_server.errors import NotAuthenticated
from fleet_server.rollout.engine import BoxRef, RolloutEngine
from fleet_server.rollout.model import RolloutSpec, WaveSpec
from fleet_server.store.pg import PgStore


@pytest.fixture
def two(clock: Clock) -> Iterator[tuple[PgStore, PgStore]]:
    with pg_schema() as (url, schema):
        a = PgStore(url, clock=clock, schema=schema, max_size=4)
        b = PgStore(url, clock=clock, schema=schema, max_size=4)
        yield a, b
        a.close()
        b.close()


def engine(store: PgStore, clock: Clock) -> RolloutEngine:
    return RolloutEngine(store, poll_interval_s=60, clock=clock, sweep_s=1.0)


def spec(waves: tuple[str, ...] = ("100%",)) -> RolloutSpec:
    return RolloutSpec("r", "agent", "agent-0.2.0.tar", "0.2.0", ("qe-box-a",),
                       waves=tuple(WaveSpec(w) for w in waves))


def test_a_revocation_on_one_replica_holds_on_the_other_at_once(two: tuple[PgStore, PgStore],
                                                                clock: Clock) -> None:
    a, b = two
    boxes = provision(a, 2)
    eb = engine(b, clock)

    async def run() -> None:
        assert (await eb.authenticate(boxes["b00000"], "b00000")).box_id == "b00000"   # now cached on B
        deadline = time.monotonic() + 5
        while not b._credentials.listening:  # B hears credential changes (LISTEN) once connected
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        seen = b.credential_generation()
        a.revoke_box("b00000")  # on the other replica
        while b.credential_generation() == seen:  # NOTIFY reaches B at A's commit: milliseconds
            assert time.monotonic() < deadline, "replica B never heard of the revocation"
            await asyncio.sleep(0.005)
        with pytest.raises(NotAuthenticated):
            await eb.authenticate(boxes["b00000"], "b00000")
        assert (await eb.authenticate(boxes["b00001"], "b00001")).box_id == "b00001"

    asyncio.run(run())


def test_a_cancel_on_one_replica_reaches_the_other_within_its_refresh(two: tuple[PgStore, PgStore],
                                                                     clock: Clock) -> None:
    a, b = two
    provision(a, 3)
    ea, eb = engine(a, clock), engine(b, clock)

    async def run() -> None:
        writers = [asyncio.create_task(e.run_writer()) for e in (ea, eb)]
        try:
            await ea.load()
            await eb.load()
            a.create_rollout(spec(), "r-1", clock.now)          # created through replica A
            await eb.refresh()                                  # B sees it on its next refresh
            box = BoxRef("b00000", "5th-ave")
            first = await eb.checkin(box, "http://b")
            assert b"r-1.b00000" in first.body
            assert (await eb.checkin(box, "http://b")).body == first.body   # from B's memory
            await ea.command("r-1", "cancel")                   # on replica A
            await eb.refresh()
            assert (await eb.checkin(box, "http://b")).body == eb.idle.body  # B asked the store
        finally:
            for w in writers:
                w.cancel()
            await asyncio.gather(*writers, return_exceptions=True)

    asyncio.run(run())


def test_replicas_assigning_at_once_never_pass_a_wave_or_assign_a_box_twice(two: tuple[PgStore, PgStore],
                                                                           clock: Clock) -> None:
    a, b = two
    provision(a, 40)
    a.create_rollout(spec(("5", "100%")), "r-1", clock.now)
    results: list[Any] = []
    lock = threading.Lock()

    def hammer(store: PgStore, ids: list[str]) -> None:
        for box_id in ids:
            outcome = store.checkin(box_id, clock.now, lambda site, kind: True)
            with lock:
                results.append(outcome)

    ids = [f"b{i:05d}" for i in range(40)]
    threads = [threading.Thread(target=hammer, args=(s, ids[k::4])) for k, s in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assigned = [o.action.box_id for o in results if o.assigned and o.action is not None]
    assert len(assigned) == len(set(assigned)) == 5          # wave 1 holds 5 boxes, not one more
    assert len(a.open_actions()) == 5
    view = b.get_rollout("r-1")
    assert view.waves[0].assigned == 5


def test_a_replica_not_listening_never_trusts_its_credential_cache() -> None:
    from fleet_server.store.pg_notify import CredentialListener

    deaf = CredentialListener("postgresql://postgres@127.0.0.1:1/none", {"connect_timeout": 1})
    try:
        assert not deaf.listening
        assert deaf.generation != deaf.generation  # every read a new generation: the cache is emptied
    finally:
        deaf.close()
