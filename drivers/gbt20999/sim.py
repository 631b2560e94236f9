"""A GB/T 20999-2017 signal controller on TCP: stages cycling in real time, plans, detector data.

The controller runs the current plan's stage sequence against the clock: the stage at time t is
found from ((t - offset) mod cycle). The centre can assign a plan (takes effect at once), a stage
(held under centre-manual control until a mode is assigned) or a mode. Stage changes are reported
unsolicited (0x60) to every connected centre, and heartbeats (0x70) are sent if `heartbeat_s` is
set; the centre's own heartbeats are answered with 0x80.

Detector statistics are counted per `period_s` window from a demand in veh/h: flow with Poisson-
like noise, occupancy from flow x mean occupancy time, speed falling with occupancy.
`detector_values(det, t)` gives what the controller would report, for tests to compare with.

Faults (`sim.fault`): SILENCE (read and drop), BAD_CRC (replies with a broken CRC), GARBAGE.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import FrameError
from drivers.gbt20999 import codec as g

__all__ = ["Plan", "GbtControllerSim", "Fault"]


class Fault(enum.Enum):
    NONE = "none"
    SILENCE = "silence"
    BAD_CRC = "bad_crc"
    GARBAGE = "garbage"


@dataclass(frozen=True, slots=True)
class Plan:
    number: int
    offset_s: int
    coord_seq: int
    stages: tuple[tuple[int, float], ...]   # (stage number, duration s), run in this order

    @property
    def cycle_s(self) -> float:
        return sum(d for _, d in self.stages)


DEFAULT_PLANS = (
    Plan(1, 0, 1, ((1, 40.0), (2, 30.0), (3, 30.0), (4, 20.0))),
    Plan(2, 10, 1, ((1, 30.0), (2, 25.0), (3, 25.0), (4, 20.0))),
    Plan(3, 36, 2, ((1, 50.0), (2, 40.0), (3, 30.0))),
)


class GbtControllerSim:
    def __init__(
        self,
        *,
        controller: int = 1,
        road: int = 1,
        plans: tuple[Plan, ...] = DEFAULT_PLANS,
        plan: int = 1,
        mode: int = 0x21,
        demand_vph: dict[int, float] | None = None,
        period_s: float = 60.0,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self.controller, self.road = controller, road
        self.plans = {p.number: p for p in plans}
        if plan not in self.plans:
            raise ValueError(f"plan {plan} is not among {sorted(self.plans)}")
        self.plan, self.mode = plan, mode
        self.held_stage: int | None = None
        self.demand_vph = demand_vph or {1: 720.0, 2: 360.0, 3: 900.0, 4: 120.0}
        self.period_s = period_s
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.seed = seed
        self.fault = Fault.NONE
        self.frames_in: list[g.Frame] = []
        self.bytes_in = bytearray()       # everything the centre sent, as it came off the wire
        self.heartbeat_replies = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._seq = 0
        self.port = 0

    # --- traffic model -------------------------------------------------------------------------
    def stage_at(self, t: float) -> int:
        if self.held_stage is not None:
            return self.held_stage
        p = self.plans[self.plan]
        pos = (t - p.offset_s) % p.cycle_s
        for stage, duration in p.stages:
            if pos < duration:
                return stage
            pos -= duration
        return p.stages[-1][0]

    def detector_values(self, det: int, t: float) -> tuple[int, int, int]:
        """(flow veh, occupancy %, speed km/h) of the last complete statistics period."""
        period = int(t // self.period_s) - 1
        rng = random.Random(hash((self.seed, det, period)))
        mean = self.demand_vph.get(det, 0.0) * self.period_s / 3600.0
        flow = max(0, int(round(rng.gauss(mean, mean ** 0.5 if mean else 0.0))))
        occupancy = min(100, int(round(flow * 2.2 / self.period_s * 100)))
        speed = max(5, int(round(55 - 0.45 * occupancy + rng.uniform(-3, 3)))) if flow else 0
        return flow, occupancy, speed

    # --- server -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> GbtControllerSim:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()  # handlers see EOF and end on their own
        if self._conns:
            _, pending = await asyncio.wait(self._conns, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> GbtControllerSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_connections(self) -> None:
        for w in list(self._writers):
            w.close()

    def _frame(self, ftype: g.FrameType, seq: int, items: tuple[g.DataItem, ...] = (), centre: int = 1) -> bytes:
        raw = g.encode_frame(g.Frame(ftype, seq, items, centre=centre, controller=self.controller, road=self.road))
        if self.fault is Fault.BAD_CRC:
            raw = raw[:-2] + bytes([raw[-2] ^ 0x01]) + raw[-1:]
            if raw[-2] in (0x7E, 0x7D, 0x5C):
                raw = raw[:-2] + bytes([0x01]) + raw[-1:]
        elif self.fault is Fault.GARBAGE:
            raw = bytes(random.Random(seq).randrange(256) for _ in range(len(raw)))
        return raw

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        side = asyncio.create_task(self._unsolicited(writer), name="gbt-sim-unsolicited")
        splitter = g.FrameSplitter()
        try:
            while chunk := await reader.read(4096):
                self.bytes_in += chunk
                for frame in splitter.feed(chunk):
                    if isinstance(frame, FrameError) or self.fault is Fault.SILENCE:
                        continue  # a real controller drops what it cannot decode
                    self.frames_in.append(frame)
                    reply = self._answer(frame)
                    if reply:
                        writer.write(reply)
        except (OSError, ConnectionError):
            pass
        finally:
            side.cancel()
            await asyncio.gather(side, return_exceptions=True)
            self._writers.discard(writer)
            self._conns.discard(task)
            writer.close()

    async def _unsolicited(self, writer: asyncio.StreamWriter) -> None:
        """Report stage changes as they happen; send heartbeats if configured."""
        last_stage = self.stage_at(self.clock())
        next_beat = time.monotonic() + (self.heartbeat_s or 0)
        while True:
            await asyncio.sleep(0.02)
            stage = self.stage_at(self.clock())
            if stage != last_stage:
                last_stage = stage
                item = g.item_with_value(1, g.CURRENT_STAGE, 0, stage)
                writer.write(self._frame(g.FrameType.REPORT, self._next_seq(), (item,)))
            if self.heartbeat_s and time.monotonic() >= next_beat:
                next_beat += self.heartbeat_s
                writer.write(self._frame(g.FrameType.HEARTBEAT, self._next_seq()))

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1
        return self._seq

    # --- protocol ------------------------------------------------------------------------------
    def _answer(self, frame: g.Frame) -> bytes | None:
        if (frame.controller, frame.road) != (self.controller, self.road):
            return None
        if frame.ftype is g.FrameType.HEARTBEAT:
            return self._frame(g.FrameType.HEARTBEAT_REPLY, frame.seq, centre=frame.centre)
        if frame.ftype is g.FrameType.HEARTBEAT_REPLY:
            self.heartbeat_replies += 1
            return None
        if frame.ftype is g.FrameType.QUERY:
            return self._query(frame)
        if frame.ftype is g.FrameType.SET:
            return self._set(frame)
        return None

    def _read_item(self, it: g.DataItem, t: float) -> int | None:
        plan = self.plans.get(it.element)
        det = it.element if it.element in self.demand_vph else None
        table: dict[g.ItemId, Callable[[], int | None]] = {
            g.RUN_MODE: lambda: self.mode,
            g.CURRENT_PLAN: lambda: self.plan,
            g.CURRENT_STAGE: lambda: self.stage_at(t),
            g.PLAN_CYCLE: lambda: int(round(plan.cycle_s)) if plan else None,
            g.PLAN_OFFSET: lambda: plan.offset_s if plan else None,
            g.PLAN_COORD_SEQ: lambda: plan.coord_seq if plan else None,
            g.DETECTOR_FLOW: lambda: self.detector_values(det, t)[0] if det else None,
            g.DETECTOR_OCCUPANCY: lambda: self.detector_values(det, t)[1] if det else None,
            g.DETECTOR_SPEED: lambda: self.detector_values(det, t)[2] if det else None,
        }
        getter = table.get(it.item_id)
        return getter() if getter else None

    def _query(self, frame: g.Frame) -> bytes:
        t = self.clock()
        out = []
        for it in frame.items:
            value = self._read_item(it, t)
            if value is None:
                error = g.DataItem(it.index, it.cls, it.obj, it.attr, it.element, bytes([0x30]))
                return self._frame(g.FrameType.QUERY_ERROR, frame.seq, (error,), frame.centre)
            out.append(g.item_with_value(it.index, it.item_id, it.element, value))
        return self._frame(g.FrameType.QUERY_REPLY, frame.seq, tuple(out), frame.centre)

    def _set(self, frame: g.Frame) -> bytes:
        for it in frame.items:
            code = self._apply(it)
            if code:
                error = g.DataItem(it.index, it.cls, it.obj, it.attr, it.element, bytes([code]))
                return self._frame(g.FrameType.SET_ERROR, frame.seq, (error,), frame.centre)
        return self._frame(g.FrameType.SET_REPLY, frame.seq, frame.items, frame.centre)

    def _apply(self, it: g.DataItem) -> int:
        """Carry out one set item; 0 on success, else a GB/T error code."""
        if it.item_id not in (g.ASSIGN_PLAN, g.ASSIGN_STAGE, g.ASSIGN_MODE):
            return 0x20 if it.item_id in g.ITEM_SIZES else 0x30
        if len(it.data) != 1:
            return 0x11
        value = it.data[0]
        if it.item_id == g.ASSIGN_PLAN:
            if value not in self.plans:
                return 0x10
            self.plan = value
        elif it.item_id == g.ASSIGN_STAGE:
            if value not in {s for s, _ in self.plans[self.plan].stages}:
                return 0x10
            self.held_stage, self.mode = value, 0x15
        else:
            if value not in g.MODES:
                return 0x10
            self.mode = value
            if value != 0x15:
                self.held_stage = None
        return 0
