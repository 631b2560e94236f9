"""Samples for the traffic-demand forecast, from the junction physics (drivers.physics.traffic).

One row per (junction, detector, 5-minute interval) with a full hour of history; the target is
the detector's volume in the interval that ends 15 minutes after the newest one. Junctions are
independent seeds with their own demand level, so the model sees quiet and busy approaches.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from drivers.physics.traffic import INTERVAL_S, TrafficModel
from edge_models.features import traffic_features

PERIOD_S = INTERVAL_S
WINDOW = 12
AHEAD = 3  # intervals: 15 minutes
UTC_OFFSET_H = 8.0

TRAIN_SEEDS = range(300, 316)
TRAIN_DAYS = 10
HOLDOUT_SEEDS = range(9300, 9310)
HOLDOUT_DAYS = 21


def junction(seed: int, days: int) -> dict:
    level = 0.5 + (seed * 2654435761 % 1000) / 1000.0  # 0.5 .. 1.5 x the default demand
    start = 1_750_000_000.0 + (seed % 7) * 86400.0
    return TrafficModel(seed=seed, start=start, level=level, utc_offset_h=UTC_OFFSET_H).series(int(days * 288))


def rows(series: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, target volume, persistence forecast, volume windows) over all detectors."""
    t = series["t_end"]
    xs, ys, ps, vs = [], [], [], []
    for d in range(series["volume"].shape[1]):
        vol = series["volume"][:, d]
        occ = series["occupancy"][:, d]
        vw = sliding_window_view(vol, WINDOW)[: len(vol) - WINDOW + 1 - AHEAD]
        ow = sliding_window_view(occ, WINDOW)[: len(vol) - WINDOW + 1 - AHEAD]
        ends = np.arange(WINDOW - 1, len(vol) - AHEAD)
        xs.append(traffic_features(vw, ow, t[ends], UTC_OFFSET_H))
        ys.append(vol[ends + AHEAD])
        ps.append(vol[ends])
        vs.append(vw)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ps), np.concatenate(vs)


def dataset(seeds, days: int):
    parts = [rows(junction(s, days)) for s in seeds]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def evaluate(model, seeds=HOLDOUT_SEEDS, days: int = HOLDOUT_DAYS) -> dict:
    from edge_models.features import traffic_volume
    from edge_models.metrics import mae, r4

    x, y, pers, vw = dataset(seeds, days)
    pred = traffic_volume(model.infer(x)[:, 0], vw)
    m = mae(y, pred)
    m_pers = mae(y, pers)
    m_mean3 = mae(y, vw[:, -3:].mean(axis=1))
    return {
        "mae_veh_per_5min": r4(m),
        "baseline": "persistence: the newest 5-minute volume",
        "baseline_mae_persistence": r4(m_pers),
        "improvement_vs_persistence": r4(1.0 - m / m_pers),
        "mae_mean_of_last_3": r4(m_mean3),
        "holdout_rows": int(len(y)),
        "holdout_mean_volume": r4(float(np.mean(y))),
    }
