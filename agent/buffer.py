"""Durable store-and-forward buffer on SQLite (WAL).

Guarantees
- `append()` returns only after the readings are committed with fsync-level durability
  (WAL + synchronous=FULL: the WAL is fsynced at every commit). A reading that was acknowledged
  survives kill -9 and power loss.
- Sequence numbers are per box, assigned at commit, strictly increasing, never reused (the next
  seq is kept in the same transaction as the rows). A new buffer file starts at its creation time
  in microseconds, so a wiped disk does not restart at 1 and collide with what was already sent.
- Delivery order is seq order; rows leave the buffer only when `ack(upto)` is called after the
  uplink confirmed them (at-least-once; the fleet server deduplicates by (box, seq)).

Group commit: every write goes through ONE writer thread that owns the write connection. It
takes whatever appends are queued (up to `commit_max_rows`, waiting at most `commit_max_delay_s`
for more) and commits them in one transaction, so one fsync covers many callers and the event
loop never blocks on disk. Reads for the drain use a second connection, also off the loop.

Disk cap (a hard cap, not a row estimate): the database file may not grow beyond `max_bytes`
minus the WAL allowance (`PRAGMA max_page_count`: SQLite itself refuses the page), and the writer
checkpoints and truncates the WAL whenever it passes half its allowance. Group commits are
limited to a quarter of the allowance, so the WAL stays inside it even when a reader defers one
checkpoint. (A single append larger than that still commits atomically, and may overshoot by itself.)
Eviction policy when the cap is near:
    1. oldest ROUTINE readings first;
    2. then oldest EVENT records;
    3. ALARM records only when nothing else is left.
TTL: routine/event rows older than `ttl_s` and alarms older than `alarm_ttl_s` are deleted by
`expire()`. Every dropped row is counted by (reason, class) in the `drops` table, in the same
transaction as the delete, so the counters are as durable as the data.

Refusal, not freeze. `append()` checks every reading with `check_reading` before it is queued and
raises `RecordRefused` naming the field (a lone surrogate, a non-finite value), so nothing SQLite
would choke on reaches the writer. Should a group commit still fail on its data, the transaction
is rolled back and the group is retried row by row under savepoints in one transaction: only the
bad rows are refused (`AppendResult.refused`), the rest commit and the writer goes on. Anything else
that escapes the writer's loop is caught, recorded (`health()`), and the loop restarts on a fresh
connection with capped backoff; `health()["state"]` is "failing" while commits fail or the writer
is down, which /healthz reports as 503.

Quarantine. Rows the uplink refused as malformed are moved by `quarantine()` from `readings` to
the `quarantine` table (raw row as JSON, reason, time) in one transaction, so the drain can go on
without losing them silently; `stats()["quarantined"]` counts them (durable: counted from the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import buffer_drops, buffer_rows
from agent.buffer_drops import DeliveryMarks
from core.backoff import Backoff
from core.errors import BufferClosed, RecordRefused, StorageError
from core.reading import Quality, Reading, RecordClass, check_reading

log = logging.getLogger(__name__)

_CLS_CODE = {RecordClass.ROUTINE: 0, RecordClass.ALARM: 1, RecordClass.EVENT: 2}
_CODE_CLS = {v: k for k, v in _CLS_CODE.items()}
_EVICTION_ORDER = (0, 2, 1)  # routine, then event, then alarm

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq     INTEGER PRIMARY KEY,
    ts      REAL    NOT NULL,
    device  TEXT    NOT NULL,
    point   TEXT    NOT NULL,
    value   REAL,
    unit    TEXT    NOT NULL,
    quality INTEGER NOT NULL,
    cls     INTEGER NOT NULL,
    text    TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT NOT NULL, cls TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (reason, cls)
);
""" + buffer_rows.QUARANTINE_SCHEMA + buffer_drops.SCHEMA
#: Writer restarts back off up to this many seconds.
WRITER_BACKOFF_CAP_S = 5.0
_INSERT = "INSERT INTO readings (seq, ts, device, point, value, unit, quality, cls, text) VALUES (?,?,?,?,?,?,?,?,?)"


MIN_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BufferSettings:
    path: Path
    max_bytes: int = 256 * 1024 * 1024
    ttl_s: float = 7 * 86400.0
    alarm_ttl_s: float = 30 * 86400.0
    commit_max_rows: int = 5000
    commit_max_delay_s: float = 0.0
    page_size: int = 4096

    def __post_init__(self) -> None:
        if self.max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"buffer max_bytes must be at least {MIN_MAX_BYTES} (1 MiB), got {self.max_bytes}")
        if self.ttl_s <= 0 or self.alarm_ttl_s <= 0:
            raise ValueError("buffer ttl_s and alarm_ttl_s must be positive")
        if self.commit_max_rows < 1 or self.commit_max_delay_s < 0:
            raise ValueError("commit_max_rows must be >= 1 and commit_max_delay_s >= 0")

    @property
    def wal_allowance(self) -> int:
        """The WAL's share of the cap: 10 % (at least 256 KiB, at most 16 MiB)."""
        return max(256 * 1024, min(self.max_bytes // 10, 16 * 1024 * 1024))

    @property
    def rows_per_commit(self) -> int:
        """Group-commit size: configured, but never more than a quarter of the WAL allowance
        (~128 bytes a row with its pages), so a commit, even behind a deferred checkpoint,
        stays inside the cap."""
        return max(1, min(self.commit_max_rows, self.wal_allowance // 4 // 128))

    @property
    def max_pages(self) -> int:
        return (self.max_bytes - self.wal_allowance) // self.page_size


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int
    last_seq: int
    refused: tuple[tuple[int, str], ...] = ()  # (index in the append, reason) of rows SQLite refused




class _Op:
    __slots__ = ("kind", "arg", "future")

    def __init__(self, kind: str, arg: Any, future: asyncio.Future | None) -> None:
        self.kind = kind
        self.arg = arg
        self.future = future


def _to_row(r: Reading) -> tuple:
    return (r.ts, r.device, r.point, r.value, r.unit, int(r.quality), _CLS_CODE[r.cls], r.text)


def _from_db(row: tuple) -> Reading:
    seq, ts, device, point, value, unit, quality, cls, text = row
    return Reading(device, point, value, unit, ts, Quality(quality), _CODE_CLS[cls], text, seq)


class DurableBuffer:
    """See module docstring. Use as `async with DurableBuffer(settings) as buf:`."""

    def __init__(self, settings: BufferSettings, *, on_drop: Callable[[str, str, int], None] | None = None) -> None:
        self.settings = settings
        self._on_drop = on_drop
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = True
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._new_data = asyncio.Event()
        # Figures kept by the writer thread; read by stats() (ints are replaced atomically).
        self._depth = 0
        self._next_seq = 1
        self._base_seq = 1
        self._drops: dict[tuple[str, str], int] = {}
        self._used_bytes = 0
        self._sent_upto = 0
        self._acked_upto = 0
        self._oldest_ts: float | None = None
        self._quarantined = 0
        # Health, written by the writer thread: failing while commits fail or the loop is down.
        self._failing = False
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self.writer_restarts = 0

    # --- life cycle -----------------------------------------------------------------------
    async def __aenter__(self) -> DurableBuffer:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.settings.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._writer_main, args=(ready,), name="buffer-writer", daemon=True)
        self._thread.start()
        await ready
        self._reader = await asyncio.to_thread(self._connect)
        self._closed = False

    async def close(self) -> None:
        """Commit what is queued, then stop the writer. Safe to call twice."""
        if self._thread is None:
            return
        self._closed = True
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()
            self._reader = None

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.settings.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA page_size={self.settings.page_size}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{self.settings.path}: cannot switch SQLite to WAL mode (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA max_page_count={self.settings.max_pages}")
            db.execute(f"PRAGMA journal_size_limit={self.settings.wal_allowance}")
            db.execute(f"PRAGMA wal_autocheckpoint={max(16, self.settings.wal_allowance // self.settings.page_size)}")
            db.execute("PRAGMA busy_timeout=5000")
            return db
        except sqlite3.Error as exc:
            raise StorageError(f"{self.settings.path}: cannot open buffer database: {exc}") from exc

    # --- public API (event loop side) -------------------------------------------------------
    async def append(self, readings: Sequence[Reading]) -> AppendResult:
        """Store readings durably; returns their seq range once committed and fsynced.

        Raises RecordRefused (naming the reading's index and field) before anything is queued
        when a reading breaks the boundary rules; the caller drops that one and goes on."""
        if self._closed:
            raise BufferClosed("buffer is closed; reading not stored")
        if not readings:
            raise ValueError("append() needs at least one reading")
        for i, r in enumerate(readings):
            try:
                check_reading(r)
            except ValueError as exc:
                raise RecordRefused(str(exc), index=i) from None
        return await self._submit_rows([_to_row(r) for r in readings])

    def _future(self) -> asyncio.Future[Any]:
        """A future on the loop that opened the buffer (the writer thread resolves it there)."""
        assert self._loop is not None, "the buffer is used before open()"
        return self._loop.create_future()

    async def _submit_rows(self, rows: list[tuple]) -> AppendResult:
        fut = self._future()
        self._ops.put(_Op("append", rows, fut))
        return await fut

    async def quarantine(self, items: Sequence[tuple[Reading, str]]) -> int:
        """Move rows the uplink refused as malformed to the quarantine table (raw row, reason, time).

        Returns how many were moved; waits for the commit, so a later `ack()` cannot delete a row
        before it is kept."""
        if self._closed:
            raise BufferClosed("buffer is closed")
        arg = [(r.seq, json.dumps(r.to_row(), ensure_ascii=True, allow_nan=True, default=str)[:65536],
                reason[:1000]) for r, reason in items]
        fut = self._future()
        self._ops.put(_Op("quarantine", arg, fut))
        return await fut

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest quarantined rows (for tools and tests; reads on the caller's thread)."""
        if self._reader is None:
            raise BufferClosed("buffer is closed")
        with self._reader_lock:
            rows = self._reader.execute("SELECT seq, row, reason, ts FROM quarantine ORDER BY id DESC LIMIT ?",
                                        (limit,)).fetchall()
        return [{"seq": q, "row": row, "reason": reason, "ts": ts} for q, row, reason, ts in rows]

    def health(self) -> dict[str, Any]:
        """"ok", or "failing" while commits fail / the writer is down (with the last error and when)."""
        alive = self._thread is not None and self._thread.is_alive()
        state = "stopped" if self._closed and not alive else ("failing" if self._failing or not alive else "ok")
        return {"state": state, "last_error": self._last_error, "last_error_at": self._last_error_at,
                "writer_restarts": self.writer_restarts}

    def _inject_writer_fault(self) -> None:
        """Test hook: the writer's loop raises once, as an unexpected bug would (it must restart)."""
        self._ops.put(_Op("fault", None, None))

    async def peek(self, limit: int, after_seq: int | None = None) -> list[Reading]:
        """The oldest unsent readings in seq order (after `after_seq`, default: after the last one handed out)."""
        if self._reader is None:
            raise BufferClosed("buffer is closed")
        start = self._sent_upto if after_seq is None else after_seq
        return await asyncio.to_thread(self._peek_sync, start, limit)

    def _peek_sync(self, after: int, limit: int) -> list[Reading]:
        with self._reader_lock:
            try:
                assert self._reader is not None  # the callers check; a close() racing a read fails it
                rows = self._reader.execute(
                    "SELECT seq, ts, device, point, value, unit, quality, cls, text FROM readings "
                    "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.settings.path}: read failed: {exc}") from exc
        return [_from_db(r) for r in rows]

    async def next_batch(self, limit: int) -> tuple[list[Reading], DeliveryMarks]:
        """`peek(limit)` and the delivery marks to send with it (agent.buffer_drops), in one hop."""
        if self._reader is None:
            raise BufferClosed("buffer is closed")
        start, next_seq = self._sent_upto, self._next_seq  # next_seq before the reads: see buffer_drops.marks
        return await asyncio.to_thread(self._next_batch_sync, start, limit, next_seq)

    def _next_batch_sync(self, after: int, limit: int, next_seq: int) -> tuple[list[Reading], DeliveryMarks]:
        with self._reader_lock:
            try:
                assert self._reader is not None  # next_batch checks; a close() racing a read fails it
                marks = buffer_drops.marks(self._reader, self._base_seq, next_seq)
            except sqlite3.Error as exc:
                raise StorageError(f"{self.settings.path}: read failed: {exc}") from exc
        return self._peek_sync(after, limit), marks

    def forget_drops(self, ranges: Sequence[tuple[int, int, str]]) -> None:
        """The fleet server acknowledged a message announcing these dropped ranges (queued, not awaited)."""
        if ranges:
            self._ops.put(_Op("forget", list(ranges), None))

    def mark_handed_out(self, upto_seq: int) -> None:
        """The drain sent rows up to this seq; later peeks start after it (not durable: a restart resends)."""
        self._sent_upto = max(self._sent_upto, upto_seq)

    def rewind(self) -> None:
        """Forget in-flight hand-outs (after an uplink failure): the next peek starts at the oldest unacked row."""
        self._sent_upto = self._acked_upto

    async def ack(self, upto_seq: int, *, wait: bool = False) -> None:
        """The uplink confirmed every row up to `upto_seq`: delete them.

        Without `wait` the delete is queued for the next group commit (losing it in a crash only
        causes a resend, which the fleet server deduplicates).
        """
        self._acked_upto = max(self._acked_upto, upto_seq)
        self._sent_upto = max(self._sent_upto, upto_seq)
        fut = self._future() if wait else None
        self._ops.put(_Op("ack", upto_seq, fut))
        if fut is not None:
            await fut

    async def expire(self, now: float | None = None) -> int:
        """Delete rows past their TTL; returns how many were dropped."""
        fut = self._future()
        self._ops.put(_Op("expire", time.time() if now is None else now, fut))
        return await fut

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until an append commits (or the timeout passes)."""
        self._new_data.clear()
        if self._depth > 0 and self._next_seq - 1 > self._sent_upto:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._new_data.wait(), timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "depth": self._depth,
            "bytes": self._used_bytes,
            "next_seq": self._next_seq,
            "base_seq": self._base_seq,
            "oldest_unsent_ts": self._oldest_ts if self._depth > 0 else None,
            "dropped": dict(self._drops),
            "quarantined": self._quarantined,
        }

    # --- writer thread ------------------------------------------------------------------------
    def _writer_main(self, ready: asyncio.Future) -> None:
        loop = self._loop
        assert loop is not None
        try:
            db = self._connect()
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            max_row = db.execute("SELECT max(seq) FROM readings").fetchone()[0] or 0
            if row is None and max_row == 0:
                # A brand-new buffer (first boot, or a wiped/replaced disk) starts its seqs at the
                # creation time in microseconds, so they land above anything an earlier buffer of
                # this box sent: the fleet server's (box, seq) dedup never mistakes them for resends.
                row = (max(1, int(time.time() * 1_000_000)),)
                db.execute("INSERT INTO meta(key, value) VALUES('next_seq', ?)", row)
            self._next_seq = max(row[0], max_row + 1)
            base = db.execute("SELECT value FROM meta WHERE key='base_seq'").fetchone()
            if base is None:  # a file from before base_seq was kept: its oldest seq is as far back as it knows
                min_row = db.execute("SELECT min(seq) FROM readings").fetchone()[0]
                base = (min(row[0], min_row or row[0]),)
                db.execute("INSERT INTO meta(key, value) VALUES('base_seq', ?)", base)
            self._base_seq = base[0]
            self._depth = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            self._drops = {(r[0], r[1]): r[2] for r in db.execute("SELECT reason, cls, count FROM drops")}
            self._quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            self._refresh_used(db)
        except BaseException as exc:  # report any start-up failure to the opener, then stop
            err = exc if isinstance(exc, StorageError) else StorageError(f"{self.settings.path}: {exc}")
            loop.call_soon_threadsafe(_set_exc, ready, err)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        self._supervised_loop(db)

    def _supervised_loop(self, db: sqlite3.Connection | None) -> None:
        """Run the writer loop; if it dies of something unexpected, record it and restart it on a
        fresh connection with capped backoff (queued operations wait in the queue meanwhile)."""
        backoff = Backoff(base_s=0.1, cap_s=WRITER_BACKOFF_CAP_S)
        while True:
            if db is None:  # (re)connect after a failure
                try:
                    db = self._connect()
                except StorageError as err:
                    self._note_failure(str(err))
                    time.sleep(backoff.next_delay())
                    continue
                self._failing = False
                log.info("buffer writer restarted (%d restart(s) so far)", self.writer_restarts)
            try:
                self._writer_loop(db)
                db.close()
                return
            except Exception as exc:  # an unexpected writer fault: record, restart
                _close_quietly(db)
                db = None
                if self._loop is None or self._loop.is_closed():
                    return  # nobody left to serve
                self._note_failure(f"writer loop died: {type(exc).__name__}: {exc}")
                self.writer_restarts += 1
                delay = backoff.next_delay()
                log.error("buffer writer died (%s); restarting in %.1f s", exc, delay)
                time.sleep(delay)

    def _note_failure(self, text: str) -> None:
        self._failing = True
        self._last_error = text[:500]
        self._last_error_at = time.time()

    def _writer_loop(self, db: sqlite3.Connection) -> None:
        s = self.settings
        stopping = False
        while not stopping:
            op = self._ops.get()
            batch: list[_Op] = []
            if op is None:
                stopping = True
            else:
                if op.kind == "fault":
                    raise RuntimeError("injected writer fault (test hook)")
                batch.append(op)
            rows = len(op.arg) if op is not None and op.kind == "append" else 0
            deadline = time.monotonic() + s.commit_max_delay_s
            while rows < s.rows_per_commit and not stopping:
                try:
                    nxt = self._ops.get_nowait() if s.commit_max_delay_s == 0 else self._ops.get(
                        timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
                if nxt.kind == "append":
                    rows += len(nxt.arg)
            if batch:
                self._commit_group(db, batch)

    def _commit_group(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        appends = [op for op in batch if op.kind == "append"]
        acks = [op.arg for op in batch if op.kind == "ack"]
        results: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            if acks:
                self._delete_acked(db, max(acks))
            if appends:
                try:
                    ranges = self._insert_with_eviction(db, appends)
                except buffer_rows.DataError as exc:
                    log.error("group commit of %d append(s) refused its data (%s); retrying row by row",
                              len(appends), exc)
                    ranges = self._insert_rowwise(db, appends)
                for op, rng in zip(appends, ranges):
                    if rng.first_seq == 0:  # every row of this append refused
                        reason = "; ".join(f"reading {i}: {why}" for i, why in rng.refused[:3])
                        results.append((op, None, RecordRefused(reason)))
                    else:
                        results.append((op, rng, None))
            for op in batch:
                if op.kind == "ack":
                    results.append((op, None, None))
                elif op.kind == "expire":
                    results.append((op, self._expire(db, op.arg), None))
                elif op.kind == "quarantine":
                    results.append((op, self._quarantine(db, op.arg), None))
                elif op.kind == "forget":
                    buffer_drops.forget(db, op.arg)
            self._failing = False
        except BaseException as exc:  # every caller must learn of the failure
            err = exc if isinstance(exc, StorageError) else StorageError(f"{self.settings.path}: {exc}")
            log.error("buffer commit failed: %s", err)
            self._note_failure(str(err))
            results = [(op, None, err) for op in batch]
        try:
            self._bound_wal(db)
            self._refresh_used(db)
        finally:  # callers learn their outcome even if the bookkeeping fails (the loop then restarts)
            assert self._loop is not None  # set by open() before the writer starts
            self._loop.call_soon_threadsafe(self._resolve, results, bool(appends))

    def _resolve(self, results: list[tuple[_Op, Any, BaseException | None]], appended: bool) -> None:
        for op, value, err in results:
            if op.future is None or op.future.done():
                continue
            if err is not None:
                op.future.set_exception(err)
            else:
                op.future.set_result(value)
        if appended:
            self._new_data.set()

    def _insert_with_eviction(self, db: sqlite3.Connection, appends: list[_Op]) -> list[AppendResult]:
        n_rows = sum(len(op.arg) for op in appends)
        self._make_room(db, n_rows)
        for attempt in range(8):
            seq = self._next_seq
            ranges: list[AppendResult] = []
            params: list[tuple] = []
            for op in appends:
                first = seq
                for r in op.arg:
                    params.append((seq, *r))
                    seq += 1
                ranges.append(AppendResult(first, seq - 1))
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, params)
                db.execute("INSERT INTO meta(key, value) VALUES('next_seq', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (seq,))
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                _rollback(db)
                if "full" not in str(exc).lower():
                    raise StorageError(f"{self.settings.path}: write failed: {exc}") from exc
                # Cap (or the real disk) reached: evict by policy and retry with more room.
                freed = self._evict(db, max(n_rows, 1000) * (attempt + 1), reason="disk_cap")
                if freed == 0:
                    raise StorageError(f"{self.settings.path}: disk full and nothing left to evict") from exc
                continue
            except Exception as exc:  # the data, not the disk (an unencodable string, an overflow)
                _rollback(db)  # never leave the transaction open: the next BEGIN would fail forever
                raise buffer_rows.DataError(f"{type(exc).__name__}: {exc}") from exc
            self._next_seq = seq
            self._depth += len(params)
            return ranges
        raise StorageError(f"{self.settings.path}: could not make room for {n_rows} readings")

    def _insert_rowwise(self, db: sqlite3.Connection, appends: list[_Op]) -> list[AppendResult]:
        """After a group commit failed on its data: only the bad rows are refused (agent.buffer_rows)."""
        try:
            outcomes, seq, stored = buffer_rows.insert_rowwise(db, _INSERT, [op.arg for op in appends], self._next_seq)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.settings.path}: write failed: {exc}") from exc
        self._next_seq = seq
        self._depth += stored
        return [AppendResult(first, last, refused) for first, last, refused in outcomes]

    def _quarantine(self, db: sqlite3.Connection, items: list[tuple[int | None, str, str]]) -> int:
        moved = buffer_rows.quarantine(db, items, time.time())
        self._depth = max(0, self._depth - moved)
        self._quarantined += len(items)
        return len(items)

    def _make_room(self, db: sqlite3.Connection, n_rows: int) -> None:
        """Proactive eviction: keep used pages under 90 % of the cap before inserting."""
        page_count, free = _pages(db)
        high = int(self.settings.max_pages * 0.9)
        est_pages = n_rows * 64 // self.settings.page_size + 1
        if page_count - free + est_pages <= high or self._depth == 0:
            return
        avg_row_pages = max((page_count - free) / max(self._depth, 1), 1e-6)
        target_free_pages = page_count - free + est_pages - int(self.settings.max_pages * 0.8)
        self._evict(db, int(target_free_pages / avg_row_pages) + 1, reason="disk_cap")

    def _evict(self, db: sqlite3.Connection, n: int, *, reason: str) -> int:
        """Delete up to n rows by the eviction policy; returns how many were deleted."""
        done = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for code in _EVICTION_ORDER:
                if done >= n:
                    break
                victims = "SELECT seq FROM readings WHERE cls=? ORDER BY seq LIMIT ?"
                buffer_drops.record_selected(db, victims, (code, n - done), reason)
                cur = db.execute(f"DELETE FROM readings WHERE seq IN ({victims})", (code, n - done))
                if cur.rowcount > 0:
                    self._count_drop(db, reason, _CODE_CLS[code].value, cur.rowcount)
                    done += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._depth -= done
        self._bound_wal(db)
        return done

    def _delete_acked(self, db: sqlite3.Connection, upto: int) -> None:
        cur = db.execute("DELETE FROM readings WHERE seq <= ?", (upto,))
        self._depth = max(0, self._depth - max(cur.rowcount, 0))

    def _expire(self, db: sqlite3.Connection, now: float) -> int:
        total = 0
        for code, ttl in ((0, self.settings.ttl_s), (2, self.settings.ttl_s), (1, self.settings.alarm_ttl_s)):
            db.execute("BEGIN IMMEDIATE")
            try:
                buffer_drops.record_selected(db, "SELECT seq FROM readings WHERE cls=? AND ts < ?",
                                             (code, now - ttl), "ttl")
                cur = db.execute("DELETE FROM readings WHERE cls=? AND ts < ?", (code, now - ttl))
                if cur.rowcount > 0:
                    self._count_drop(db, "ttl", _CODE_CLS[code].value, cur.rowcount)
                    total += cur.rowcount
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        self._depth -= total
        return total

    def _count_drop(self, db: sqlite3.Connection, reason: str, cls: str, n: int) -> None:
        db.execute("INSERT INTO drops(reason, cls, count) VALUES(?,?,?) "
                   "ON CONFLICT(reason, cls) DO UPDATE SET count = count + excluded.count", (reason, cls, n))
        self._drops[(reason, cls)] = self._drops.get((reason, cls), 0) + n
        if self._on_drop is not None:
            self._on_drop(reason, cls, n)
        log.warning("buffer dropped %d %s readings (%s)", n, cls, reason)

    def _bound_wal(self, db: sqlite3.Connection) -> None:
        """Keep the WAL inside its share of the cap: checkpoint and truncate it once it passes half."""
        try:
            wal = os.path.getsize(str(self.settings.path) + "-wal")
        except OSError:
            return
        if wal > self.settings.wal_allowance // 2:
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a busy reader: the next commit tries again
                log.debug("WAL checkpoint deferred: %s", exc)

    def _refresh_used(self, db: sqlite3.Connection) -> None:
        page_count, free = _pages(db)
        try:
            wal = os.path.getsize(str(self.settings.path) + "-wal")
        except OSError:
            wal = 0
        self._used_bytes = (page_count - free) * self.settings.page_size + wal
        row = db.execute("SELECT ts FROM readings ORDER BY seq LIMIT 1").fetchone()
        self._oldest_ts = row[0] if row else None


def _pages(db: sqlite3.Connection) -> tuple[int, int]:
    return db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA freelist_count").fetchone()[0]


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is None:
        return
    try:
        _rollback(db)
        db.close()
    except sqlite3.Error:
        pass


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
