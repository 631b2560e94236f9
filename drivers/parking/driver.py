"""The parking driver: one poll reads every zone's detectors or counter, then keeps the signs right.

    read()   per zone: FC03 the detector blocks (bays) or the counter pair (entries, exits ->
             occupancy); then per sign: the guidance rule's content (guidance.py), written when it
             changed or when `refresh_s` has passed since the last write (a sign that was power
             cycled shows nothing until rewritten). Readings: <zone>.occupied/free/capacity,
             <zone>.bay<n>, <zone>.entries/exits, <sign>.shown (text = what the sign shows).
    write()  set_sign_text / clear_sign_text (manual override per zone), set_capacity, reset_count;
             an argument that cannot be carried out is CommandRefused before anything is sent.

A zone that cannot be read comes back as COMM_FAILURE readings and its signs keep their last
content; only when no zone answers does read() raise (the scheduler's offline state). A sign
that does not confirm a write is retried on the next poll. Runtime changes (override, capacity,
count) live in this object: an agent restart returns to the config (notes.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.errors import CommandRefused, DriverError
from core.reading import Quality, Reading
from drivers.parking import codec, guidance
from drivers.parking.line import SerialLine
from drivers.parking.settings import COMMANDS, ParkingSettings, Sign, Zone

__all__ = ["ParkingDriver"]

LED_VALUE, LED_SEGMENTS = 0x0000, 0x0080
COUNTER_RESET = 0x8000  # a step this large is a counter that restarted, not 32768 cars


class ParkingDriver:
    COMMANDS = COMMANDS

    def __init__(self, settings: ParkingSettings, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name = settings.name
        self.settings = settings
        self._clock = clock
        self._mono = monotonic
        self.line = SerialLine(settings.name, settings.port, baudrate=settings.baudrate, parity=settings.parity,
                               stopbits=settings.stopbits, timeout_s=settings.timeout_s)
        self.capacity = {z.name: z.capacity for z in settings.zones}
        self.occupied: dict[str, int] = {}                     # zones read at least once
        self.overrides: dict[str, str] = {}
        self._counts: dict[str, tuple[int, int]] = {}          # counter zones: last (entries, exits)
        self._written: dict[str, tuple[guidance.SignContent, float]] = {}

    async def open(self) -> None:
        await self.line.open()

    async def close(self) -> None:
        await self.line.close()

    # --- zones ---------------------------------------------------------------------------------
    async def _read_zone(self, z: Zone, ts: float) -> list[Reading]:
        out: list[Reading] = []
        if z.counter is not None:
            c = z.counter
            lo = min(c.entries, c.exits)
            regs = await self.line.transact(codec.read_request(c.unit, lo, abs(c.entries - c.exits) + 1))
            entries, exits = regs[c.entries - lo], regs[c.exits - lo]
            note = self._count(z, entries, exits)
            out += [Reading(self.name, f"{z.name}.entries", float(entries), "count", ts, text=note),
                    Reading(self.name, f"{z.name}.exits", float(exits), "count", ts, text=note)]
        else:
            occupied, bay = 0, 0
            for block in z.detectors:
                regs = await self.line.transact(codec.read_request(block.unit, block.register, block.count))
                for value in regs:
                    bay += 1
                    point = f"{z.name}.bay{bay}"
                    if value in (0, 1):
                        out.append(Reading(self.name, point, float(value), "", ts))
                    else:  # a detector fault: not a free space anyone can vouch for
                        out.append(Reading(self.name, point, None, "", ts, Quality.MISSING,
                                           text=f"detector fault code {value}; counted occupied"))
                    occupied += value != 0
            self.occupied[z.name] = occupied
        return out + self._zone_readings(z, ts)

    def _count(self, z: Zone, entries: int, exits: int) -> str | None:
        previous = self._counts.get(z.name)
        self._counts[z.name] = (entries, exits)
        if previous is None:
            self.occupied.setdefault(z.name, z.initial_occupied)
            return None
        d_in, d_out = guidance.counter_delta(previous[0], entries), guidance.counter_delta(previous[1], exits)
        if d_in >= COUNTER_RESET or d_out >= COUNTER_RESET:
            return f"counter went back from {previous} to {(entries, exits)}: restarted; counting on from here"
        self.occupied[z.name] = guidance.count_step(self.occupied[z.name], d_in, d_out)
        return None

    def _zone_readings(self, z: Zone, ts: float) -> list[Reading]:
        occ, cap = self.occupied[z.name], self.capacity[z.name]
        return [Reading(self.name, f"{z.name}.occupied", float(occ), "count", ts, Quality.DERIVED),
                Reading(self.name, f"{z.name}.free", float(guidance.free_spaces(cap, occ)), "count", ts,
                        Quality.DERIVED),
                Reading(self.name, f"{z.name}.capacity", float(cap), "count", ts)]

    @staticmethod
    def _failed(z: Zone, ts: float, device: str, exc: DriverError) -> list[Reading]:
        points = [f"{z.name}.{p}" for p in ("occupied", "free", "capacity")]
        points += [f"{z.name}.bay{i}" for i in range(1, z.bays + 1)]
        points += [f"{z.name}.entries", f"{z.name}.exits"] if z.counter is not None else []
        return [Reading(device, p, None, "", ts, Quality.COMM_FAILURE, text=str(exc)[:200]) for p in points]

    # --- signs ---------------------------------------------------------------------------------
    def _texts(self) -> dict[str, str]:
        texts = {}
        for z in self.settings.zones:
            if z.name in self.overrides or z.name in self.occupied:
                texts[z.name] = guidance.zone_text(self.capacity[z.name], self.occupied.get(z.name, 0),
                                                   self.overrides.get(z.name))
        return texts

    def content(self, sign: Sign) -> guidance.SignContent | None:
        """What `sign` must show now; None while one of its zones was never read."""
        texts = self._texts()
        if any(z not in texts for z in sign.zones):
            return None
        return guidance.sign_content(sign.type, sign.zones, texts, digits=sign.digits)

    async def _write_sign(self, sign: Sign, content: guidance.SignContent) -> None:
        if sign.type == "alpha":
            await self.line.send(codec.alpha_frame(content.text, address=sign.address, label=sign.label))
        elif content.number is not None:
            await self.line.transact(codec.write_single_request(sign.unit, LED_VALUE, content.number))
        else:
            await self.line.transact(codec.write_multiple_request(sign.unit, LED_SEGMENTS,
                                                                  codec.encode_segments(content.text)))
        self._written[sign.name] = (content, self._mono())

    async def _update_signs(self, ts: float, *, only: set[str] | None = None, force: bool = False) -> list[Reading]:
        out = []
        for sign in self.settings.signs:
            if only is not None and not only & set(sign.zones):
                continue
            content = self.content(sign)
            if content is None:
                continue
            last = self._written.get(sign.name)
            due = force or last is None or last[0] != content or self._mono() - last[1] >= self.settings.refresh_s
            point = f"{sign.name}.shown"
            free = float(sum(guidance.free_spaces(self.capacity[z], self.occupied.get(z, 0)) for z in sign.zones))
            try:
                if due:
                    await self._write_sign(sign, content)
                out.append(Reading(self.name, point, free, "count", ts, Quality.DERIVED, text=content.text))
            except DriverError as exc:
                if only is not None:
                    raise
                out.append(Reading(self.name, point, None, "", ts, Quality.COMM_FAILURE,
                                   text=f"sign write failed: {exc}"[:200]))
        return out

    # --- the Driver seam -------------------------------------------------------------------------
    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        ts = self._clock()
        out: list[Reading] = []
        errors: list[DriverError] = []
        for z in self.settings.zones:
            try:
                out += await self._read_zone(z, ts)
            except DriverError as exc:
                errors.append(exc)
                out += self._failed(z, ts, self.name, exc)
        if len(errors) == len(self.settings.zones):
            raise errors[0]
        out += await self._update_signs(ts)
        if points is None:
            return out
        wanted = set(points)
        return [r for r in out if r.point in wanted]

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        if command not in COMMANDS:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(COMMANDS)}")
        zone = self._zone_arg(args)
        if command == "set_sign_text":
            text = args.get("text")
            self._check_text(zone, text)
            assert isinstance(text, str)  # _check_text refused anything else
            self.overrides[zone.name] = text.upper() if self._on_led(zone) else text
        elif command == "clear_sign_text":
            self.overrides.pop(zone.name, None)
        elif command == "set_capacity":
            self.capacity[zone.name] = self._int_arg(args, "capacity", 0, 32767)
        else:  # reset_count
            if zone.counter is None:
                raise CommandRefused(f"{self.name}: zone {zone.name!r} counts with detectors; only a counter zone "
                                     "has a count to reset")
            self.occupied[zone.name] = self._int_arg(args, "occupied", 0, 32767, default=0)
        await self._update_signs(self._clock(), only={zone.name}, force=True)

    # --- command arguments ---------------------------------------------------------------------
    def _zone_arg(self, args: Mapping[str, Any]) -> Zone:
        name = args.get("zone")
        zone = self.settings.zone(name) if isinstance(name, str) else None
        if zone is None:
            known = ", ".join(z.name for z in self.settings.zones)
            raise CommandRefused(f"{self.name}: argument zone must name a zone ({known}), got {name!r}")
        return zone

    def _int_arg(self, args: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = args.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise CommandRefused(f"{self.name}: argument {key} must be an integer {lo}..{hi}, got {value!r}")
        return value

    def _on_led(self, zone: Zone) -> bool:
        return any(s.type == "led485" and zone.name in s.zones for s in self.settings.signs)

    def _check_text(self, zone: Zone, text: Any) -> None:
        if not isinstance(text, str) or not text or not all(0x20 <= ord(c) < 0x7F for c in text):
            raise CommandRefused(f"{self.name}: argument text must be printable ASCII, got {text!r:.60}")
        for sign in self.settings.signs:
            if zone.name not in sign.zones:
                continue
            try:
                if sign.type == "led485":
                    codec.encode_segments(text)
                else:
                    texts = {z: "32767" for z in sign.zones} | {zone.name: text}  # the longest
                    codec.alpha_frame(guidance.sign_content("alpha", sign.zones, texts).text)
            except ValueError as exc:
                raise CommandRefused(f"{self.name}: sign {sign.name!r} cannot show {text!r}: {exc}") from None
