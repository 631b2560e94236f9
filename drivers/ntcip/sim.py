"""An NTCIP 1202 signal controller answering SNMPv1/v2c GET, GETNEXT and SET on a UDP port.

The agent is a small hand-written command responder over pysnmp's protocol API and pyasn1's BER
codec (pysnmp's full CommandResponder needs a compiled MIB module for every table; here the
objects are computed from the timing model on each request, which is the point of the simulator).
The client under test is pysnmp's own asyncio manager, so the bytes on the wire are real SNMP.

Timing model: an 8-phase dual-ring controller run as four stages (1+5, 2+6, 3+7, 4+8). Each
pattern gives a cycle, an offset and a split per stage; a split is green + 3 s yellow + 1 s red
clearance. Phases 2/4/6/8 have pedestrian heads: 7 s walk, then flashing don't-walk (ped clear)
to the end of green. Red phases with demand show vehicle calls. Detectors 1-8 count volume per
`period_s` from demand (veh/h); occupancy is reported in 0.5 % steps (0-200).

systemPatternControl accepts 0 (standby: back to the local pattern), a configured pattern,
254 (free) or 255 (flash); anything else is wrongValue. Sets need the write community; an unknown
community is dropped silently (as an agent does on an authentication failure).
Faults: `fault = "silence"` drops every request; `"wrong_type"` answers integers as strings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import api, rfc1905
from pysnmp.proto.api import v2c

from drivers.ntcip import mib as n

__all__ = ["Pattern", "NtcipControllerSim", "DEFAULT_PATTERNS"]

STAGES = ((1, 5), (2, 6), (3, 7), (4, 8))
PED_PHASES = frozenset({2, 4, 6, 8})
YELLOW_S, RED_S, WALK_S = 3.0, 1.0, 7.0


@dataclass(frozen=True, slots=True)
class Pattern:
    number: int
    offset_s: float
    splits: tuple[float, float, float, float]   # per stage, seconds, each > yellow + red

    @property
    def cycle_s(self) -> float:
        return sum(self.splits)


DEFAULT_PATTERNS = (Pattern(1, 0.0, (15.0, 35.0, 15.0, 35.0)), Pattern(2, 36.0, (20.0, 40.0, 20.0, 40.0)),
                    Pattern(3, 10.0, (10.0, 30.0, 10.0, 30.0)))


class NtcipControllerSim(asyncio.DatagramProtocol):
    def __init__(
        self, *, patterns: tuple[Pattern, ...] = DEFAULT_PATTERNS, local_pattern: int = 1,
        community: str = "public", write_community: str = "private", time_unit: str = "s",
        demand_vph: dict[int, float] | None = None, period_s: float = 60.0,
        clock: Callable[[], float] = time.time, seed: int = 0,
    ) -> None:
        self.patterns = {p.number: p for p in patterns}
        self.local_pattern = self.pattern = local_pattern
        self.command = 0                       # last systemPatternControl written
        self.communities = {community: False, write_community: True}
        self.time_unit = time_unit
        self.demand_vph = demand_vph or {d: (600.0 if d in PED_PHASES else 150.0) for d in range(1, 9)}
        self.period_s = period_s
        self.detector_fault: dict[int, int] = {}
        self.clock = clock
        self.seed = seed
        self.fault = "none"
        self.sets: list[tuple[str, int]] = []
        self.requests = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    # --- timing model --------------------------------------------------------------------------
    def _position(self, t: float) -> tuple[Pattern, int, float]:
        p = self.patterns[self.pattern if self.pattern in self.patterns else self.local_pattern]
        offset = 0.0 if self.command == 254 else p.offset_s
        pos = (t - offset) % p.cycle_s
        for stage, split in enumerate(p.splits):
            if pos < split:
                return p, stage, pos
            pos -= split
        return p, len(p.splits) - 1, p.splits[-1]

    def phase_state(self, t: float) -> dict[int, tuple[n.Color, n.Ped]]:
        """Every phase's (vehicle colour, pedestrian state) at time t: the ground truth."""
        state = {ph: (n.Color.RED, n.Ped.DONT_WALK if ph in PED_PHASES else n.Ped.DARK) for ph in range(1, 9)}
        if self.command == 255:  # flash: main street flashing yellow, side streets flashing red
            for ph in (2, 6):
                state[ph] = (n.Color.YELLOW, n.Ped.DARK)
            return state
        p, stage, pos = self._position(t)
        green = p.splits[stage] - YELLOW_S - RED_S
        for ph in STAGES[stage]:
            if pos < green:
                ped = (n.Ped.WALK if pos < WALK_S else n.Ped.PED_CLEAR) if ph in PED_PHASES else n.Ped.DARK
                state[ph] = (n.Color.GREEN, ped)
            elif pos < green + YELLOW_S:
                state[ph] = (n.Color.YELLOW, state[ph][1])
        return state

    def detector_counts(self, det: int, t: float) -> tuple[int, int]:
        """(volume, raw occupancy 0-200 or fault code) for the last complete period."""
        period = int(t // self.period_s) - 1
        rng = random.Random(hash((self.seed, det, period)))
        mean = self.demand_vph.get(det, 0.0) * self.period_s / 3600.0
        volume = min(255, max(0, int(round(rng.gauss(mean, mean ** 0.5 if mean else 0.0)))))
        occupancy = min(200, int(round(volume * 1.8 / self.period_s * 200)))
        return volume, self.detector_fault.get(det, occupancy)

    def _scalar(self, t: float) -> dict[n.Oid, int]:
        p, stage, pos = self._position(t)
        before = sum(p.splits[:stage]) + pos
        coord = self.command if self.command in (254, 255) else self.pattern
        return {
            n.COORD_PATTERN_STATUS: coord,
            n.LOCAL_FREE_STATUS: 3 if self.command == 254 else 2,
            n.COORD_CYCLE_STATUS: int(p.cycle_s - before),
            n.COORD_SYNC_STATUS: int(before),
            n.SYSTEM_PATTERN_CONTROL: self.command,
        }

    def objects(self, t: float) -> dict[n.Oid, int]:
        """Every object the agent serves, computed for time t."""
        out = self._scalar(t)
        state = self.phase_state(t)
        kinds = {"greens": lambda c, _: c is n.Color.GREEN, "yellows": lambda c, _: c is n.Color.YELLOW,
                 "reds": lambda c, _: c is n.Color.RED, "walks": lambda _, w: w is n.Ped.WALK,
                 "pedclears": lambda _, w: w is n.Ped.PED_CLEAR, "dontwalks": lambda _, w: w is n.Ped.DONT_WALK,
                 "vehcalls": lambda c, _: c is n.Color.RED, "pedcalls": lambda c, w: w is n.Ped.DONT_WALK}
        for kind, test in kinds.items():
            phases = [ph for ph, (c, w) in state.items() if test(c, w)]
            if kind == "vehcalls":
                phases = [ph for ph in phases if self.demand_vph.get(ph, 0) > 0]
            out[n.phase_status_oid(kind, 1)] = n.bitmap_of(1, phases)
        out[n.phase_status_oid("nexts", 1)] = 0
        scale = 10 if self.time_unit == "ds" else 1
        for p in self.patterns.values():
            out[n.pattern_cycle_oid(p.number)] = int(round(p.cycle_s * scale))
            out[n.pattern_offset_oid(p.number)] = int(round(p.offset_s * scale))
            for stage, split in enumerate(p.splits):
                for ph in STAGES[stage]:
                    out[n.split_time_oid(p.number, ph)] = int(round(split))
        for det in range(1, 9):
            out[n.detector_volume_oid(det)], out[n.detector_occupancy_oid(det)] = self.detector_counts(det, t)
        return out

    # --- UDP agent -----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> NtcipControllerSim:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> NtcipControllerSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        if self.fault == "silence" or self._transport is None:
            return
        try:
            reply = self._handle(data)
        except (PyAsn1Error, KeyError, ValueError, TypeError):
            return  # an agent drops what it cannot parse
        if reply is not None:
            self._transport.sendto(reply, addr)

    def _handle(self, data: bytes) -> bytes | None:
        version = int(api.decodeMessageVersion(data))
        mod = api.PROTOCOL_MODULES[version]
        req, _ = decoder.decode(data, asn1Spec=mod.Message())
        community = str(mod.apiMessage.get_community(req))
        if community not in self.communities:
            return None
        rsp = mod.apiMessage.get_response(req)
        req_pdu, rsp_pdu = mod.apiMessage.get_pdu(req), mod.apiMessage.get_pdu(rsp)
        binds = [(tuple(oid), val) for oid, val in mod.apiPDU.get_varbinds(req_pdu)]
        objects = self.objects(self.clock())
        errors: list[tuple[int, int]] = []   # (error status, 1-based index)
        exceptions: list[tuple[int, object]] = []  # v2c per-varbind exceptions (index, value)
        out = []
        if req_pdu.isSameTypeWith(mod.GetRequestPDU()):
            for i, (oid, _) in enumerate(binds, 1):
                if oid in objects:
                    out.append((oid, self._value(mod, objects[oid])))
                else:
                    out.append((oid, mod.Null("")))
                    self._no_value(version, i, rfc1905.noSuchObject, errors, exceptions)
        elif req_pdu.isSameTypeWith(mod.GetNextRequestPDU()):
            order = sorted(objects)
            for i, (oid, _) in enumerate(binds, 1):
                nxt = next((o for o in order if o > oid), None)
                if nxt is None:
                    out.append((oid, mod.Null("")))
                    self._no_value(version, i, rfc1905.endOfMibView, errors, exceptions)
                else:
                    out.append((nxt, self._value(mod, objects[nxt])))
        elif req_pdu.isSameTypeWith(mod.SetRequestPDU()):
            out = list(binds)
            status = self._set(binds, objects, self.communities[community])
            if status:
                errors.append(status)
        else:
            out, errors = list(binds), [(5, 0)]   # genErr: GETBULK etc. not served
        mod.apiPDU.set_varbinds(rsp_pdu, out)
        for i, exception in exceptions:
            rsp_pdu.getComponentByPosition(3).getComponentByPosition(i - 1).setComponentByPosition(
                1, exception, verifyConstraints=False, matchTags=False, matchConstraints=False)
        if errors:
            mod.apiPDU.set_error_status(rsp_pdu, errors[0][0])
            mod.apiPDU.set_error_index(rsp_pdu, errors[0][1])
        return encoder.encode(rsp)

    @staticmethod
    def _no_value(version: int, index: int, exception: object, errors: list, exceptions: list) -> None:
        if version:   # v2c: an exception value in the varbind
            exceptions.append((index, exception))
        else:         # v1: the whole PDU fails with noSuchName
            errors.append((2, index))

    def _value(self, mod, value: int):
        return mod.OctetString(str(value)) if self.fault == "wrong_type" else mod.Integer(value)

    def _set(self, binds, objects, writable: bool) -> tuple[int, int] | None:
        """Validate every varbind first (SET is atomic), then apply. Returns (status, index) on error."""
        for i, (oid, val) in enumerate(binds, 1):
            if not writable:
                return (6, i)                                   # noAccess
            if oid != n.SYSTEM_PATTERN_CONTROL:
                return (17, i) if oid in objects else (11, i)   # notWritable / noCreation
            if getattr(val, "tagSet", None) != v2c.Integer.tagSet:
                return (7, i)                                   # wrongType
            if int(val) not in (0, 254, 255) and int(val) not in self.patterns:
                return (10, i)                                  # wrongValue
        for oid, val in binds:
            self.command = int(val)
            self.sets.append((n.oid_str(oid), int(val)))
            self.pattern = self.local_pattern if self.command in (0, 254, 255) else self.command
        return None
