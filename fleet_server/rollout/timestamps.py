"""Keep the update repository's timestamp (and snapshot) signed: a job the app lifespan runs.

TUF's timestamp role is short-lived on purpose (a freeze attack can only replay metadata until it
expires), so the server re-signs it online with the timestamp key (`Repository.refresh_timestamp`,
which also re-signs snapshot when past half its life). It does so once the timestamp has used up
`refresh_fraction` of its lifetime (default: half), checking every `check_s`. A failure (key
missing, disk full) is logged once, retried every `retry_s`, and visible in the
`quanedge_fleet_tuf_timestamp_expires_in_s` gauge; boxes keep working until the expiry.

The app runs `check` as the leased job "tuf-timestamp" (fleet_server.leases): a round every
`check_s`, sooner after a failure, on the one replica holding the lease. Replicas therefore serve
ONE repository directory (a shared volume): the leader re-signs it for all of them, and two never
re-sign it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from anyio import to_thread
from prometheus_client import CollectorRegistry, Gauge

from firmware_manifests.repository import Repository
from firmware_manifests.schema import ManifestError

__all__ = ["TimestampKeeper"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TimestampKeeper:
    def __init__(self, repo_dir: Path, *, keys_dir: Path | None = None, passphrase: str | None = None,
                 registry: CollectorRegistry | None = None, check_s: float = 60.0, retry_s: float = 30.0,
                 refresh_fraction: float = 0.5, clock: Callable[[], datetime] = _utcnow) -> None:
        if not 0 < refresh_fraction < 1:
            raise ValueError(f"refresh_fraction must be in (0, 1), got {refresh_fraction}")
        self.repo_dir = repo_dir
        self.keys_dir = keys_dir
        self.passphrase = passphrase
        self.check_s = check_s
        self.retry_s = retry_s
        self.refresh_fraction = refresh_fraction
        self.clock = clock
        self.refreshes = 0
        self.last_error: str | None = None
        self.expires_in = Gauge("quanedge_fleet_tuf_timestamp_expires_in_s",
                                "Seconds until the served TUF timestamp expires.", registry=registry)

    def _repo(self) -> Repository:
        return Repository(self.repo_dir, keys_dir=self.keys_dir, passphrase=self.passphrase,
                          clock=self.clock)

    def refresh_if_due(self) -> bool:
        """Re-sign when the timestamp has lived `refresh_fraction` of its lifetime; True if it did."""
        repo = self._repo()
        expires = repo.timestamp().signed.expires
        lifetime = repo.expiry.timestamp
        remaining = expires - self.clock()
        self.expires_in.set(remaining.total_seconds())
        if remaining > lifetime * (1 - self.refresh_fraction):
            return False
        published = repo.refresh_timestamp()
        self.refreshes += 1
        self.expires_in.set((repo.timestamp().signed.expires - self.clock()).total_seconds())
        log.info("TUF timestamp re-signed: timestamp v%d, snapshot v%d", published.timestamp, published.snapshot)
        return True

    async def check(self) -> float | None:
        """One check (`refresh_if_due`): None when it worked, `retry_s` (when to try again) after a
        failure, which is logged once per failing streak. A `fleet_server.leases` step: with
        replicas, one of them checks, under the "tuf-timestamp" lease."""
        try:
            await to_thread.run_sync(self.refresh_if_due)
        except (ManifestError, OSError) as exc:
            if self.last_error is None:
                log.error("cannot re-sign the TUF timestamp (will retry every %.0f s): %s", self.retry_s, exc)
            self.last_error = str(exc)
            return self.retry_s
        if self.last_error is not None:
            log.info("TUF timestamp signing works again")
            self.last_error = None
        return None
