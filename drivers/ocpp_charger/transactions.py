"""Transaction ids the box assigns as Central System, persisted so they stay unique across restarts.

A charger queues StartTransaction / StopTransaction while it cannot reach the Central System and
delivers them, in order, when it can: a StopTransaction may arrive days after its start, after box
restarts. So the open transactions (id -> charger, connector, idTag, meterStart) and the next id
live in a small JSON file, written atomically (temp file, fsync, rename, fsync of the folder, in a
worker thread: never on the event loop) BEFORE the charger is told its id.

If the file is lost (a new SD card), ids restart from a clock-derived floor, not from 1: the next id
is never below `now - 1.6e9` (seconds), so a replacement box does not hand out ids the fleet has
already seen unless this site started more than one transaction per second on average.

Re-sends are answered with the first answer: a StartTransaction identical to an open one (same
charger, connector, idTag, meterStart and timestamp; its answer was lost) gets the same id; a
StopTransaction for a transaction closed recently is recognised as a re-send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import StorageError

__all__ = ["OpenTransaction", "TransactionStore", "ID_MAX"]

log = logging.getLogger(__name__)

ID_MAX = 2**31 - 1          # transactionId is an integer; many chargers keep it in an int32
_CLOCK_FLOOR = 1_600_000_000
MAX_OPEN = 10_000           # a charger that never stops its transactions cannot grow the file forever
MAX_CLOSED = 1_000


@dataclass(slots=True)
class OpenTransaction:
    tx: int
    charger: str
    connector: int
    id_tag: str
    meter_start: int
    timestamp: str
    recorded: bool = False  # its start reading is in the buffer


class TransactionStore:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self.next_id = 1
        self.open: dict[int, OpenTransaction] = {}
        self.closed: OrderedDict[int, int] = OrderedDict()  # tx -> meterStop, recent ones
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        data = await asyncio.to_thread(self._read)
        floor = max(1, int(self._clock()) - _CLOCK_FLOOR)
        if data is not None:
            try:
                self.next_id = int(data["next_id"])
                self.open = {int(k): OpenTransaction(**v) for k, v in data["open"].items()}
                self.closed = OrderedDict((int(k), int(v)) for k, v in data.get("closed", []))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(f"transaction state {self.path} is not readable ({exc}); move it aside to "
                                   "start afresh (ids then restart from the clock floor)") from None
        self.next_id = max(self.next_id, floor)

    def _read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.info("no transaction state at %s: ids start at the clock floor", self.path)
            return None
        except OSError as exc:
            raise StorageError(f"cannot read transaction state {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StorageError(f"transaction state {self.path} is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise StorageError(f"transaction state {self.path} is not a JSON object")
        return data

    def find_start(self, charger: str, connector: int, id_tag: str, meter_start: int,
                   timestamp: str) -> OpenTransaction | None:
        for t in self.open.values():
            if (t.charger, t.connector, t.id_tag, t.meter_start, t.timestamp) == (
                    charger, connector, id_tag, meter_start, timestamp):
                return t
        return None

    async def start(self, charger: str, connector: int, id_tag: str, meter_start: int,
                    timestamp: str) -> OpenTransaction:
        """The open transaction for this StartTransaction: the same one for a re-send, else a new id."""
        same = self.find_start(charger, connector, id_tag, meter_start, timestamp)
        if same is not None:
            return same
        if self.next_id > ID_MAX:
            raise StorageError(f"transaction ids exhausted (next {self.next_id} > {ID_MAX})")
        t = OpenTransaction(self.next_id, charger, connector, id_tag, meter_start, timestamp)
        self.next_id += 1  # taken even if the save fails: an id is never handed out twice
        self.open[t.tx] = t
        while len(self.open) > MAX_OPEN:
            oldest = min(self.open)
            log.warning("dropping open transaction %d of %s: more than %d open", oldest, self.open[oldest].charger,
                        MAX_OPEN)
            del self.open[oldest]
        try:
            await self.save()
        except StorageError:
            self.open.pop(t.tx, None)
            raise
        return t

    def was_closed(self, tx: int) -> bool:
        return tx in self.closed

    async def stop(self, tx: int, meter_stop: int) -> None:
        self.open.pop(tx, None)
        self.closed[tx] = meter_stop
        while len(self.closed) > MAX_CLOSED:
            self.closed.popitem(last=False)
        await self.save()

    async def save(self) -> None:
        async with self._lock:
            data = {"next_id": self.next_id, "open": {str(k): asdict(v) for k, v in self.open.items()},
                    "closed": [[k, v] for k, v in self.closed.items()]}
            await asyncio.to_thread(self._write, json.dumps(data, separators=(",", ":")))

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot save transaction state {self.path}: {exc}") from exc
