"""What each kind of model does with windows and what it says back, as readings.

A head is chosen by the manifest's `kind` and bound to one loaded model. It knows:
- `channels`: the model's inputs, in window-store order;
- `select(store, dirty)`: which rows are ready to run (on the event loop, cheap);
- `compute(store, rows)`: gather windows, build features, run the model (worker thread);
- `emit(...)`: turn outputs into derived readings and alarm/event records (on the loop), keeping
  per-(device, point) alarm state in a dict the stage owns, so it survives a hot swap.

Alarms are edge-triggered with hysteresis: one ALARM when a score rises through `alarm` (and one
more, "reclassified", if the fault class changes while raised: a dead channel's first sample looks
like a spike), one EVENT when it falls below `clear`; a score sitting above the threshold does not
flood the buffer. A channel stays SUSPECT from its alarm until it clears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from core.reading import Quality, Reading, RecordClass
from edge_models.features import (
    FAULT_CHANNELS,
    FAULT_CLASSES,
    FAULT_CONTEXT,
    FAULT_FEATURES,
    NOWCAST_CHANNELS,
    NOWCAST_FEATURES,
    TRAFFIC_CHANNELS,
    TRAFFIC_FEATURES,
    fault_features,
    local_hour,
    nowcast_features,
    traffic_features,
    traffic_volume,
)
from edge_models.manifest import ModelLoadError
from edge_models.runtime import OnnxModel
from edge_models.windows import WindowStore

DERIVED = Quality.DERIVED
ROUTINE, ALARM, EVENT = RecordClass.ROUTINE, RecordClass.ALARM, RecordClass.EVENT

_UNIT_ALIASES = {
    "degc": "degC", "°c": "degC", "c": "degC", "celsius": "degC", "℃": "degC",
    "%": "%", "%rh": "%", "percent": "%", "pct": "%",
    "hpa": "hPa", "mbar": "hPa", "mb": "hPa",
    "m/s": "m/s", "mps": "m/s", "m s-1": "m/s",
    "mm/h": "mm/h", "mm/hr": "mm/h", "mmh": "mm/h",
    "veh": "veh", "vehicles": "veh", "count": "veh", "veh/5min": "veh",
}


def units_compatible(reading_unit: str, model_unit: str) -> bool:
    """True when the units agree, or when the reading carries no unit to check."""
    if not reading_unit:
        return True
    a = _UNIT_ALIASES.get(reading_unit.strip().lower(), reading_unit.strip())
    b = _UNIT_ALIASES.get(model_unit.strip().lower(), model_unit.strip())
    return a == b


@dataclass(slots=True)
class Binding:
    """One model instance on one device (and detector suffix): a slot in the window store."""

    device: str
    suffix: str
    slot: int
    points: tuple[str, ...]  # the device point feeding each channel


@dataclass(slots=True)
class Rows:
    slots: np.ndarray
    chans: np.ndarray | None
    ts: np.ndarray
    bindings: list[Binding]


class Head:
    kind: ClassVar[str]
    channels: ClassVar[tuple[str, ...]]
    features: ClassVar[tuple[str, ...]]

    def __init__(self, model: OnnxModel, threshold: float | None = None) -> None:
        m = model.manifest
        names = tuple(i.name for i in m.inputs)
        where = str(m.path) if m.path else m.name
        if names != self.channels:
            raise ModelLoadError("model inputs differ from what this agent feeds a " + self.kind, file=where,
                                 key="inputs", value=list(names), expected=str(list(self.channels)))
        if tuple(m.features) != self.features:
            raise ModelLoadError("model was trained on other features than this agent computes", file=where,
                                 key="features", value=len(m.features), expected=f"{list(self.features)}")
        self.model = model
        self.manifest = m
        alarm = m.thresholds.get("alarm", 0.5)
        self.alarm = alarm if threshold is None else float(threshold)
        self.clear = min(m.thresholds.get("clear", 0.5 * alarm) * self.alarm / alarm, self.alarm)

    def default_points(self) -> tuple[str, ...]:
        return tuple(i.point for i in self.manifest.inputs)

    def units(self) -> tuple[str, ...]:
        return tuple(i.unit for i in self.manifest.inputs)

    def _reason(self, **kw: Any) -> str:
        return json.dumps({"model": self.manifest.tag, **kw}, separators=(",", ":"))

    def select(self, store: WindowStore, dirty: dict[int, int], bindings: list[Binding]) -> Rows | None:
        """Default: one row per device whose windows are all full."""
        slots = [s for s in dirty if store.full(s)]
        if not slots:
            return None
        ts = [max(store.last_ts(s, c) for c in range(store.channels)) for s in slots]
        return Rows(np.array(slots), None, np.array(ts), [bindings[s] for s in slots])

    def compute(self, store: WindowStore, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def emit(self, rows: Rows, ok: np.ndarray, out: np.ndarray, state: dict, records: list[Reading],
             suspect: set) -> None:
        raise NotImplementedError


class FaultHead(Head):
    kind = "sensor_fault"
    channels = FAULT_CHANNELS + (FAULT_CONTEXT,)
    features = FAULT_FEATURES

    def __init__(self, model: OnnxModel, threshold: float | None = None) -> None:
        super().__init__(model, threshold)
        self._judged = tuple(i for i, inp in enumerate(self.manifest.inputs) if inp.role == "judged")

    def select(self, store: WindowStore, dirty: dict[int, int], bindings: list[Binding]) -> Rows | None:
        slots: list[int] = []
        chans: list[int] = []
        ts: list[float] = []
        for s, mask in dirty.items():
            if not store.full(s):
                continue
            for c in self._judged:
                if mask >> c & 1:
                    slots.append(s)
                    chans.append(c)
                    ts.append(store.last_ts(s, c))
        if not slots:
            return None
        return Rows(np.array(slots), np.array(chans), np.array(ts), [bindings[s] for s in slots])

    def compute(self, store: WindowStore, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        uniq, device = np.unique(rows.slots, return_inverse=True)
        win = store.gather(uniq)  # one context per device, shared by its judged channels
        ok = ~np.isnan(win).any(axis=(1, 2))[device]
        if not ok.any():
            return ok, np.zeros((0, len(FAULT_CLASSES)))
        chans = rows.chans[ok]  # type: ignore[index]
        dev = device[ok]
        own = win[dev, chans]
        hour = local_hour(rows.ts[ok], self.manifest.utc_offset_h)
        x = fault_features(own, chans, win, hour, self.manifest.sample_period_s, dev)
        return ok, self.model.infer(x)

    def emit(self, rows: Rows, ok: np.ndarray, out: np.ndarray, state: dict, records: list[Reading],
             suspect: set) -> None:
        score = 1.0 - out[:, 0]
        cls = 1 + np.argmax(out[:, 1:], axis=1)
        alarm, clear = self.alarm, self.clear
        for j, i in enumerate(np.flatnonzero(ok).tolist()):
            b = rows.bindings[i]
            point = b.points[int(rows.chans[i])]  # type: ignore[index]
            ts = float(rows.ts[i])
            sc = float(score[j])
            name = FAULT_CLASSES[int(cls[j])] if sc >= alarm else "ok"
            records.append(Reading(b.device, "fault_score." + point, sc, "1", ts, DERIVED, ROUTINE, name))
            key = (b.device, point)
            if key not in state:
                if sc >= alarm:
                    state[key] = name
                    suspect.add(key)
                    records.append(Reading(b.device, "fault_alarm." + point, sc, "1", ts, DERIVED, ALARM, self._reason(
                        state="raised", channel=point, fault=name, score=round(sc, 3), threshold=alarm,
                        action="maintenance: check the sensor")))
            elif sc >= alarm and name != state[key]:  # e.g. the first sample of a dead channel looked like a spike
                records.append(Reading(b.device, "fault_alarm." + point, sc, "1", ts, DERIVED, ALARM, self._reason(
                    state="reclassified", channel=point, fault=name, was=state[key], score=round(sc, 3),
                    threshold=alarm)))
                state[key] = name
            elif sc < clear:
                was = state.pop(key)
                suspect.discard(key)
                records.append(Reading(b.device, "fault_alarm." + point, sc, "1", ts, DERIVED, EVENT, self._reason(
                    state="cleared", channel=point, fault=was, score=round(sc, 3), threshold=clear)))


class NowcastHead(Head):
    kind = "rain_nowcast"
    channels = NOWCAST_CHANNELS
    features = NOWCAST_FEATURES

    def compute(self, store: WindowStore, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        win = store.gather(rows.slots)
        ok = ~np.isnan(win).any(axis=(1, 2))
        if not ok.any():
            return ok, np.zeros((0, 1))
        return ok, self.model.infer(nowcast_features(win[ok]))[:, 1:2]

    def emit(self, rows: Rows, ok: np.ndarray, out: np.ndarray, state: dict, records: list[Reading],
             suspect: set) -> None:
        th = self.manifest.thresholds
        for j, i in enumerate(np.flatnonzero(ok).tolist()):
            b = rows.bindings[i]
            ts = float(rows.ts[i])
            p = float(out[j, 0])
            records.append(Reading(b.device, "rain_prob_30min", p, "1", ts, DERIVED, ROUTINE))
            key = (b.device, "rain_alarm")
            if key not in state and p >= self.alarm:
                state[key] = ts
                records.append(Reading(b.device, "rain_alarm", p, "1", ts, DERIVED, ALARM, self._reason(
                    state="raised", p=round(p, 3), threshold=self.alarm,
                    heavy_mmh=th.get("heavy_mmh", 10.0), horizon_min=th.get("horizon_min", 30.0))))
            elif key in state and p < self.clear:
                state.pop(key)
                records.append(Reading(b.device, "rain_alarm", p, "1", ts, DERIVED, EVENT, self._reason(
                    state="cleared", p=round(p, 3), threshold=self.clear)))


class TrafficHead(Head):
    kind = "traffic_demand"
    channels = TRAFFIC_CHANNELS
    features = TRAFFIC_FEATURES

    def compute(self, store: WindowStore, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        win = store.gather(rows.slots)
        ok = ~np.isnan(win).any(axis=(1, 2))
        if not ok.any():
            return ok, np.zeros((0, 1))
        w = win[ok]
        x = traffic_features(w[:, 0], w[:, 1], rows.ts[ok], self.manifest.utc_offset_h)
        return ok, traffic_volume(self.model.infer(x)[:, 0], w[:, 0])[:, None]

    def emit(self, rows: Rows, ok: np.ndarray, out: np.ndarray, state: dict, records: list[Reading],
             suspect: set) -> None:
        for j, i in enumerate(np.flatnonzero(ok).tolist()):
            b = rows.bindings[i]
            records.append(Reading(b.device, "volume_15min_forecast" + b.suffix, float(out[j, 0]), "veh",
                                   float(rows.ts[i]), DERIVED, ROUTINE))


HEADS: dict[str, type[Head]] = {h.kind: h for h in (FaultHead, NowcastHead, TrafficHead)}


def make_head(model: OnnxModel, threshold: float | None = None) -> Head:
    m = model.manifest
    cls = HEADS.get(m.kind)
    if cls is None:
        raise ModelLoadError("unknown model kind", file=str(m.path) if m.path else m.name, key="kind",
                             value=m.kind, expected="one of " + ", ".join(sorted(HEADS)))
    return cls(model, threshold)
