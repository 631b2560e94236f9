"""Labelled windows for the sensor fault detector, from weather physics + injected faults.

Labels are per (station, channel, window end) and say what the LAST sample of the window is:
ok, stuck, spike, drift or dead. Some windows are honestly ambiguous and get label -1 (left
out of training and of every metric; the share is reported in the manifest):

- the first samples of a fault, before it can show (stuck < 15 samples, 60 for pressure, whose
  0.1 hPa steps often do not change for an hour in calm weather; dead < 2; drift < 20 samples or
  an offset under one channel scale);
- a fault with no visible effect (a spike or drift clipped at 100 % humidity, humidity stuck or
  dead at saturation);
- the first 5 samples after a fault ends (the window still shows it).

Spikes earlier in the window than the last sample are `ok`: the detector judges the newest
sample and must not keep flagging a channel for an old spike.
"""

from __future__ import annotations

import random

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from drivers.physics.faults import CHANNELS, FaultKind, inject, quantise, random_faults
from edge_models.datagen import simulate_weather
from edge_models.features import FAULT_CHANNELS, fault_features, local_hour

PERIOD_S = 60.0
WINDOW = 60
UTC_OFFSET_H = 8.0
STUCK_MIN = {"air_temperature": 15, "relative_humidity": 15, "air_pressure": 60, "wind_speed": 15}
SCALE = {"air_temperature": 1.0, "relative_humidity": 3.0, "air_pressure": 0.5, "wind_speed": 1.0}
_KINDS = list(FaultKind)


def _labels(t: np.ndarray, truth_q: np.ndarray, obs: np.ndarray, code: np.ndarray, faults: list,
            channel: str) -> np.ndarray:
    n = len(t)
    label = np.zeros(n, dtype=np.int64)
    elapsed = np.full(n, -1, dtype=np.int64)
    since_end = np.full(n, 10**9, dtype=np.int64)
    for f in faults:
        if f.kind is FaultKind.SPIKE:
            continue
        idx = np.flatnonzero((t >= f.start) & (t < f.end))
        if len(idx) == 0:
            continue
        elapsed[idx] = np.arange(len(idx))
        after = np.arange(idx[-1] + 1, min(idx[-1] + 1 + WINDOW, n))
        since_end[after] = np.minimum(since_end[after], after - idx[-1])
    visible = np.abs(obs - truth_q)
    scale = SCALE[channel]
    for i in range(n):
        kind = _KINDS[code[i]]
        if kind is FaultKind.OK:
            label[i] = 0 if since_end[i] >= 5 else -1
        elif kind is FaultKind.SPIKE:
            label[i] = 2 if visible[i] >= 2 * scale else -1
        elif kind is FaultKind.STUCK:
            sat = channel == "relative_humidity" and obs[i] >= 99.5
            label[i] = 1 if elapsed[i] >= STUCK_MIN[channel] and not sat else -1
        elif kind is FaultKind.DRIFT:
            label[i] = 3 if elapsed[i] >= 20 and visible[i] >= scale else -1
        else:  # dead
            sat = channel == "relative_humidity" and obs[i] >= 99.5 and truth_q[i] >= 99.5
            label[i] = 4 if elapsed[i] >= 2 and not sat else -1
    return label


def station(seed: int, days: float, *, episodes_per_day: float = 2.0, spikes_per_day: float = 12.0) -> dict:
    """One station's observed channels, fault codes and labels."""
    w = simulate_weather(seed, days, PERIOD_S)
    t = w["t"]
    rng = random.Random(seed * 31 + 5)
    obs, labels = {}, {}
    for name in FAULT_CHANNELS:
        spec = CHANNELS[name]
        faults = random_faults(rng, spec, float(t[0]) + WINDOW * PERIOD_S, float(t[-1]), sample_s=PERIOD_S,
                               episodes_per_day=episodes_per_day, spikes_per_day=spikes_per_day)
        o, code = inject(t, w[name], spec, faults)
        obs[name] = o
        labels[name] = _labels(t, quantise(w[name], spec), o, code, faults, name)
    obs["rain_intensity"] = np.round(np.round(w["rain_intensity"] / 0.1) * 0.1, 6)
    return {"t": t, "obs": obs, "labels": labels}


def windows(st: dict, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, channel index) for every window end (every `stride`-th)."""
    t = st["t"]
    chans = list(FAULT_CHANNELS) + ["rain_intensity"]
    ctx = np.stack([sliding_window_view(st["obs"][c], WINDOW) for c in chans], axis=1)[::stride]
    t_end = t[WINDOW - 1:][::stride]
    hour = local_hour(t_end, UTC_OFFSET_H)
    xs, ys, cs = [], [], []
    for ci, name in enumerate(FAULT_CHANNELS):
        ch = np.full(len(t_end), ci)
        xs.append(fault_features(np.ascontiguousarray(ctx[:, ci, :]), ch, ctx, hour, PERIOD_S))
        ys.append(st["labels"][name][WINDOW - 1:][::stride])
        cs.append(ch)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs)


def dataset(seeds: range | list[int], days: float, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [windows(station(s, days), stride) for s in seeds]
    x, y, ch = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return x, y, ch


TRAIN_SEEDS = range(100, 116)
HOLDOUT_SEEDS = range(9100, 9108)
TRAIN_DAYS = 6.0
HOLDOUT_DAYS = 4.0


# --- evaluation (numpy + the runtime only: used by train.py, the tests and the CLI) ---------
def baseline_predict(x: np.ndarray, channel: np.ndarray, thresholds: dict) -> np.ndarray:
    """The fixed-threshold rule the model must beat: flat run, last-sample jump or slope, per channel."""
    from edge_models.features import FAULT_FEATURES

    f = {name: x[:, i] for i, name in enumerate(FAULT_FEATURES)}
    out = np.zeros(len(x), dtype=bool)
    for ci, name in enumerate(FAULT_CHANNELS):
        if name not in thresholds:
            continue
        run_max, z_max, slope_max = thresholds[name]
        m = channel == ci
        out[m] = (f["run_tail"][m] * WINDOW >= run_max) | (np.abs(f["last_z"][m]) >= z_max) | (
            np.abs(f["slope"][m]) >= slope_max)
    return out


def fit_baseline(x: np.ndarray, y: np.ndarray, channel: np.ndarray) -> dict:
    """Tune the rule's three thresholds per channel on training data (best binary F1)."""
    from edge_models.metrics import f1_binary

    grid_run: list[float] = [5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60]
    grid_z = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0]
    grid_slope = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 50.0]
    best: dict = {}
    for ci, name in enumerate(FAULT_CHANNELS):
        m = channel == ci
        xm, ym, cm = x[m], y[m] > 0, channel[m]
        cur = [15, 3.0, 6.0]
        for _ in range(2):  # coordinate ascent
            for k, grid in enumerate((grid_run, grid_z, grid_slope)):
                scores = []
                for v in grid:
                    trial = list(cur)
                    trial[k] = v
                    scores.append(f1_binary(ym, baseline_predict(xm, cm, {name: trial})))
                cur[k] = grid[int(np.argmax(scores))]
        best[name] = [float(v) for v in cur]
    return best


def evaluate(model, seeds=HOLDOUT_SEEDS, days: float = HOLDOUT_DAYS, baseline: dict | None = None) -> dict:
    """Held-out metrics of a loaded OnnxModel (and of the fixed-threshold baseline)."""
    from edge_models.metrics import f1_binary, f1_per_class, r4

    x, y, ch = dataset(list(seeds), days)
    keep = y >= 0
    x, y, ch = x[keep], y[keep], ch[keep]
    prob = model.infer(x)
    threshold = model.manifest.thresholds.get("alarm", 0.5)
    score = 1.0 - prob[:, 0]
    flagged = score >= threshold
    cls = np.where(flagged, 1 + np.argmax(prob[:, 1:], axis=1), 0)
    per_class = f1_per_class(y, cls, 5)
    out: dict[str, float | str] = {
        "f1_fault": r4(f1_binary(y > 0, flagged)),
        "macro_f1_classes": r4(float(np.mean(per_class))),
        "false_flag_rate_ok": r4(float(np.mean(flagged[y == 0]))),
        "holdout_windows": int(len(y)),
        "holdout_ambiguous_share": r4(1.0 - keep.mean()),
        "holdout_fault_share": r4(float(np.mean(y > 0))),
    }
    for name, v in zip(("ok", "stuck", "spike", "drift", "dead"), per_class):
        out[f"f1_{name}"] = r4(v)
    for ci, name in enumerate(FAULT_CHANNELS):
        m = ch == ci
        out[f"f1_fault_{name}"] = r4(f1_binary(y[m] > 0, flagged[m]))
    if baseline:
        b = baseline_predict(x, ch, baseline)
        out["baseline"] = "fixed thresholds per channel (flat run, last-sample jump, slope), tuned on training data"
        out["baseline_f1_fault"] = r4(f1_binary(y > 0, b))
        out["baseline_false_flag_rate_ok"] = r4(float(np.mean(b[y == 0])))
    return out
