"""A hand-written Modbus slave for hardware-in-the-loop tests, with the faults real buses show.

pymodbus's own server cannot stay silent for an absent unit, answer late, or send garbage, so
this one is written from the spec: functions 03, 04, 06 and 16 with exception responses 01
(illegal function), 02 (illegal address) and 03 (illegal value).

    SimSlave        one unit: holding/input register dicts (served live), an optional refresh()
                    called before every read, and a switchable fault. Two traits of some
                    third-party slaves seen in the field: `deaf_s` (after a frame addressed to
                    another unit it ignores everything for that long; on RTU only) and `unmapped`
                    (reads of registers it does not have answer this value instead of exception 02)
    TcpSlaveServer  Modbus TCP (MBAP) on a port; several connections; several units (a gateway:
                    an unknown unit gets exception 0x0B, as a gateway answers)
    RtuBus          Modbus RTU on a pty with the real wire timing and line checks
                    (drivers.modbus.sim_rtu, re-exported here)
    ControlServer   JSON lines on TCP: {"unit": 1, "fault": "silent"} -> {"ok": true}
    serving()       starts any of the above and yields {"tcp_port", "rtu_path", "control_port"}

Faults (SimSlave.set_fault or the control server): silent, delay (delay_s=...), exception
(code=...), garbage, crc_error (on TCP: a reply whose byte count is wrong), wrong_unit (as_unit=...),
disconnect (TCP drops the connection; on RTU it is silent), noise (noise_bytes=...: random bytes on
the line between the request and the reply, each burst set apart by t3.5 of silence; on TCP they
precede the reply in the stream). None clears the fault; clearing "disconnect" is the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.modbus.sim_rtu import RtuBus, crc16
from drivers.modbus.sim_rtu import garbage as _garbage

__all__ = ["FAULTS", "ControlServer", "Fault", "RtuBus", "SimSlave", "TcpSlaveServer", "crc16", "serving", "set_fault"]
log = logging.getLogger(__name__)

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE, GATEWAY_NO_RESPONSE = 1, 2, 3, 4, 0x0B
FAULTS = ("silent", "delay", "exception", "garbage", "crc_error", "wrong_unit", "disconnect", "noise")
_FAULT_PARAMS = ("delay_s", "code", "as_unit", "noise_bytes")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    delay_s: float = 0.0
    code: int = DEVICE_FAILURE
    as_unit: int | None = None
    noise_bytes: int = 8

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {', '.join(FAULTS)} or null")
        if not isinstance(self.delay_s, (int, float)) or not math.isfinite(self.delay_s) or not 0 <= self.delay_s <= 60:
            raise ValueError(f"delay_s must be 0..60 seconds, got {self.delay_s!r}")
        if self.kind == "delay" and self.delay_s <= 0:
            raise ValueError("fault 'delay' needs delay_s > 0")
        if not isinstance(self.code, int) or not 1 <= self.code <= 0x7F:
            raise ValueError(f"exception code must be 1..127, got {self.code!r}")
        if self.as_unit is not None and (not isinstance(self.as_unit, int) or not 0 <= self.as_unit <= 255):
            raise ValueError(f"as_unit must be 0..255, got {self.as_unit!r}")
        if not isinstance(self.noise_bytes, int) or not 1 <= self.noise_bytes <= 256:
            raise ValueError(f"noise_bytes must be 1..256, got {self.noise_bytes!r}")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a slave sends back: a PDU from a unit, possibly damaged on the way."""

    pdu: bytes
    unit: int
    damage: str | None = None  # None, "garbage", "crc_error", "disconnect" or "noise"
    noise: int = 0             # bytes of line noise before the reply


class SimSlave:
    """One Modbus unit. The register dicts are served live: mutate them to change what is read."""

    def __init__(
        self,
        unit: int,
        holding: dict[int, int] | None = None,
        input: dict[int, int] | None = None,
        refresh: Callable[[], None] | None = None,
        *,
        deaf_s: float = 0.0,
        unmapped: int | None = None,
    ) -> None:
        # 1..247 are RTU addresses; some devices ship answering 255 (outside the range, but real)
        if not isinstance(unit, int) or isinstance(unit, bool) or not 1 <= unit <= 255:
            raise ValueError(f"slave unit must be 1..255, got {unit!r}")
        if not isinstance(deaf_s, (int, float)) or isinstance(deaf_s, bool) or not 0 <= deaf_s <= 10:
            raise ValueError(f"deaf_s must be 0..10 seconds, got {deaf_s!r}")
        if unmapped is not None and (not isinstance(unmapped, int) or isinstance(unmapped, bool)
                                     or not 0 <= unmapped <= 0xFFFF):
            raise ValueError(f"unmapped must be None (exception 02) or a register value 0..65535, got {unmapped!r}")
        self.deaf_s = float(deaf_s)
        self.unmapped = unmapped
        self._deaf_until = 0.0
        self.ignored = 0  # requests it did not hear because it was deaf
        self.unit = unit
        self.holding = holding if holding is not None else {}
        self.input = input if input is not None else {}
        self.refresh = refresh
        self.fault: Fault | None = None
        self.requests = 0
        self.writes = 0  # successful fc 06/16 requests: a refresh hook may react to them
        self.log: deque[tuple[int, int, int]] = deque(maxlen=256)  # (function, address, count)

    def set_fault(self, fault: str | None, **params: Any) -> None:
        if fault is None:
            if params:
                raise ValueError(f"clearing a fault takes no parameters, got {sorted(params)}")
            self.fault = None
            return
        unknown = set(params) - set(_FAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown fault parameter(s) {sorted(unknown)}; expected {', '.join(_FAULT_PARAMS)}")
        self.fault = Fault(fault, **params)

    def overhear(self, unit: int, at: float) -> None:
        """A frame from or to `unit` ended on the line at `at` (monotonic): one for another unit
        makes a slave with `deaf_s` deaf until at + deaf_s. Broadcasts (unit 0) do not count."""
        if self.deaf_s and unit not in (0, self.unit):
            self._deaf_until = max(self._deaf_until, at + self.deaf_s)

    def deaf(self, at: float) -> bool:
        """Would a request starting at `at` go unheard?"""
        return at < self._deaf_until

    def handle(self, pdu: bytes) -> bytes:
        """Execute one request PDU and return the response PDU (normal or exception)."""
        fc = pdu[0]

        def fail(code: int) -> bytes:
            return bytes([(fc | 0x80) & 0xFF, code])

        try:
            if fc not in (3, 4, 6, 16):
                return fail(ILLEGAL_FUNCTION)
            if len(pdu) < 5 or (fc != 16 and len(pdu) != 5):
                return fail(ILLEGAL_VALUE)
            address, count = struct.unpack(">HH", pdu[1:5])  # for 06 "count" is the value
            self.log.append((fc, address, 1 if fc == 6 else count))
            if fc == 6:
                if address not in self.holding:
                    return fail(ILLEGAL_ADDRESS)
                self.holding[address] = count
                self.writes += 1
                return pdu
            if fc == 16:
                if not 1 <= count <= 123 or len(pdu) != 6 + 2 * count or pdu[5] != 2 * count:
                    return fail(ILLEGAL_VALUE)
                if any(a not in self.holding for a in range(address, address + count)):
                    return fail(ILLEGAL_ADDRESS)
                for i in range(count):
                    self.holding[address + i] = int.from_bytes(pdu[6 + 2 * i:8 + 2 * i], "big")
                self.writes += 1
                return pdu[:5]
            if not 1 <= count <= 125:
                return fail(ILLEGAL_VALUE)
            if self.refresh is not None:
                self.refresh()
            table = self.holding if fc == 3 else self.input
            if self.unmapped is None and any(a not in table for a in range(address, address + count)):
                return fail(ILLEGAL_ADDRESS)
            fill = self.unmapped or 0  # only used when unmapped is set (checked above)
            return bytes([fc, 2 * count]) + b"".join(table.get(a, fill).to_bytes(2, "big")
                                                     for a in range(address, address + count))
        except Exception:  # a broken refresh or register value: the device reports a failure
            log.exception("sim slave %d failed on function %d", self.unit, fc)
            return fail(DEVICE_FAILURE)

    async def answer(self, pdu: bytes) -> Answer | None:
        """Apply the current fault around handle(); None means stay silent."""
        self.requests += 1
        fault = self.fault
        if fault is None:
            return Answer(self.handle(pdu), self.unit)
        if fault.kind in ("silent", "disconnect"):  # the request never executes
            return Answer(b"", self.unit, "disconnect") if fault.kind == "disconnect" else None
        if fault.kind == "exception":
            return Answer(bytes([(pdu[0] | 0x80) & 0xFF, fault.code]), self.unit)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
        unit = self.unit
        if fault.kind == "wrong_unit":
            unit = fault.as_unit if fault.as_unit is not None else self.unit % 247 + 1
        damage = fault.kind if fault.kind in ("garbage", "crc_error", "noise") else None
        return Answer(self.handle(pdu), unit, damage, fault.noise_bytes if fault.kind == "noise" else 0)


class _StreamServer:
    """A TCP listener over the slaves; tracks its connections so close() leaves no stray tasks."""

    def __init__(self, slaves: Mapping[int, SimSlave], host: str = "127.0.0.1", port: int = 0) -> None:
        self.slaves, self.host, self.port = slaves, host, port
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._conns.values():
            writer.close()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=2.0)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self._conns[task]
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class TcpSlaveServer(_StreamServer):
    """Modbus TCP: MBAP framing, one request at a time per connection, any number of connections."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            if pid != 0 or not 2 <= length <= 254:
                return  # not Modbus: drop the connection, as devices do
            pdu = await reader.readexactly(length - 1)
            slave = self.slaves.get(unit)
            if slave is None:
                ans: Answer | None = Answer(bytes([(pdu[0] | 0x80) & 0xFF, GATEWAY_NO_RESPONSE]), unit)
            else:
                ans = await slave.answer(pdu)
            if ans is None:
                continue
            if ans.damage == "disconnect":
                return
            out = ans.pdu
            if ans.damage == "crc_error" and len(out) > 2:
                out = out[:1] + bytes([(out[1] + 7) & 0xFF]) + out[2:]  # a byte count that lies
            adu = struct.pack(">HHHB", tid, 0, len(out) + 1, ans.unit) + out
            if ans.damage == "noise":
                adu = _garbage(ans.noise)[:ans.noise] + adu
            writer.write(_garbage(len(adu)) if ans.damage == "garbage" else adu)
            await writer.drain()


class ControlServer(_StreamServer):
    """Switch faults from another process: JSON lines {"unit": 1, "fault": "delay", "delay_s": 1}."""

    def apply(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict) or "unit" not in msg or "fault" not in msg:
                raise ValueError('expected {"unit": N, "fault": "<name>" | null, ...params}')
            params = {k: v for k, v in msg.items() if k not in ("unit", "fault")}
            slave = self.slaves.get(msg["unit"])
            if slave is None:
                raise ValueError(f"no slave with unit {msg['unit']!r}; units: {sorted(self.slaves)}")
            slave.set_fault(msg["fault"], **params)
            return {"ok": True}
        except (ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc)}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(json.dumps(self.apply(line)).encode() + b"\n")
            await writer.drain()


async def set_fault(control_port: int, unit: int, fault: str | None, *, host: str = "127.0.0.1", **params: Any) -> None:
    """Switch a fault in a simulator running anywhere; raises RuntimeError if it refuses."""
    reader, writer = await asyncio.open_connection(host, control_port)
    try:
        writer.write(json.dumps({"unit": unit, "fault": fault, **params}).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5.0) or b"{}")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not reply.get("ok"):
        raise RuntimeError(f"simulator refused fault {fault!r} for unit {unit}: {reply.get('error')}")


@contextlib.asynccontextmanager
async def serving(
    slaves: Sequence[SimSlave], *, tcp_port: int | None = None, rtu: bool = False,
    control_port: int | None = None, baudrate: int = 19200, parity: str = "N", stopbits: int = 1,
    bytesize: int = 8, host: str = "127.0.0.1", turnaround_s: float = 0.003, strict_gaps: bool = False,
    buses: list[Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Serve the slaves over TCP and/or an RTU pty (port 0 = any free port); yields where.

    `buses`, when given, receives the server objects (RtuBus, TcpSlaveServer...) for inspection.
    """
    by_unit = {s.unit: s for s in slaves}
    if len(by_unit) != len(slaves):
        raise ValueError(f"slave units must be unique, got {[s.unit for s in slaves]}")
    wanted: list[tuple[str, TcpSlaveServer | RtuBus | ControlServer]] = []
    if tcp_port is not None:
        wanted.append(("tcp_port", TcpSlaveServer(by_unit, host, tcp_port)))
    if rtu:
        wanted.append(("rtu_path", RtuBus(by_unit, baudrate=baudrate, parity=parity, stopbits=stopbits,
                                          bytesize=bytesize, turnaround_s=turnaround_s, strict_gaps=strict_gaps)))
    if control_port is not None:
        wanted.append(("control_port", ControlServer(by_unit, host, control_port)))
    info: dict[str, Any] = {"tcp_port": None, "rtu_path": None, "control_port": None}
    started: list[TcpSlaveServer | RtuBus | ControlServer] = []
    try:
        for key, server in wanted:
            info[key] = await server.start()
            started.append(server)
            if buses is not None:
                buses.append(server)
        yield info
    finally:
        for server in reversed(started):
            await server.close()
