"""The storage seam for leases: which server replica runs a periodic job right now (a small
Protocol that `Store` includes; the runner is `fleet_server.leases.LeasedJob`).

A lease is a named row (name, holder, expires_at, acquired_at). Whoever holds an unexpired lease
may run the job it names; everybody else waits. The holder renews it each round; a replica that
dies stops renewing, the lease expires, and the next replica to ask takes it over.

Contract every backend keeps:
- `acquire_lease` is one atomic decision: of several holders asking at once for a lease that is
  free or expired, exactly one gets it; a holder asking for the lease it holds renews it;
- `acquired_at` is when the holder's unbroken tenure began (a renewal keeps it; taking over an
  expired lease, even one's own, starts a new one);
- times (`now`) are passed in, in unix seconds, from each replica's own clock: replicas' clocks
  must agree to well within a lease's ttl (NTP), or an expiry is judged early or late;
- a refused call (bad name, holder or ttl: ValueError) changes nothing; backend failures raise
  `StoreError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, TypeGuard, runtime_checkable

__all__ = ["LEASE_NAME_PATTERN", "Lease", "LeaseStore", "check_lease_args"]

#: Lease names and holders (replica ids): 1-64 characters [A-Za-z0-9._-], like box ids.
LEASE_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_NAME = re.compile(LEASE_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    expires_at: float
    acquired_at: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "holder": self.holder, "expires_at": self.expires_at,
                "acquired_at": self.acquired_at}


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_lease_args(name: object, holder: object, ttl_s: object = 1.0, now: object = 0.0) -> None:
    """ValueError naming what is wrong with a lease call's arguments (nothing is stored then)."""
    for what, value in (("lease name", name), ("lease holder", holder)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError(f"{what} must be 1-64 characters [A-Za-z0-9._-], got {value!r:.80}")
    if not _finite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"lease ttl_s must be a positive number of seconds, got {ttl_s!r}")
    if not _finite(now):
        raise ValueError(f"now must be finite unix seconds, got {now!r}")


@runtime_checkable
class LeaseStore(Protocol):
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take lease `name` for `holder` until now + ttl_s if it is free or expired (expires_at
        <= now), or renew it if `holder` holds it already; return the lease as stored. None when
        another holder's lease is still valid (nothing changed). Atomic (see the module doc)."""
        ...

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if `holder` holds it (expired or not): True if it did, False (nothing
        changed) when it is free or another's."""
        ...

    def leases(self) -> list[Lease]:
        """Every lease row, expired ones included, by name."""
        ...
