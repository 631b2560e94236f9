"""Keeping a message the server cannot process: store it in the quarantine, count it, log it.

    keeper = QuarantineKeeper(store, metrics)
    keeper.keep("mqtt", topic, payload, exc)      # -> the quarantine id; StoreError if the store fails

The reason is the error's code for a refusal in the FleetError tree (bad_json, bad_row,
unknown_box, forbidden, ...) and `internal` for any other exception (a bug the message triggered:
it is logged with its traceback, once per exception type). Refusals are logged by the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fleet_server.errors import FleetError
from fleet_server.metrics import FleetMetrics
from fleet_server.store.quarantine import QuarantineStore

__all__ = ["QuarantineKeeper"]

log = logging.getLogger(__name__)


class QuarantineKeeper:
    def __init__(self, store: QuarantineStore, metrics: FleetMetrics, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._logged: set[str] = set()  # exception types of `internal` failures already logged

    def keep(self, transport: str, topic: str, payload: bytes, exc: BaseException) -> int:
        """Quarantine one message; raises StoreError when it could not be kept (then the caller
        must not acknowledge it)."""
        if isinstance(exc, FleetError):
            reason, detail = exc.code, str(exc)
        else:
            reason, detail = "internal", f"{type(exc).__name__}: {exc}"
            kind = type(exc).__name__
            if kind not in self._logged and len(self._logged) < 100:
                self._logged.add(kind)
                log.error("a %s message on %.200r made the server fail; it is quarantined "
                          "(further %s failures are only counted)", transport, topic, kind, exc_info=exc)
        new_id = self.store.quarantine(transport, topic, payload, reason, detail, self.clock())
        self.metrics.quarantined(transport, reason)
        return new_id
