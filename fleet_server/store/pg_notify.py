"""Credential changes pushed to every replica: PostgreSQL LISTEN / NOTIFY.

A re-key, an admission or a revocation on any replica runs `NOTIFY quanedge_credentials` in its
transaction; PostgreSQL delivers it to every listener when (and only if) that transaction
commits. Each `PgStore` keeps one listening connection in a thread and counts what it hears, so
its `credential_generation()` moves without a query, and the rollout engine's credential cache
(which a generation change empties) stays usable on replicas. Delivery takes milliseconds after
the commit; a check-in in that window is answered as if it had come just before the revocation.

While the listener is not connected (start, database restart, network cut), the generation moves
on every read, so the cache is never trusted while notifications might be missed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from core.backoff import Backoff

__all__ = ["CHANNEL", "CredentialListener"]

log = logging.getLogger(__name__)
CHANNEL = "quanedge_credentials"


class CredentialListener:
    """`generation` changes whenever a credential may have stopped working on any replica."""

    def __init__(self, conninfo: str, kwargs: dict[str, Any]) -> None:
        self._conninfo, self._kwargs = conninfo, dict(kwargs, autocommit=True)
        self._lock = threading.Lock()
        self._heard = 0
        self._misses = 0       # bumps while not listening: every read is a new generation
        self._listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-credential-listener", daemon=True)
        self._thread.start()

    @property
    def generation(self) -> int:
        with self._lock:
            if not self._listening:
                self._misses += 1
            return self._heard * 1_000_003 + self._misses

    @property
    def listening(self) -> bool:
        return self._listening

    def _run(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=10.0)
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:
                        self._listening = True
                        self._heard += 1  # anything before this point may have been missed
                    backoff.reset()
                    for _ in self._notifies(conn):
                        with self._lock:
                            self._heard += 1
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("credential listener: %s; retrying", exc)
            finally:
                with self._lock:
                    self._listening = False
            self._stop.wait(backoff.next_delay())

    def _notifies(self, conn: psycopg.Connection[Any]) -> Any:
        while not self._stop.is_set():
            yield from conn.notifies(timeout=0.5)

    def close(self) -> None:
        """Stop listening; the thread ends (closing its connection) within its 0.5 s poll, so
        closing a store does not wait for it."""
        self._stop.set()
