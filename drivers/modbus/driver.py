"""Modbus RTU/TCP driver on pymodbus 3.16.1 (pinned): the one place pymodbus errors are mapped.

    ModbusLink    one pymodbus async client for one bus (an RS-485 line or a TCP connection)
    ModbusDevice  one unit on a link, described by a Profile; implements drivers.base.Driver

pymodbus outcome                                   -> our error
  no reply within the timeout                      -> DeviceTimeout
  exception response (function | 0x80, code)       -> DeviceException(code)
  bytes arrived but no acceptable frame (bad CRC,
  garbage, reply from another unit, wrong length)  -> FrameError
  port cannot be opened, connection refused/lost   -> LinkError

pymodbus facts this relies on (3.16.1): retries=0 makes one attempt; every request starts with an
empty receive buffer (TransactionManager.execute resets it), so bytes left over from a broken
reply cannot glue onto the next frame; an RTU reply with a bad CRC or from another unit is dropped
silently (the request then times out), which is why the link watches the received bytes through
the public `trace_packet` hook to tell garbage from silence. A slow RTU reply arriving after the
timeout would be taken for the answer to the next request (RTU has no transaction id), so after
any failure on a serial link the next request waits until the line has been quiet for
`recovery_s` (default: the timeout) before a request to the same unit and two t3.5 gaps before
another unit (see _gap_recovery_s), like libmodbus's error recovery; on TCP the transaction id
identifies late replies, which are ignored. A TCP reply pymodbus cannot decode makes it drop the
connection (asyncio logs "protocol.data_received() call failed"): that is a FrameError here and the
next call reconnects. pymodbus's own reconnect
(reconnect_delay) and its "close after N silent requests" rule are switched off: the link
reconnects on the next call, the scheduler owns retry, backoff and quarantine.

Opening: a link opens itself on its first request (and reopens after a lost connection), so the
scheduler's backoff also paces reconnects; open() is there to fail fast at start-up. close() is
final until open() is called again. One link is shared by all devices on a bus and belongs to
whoever created it; a device opens/closes it only when constructed with owns_link=True.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from core.errors import CommandRefused, ConfigError, DeviceException, DeviceTimeout, DriverError, FrameError, LinkError
from core.reading import Quality, Reading
from drivers.base import BusInfo
from drivers.modbus.codec import MAX_READ_REGISTERS, ReadBlock, decode_point, plan_reads
from drivers.modbus.profile import LineDefaults, PointSpec, Profile
from drivers.modbus.timing import LineTiming

__all__ = ["EXCEPTION_NAMES", "ModbusDevice", "ModbusLink"]

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error",
    0x0A: "gateway path unavailable", 0x0B: "gateway target device failed to respond",
}
MAX_WRITE_REGISTERS = 123  # function 16 protocol limit
_NEVER = 1 << 30  # "never close after silent requests"


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _check_values(values: Any, address: int) -> list[int]:
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= MAX_WRITE_REGISTERS:
        raise ValueError(f"values must be a list of 1..{MAX_WRITE_REGISTERS} registers, got {values!r:.80}")
    for v in values:
        _check_int("each register value", v, 0, 0xFFFF)
    _check_int("address + number of values", address + len(values), 1, 0x10000)
    return list(values)


class ModbusLink:
    """One bus: an RS-485 line (RTU on a serial port) or a Modbus TCP connection.

    Requests are serialised with a lock (one master, one request on the wire at a time).
    """

    def __init__(
        self, *, serial_port: str | None = None, host: str | None = None, port: int = 502,
        line: LineDefaults | None = None, timeout_s: float = 0.2, recovery_s: float | None = None,
    ) -> None:
        if (serial_port is None) == (host is None):
            raise ValueError("give exactly one of serial_port (RTU) or host (TCP)")
        if serial_port is not None and (not isinstance(serial_port, str) or not serial_port):
            raise ValueError(f"serial_port must be a device path, got {serial_port!r}")
        if host is not None and (not isinstance(host, str) or not host):
            raise ValueError(f"host must be a host name or address, got {host!r}")
        _check_int("port", port, 1, 65535)
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 30:
            raise ValueError(f"timeout_s must be 0 < seconds <= 30, got {timeout_s!r}")
        if recovery_s is not None and (not isinstance(recovery_s, (int, float)) or not 0 <= recovery_s <= 30):
            raise ValueError(f"recovery_s must be 0..30 seconds, got {recovery_s!r}")
        self.serial_port, self.host, self.port = serial_port, host, port
        self.line = line if line is not None else LineDefaults()
        self.timeout_s = float(timeout_s)
        self.recovery_s = self.timeout_s if recovery_s is None else float(recovery_s)
        self.switch_recovery_s = min(self.recovery_s, self._gap_recovery_s())
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._closed = False  # close() was called: no more lazy opening
        self._lock = asyncio.Lock()
        self._tx = b""                 # the request frame on the wire
        self._rx: list[bytes] = []     # receive-buffer snapshots during the current request
        self._last_rx = 0.0            # monotonic time of the last byte received
        self._dirty_since: float | None = None  # set after a failed serial request
        self._last_unit: int | None = None      # the unit of the last request sent

    def _gap_recovery_s(self) -> float:
        """The quiet wait before a request to ANOTHER unit after a failure: two t3.5 gaps (>= 5 ms).

        Only a request to the same unit could take a late reply for its own answer (RTU replies
        carry no transaction id), so only that one waits the full `recovery_s`; a late reply
        landing in another unit's exchange is caught as a frame from the wrong unit. Waiting a
        whole timeout before every unit would make one silent slave cost the bus twice its
        timeout per cycle (bench/bus.py measured 295 ms for a 200 ms timeout)."""
        if self.serial_port is None:
            return self.recovery_s
        return max(2 * LineTiming.of(self.line).t35_s, 0.005)

    @classmethod
    def rtu(
        cls, path: str, line: LineDefaults | None = None, *, baudrate: int | None = None,
        parity: str | None = None, stopbits: int | None = None, bytesize: int | None = None,
        timeout_s: float = 0.2, recovery_s: float | None = None,
    ) -> ModbusLink:
        """An RTU bus; settings given one by one override `line` (default: 19200 8E1)."""
        base = line if line is not None else LineDefaults()
        merged = LineDefaults(
            baudrate=base.baudrate if baudrate is None else baudrate,
            parity=base.parity if parity is None else parity,
            stopbits=base.stopbits if stopbits is None else stopbits,
            bytesize=base.bytesize if bytesize is None else bytesize,
        )
        return cls(serial_port=path, line=merged, timeout_s=timeout_s, recovery_s=recovery_s)

    @classmethod
    def tcp(cls, host: str, port: int = 502, *, timeout_s: float = 0.2) -> ModbusLink:
        return cls(host=host, port=port, timeout_s=timeout_s)

    @property
    def is_rtu(self) -> bool:
        return self.serial_port is not None

    def __str__(self) -> str:
        if self.serial_port is not None:
            ln = self.line
            return f"modbus rtu {self.serial_port} {ln.baudrate} {ln.bytesize}{ln.parity}{ln.stopbits}"
        return f"modbus tcp {self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.connected

    async def __aenter__(self) -> ModbusLink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._tx = bytes(data)
        elif data:
            self._rx.append(bytes(data))  # pymodbus passes its receive buffer as it grows
            del self._rx[:-16]
            self._last_rx = time.monotonic()
        return data

    def _make_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        client: AsyncModbusSerialClient | AsyncModbusTcpClient
        if self.serial_port is not None:
            ln = self.line
            client = AsyncModbusSerialClient(
                self.serial_port, framer=FramerType.RTU, baudrate=ln.baudrate, parity=ln.parity,
                stopbits=ln.stopbits, bytesize=ln.bytesize, timeout=self.timeout_s, retries=0,
                reconnect_delay=0, trace_packet=self._trace,
            )
        else:
            assert self.host is not None
            client = AsyncModbusTcpClient(
                self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0,
                trace_packet=self._trace,
            )
        client.set_max_no_responses(_NEVER)
        return client

    async def open(self) -> None:
        """Open the port / connect now. Raises LinkError."""
        if self._client is None:
            self._client = self._make_client()
        self._closed = False
        await self._connect(self._client)

    async def _connect(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient) -> None:
        if client.connected:
            return
        try:
            ok = await client.connect()
        except (OSError, ValueError) as exc:
            self._discard(client)
            raise LinkError(f"cannot open {self}: {exc}") from exc
        if not ok:
            self._discard(client)  # a half-open port would stay locked against the next try
            if self.serial_port is not None and "://" not in self.serial_port and not os.path.exists(self.serial_port):
                raise LinkError(f"cannot open {self}: no such serial port")
            raise LinkError(f"cannot open {self}: connection refused, timed out or port busy")
        self._dirty_since = None

    def _discard(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient) -> None:
        with contextlib.suppress(OSError):
            client.close()
        if self._client is client:
            self._client = None

    async def close(self) -> None:
        """Close the port / connection. Never raises."""
        self._closed = True
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()

    async def _ready(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._closed:
            raise LinkError(f"{self} is closed")
        if self._client is None:
            self._client = self._make_client()
        await self._connect(self._client)  # first use, or a transparent reconnect after a loss
        return self._client

    async def _settle(self, unit: int) -> None:
        """After a failure on a serial line, wait for silence so a late reply cannot be mistaken."""
        if self._dirty_since is None or not self.is_rtu:
            return
        wait = self.recovery_s if unit == self._last_unit else self.switch_recovery_s
        give_up = time.monotonic() + 5 * wait
        while (now := time.monotonic()) < give_up:
            quiet_at = max(self._last_rx, self._dirty_since) + wait
            if now >= quiet_at:
                break
            await asyncio.sleep(quiet_at - now)
        self._dirty_since = None

    def _diagnose(self, unit: int) -> str | None:
        """Name what arrived instead of a usable reply; None if it was only late replies (TCP)."""
        if self.is_rtu:
            rx = self._rx[-1]
            if len(rx) >= 4 and FramerRTU.check_CRC(rx[:-2], int.from_bytes(rx[-2:], "big")):
                return f"a frame from unit {rx[0]}" if rx[0] != unit else "a frame that does not fit the request"
            return "bad CRC or garbage"
        for snapshot in self._rx:  # MBAP frames; the transaction id tells ours from late ones
            pos = 0
            while pos + 7 <= len(snapshot) and snapshot[pos + 2:pos + 4] == b"\0\0":
                end = pos + 6 + int.from_bytes(snapshot[pos + 4:pos + 6], "big")
                if end <= len(snapshot) and snapshot[pos:pos + 2] == self._tx[:2]:
                    other = snapshot[pos + 6]
                    return f"a reply from unit {other}" if other != unit else "a malformed reply"
                pos = end
        last = self._rx[-1]
        pos = 0
        while pos + 7 <= len(last) and last[pos + 2:pos + 4] == b"\0\0":
            pos += 6 + int.from_bytes(last[pos + 4:pos + 6], "big")
        return None if pos == len(last) else "garbage"

    async def _execute(
        self, what: str, unit: int, function: int, call: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        client = self._client
        assert client is not None
        self._rx = []
        self._last_unit = unit
        try:
            response = await call()
        except asyncio.CancelledError:
            self._dirty_since = time.monotonic()  # a reply may still be on its way
            raise
        except ModbusIOException as exc:
            self._dirty_since = time.monotonic()
            junk = self._diagnose(unit) if self._rx else None
            if junk is not None:
                raise FrameError(f"{what}: no valid reply, got {junk}: {self._rx[-1][:32].hex(' ')}") from exc
            if not client.connected:
                raise LinkError(f"{what}: connection lost") from exc
            raise DeviceTimeout(f"{what}: no reply within {self.timeout_s:g} s") from exc
        except ConnectionException as exc:
            raise LinkError(f"{what}: {exc}") from exc
        except ModbusException as exc:
            self._dirty_since = time.monotonic()
            raise FrameError(f"{what}: {exc}") from exc
        except OSError as exc:
            raise LinkError(f"{what}: {exc}") from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceException(f"{what}: {EXCEPTION_NAMES.get(code, 'unknown exception')}", code)
        if response.function_code != function:
            self._dirty_since = time.monotonic()
            raise FrameError(f"{what}: reply has function {response.function_code}, expected {function}")
        return response

    async def read_registers(self, function: int, address: int, count: int, unit: int) -> list[int]:
        """Read `count` registers with function 3 (holding) or 4 (input)."""
        if function not in (3, 4) or isinstance(function, bool):
            raise ValueError(f"function must be 3 (holding) or 4 (input registers), got {function!r}")
        _check_int("address", address, 0, 0xFFFF)
        _check_int("count", count, 1, MAX_READ_REGISTERS)
        _check_int("address + count", address + count, 1, 0x10000)
        _check_int("unit", unit, 1, 255)
        what = f"{self} unit {unit} read fc{function:02d} {address}+{count}"
        async with self._lock:
            client = await self._ready()
            await self._settle(unit)
            reader = client.read_holding_registers if function == 3 else client.read_input_registers
            response = await self._execute(
                what, unit, function, lambda: reader(address, count=count, device_id=unit))
        registers = list(getattr(response, "registers", []))
        if len(registers) != count:  # e.g. a late reply to another request
            self._dirty_since = time.monotonic()
            raise FrameError(f"{what}: reply holds {len(registers)} registers")
        return registers

    async def write_registers(self, address: int, values: Sequence[int], unit: int) -> None:
        """Write registers with function 16."""
        _check_int("address", address, 0, 0xFFFF)
        regs = _check_values(values, address)
        _check_int("unit", unit, 1, 255)
        what = f"{self} unit {unit} write fc16 {address}+{len(regs)}"
        async with self._lock:
            client = await self._ready()
            await self._settle(unit)
            response = await self._execute(
                what, unit, 16, lambda: client.write_registers(address, regs, device_id=unit))
        if (getattr(response, "address", None), getattr(response, "count", None)) != (address, len(regs)):
            raise FrameError(f"{what}: reply confirms a different range")


class ModbusDevice:
    """One Modbus unit on a link, read through its profile (a drivers.base.Driver).

    read() issues the profile's coalesced reads in order. When some blocks fail and others do not,
    the failed points come back as value None with Quality.COMM_FAILURE (the error in `text`);
    when every block fails, or the link itself fails, the DriverError is raised.
    """

    def __init__(self, name: str, link: ModbusLink, unit: int, profile: Profile, *, owns_link: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"device name must be a non-empty string, got {name!r}")
        _check_int(f"device {name}: unit", unit, 1, 255)
        self.name, self.link, self.unit, self.profile = name, link, unit, profile
        self.owns_link = owns_link
        self._order = {p.name: i for i, p in enumerate(profile.points)}
        self._all_blocks = self._plan(profile.points)
        self._selections: dict[tuple[str, ...], list[ReadBlock]] = {}  # the scheduler asks the same few

    def bus_info(self) -> BusInfo:
        """Declared to the bus scheduler (drivers.base.BusAware): the profile, the line, the timeout."""
        line = LineTiming.of(self.link.line) if self.link.is_rtu else None
        return BusInfo(self.profile, line, self.link.timeout_s)

    def _plan(self, specs: Sequence[PointSpec]) -> list[ReadBlock]:
        return plan_reads(specs, self.profile.max_registers_per_read, self.profile.max_read_gap)

    async def open(self) -> None:
        if self.owns_link:
            await self.link.open()

    async def close(self) -> None:
        if self.owns_link:
            await self.link.close()

    def _select(self, points: Sequence[str]) -> list[ReadBlock]:
        if isinstance(points, str):
            return self._plan_selection(points)  # raises: a str is not a list of point names
        key = tuple(points)
        blocks = self._selections.get(key)
        if blocks is None:
            blocks = self._plan_selection(points)  # raises for duplicates, unknown names
            if len(self._selections) < 256:
                self._selections[key] = blocks
        return blocks

    def _plan_selection(self, points: Sequence[str]) -> list[ReadBlock]:
        if isinstance(points, str) or len(set(points)) != len(points):
            raise ConfigError(f"device {self.name}: points must be a list of distinct names", key="points",
                              value=points, expected="e.g. ['air_temperature']")
        unknown = [p for p in points if p not in self._order]
        if unknown:
            raise ConfigError(f"device {self.name}: unknown point", key="points", value=unknown[0],
                              expected=f"a point of profile {self.profile.name}: {', '.join(self._order)}")
        return self._plan([self.profile.points[self._order[p]] for p in points])

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        blocks = self._all_blocks if points is None else self._select(points)
        readings: list[Reading] = []
        first_error: DriverError | None = None
        for block in blocks:
            try:
                regs = await self.link.read_registers(block.function, block.address, block.count, self.unit)
            except LinkError:
                raise
            except DriverError as exc:
                first_error = first_error or exc
                ts = time.time()
                readings += [Reading(self.name, p.name, None, p.unit, ts, Quality.COMM_FAILURE, text=str(exc))
                             for p in block.points]
                continue
            ts = time.time()
            for p in block.points:
                offset = p.address - block.address
                value, quality = decode_point(p, regs[offset:offset + p.count])
                readings.append(Reading(self.name, p.name, value, p.unit, ts, quality))
        if first_error is not None and all(r.quality & Quality.COMM_FAILURE for r in readings):
            raise first_error
        readings.sort(key=lambda r: self._order[r.point])
        return readings

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command != "write_registers":
            raise CommandRefused(f"device {self.name}: unknown command {command!r}; supported: write_registers")
        if not isinstance(args, Mapping) or set(args) != {"address", "values"}:
            raise CommandRefused(f"device {self.name}: write_registers takes exactly {{address, values}}, "
                                 f"got {sorted(args) if isinstance(args, Mapping) else args!r}")
        try:
            address = _check_int("address", args["address"], 0, 0xFFFF)
            values = _check_values(args["values"], address)
        except ValueError as exc:
            raise CommandRefused(f"device {self.name}: write_registers refused: {exc}") from exc
        await self.link.write_registers(address, values, self.unit)
