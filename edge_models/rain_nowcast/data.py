"""Samples for the rain nowcast, from the weather physics (storms with pressure/humidity precursors).

One row per station-minute with a full 60-minute history; the label is 1 when the rain rate
reaches HEAVY_MMH at any sample in the next 30 minutes. Inputs are quantised like the WXT530
registers (0.1 units). Stations are independent seeds so that storms are independent.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge_models.datagen import simulate_weather
from edge_models.features import NOWCAST_CHANNELS, NOWCAST_FEATURES, nowcast_features

PERIOD_S = 60.0
WINDOW = 60
HORIZON = 30          # samples (minutes) ahead
HEAVY_MMH = 10.0

TRAIN_SEEDS = range(200, 260)
TRAIN_DAYS = 4.0
HOLDOUT_SEEDS = range(9200, 9230)
HOLDOUT_DAYS = 2.5


def station(seed: int, days: float) -> dict:
    w = simulate_weather(seed, days, PERIOD_S)
    obs = {c: np.round(np.round(w[c] / 0.1) * 0.1, 6) for c in NOWCAST_CHANNELS}
    return {"t": w["t"], "obs": obs, "rain": w["rain_intensity"], "storms": w["storms"]}


def rows(st: dict, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, label, window-end time, rain now) for windows with a full 30-minute future."""
    rain = st["rain"]
    n = len(rain)
    future = sliding_window_view(rain[1:], HORIZON).max(axis=1)  # future[i] = max rain[i+1 .. i+HORIZON]
    ends = np.arange(WINDOW - 1, n - HORIZON, stride)
    win = np.stack([sliding_window_view(st["obs"][c], WINDOW) for c in NOWCAST_CHANNELS], axis=1)
    x = nowcast_features(win[ends - (WINDOW - 1)])
    y = (future[ends] >= HEAVY_MMH).astype(np.int64)
    return x, y, st["t"][ends], st["obs"]["rain_intensity"][ends]


def dataset(seeds, days: float, stride: int = 1):
    parts = [rows(station(s, days), stride) for s in seeds]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def alarm_events(st: dict, prob: np.ndarray, t: np.ndarray, threshold: float) -> dict:
    """Per heavy-rain onset: was it warned before it started, and how early.

    An onset is the first sample of a run at >= HEAVY_MMH. It counts as warned when the
    probability crossed the threshold within the 90 minutes before it (while still below heavy).
    A false alarm is an alarm start with no heavy rain in the following 60 minutes.
    """
    rain = st["rain"]
    st_t = st["t"]
    heavy = rain >= HEAVY_MMH
    onsets = st_t[1:][heavy[1:] & ~heavy[:-1]]
    above = prob >= threshold
    starts = t[1:][above[1:] & ~above[:-1]]
    if len(above) and above[0]:
        starts = np.concatenate([t[:1], starts])
    leads, warned = [], 0
    for o in onsets:
        if o < t[0] + 90 * 60 or o > t[-1]:
            continue  # no full look-back inside the scored span
        before = (t >= o - 90 * 60) & (t < o)
        if above[before].any():
            warned += 1
            leads.append(float(o - t[before][np.argmax(above[before])]) / 60.0)
    false = 0
    for s in starts:
        j = np.searchsorted(st_t, s)
        if not heavy[j:j + 60].any():
            false += 1
    scored = sum(1 for o in onsets if t[0] + 90 * 60 <= o <= t[-1])
    return {"onsets": scored, "warned": warned, "leads_min": leads, "false_alarms": false}


def evaluate(model, seeds=HOLDOUT_SEEDS, days: float = HOLDOUT_DAYS, climatology: float | None = None) -> dict:
    from edge_models.metrics import brier, r4

    xs, ys, probs = [], [], []
    onsets = warned = false = 0
    leads: list[float] = []
    threshold = model.manifest.thresholds.get("alarm", 0.5)
    for s in seeds:
        st = station(s, days)
        x, y, t, _ = rows(st)
        p = model.infer(x)[:, 1]
        ev = alarm_events(st, p, t, threshold)
        onsets += ev["onsets"]
        warned += ev["warned"]
        false += ev["false_alarms"]
        leads += ev["leads_min"]
        xs.append(x)
        ys.append(y)
        probs.append(p)
    x, y, p = np.concatenate(xs), np.concatenate(ys), np.concatenate(probs)
    clim = float(np.mean(y)) if climatology is None else climatology
    rain_now = np.expm1(x[:, NOWCAST_FEATURES.index("rain")])  # log1p of the current rate
    persistence = (rain_now >= HEAVY_MMH - 1e-6).astype(float)
    b = brier(y, p)
    alarm = p >= threshold
    tp = float(np.sum(alarm & (y == 1)))
    b_clim = brier(y, np.full(len(y), clim))
    return {
        "brier": r4(b),
        "baseline": "climatology: the training set's base rate as a constant probability",
        "baseline_brier_climatology": r4(b_clim),
        "brier_skill_vs_climatology": r4(1.0 - b / b_clim),
        "brier_persistence": r4(brier(y, persistence)),
        "climatology_rate": r4(clim),
        "holdout_rows": int(len(y)),
        "holdout_positive_share": r4(float(np.mean(y))),
        "alarm_precision_rows": r4(tp / max(float(alarm.sum()), 1.0)),
        "alarm_recall_rows": r4(tp / max(float(y.sum()), 1.0)),
        "heavy_onsets": onsets,
        "onsets_warned_before_start": warned,
        "probability_of_detection": r4(warned / onsets) if onsets else 0.0,
        "median_lead_min": r4(float(np.median(leads))) if leads else 0.0,
        "false_alarms_per_station_day": r4(false / (len(list(seeds)) * days)),
    }
