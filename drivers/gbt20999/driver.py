"""GB/T 20999-2017 signal controller over TCP: queries, guarded centre commands, reports, heartbeats.

One TCP connection per controller. A reader task (owned by the driver, started in open(),
cancelled in close()) cuts the stream into frames and routes them: replies to the waiting request
(matched by sequence number), controller heartbeats (0x70) answered at once with 0x80, and
unsolicited reports (0x60) turned into EVENT readings for `on_report`.

Points: run_mode, current_plan, current_stage, det<n>_flow / det<n>_occupancy / det<n>_speed,
plan<p>_cycle / plan<p>_offset / plan<p>_coord_seq. Commands: set_plan {plan}, set_stage {stage},
set_mode {mode}; each refused unless the value is in the settings' allow-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.errors import CommandRefused, DeviceException, DeviceTimeout, DriverError, FrameError, LinkError
from core.reading import Quality, Reading, RecordClass
from drivers.gbt20999 import codec as g
from drivers.gbt20999.points import _POINTS, point_item
from drivers.gbt20999.settings import COMMANDS, GbtSettings

__all__ = ["GbtDriver", "point_item"]

_COMMANDS = {"set_plan": ("plan", g.ASSIGN_PLAN), "set_stage": ("stage", g.ASSIGN_STAGE),
             "set_mode": ("mode", g.ASSIGN_MODE)}


class GbtDriver:
    COMMANDS = COMMANDS  # the kind's commands, declared once in drivers/gbt20999/settings.py

    def __init__(
        self, settings: GbtSettings, *, on_report: Callable[[Reading], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.on_report = on_report
        self._clock = clock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[g.Frame]] = {}
        self._seq = 0
        self._lock = asyncio.Lock()
        self._link_error: str | None = None
        self.bad_frames = 0                 # frames that failed to decode or were not ours
        self.last_bad_frame: str | None = None
        self.last_heartbeat: float | None = None
        self.reports_received = 0

    # --- connection --------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            return
        s = self.settings
        try:
            self._reader, self._writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), s.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise LinkError(f"{self.name}: cannot connect to {s.host}:{s.port}: {exc!r}") from exc
        self._link_error = None
        self._tasks = [asyncio.create_task(self._read_loop(), name=f"gbt20999-read-{self.name}")]
        if s.heartbeat_s > 0:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name=f"gbt20999-heartbeat-{self.name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._fail_pending(LinkError(f"{self.name}: closed"))

    def _fail_pending(self, exc: DriverError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1
        return self._seq

    def _frame(self, ftype: g.FrameType, seq: int, items: tuple[g.DataItem, ...] = ()) -> bytes:
        s = self.settings
        return g.encode_frame(g.Frame(ftype, seq, items, centre=s.centre, controller=s.controller_id, road=s.road))

    def _send(self, data: bytes) -> None:
        if self._writer is None or self._link_error:
            raise LinkError(f"{self.name}: not connected ({self._link_error or 'not open'})")
        self._writer.write(data)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        splitter = g.FrameSplitter()
        try:
            while chunk := await self._reader.read(4096):
                for frame in splitter.feed(chunk):
                    self._dispatch(frame)
            self._link_error = "connection closed by the controller"
        except (OSError, ConnectionError) as exc:
            self._link_error = f"connection lost: {exc!r}"
        self._fail_pending(LinkError(f"{self.name}: {self._link_error}"))

    def _dispatch(self, frame: g.Frame | FrameError) -> None:
        s = self.settings
        if isinstance(frame, FrameError):
            self.bad_frames += 1
            self.last_bad_frame = str(frame)
            return
        if (frame.controller, frame.road) != (s.controller_id, s.road):
            self.bad_frames += 1
            self.last_bad_frame = f"frame from controller {frame.controller} road {frame.road}, not ours"
            return
        if frame.ftype is g.FrameType.HEARTBEAT:
            if self._writer is not None:
                self._writer.write(self._frame(g.FrameType.HEARTBEAT_REPLY, frame.seq))
        elif frame.ftype is g.FrameType.HEARTBEAT_REPLY:
            self.last_heartbeat = self._clock()
        elif frame.ftype is g.FrameType.REPORT:
            self.reports_received += 1
            self._report(frame)
        else:
            fut = self._pending.pop(frame.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)

    def _report(self, frame: g.Frame) -> None:
        if self.on_report is None:
            return
        names = {item: p for p, (item, _) in _POINTS.items()}
        ts = self._clock()
        for it in frame.items:
            point = names.get(it.item_id, f"item_{it.label()}")
            try:
                value = float(it.value())
            except FrameError as exc:
                self.on_report(Reading(self.name, point, None, "", ts, Quality.COMM_FAILURE, RecordClass.EVENT,
                                       str(exc)))
                continue
            text = g.MODES.get(int(value)) if it.item_id == g.RUN_MODE else None
            self.on_report(Reading(self.name, point, value, "", ts, cls=RecordClass.EVENT, text=text))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                self._send(self._frame(g.FrameType.HEARTBEAT, self._next_seq()))
            except LinkError:
                return

    async def _request(self, ftype: g.FrameType, items: tuple[g.DataItem, ...]) -> g.Frame:
        async with self._lock:
            seq = self._next_seq()
            fut: asyncio.Future[g.Frame] = asyncio.get_running_loop().create_future()
            errors_before = self.bad_frames
            self._send(self._frame(ftype, seq, items))  # synchronous: no reply can slip in before the next line
            self._pending[seq] = fut
            try:
                return await asyncio.wait_for(fut, self.settings.timeout_s)
            except asyncio.TimeoutError:
                self._pending.pop(seq, None)
                if self.bad_frames != errors_before:
                    raise FrameError(f"{self.name}: no valid reply; {self.last_bad_frame}") from None
                raise DeviceTimeout(f"{self.name}: no reply to seq {seq} within {self.settings.timeout_s}s") from None

    @staticmethod
    def _raise_error_reply(name: str, reply: g.Frame) -> None:
        code = reply.items[0].data[0] if reply.items and reply.items[0].data else 0x40
        what = ", ".join(it.label() for it in reply.items) or "frame"
        raise DeviceException(f"{name}: controller refused {what}: {g.ERRORS.get(code, 'unknown error')}", code)

    # --- Driver protocol ---------------------------------------------------------------------
    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        wanted = list(points) if points is not None else self.settings.default_points()
        try:
            specs = [point_item(p) for p in wanted]
        except ValueError as exc:
            raise CommandRefused(f"{self.name}: {exc}") from None
        values: dict[tuple[g.ItemId, int], g.DataItem] = {}
        for start in range(0, len(specs), 255):
            chunk = specs[start:start + 255]
            items = tuple(g.DataItem(i + 1, *item, element) for i, (item, element, _) in enumerate(chunk))
            reply = await self._request(g.FrameType.QUERY, items)
            if reply.ftype is g.FrameType.QUERY_ERROR:
                self._raise_error_reply(self.name, reply)
            if reply.ftype is not g.FrameType.QUERY_REPLY:
                raise FrameError(f"{self.name}: query answered with frame type 0x{reply.ftype:02X}")
            values.update({(it.item_id, it.element): it for it in reply.items})
        ts = self._clock()
        out = []
        for point, (item, element, unit) in zip(wanted, specs):
            it = values.get((item, element))
            if it is None:
                out.append(Reading(self.name, point, None, unit, ts, Quality.COMM_FAILURE, text="not in the reply"))
                continue
            try:
                value = it.value()
            except FrameError as exc:
                out.append(Reading(self.name, point, None, unit, ts, Quality.COMM_FAILURE, text=str(exc)))
                continue
            text = g.MODES.get(value, f"mode 0x{value:02X}") if item == g.RUN_MODE else None
            out.append(Reading(self.name, point, float(value), unit, ts, text=text))
        return out

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command not in _COMMANDS:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(_COMMANDS)}")
        key, item = _COMMANDS[command]
        value = args.get(key)
        allowed = {"plan": self.settings.allowed_plans, "stage": self.settings.allowed_stages,
                   "mode": self.settings.allowed_modes}[key]
        if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
            raise CommandRefused(f"{self.name}: {command} {key}={value!r} is not allowed (allowed: {sorted(allowed)})")
        reply = await self._request(g.FrameType.SET, (g.item_with_value(1, item, 0, value),))
        if reply.ftype in (g.FrameType.SET_ERROR, g.FrameType.QUERY_ERROR):
            self._raise_error_reply(self.name, reply)
        if reply.ftype is not g.FrameType.SET_REPLY:
            raise FrameError(f"{self.name}: set answered with frame type 0x{reply.ftype:02X}")
