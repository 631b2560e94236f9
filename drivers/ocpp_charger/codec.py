"""OCPP 1.6 values <-> reading values: pure functions, property-tested (tests/test_ocpp_charger.py).

The `ocpp` package checks each message against the 1.6 JSON schemas (types, enums, required keys,
no extra keys); it does not check what the schemas leave as strings: a sampledValue's `value`
(a decimal number as text), timestamps (`"format": "date-time"` is not enforced) and whether a
unit fits its measurand. That is done here. A value that breaks those rules raises `SampleError`
with the OCPP CallError code to answer and a message naming the field; a value that is well formed
but not plausible (a negative energy register, SoC 130 %, a charger clock in 1970) is kept and
flagged (Quality.OUT_OF_RANGE / SUSPECT): the charger must still get its answer, or it re-sends
the same message until it gives up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from core.reading import Quality

__all__ = ["SampleError", "Sample", "STATUSES", "ERROR_CODES", "parse_timestamp", "charger_time",
           "parse_number", "decode_sample", "decode_meter_value", "format_time"]

STATUSES = ("Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing", "Reserved",
            "Unavailable", "Faulted")
ERROR_CODES = ("NoError", "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature",
               "InternalError", "LocalListConflict", "OtherError", "OverCurrentFailure", "OverVoltage",
               "PowerMeterFailure", "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "UnderVoltage",
               "WeakSignal")

#: charger clocks before this are garbage (a charger without an RTC before it was accepted)
TS_PLAUSIBLE_MIN = 1_262_304_000.0  # 2010-01-01
TS_FUTURE_SLACK_S = 86_400.0
NUMBER_MAX = 1e15
_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|z|[+-]\d{2}:\d{2})?$")
_NUMBER_RE = re.compile(r"^[+-]?(\d{1,20}(\.\d{0,20})?|\.\d{1,20})([eE][+-]?\d{1,3})?$")


class SampleError(ValueError):
    """A value the charger sent that cannot be stored; `code` is the OCPP CallError code to answer."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Sample:
    point: str          # e.g. "energy_import", "current_import_l1", "temperature_body"
    value: float
    unit: str
    quality: Quality
    context: str


# measurand -> (point name, {OCPP unit: (our unit, factor)}, our unit when the charger sends none, plausible range)
_W = {"W": ("W", 1.0), "kW": ("W", 1000.0)}
_VAR = {"var": ("var", 1.0), "kvar": ("var", 1000.0)}
_WH = {"Wh": ("Wh", 1.0), "kWh": ("Wh", 1000.0)}
_VARH = {"varh": ("varh", 1.0), "kvarh": ("varh", 1000.0)}
_VA = {"VA": ("VA", 1.0), "kVA": ("VA", 1000.0)}
_ENERGY = (0.0, NUMBER_MAX)
_MEASURANDS: dict[str, tuple[str, dict[str, tuple[str, float]], str, tuple[float, float]]] = {
    "Energy.Active.Import.Register": ("energy_import", _WH, "Wh", _ENERGY),
    "Energy.Active.Export.Register": ("energy_export", _WH, "Wh", _ENERGY),
    "Energy.Reactive.Import.Register": ("energy_reactive_import", _VARH, "varh", _ENERGY),
    "Energy.Reactive.Export.Register": ("energy_reactive_export", _VARH, "varh", _ENERGY),
    "Energy.Active.Import.Interval": ("energy_import_interval", _WH, "Wh", _ENERGY),
    "Energy.Active.Export.Interval": ("energy_export_interval", _WH, "Wh", _ENERGY),
    "Energy.Reactive.Import.Interval": ("energy_reactive_import_interval", _VARH, "varh", _ENERGY),
    "Energy.Reactive.Export.Interval": ("energy_reactive_export_interval", _VARH, "varh", _ENERGY),
    "Power.Active.Import": ("power_import", _W, "W", (0.0, 1e7)),
    "Power.Active.Export": ("power_export", _W, "W", (0.0, 1e7)),
    "Power.Reactive.Import": ("power_reactive_import", _VAR, "var", (0.0, 1e7)),
    "Power.Reactive.Export": ("power_reactive_export", _VAR, "var", (0.0, 1e7)),
    "Power.Offered": ("power_offered", {**_W, **_VA}, "W", (0.0, 1e7)),
    "Power.Factor": ("power_factor", {}, "", (-1.0, 1.0)),
    "Current.Import": ("current_import", {"A": ("A", 1.0)}, "A", (0.0, 2000.0)),
    "Current.Export": ("current_export", {"A": ("A", 1.0)}, "A", (0.0, 2000.0)),
    "Current.Offered": ("current_offered", {"A": ("A", 1.0)}, "A", (0.0, 2000.0)),
    "Voltage": ("voltage", {"V": ("V", 1.0)}, "V", (0.0, 1500.0)),
    "Frequency": ("frequency", {"Hertz": ("Hz", 1.0)}, "Hz", (40.0, 70.0)),
    "Temperature": ("temperature", {"Celsius": ("degC", 1.0), "Celcius": ("degC", 1.0),
                                    "Fahrenheit": ("degF", 1.0), "K": ("K", 1.0)}, "degC", (-273.15, 1000.0)),
    "SoC": ("soc", {"Percent": ("%", 1.0)}, "%", (0.0, 100.0)),
    "RPM": ("rpm", {}, "rpm", (0.0, 1e6)),
}
_PHASES = ("L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1")
_LOCATIONS = ("Cable", "EV", "Inlet", "Outlet", "Body")
_CONTEXTS = ("Interruption.Begin", "Interruption.End", "Sample.Clock", "Sample.Periodic", "Transaction.Begin",
             "Transaction.End", "Trigger", "Other")


def parse_timestamp(text: Any, field: str = "timestamp") -> float:
    """An OCPP date-time (ISO 8601; fractions and offsets accepted, none = UTC) as Unix seconds."""
    if not isinstance(text, str) or len(text) > 40:
        raise SampleError("TypeConstraintViolation", f"{field} must be an ISO 8601 date-time string, got {_show(text)}")
    m = _TS_RE.match(text)
    if m is None:
        raise SampleError("TypeConstraintViolation", f"{field} is not an ISO 8601 date-time: {_show(text)}")
    frac = (m.group(2) or "")[:7]  # datetime takes at most microseconds
    zone = m.group(3) or "Z"
    try:
        dt = datetime.fromisoformat(m.group(1) + frac + ("+00:00" if zone in "Zz" else zone))
    except ValueError as exc:
        raise SampleError("TypeConstraintViolation",
                          f"{field} is not a valid date-time: {_show(text)} ({exc})") from None
    return dt.timestamp()


def charger_time(ts: float, now: float) -> tuple[float, Quality]:
    """The time to store for a charger's timestamp: its own when plausible, else ours, flagged SUSPECT."""
    if TS_PLAUSIBLE_MIN <= ts <= now + TS_FUTURE_SLACK_S:
        return ts, Quality.GOOD
    return now, Quality.SUSPECT


def format_time(ts: float) -> str:
    """Unix seconds as the UTC ISO 8601 text OCPP answers carry (currentTime)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_number(text: Any, field: str = "value") -> float:
    """A sampledValue's value: a decimal number as a string (no NaN, infinities or hex)."""
    if not isinstance(text, str):
        raise SampleError("TypeConstraintViolation", f"{field} must be a decimal number as a string, got {_show(text)}")
    if not _NUMBER_RE.match(text.strip()):
        raise SampleError("TypeConstraintViolation", f"{field} is not a decimal number: {_show(text)}")
    value = float(text)
    if not math.isfinite(value) or abs(value) > NUMBER_MAX:
        raise SampleError("PropertyConstraintViolation", f"{field} is out of range: {_show(text)}")
    return value


def decode_sample(sv: Mapping[str, Any], field: str = "sampledValue") -> Sample | None:
    """One sampledValue as a Sample; None for signed data (not a number to store)."""
    if not isinstance(sv, Mapping):
        raise SampleError("TypeConstraintViolation", f"{field} must be an object, got {_show(sv)}")
    if sv.get("format", "Raw") == "SignedData":
        return None
    measurand = sv.get("measurand", "Energy.Active.Import.Register")
    spec = _MEASURANDS.get(measurand) if isinstance(measurand, str) else None
    if spec is None:
        raise SampleError("PropertyConstraintViolation",
                          f"{field}.measurand is not an OCPP 1.6 measurand: {_show(measurand)}")
    point, units, default_unit, (lo, hi) = spec
    for key, known in (("phase", _PHASES), ("location", _LOCATIONS), ("context", _CONTEXTS)):
        if key in sv and sv[key] not in known:
            raise SampleError("PropertyConstraintViolation",
                              f"{field}.{key} is not an OCPP 1.6 {key}: {_show(sv[key])}")
    value = parse_number(sv.get("value"), f"{field}.value")
    unit = sv.get("unit")
    if unit is None:  # the spec's default is Wh; for other measurands chargers mean the natural unit
        ours, factor = default_unit, 1.0
    elif unit in units:
        ours, factor = units[unit]
    else:
        raise SampleError("PropertyConstraintViolation", f"{field}.unit {_show(unit)} does not fit {measurand} "
                          f"(expected {' or '.join(units) or 'no unit'})")
    value *= factor
    if "phase" in sv:
        point += "_" + sv["phase"].lower().replace("-", "_")
    if sv.get("location") in ("Inlet", "Cable", "Body"):
        point += "_" + sv["location"].lower()
    quality = Quality.GOOD if lo <= value <= hi else Quality.OUT_OF_RANGE
    return Sample(point, value, ours, quality, sv.get("context", "Sample.Periodic"))


def decode_meter_value(mv: Mapping[str, Any], now: float,
                       field: str = "meterValue") -> tuple[float, Quality, list[Sample]]:
    """One meterValue entry, with the `ocpp` package's snake_case keys (timestamp, sampled_value):
    (time to store, its quality, its samples). Raises SampleError."""
    if not isinstance(mv, Mapping):
        raise SampleError("TypeConstraintViolation", f"{field} must be an object, got {_show(mv)}")
    ts, quality = charger_time(parse_timestamp(mv.get("timestamp"), f"{field}.timestamp"), now)
    values = mv.get("sampled_value")
    if not isinstance(values, list) or not values:
        raise SampleError("OccurenceConstraintViolation", f"{field}.sampledValue must be a non-empty list")
    samples = [decode_sample(sv, f"{field}.sampledValue[{i}]") for i, sv in enumerate(values)]
    return ts, quality, [s for s in samples if s is not None]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
