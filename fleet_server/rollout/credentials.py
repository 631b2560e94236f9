"""`CredentialCache`: which box a check-in's credential names, answered from memory.

Every box-facing request names its box by credential. Asked of the store one by one, a lookup
costs a worker-thread hop and a query (about 1.8 ms of server CPU on PostgreSQL, five times a
check-in answered from memory). A replica that had just started, or whose cache had just been
emptied, therefore met every box's first check-in as a store lookup: 60,000 boxes polling each
minute are 1,000 lookups a second, more than two shared cores did while also serving the rest,
and the queue that built up in that first minute was never worked off (bench city_sim, p99 4.3 s).

So the cache is filled whole, from one read of every box's credential hash, box id and site
(`Store.credential_index`): before the first request (`load`, from the engine's `load`), and
again in the background after every credential change (`run`, a supervised task). Between a
change and the reload that follows it, lookups miss and go to the store one at a time.

Never wrong: entries are used only while `store.credential_generation()` is the generation they
were read under. That number moves whenever a credential stops working (re-key, admission,
revocation; on PostgreSQL on every replica, by LISTEN/NOTIFY, and on every read while the
replica is not listening, so the cache is then unused). A generation change empties the cache at
once; a whole load or a single lookup is kept only if the generation did not move while it ran
(read before, compared after), so a lookup that raced a revocation is answered but not remembered.

Bounded: at most `limit` entries (about 300 bytes each: 18 MB at 60,000 boxes). A fleet with
more boxes than that is not loaded whole (logged once); single lookups then fill the cache and
empty it when full.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from anyio import to_thread

from fleet_server.store.base import Store, hash_secret

__all__ = ["BoxRef", "CredentialCache"]

log = logging.getLogger(__name__)

LIMIT = 1_000_000
RELOAD_GAP_S = 1.0      # at most one whole load a second, however many changes arrive
RETRY_CAP_S = 30.0      # a load that a change overtook is retried, backing off up to this


@dataclass(frozen=True, slots=True)
class BoxRef:
    box_id: str
    site: str


def _index(rows: Sequence[tuple[str, str, str]]) -> dict[str, BoxRef]:
    sites: dict[str, str] = {}   # one string per site, not one per box
    return {row[0]: BoxRef(row[1], sites.setdefault(row[2], row[2])) for row in rows}


class CredentialCache:
    """Credential hash -> BoxRef, valid for one credential generation of the store."""

    def __init__(self, store: Store, *, limit: int = LIMIT, reload_gap_s: float = RELOAD_GAP_S,
                 retry_cap_s: float = RETRY_CAP_S) -> None:
        self.store = store
        self.limit = limit
        self.reload_gap_s = reload_gap_s
        self.retry_cap_s = retry_cap_s
        self.loads = 0          # whole loads installed (for tests and /metrics readers)
        self.too_many = False   # the fleet outgrew `limit`: no more whole loads
        self._refs: dict[str, BoxRef] = {}
        self._generation: int | None = None
        self._stale = asyncio.Event()

    def __len__(self) -> int:
        return len(self._refs)

    def _current(self) -> int:
        generation = self.store.credential_generation()
        if generation != self._generation:
            self._refs = {}
            self._generation = generation
            self._stale.set()
        return generation

    async def lookup(self, credential: str) -> BoxRef | None:
        """The box `credential` belongs to, or None (unknown or revoked)."""
        generation = self._current()
        key = hash_secret(credential)
        ref = self._refs.get(key)
        if ref is not None:
            return ref
        box = await to_thread.run_sync(self.store.box_for_credential, credential)
        if box is None:
            return None
        ref = BoxRef(box.box_id, box.site)
        if self._current() == generation:  # nothing changed while the store was asked
            if len(self._refs) >= self.limit:
                self._refs = {}
            self._refs[key] = ref
        return ref

    async def load(self) -> bool:
        """Fill the cache from one read of every credential. False (cache unchanged) when a
        credential changed while it was read, or the fleet has more than `limit` boxes."""
        if self.too_many:
            return False
        generation = self.store.credential_generation()

        def read() -> dict[str, BoxRef] | None:
            rows = self.store.credential_index(self.limit)
            return None if rows is None else _index(rows)

        refs = await to_thread.run_sync(read)
        if refs is None:
            self.too_many = True
            log.warning("credential cache: more than %d boxes, not loaded whole; lookups fill it one by one",
                        self.limit)
            return False
        if self.store.credential_generation() != generation:
            self._stale.set()    # `run` tries again
            return False
        self._refs, self._generation = refs, generation
        self._stale.clear()
        self.loads += 1
        return True

    async def run(self) -> None:
        """Reload whole after every credential change, until cancelled (a supervised task)."""
        delay = self.reload_gap_s
        while not self.too_many:
            await self._stale.wait()
            self._stale.clear()
            if await self.load():
                delay = self.reload_gap_s
            elif not self.too_many:
                self._stale.set()          # overtaken by another change: again, later
                delay = min(delay * 2, self.retry_cap_s)
            await asyncio.sleep(delay)
