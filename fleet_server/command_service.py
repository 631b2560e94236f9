"""Sending commands to boxes: create, push, re-send, expire, and the HTTP boxes' long-poll.

    CommandService.send(request, by)  -> one BoxCommand per selected box, stored pending, then
                                         pushed at once on MQTT by this replica's bridge (if up)
    dispatch()  (leased job "command-dispatch", one replica, every second)
                                      -> open commands past their deadline closed as expired;
                                         open commands never sent, or sent `resend_after_s` ago
                                         without a result, (re-)published
    wait_for(box, wait_s)             -> an HTTP box's long-poll: its open commands now, or as
                                         soon as one is created on this replica, else after a
                                         store re-read every `poll_s` (commands created on other
                                         replicas arrive within it), or none after `wait_s`

Re-sends are safe: the box runs a command id at most once (agent.fleet_commands). A box whose
MQTT session is down gets its commands on the next re-send after it reconnects.

Cost of the long-poll: each waiting box is one open request and one indexed store read every
`poll_s` (default 5 s): 10,000 HTTP-only boxes are 2,000 reads a second across the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from anyio import to_thread

from core.fleet_command import new_command_id
from fleet_server.commands import BoxCommand, CommandRequest
from fleet_server.store.base import Store

__all__ = ["CommandService"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[bool]]
RESEND_AFTER_S = 10.0
POLL_S = 5.0
MAX_WAIT_S = 30


class CommandService:
    def __init__(self, store: Store, *, publish: Publish | None = None, clock: Callable[[], float] = time.time,
                 resend_after_s: float = RESEND_AFTER_S, poll_s: float = POLL_S) -> None:
        self.store = store
        self.publish = publish
        self.clock = clock
        self.resend_after_s = resend_after_s
        self.poll_s = poll_s
        self.expired = 0
        self._waiting: dict[str, asyncio.Event] = {}

    async def send(self, request: CommandRequest, by: str) -> list[BoxCommand]:
        """Store one command per selected box (UnknownBox: none stored), then push them."""
        boxes = list(request.box_ids) or await to_thread.run_sync(self._select, request)
        now = self.clock()
        commands = [BoxCommand(new_command_id(), box_id, request.device, request.command, dict(request.args),
                               f"fleet:{by}", now, now + request.deadline_s) for box_id in boxes]
        if commands:
            await to_thread.run_sync(self.store.create_commands, commands)
            for c in commands:
                event = self._waiting.get(c.box_id)
                if event is not None:
                    event.set()
            commands = await self._push(commands)
        log.info("%s sent %s on %s to %d box(es)", by, request.command, request.device, len(commands))
        return commands

    def _select(self, request: CommandRequest) -> list[str]:
        return [b.box_id for b in self.store.list_boxes()
                if (request.site is None or b.site == request.site) and (request.tag is None or request.tag in b.tags)]

    async def _push(self, commands: list[BoxCommand]) -> list[BoxCommand]:
        """Publish on MQTT; the ones the bridge took are marked sent (returned updated)."""
        if self.publish is None or not commands:
            return commands
        sent: set[str] = set()
        for c in commands:
            if await self.publish(c.box_id, c.wire().to_json()):
                sent.add(c.command_id)
        if sent:
            now = self.clock()
            await to_thread.run_sync(self.store.mark_sent, sorted(sent), now)
            commands = [replace(c, state="sent", sent_at=now, sends=c.sends + 1) if c.command_id in sent else c
                        for c in commands]
        return commands

    async def dispatch(self) -> None:
        """One round of the "command-dispatch" job: expire, then (re-)send what is due."""
        now = self.clock()
        expired = await to_thread.run_sync(self.store.expire_commands, now)
        if expired:
            self.expired += len(expired)
            log.info("%d command(s) expired without a result", len(expired))
        due = await to_thread.run_sync(self.store.commands_to_send, now, self.resend_after_s)
        await self._push(due)

    async def wait_for(self, box_id: str, wait_s: float) -> list[BoxCommand]:
        """The box's open commands, waiting up to `wait_s` for one; marked sent when handed out."""
        deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
        event = self._waiting.setdefault(box_id, asyncio.Event())
        try:
            while True:
                event.clear()
                found = await to_thread.run_sync(self.store.open_commands, box_id, self.clock())
                left = deadline - time.monotonic()
                if found or left <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, self.poll_s))
        finally:
            if self._waiting.get(box_id) is event:
                del self._waiting[box_id]
        if found:
            await to_thread.run_sync(self.store.mark_sent, [c.command_id for c in found], self.clock())
        return found
