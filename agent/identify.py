"""Which known model is a Modbus slave? Consistent evidence from several registers, or "unknown".

`identify(read, unit)` asks only what it needs, most specific model first, and says how sure it is:

    high    an identity register matched, and the registers around it fit that model and no other
            (WXT530 model 1-6 with its map and without Lufft's extra registers; SEN0575 PID/VID;
            a Lufft type code no other model uses, with its rain and km/h registers)
    medium  the register map and its values fit one model and agree with each other (a Lufft type
            code a WXT530 model shares, with Lufft's extra registers; wind sector vs degrees...)
    low     plausible values only: another device could look the same; check the label
    none    unknown: it answers, but nothing fits, or its registers contradict each other

One register is never enough: a model code alone named a WXT530 in the field as a Lufft WS (the
codes 1-6 are both), and the pasted config then read rain_total 0 "good" from registers the
WXT530 does not have. A faithful slave answers a register it lacks with exception 02; that
third-party slave answered every address, with 0. So `identify` first reads one control
register no known model has (input 40, holding 256): when it answers, the device answers
anything, an answer proves nothing, and a value equal to that filler counts as no evidence.
Registers are also checked against each other (min <= avg <= max, dew point <= temperature), so
a map that merely looks plausible register by register does not pass. And a slave that goes
silent on some reads of a function code while answering others (deaf after other units' frames,
a bad line) has not shown its map: it stays unknown, whatever the reads it answered suggest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from core.errors import DeviceTimeout, DriverError
from core.reading import Quality
from drivers.modbus.codec import REGISTER_COUNT, decode_point
from drivers.modbus.profile import load_profile

__all__ = ["CONTROL_HOLDING", "CONTROL_INPUT", "IDENTIFY_MAX_REGISTERS", "Identification", "LUFFT_CODES",
           "identify"]

#: read(function, address, count, unit) -> the registers, or the DriverError the read met
Read = Callable[[int, int, int, int], Awaitable["list[int] | DriverError"]]

IDENTIFY_MAX_REGISTERS = 26  # the longest read identify() makes (0x000A-0x0023)
LUFFT_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16, 23, 25, 33, 35, 43, 45, 93, 95}
WXT_MODELS = range(1, 7)     # devices.md: high byte of 0x0000 is the model, 01-06
_ONLY_LUFFT = LUFFT_CODES - set(WXT_MODELS)
CONTROL_INPUT = 40           # no known model has input register 40 (between 0x0023 and Lufft's 48)
CONTROL_HOLDING = 256        # nor holding register 256
_WXT_ONLY = (0x0016, 0x001A, 0x001C, 0x001D, 0x001E)  # in the WXT530 table, not in Lufft's map
_STATS = ("relative_humidity", "air_pressure", "global_radiation", "air_temperature", "wind_speed_kmh")


@dataclass(frozen=True, slots=True)
class Identification:
    unit: int
    profile: str | None
    confidence: str  # high | medium | low | none
    evidence: str


def _regs(r: object) -> list[int] | None:
    return r if isinstance(r, list) else None


def _decode(profile: str, function: int, start: int, regs: Sequence[int]) -> dict[str, tuple[float | None, Quality]]:
    """The profile's points that lie inside these registers, decoded."""
    out = {}
    for p in load_profile(profile).points:
        end = p.address + REGISTER_COUNT[p.type]
        if p.function == function and start <= p.address and end <= start + len(regs):
            out[p.name] = decode_point(p, regs[p.address - start:end - start])
    return out


def _problems(values: dict[str, tuple[float | None, Quality]]) -> list[str]:
    """What contradicts these decoded values: out of range, min > avg > max, dew point above the air."""
    bad = [f"{n} = {v:g} out of range" for n, (v, q) in values.items() if q & Quality.OUT_OF_RANGE and v is not None]

    def good(name: str) -> float | None:
        v, q = values.get(name, (None, Quality.MISSING))
        return v if q == Quality.GOOD else None

    for base in _STATS:
        lo, avg, hi = good(base + "_min"), good(base + "_avg"), good(base + "_max")
        if lo is not None and avg is not None and hi is not None and not lo - 1e-6 <= avg <= hi + 1e-6:
            bad.append(f"{base} min/avg/max {lo:g}/{avg:g}/{hi:g} out of order")
    dew, air = good("dew_point"), good("air_temperature")
    if dew is not None and air is not None and dew > air + 0.5:
        bad.append(f"dew point {dew:g} above the air temperature {air:g}")
    return bad


def _evident(regs: Sequence[int], filler: int | None, invalid: Sequence[int] = ()) -> int:
    """How many of these registers hold something: not an invalid marker, not the device's filler."""
    return sum(1 for r in regs if r not in invalid and (filler is None or r != filler))


class _Witness:
    """Counts, per function code, the reads that met silence and those that were answered."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self.silent: dict[int, int] = {}
        self.answered: dict[int, int] = {}

    async def read(self, function: int, address: int, count: int, unit: int) -> list[int] | DriverError:
        reply = await self._read(function, address, count, unit)
        tally = self.silent if isinstance(reply, DeviceTimeout) else self.answered
        tally[function] = tally.get(function, 0) + 1
        return reply

    def patchy(self) -> list[str]:
        return [f"function {f:02d}: {n} of {n + self.answered[f]} reads unanswered"
                for f, n in sorted(self.silent.items()) if self.answered.get(f)]


async def identify(read: Read, unit: int) -> Identification:
    """Which model is at `unit`? See the module docstring for the rules."""
    witness = _Witness(read)
    found = await _identify(witness.read, unit)
    patchy = witness.patchy()
    if patchy and found.profile is not None:
        return Identification(unit, None, "none", f"it went silent on some reads and answered others ("
                              f"{'; '.join(patchy)}), so its map is not known (it looked like {found.profile}): "
                              "a slave deaf after other units' frames (scan with --pace-ms 500) or a bad line")
    return found


async def _identify(read: Read, unit: int) -> Identification:
    filler4 = _regs(await read(4, CONTROL_INPUT, 1, unit))
    ident = _regs(await read(4, 0x0000, 1, unit))
    if ident is not None:
        ids = _regs(await read(4, 0x0000, 3, unit))
        if ids and ids[0] == 0x00C0 and ((ids[1] & 0xC000) << 2 | ids[0]) == 0x100C0 and ids[1] & 0x3FFF == 0x3343:
            extra = " and register 2 holds its own address" if ids[2] == unit else ""
            return Identification(unit, "dfrobot_sen0575", "high",
                                  f"input registers 0-1 = PID 0x100C0 / VID 0x3343 (SEN0575){extra}")
        hi = ident[0] >> 8
        if hi in WXT_MODELS or hi in LUFFT_CODES:
            return await _weather_station(read, unit, ident[0], None if filler4 is None else filler4[0])
    return await _holding_models(read, unit)


async def _weather_station(read: Read, unit: int, word: int, filler: int | None) -> Identification:
    """A WXT530 or a Lufft WS: same model-code register, same 0x000A-0x0023 map; Lufft adds
    rain at 48-50 and km/h wind at 83-86, and lacks some WXT530 registers."""
    hi, lo = word >> 8, word & 0xFF
    code = f"register 0x0000 = 0x{word:04X}"
    block = _regs(await read(4, 0x000A, 26, unit))
    if block is None:
        return Identification(unit, None, "none", f"{code} looks like a weather station's model code, but "
                              "registers 0x000A-0x0023 do not answer: not enough to tell")
    rain, kmh = _regs(await read(4, 48, 3, unit)), _regs(await read(4, 83, 4, unit))
    any_address = f"it answers registers no model has (input {CONTROL_INPUT} = {filler}), so only values " \
                  "that differ from that count" if filler is not None else ""
    wxt = _decode("vaisala_wxt530", 4, 0x000A, block)
    wxt_bad = _problems(wxt)
    wxt_only = _evident([block[a - 0x000A] for a in _WXT_ONLY], filler, (0x7FFF, 0xFFFF))
    lufft_evident = rain is not None and kmh is not None and _evident(rain + kmh, filler) > 0
    lufft_bad = _problems({**_decode("lufft_ws", 4, 0x000A, block), **_decode("lufft_ws", 4, 48, rain or []),
                           **_decode("lufft_ws", 4, 83, kmh or [])})
    refuses_lufft = rain is None and kmh is None
    extra = f"; {any_address}" if any_address else ""

    if lufft_evident and not lufft_bad and not (hi in WXT_MODELS and wxt_only):
        sure = "high" if hi in _ONLY_LUFFT else "medium"
        return Identification(unit, "lufft_ws", sure, f"identification 0x{word:04X} is Lufft WS type code {hi}, "
                              f"software {lo}; rain registers 48-50 and km/h wind 83-86 answer with consistent "
                              f"values (a WXT530 has neither){extra}")
    if hi in WXT_MODELS and not wxt_bad and not lufft_evident:
        found = f"{code}: WXT53{hi}, software {lo}; 0x000A-0x0023 consistent ({len(wxt)} values, {wxt_only} of " \
                "the registers only a WXT530 has in use)"
        if filler is None and refuses_lufft:
            return Identification(unit, "vaisala_wxt530", "high", f"{found}; Lufft's rain and km/h registers "
                                  "(48-50, 83-86) are refused, as on a WXT530")
        if filler is not None and wxt_only:
            return Identification(unit, "vaisala_wxt530", "medium", f"{found}; 48-50 and 83-86 hold only what it "
                                  f"answers for any register{extra}")
    reasons = []
    if wxt_bad and hi in WXT_MODELS:
        reasons.append("as a WXT530: " + ", ".join(wxt_bad[:3]))
    if lufft_evident and lufft_bad:
        reasons.append("as a Lufft WS: " + ", ".join(lufft_bad[:3]))
    if lufft_evident and wxt_only and hi in WXT_MODELS:
        reasons.append(f"registers only a WXT530 has ({wxt_only} in use) and registers only a Lufft has (48-50, "
                       "83-86) both hold values")
    if (rain is None) != (kmh is None):
        reasons.append("only one of Lufft's register groups (48-50, 83-86) answers")
    if filler is not None and not wxt_only and not lufft_evident:
        reasons.append(f"{any_address}; none of the registers that tell a WXT530 from a Lufft does")
    if not reasons:
        reasons.append(f"model code {hi} with this map fits neither a WXT530 (models 1-6) nor a Lufft WS "
                       "(which also answers 48-50 and 83-86)")
    return Identification(unit, None, "none", f"{code}, but the evidence is inconsistent: " + "; ".join(reasons))


async def _holding_models(read: Read, unit: int) -> Identification:
    """The function-03 transmitters: no identity register, so several registers must agree."""
    control = _regs(await read(3, CONTROL_HOLDING, 1, unit))
    filler = None if control is None else control[0]
    station = _regs(await read(3, 500, 14, unit))
    if station is not None:
        values = _decode("small_weather_station", 3, 500, station)
        good = sum(1 for _, q in values.values() if q == Quality.GOOD)
        deg, sector, deg2 = station[1], station[2], station[3]
        agree = deg == deg2 and deg < 360 and sector <= 7 and (round(deg / 45) % 8 - sector) % 8 in (0, 1, 7)
        if good >= 8 and not _problems(values) and agree and _evident(station, filler) >= 8:
            return Identification(unit, "small_weather_station", "medium",
                                  f"holding registers 500-513 answer with {good} plausible weather values; wind "
                                  f"sector {sector} agrees with {deg} deg in 501 and 503")
    six = _regs(await read(3, 0, 11, unit))
    if six is not None:
        values = _decode("outdoor_six_gas", 3, 0, six)
        good = sum(1 for _, q in values.values() if q == Quality.GOOD)
        if good >= 6 and not _problems(values) and six[7] <= six[8] and _evident(six[3:], filler) >= 6:
            return Identification(unit, "outdoor_six_gas", "low", "holding registers 0-10 answer; 3-10 hold plausible "
                                  "SO2/NO2/CO/O3/PM/temperature/humidity values (PM2.5 <= PM10): check the label")
    pm = _regs(await read(3, 0, 10, unit))
    if pm is not None and filler is None:  # "10 does not answer" means nothing on a device that answers anything
        values = _decode("pm_transmitter", 3, 0, pm)
        good = sum(1 for _, q in values.values() if q == Quality.GOOD)
        if good == 2 and not _problems(values) and pm[4] <= pm[9]:
            return Identification(unit, "pm_transmitter", "low", "holding registers 0-9 answer (10 does not); "
                                  f"PM2.5 {pm[4]} <= PM10 {pm[9]} ug/m3 plausible: check the label")
    own = _regs(await read(3, 0x07D0, 1, unit))
    addressed = own is not None and own[0] == unit and own[0] != filler
    why = "; 0x07D0 holds its own address (Renke-style)" if addressed else ""
    pair = _regs(await read(3, 0x0000, 2, unit))
    if (pair is not None and pair[0] <= 7 and pair[1] < 360 and (round(pair[1] / 45) % 8 - pair[0]) % 8 in (0, 1, 7)
            and _evident(pair, filler) > 0):
        return Identification(unit, "renke_wind_direction", "medium" if addressed else "low",
                              f"0x0000 sector {pair[0]} agrees with 0x0001 = {pair[1]} deg{why}")
    one = _regs(await read(3, 0x0000, 1, unit))
    if one is not None and one[0] <= 700 and addressed:
        return Identification(unit, "renke_wind_speed", "medium",
                              f"one holding register 0x0000 = {one[0]} ({one[0] / 10:g} m/s plausible){why}")
    if one is not None and one[0] <= 700:
        return Identification(unit, None, "none", f"holding register 0x0000 = {one[0]} could be a Renke wind speed "
                              "(m/s x10), but nothing else confirms it (0x07D0 does not hold its address)")
    return Identification(unit, None, "none", "answers, but its registers fit no known profile")
