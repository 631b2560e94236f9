"""Commands from the fleet, on the box: validated, run at most once, before their deadline.

    MQTT: {prefix}/{box}/commands/# (the uplink's connection, agent.uplink.mqtt) --.
    HTTP: long-poll GET {server}/api/v1/boxes/{box}/commands (`poll_http`) ---------+-> FleetCommands.submit
    -> queue -> `run`: parse (core.fleet_command) -> ledger claim -> deadline -> CommandRouter.execute

The router applies the box's own allow-list and driver guards and writes the audit record (an
EVENT reading through the buffer) carrying the command's id: that record is the result the
fleet stores (core.fleet_command), so a result is never lost while the uplink is down.

At most once: `CommandLedger` records each command id in a SQLite file under the data directory,
committed (synchronous=FULL) BEFORE the command runs. A re-delivery (the fleet re-sends until it
sees a result; MQTT QoS 1 may duplicate; the long-poll may answer twice) finds the id and is
skipped; a power cut between the claim and the run loses that one run (reported by the fleet as
expired at the deadline) rather than risking a second gate opening. Ids are kept 30 days.

A malformed message is logged and counted, never run. Commands run one after another, in arrival
order (a gate's "open" then "close" must not swap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import CommandRefused
from core.fleet_command import FleetCommand, tag_origin

__all__ = ["CommandLedger", "FleetCommands", "LEDGER_FILE", "poll_http"]

log = logging.getLogger(__name__)

LEDGER_FILE = "fleet_commands.db"
KEEP_S = 30 * 86400
QUEUE_MAX = 1000


class CommandLedger:
    """The ids of fleet commands this box has taken, durable across restarts."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS taken (command_id TEXT PRIMARY KEY, taken_at REAL NOT NULL)")
        self._db.execute("DELETE FROM taken WHERE taken_at < ?", (clock() - KEEP_S,))

    def claim(self, command_id: str, now: float) -> bool:
        """True the first time `command_id` is claimed (committed before returning), False after."""
        cursor = self._db.execute("INSERT OR IGNORE INTO taken (command_id, taken_at) VALUES (?, ?)",
                                  (command_id, now))
        return cursor.rowcount == 1

    def close(self) -> None:
        self._db.close()


class FleetCommands:
    """Takes fleet command messages from the uplinks and runs them through the router."""

    def __init__(self, ledger_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.ledger_path = ledger_path
        self.clock = clock
        self.router: Any = None       # the box's CommandRouter, bound once built (agent.runtime)
        self.received = 0
        self.duplicates = 0
        self.malformed = 0
        self.dropped = 0
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MAX)

    def submit(self, payload: bytes) -> None:
        """Queue one message (never blocks the uplink's reader); a full queue drops it: the fleet
        re-sends a command until it has a result."""
        try:
            self._queue.put_nowait(bytes(payload))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("fleet command queue full (%d): message dropped, the fleet will re-send it", QUEUE_MAX)

    async def run(self) -> None:
        """Run queued commands one at a time until cancelled (a supervised task)."""
        if self.router is None:
            raise RuntimeError("FleetCommands.run before a router was bound")
        ledger = await asyncio.to_thread(CommandLedger, self.ledger_path, clock=self.clock)
        try:
            while True:
                await self._one(ledger, await self._queue.get())
        finally:
            ledger.close()

    async def _one(self, ledger: CommandLedger, payload: bytes) -> None:
        self.received += 1
        try:
            command = FleetCommand.parse(payload)
        except ValueError as exc:
            self.malformed += 1
            log.warning("fleet command refused, not run: %s", exc)
            return
        now = self.clock()
        if not await asyncio.to_thread(ledger.claim, command.command_id, now):
            self.duplicates += 1
            log.info("fleet command %s already taken: not run again", command.command_id)
            return
        origin = tag_origin("fleet", command.origin.removeprefix("fleet:"), "fleet")
        if now > command.deadline:
            await self.router.expired(command.device, command.command, command.args, origin, command.command_id,
                                      command.deadline)
            return
        with contextlib.suppress(CommandRefused):  # audited with its reason by the router: the fleet reads that
            await self.router.execute(command.device, command.command, command.args, origin,
                                      command_id=command.command_id)


async def poll_http(server: str, credential: str, box_id: str, submit: Callable[[bytes], None], *,
                    wait_s: float = 25.0, verify: bool | str = True) -> None:
    """Long-poll the fleet for this box's commands until cancelled (boxes on the HTTP uplink):
    the server answers as soon as a command is waiting, or after `wait_s` with none."""
    import json

    import httpx

    from core.backoff import Backoff

    url = f"{server.rstrip('/')}/api/v1/boxes/{box_id}/commands"
    backoff = Backoff(base_s=1.0, cap_s=60.0)
    async with httpx.AsyncClient(timeout=wait_s + 10.0, verify=verify,
                                 headers={"Authorization": f"Bearer {credential}"}) as client:
        while True:
            try:
                r = await client.get(url, params={"wait_s": int(wait_s)})
                r.raise_for_status()
                commands = r.json().get("commands", [])
                if not isinstance(commands, list):
                    raise ValueError("'commands' is not a list")
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                delay = backoff.next_delay()
                log.warning("fleet command poll failed (%s); again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            for command in commands:
                submit(json.dumps(command, separators=(",", ":")).encode())
