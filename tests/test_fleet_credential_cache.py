"""The credential cache (fleet_server.rollout.credentials) on both backends: filled whole in one
read, never answering for a credential that stopped working, refilled after a change, bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pg_support import BOTH_BACKENDS
from rollout_support import provision

from fleet_server.rollout.credentials import BoxRef, CredentialCache
from fleet_server.rollout.engine import RolloutEngine

pytestmark = BOTH_BACKENDS


class Counting:
    """The store, counting (and optionally intercepting) its one-by-one credential lookups."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lookups = 0
        self.during_lookup: Any = None

    def box_for_credential(self, credential: str) -> Any:
        self.lookups += 1
        box = self.store.box_for_credential(credential)
        if self.during_lookup is not None:
            self.during_lookup(box)
        return box

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def _until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def _listening(store: Any) -> None:
    listener = getattr(store, "_credentials", None)  # PostgreSQL: changes arrive by LISTEN/NOTIFY
    if listener is not None:
        await _until(lambda: listener.listening, "the PostgreSQL credential listener never connected")


def test_a_whole_load_answers_every_box_without_asking_the_store(store: Any) -> None:
    boxes = provision(store, 50, site="river-rd")
    counting = Counting(store)
    cache = CredentialCache(counting)

    async def run() -> None:
        await _listening(store)
        assert await cache.load()
        assert len(cache) == 50 and cache.loads == 1
        for box_id, credential in boxes.items():
            assert await cache.lookup(credential) == BoxRef(box_id, "river-rd")
        assert counting.lookups == 0
        assert await cache.lookup("not-a-credential") is None
        assert counting.lookups == 1

    asyncio.run(run())


def test_a_revoked_credential_fails_at_once_and_the_cache_refills_after_the_change(store: Any) -> None:
    boxes = provision(store, 20)
    counting = Counting(store)
    cache = CredentialCache(counting, reload_gap_s=0.01)

    async def run() -> None:
        await _listening(store)
        assert await cache.load()
        async with asyncio.TaskGroup() as group:
            reloader = group.create_task(cache.run())
            seen = store.credential_generation()
            store.revoke_box("b00003")
            await _until(lambda: store.credential_generation() != seen, "the revocation was never heard of")
            assert await cache.lookup(boxes["b00003"]) is None   # emptied: the store said no
            await _until(lambda: cache.loads == 2, "the cache was not refilled after the revocation")
            assert len(cache) == 20   # the revoked box's new hash is a secret nobody holds
            asked = counting.lookups
            assert await cache.lookup(boxes["b00003"]) is None
            assert (await cache.lookup(boxes["b00004"])).box_id == "b00004"  # type: ignore[union-attr]
            assert counting.lookups == asked + 1   # only the unknown one went to the store
            reloader.cancel()

    asyncio.run(run())


def test_a_lookup_that_raced_a_revocation_is_answered_but_not_remembered(store: Any) -> None:
    boxes = provision(store, 3)
    counting = Counting(store)
    cache = CredentialCache(counting)

    def revoke_meanwhile(box: Any) -> None:   # in the worker thread, after the store answered
        seen = store.credential_generation()
        store.revoke_box(box.box_id)
        deadline = time.monotonic() + 5
        while store.credential_generation() == seen:
            assert time.monotonic() < deadline
            time.sleep(0.005)

    async def run() -> None:
        await _listening(store)
        counting.during_lookup = revoke_meanwhile
        assert (await cache.lookup(boxes["b00001"])).box_id == "b00001"  # type: ignore[union-attr]
        counting.during_lookup = None
        assert await cache.lookup(boxes["b00001"]) is None   # asked again, not served from memory
        assert counting.lookups == 2

    asyncio.run(run())


def test_a_fleet_beyond_the_bound_is_looked_up_one_by_one(store: Any) -> None:
    boxes = provision(store, 5)
    counting = Counting(store)
    cache = CredentialCache(counting, limit=3)

    async def run() -> None:
        assert not await cache.load()
        assert cache.too_many and len(cache) == 0
        for box_id, credential in boxes.items():
            assert (await cache.lookup(credential)).box_id == box_id  # type: ignore[union-attr]
            assert len(cache) <= 3
        assert counting.lookups == 5
        await asyncio.wait_for(cache.run(), 1)   # returns at once: no whole loads any more

    asyncio.run(run())


def test_the_engine_loads_the_cache_before_the_first_check_in(store: Any) -> None:
    boxes = provision(store, 10)
    counting = Counting(store)
    engine = RolloutEngine(counting, poll_interval_s=60)

    async def run() -> None:
        await _listening(store)
        await engine.load()
        for box_id, credential in boxes.items():
            assert (await engine.authenticate(credential, box_id)).box_id == box_id
        assert counting.lookups == 0

    asyncio.run(run())
