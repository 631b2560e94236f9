"""Leases (fleet_server.store.leases): the store's one-statement acquire, on both backends - a
free lease is taken, a valid one is refused to others, its holder renews it, an expired one is
taken over, release frees it, and of holders racing for it exactly one wins."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS

from fleet_server.errors import StoreError
from fleet_server.store.leases import Lease, LeaseStore

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
