"""NTCIP 1202 signal controller over SNMP (pysnmp 7 asyncio): phase/detector/coordination reads and a
guarded pattern command.

pysnmp is confined to this module and its outcomes are mapped to our errors in `_check` only:
requestTimedOut -> DeviceTimeout; undecodable or mismatched responses -> FrameError; an SNMP
error-status (noAccess, wrongValue, ...) -> DeviceException with the status as its code; every
other engine failure -> LinkError. Point decoding is pure and lives in drivers/ntcip.py.

set_pattern {pattern} writes systemPatternControl (.4.14.0). It is refused (CommandRefused) unless
the pattern is in `allowed_patterns`; standby (0), free (254) and flash (255) each need their own
opt-in setting, since they take the intersection out of coordination.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyasn1.type.univ import Integer as _AsnInteger
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
    set_cmd,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import Integer32
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from core.errors import CommandRefused, DeviceException, DeviceTimeout, FrameError, LinkError
from core.reading import Reading
from drivers.ntcip import mib as n
from drivers.ntcip.settings import COMMANDS, NtcipSettings

__all__ = ["NtcipDriver"]

_FRAME_ERRORS = (errind.DeserializationError, errind.DataMismatch, errind.EmptyResponse, errind.UnknownPDUHandler)


class NtcipDriver:
    COMMANDS = COMMANDS  # the kind's commands, declared once in drivers/ntcip/settings.py

    def __init__(self, settings: NtcipSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.name = settings.name
        self.settings = settings
        self._clock = clock
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None

    async def open(self) -> None:
        s = self.settings
        try:
            self._target = await UdpTransportTarget.create((s.host, s.port), timeout=s.timeout_s, retries=s.retries)
        except PySnmpError as exc:
            raise LinkError(f"{self.name}: cannot reach {s.host}:{s.port}: {exc}") from exc
        self._engine = SnmpEngine()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close_dispatcher()

    def _check(self, what: str, result: tuple, oids: Sequence[n.Oid]) -> tuple:
        """The one place pysnmp's outcome becomes our error tree."""
        indication, status, index, binds = result
        if indication:
            if isinstance(indication, errind.RequestTimedOut):
                raise DeviceTimeout(f"{self.name}: {what}: no SNMP response within "
                                    f"{self.settings.timeout_s}s x {self.settings.retries + 1}")
            if isinstance(indication, _FRAME_ERRORS):
                raise FrameError(f"{self.name}: {what}: {indication}")
            raise LinkError(f"{self.name}: {what}: {indication}")
        if int(status):
            at = n.oid_str(oids[int(index) - 1]) if 0 < int(index) <= len(oids) else "?"
            raise DeviceException(f"{self.name}: {what} refused: {status.prettyPrint()} at {at}", int(status))
        return binds

    async def _call(self, fn: Callable[..., Any], what: str, community: str, oids: Sequence[n.Oid], *binds) -> tuple:
        if self._engine is None or self._target is None:
            raise LinkError(f"{self.name}: not open")
        try:
            result = await fn(self._engine, CommunityData(community, mpModel=1), self._target, ContextData(),
                              *binds, lookupMib=False)
        except PySnmpError as exc:
            raise LinkError(f"{self.name}: {what}: {exc}") from exc
        return self._check(what, result, oids)

    async def _get(self, oids: Sequence[n.Oid]) -> dict[n.Oid, int | None]:
        values: dict[n.Oid, int | None] = {}
        step = self.settings.max_oids_per_get
        for i in range(0, len(oids), step):
            chunk = oids[i:i + step]
            binds = await self._call(get_cmd, "GET", self.settings.community, chunk,
                                     *[ObjectType(ObjectIdentity(n.oid_str(o))) for o in chunk])
            if len(binds) != len(chunk):
                raise FrameError(f"{self.name}: asked for {len(chunk)} objects, got {len(binds)}")
            for want, (oid, value) in zip(chunk, binds):
                if tuple(oid) != want:
                    raise FrameError(f"{self.name}: reply names {oid}, expected {n.oid_str(want)}")
                if isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView)):
                    values[want] = None
                elif isinstance(value, _AsnInteger):
                    values[want] = int(value)
                else:
                    raise FrameError(f"{self.name}: {n.oid_str(want)} is {type(value).__name__}, expected INTEGER")
        return values

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        wanted = list(points) if points is not None else self.settings.default_points()
        try:
            oids = n.oids_for(wanted)
        except ValueError as exc:
            raise CommandRefused(f"{self.name}: {exc}") from None
        values = await self._get(oids)
        ts = self._clock()
        return [Reading(self.name, pv.point, pv.value, pv.unit, ts, pv.quality, text=pv.text)
                for pv in n.decode_points(wanted, values, time_unit=self.settings.pattern_time_unit)]

    def _guard(self, pattern: Any) -> int:
        s = self.settings
        if not isinstance(pattern, int) or isinstance(pattern, bool) or not 0 <= pattern <= 255:
            raise CommandRefused(f"{self.name}: set_pattern needs an integer pattern 0..255, got {pattern!r}")
        special = {0: s.allow_standby, 254: s.allow_free, 255: s.allow_flash}
        if pattern in special:
            if not special[pattern]:
                raise CommandRefused(f"{self.name}: {n.pattern_name(pattern)} is not enabled for this controller")
        elif pattern not in s.allowed_patterns:
            raise CommandRefused(f"{self.name}: pattern {pattern} is not in allowed_patterns "
                                 f"{sorted(s.allowed_patterns)}")
        return pattern

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command != "set_pattern":
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(self.COMMANDS)}")
        pattern = self._guard(args.get("pattern"))
        oid = n.SYSTEM_PATTERN_CONTROL
        binds = await self._call(set_cmd, "SET systemPatternControl", self.settings.write_community, [oid],
                                 ObjectType(ObjectIdentity(n.oid_str(oid)), Integer32(pattern)))
        if len(binds) != 1 or int(binds[0][1]) != pattern:
            raise FrameError(f"{self.name}: SET reply does not echo pattern {pattern}: {binds!r}")
