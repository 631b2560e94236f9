"""Train the heavy-rain nowcast: `quanedge models train rain_nowcast`.

Dev only (scikit-learn + skl2onnx); seeded and repeatable. P(rain rate >= 10 mm/h at any minute
in the next 30 minutes) from the last 60 minutes of pressure, humidity, temperature, wind and
rain at one station. Gradient boosting, 100 trees of depth 3 (no large forest).

The alarm threshold (0.3) leans towards recall: a missed cloudburst costs more than a needless
warning; the manifest records the precision and recall it gives on the hold-out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_models import training
from edge_models.features import NOWCAST_CHANNELS, NOWCAST_FEATURES
from edge_models.rain_nowcast import data

NAME = "rain_nowcast"
VERSION = "1.0.0"
UNITS = {"air_pressure": "hPa", "relative_humidity": "%", "air_temperature": "degC", "wind_speed": "m/s",
         "rain_intensity": "mm/h"}


def train(seed: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    t0 = time.perf_counter()
    x, y, _, _ = data.dataset(data.TRAIN_SEEDS, data.TRAIN_DAYS, stride=2)
    t_data = time.perf_counter() - t0
    clf = GradientBoostingClassifier(n_estimators=100, max_depth=3, subsample=0.5, random_state=seed)
    clf.fit(x, y)
    t_fit = time.perf_counter() - t0 - t_data
    climatology = float(np.mean(y))
    onx = to_onnx(clf, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                  options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    manifest = {
        "name": NAME,
        "version": VERSION,
        "kind": "rain_nowcast",
        "description": f"P(rain >= {data.HEAVY_MMH:g} mm/h within {data.HORIZON} min) at a weather station",
        "sample_period_s": data.PERIOD_S,
        "window": data.WINDOW,
        "utc_offset_h": 8.0,
        "onnx_input": "features",
        "onnx_output": "probabilities",
        "classes": ["dry_or_light", "heavy_within_30min"],
        "features": list(NOWCAST_FEATURES),
        "inputs": [{"name": c, "point": c, "unit": UNITS[c], "role": "input"} for c in NOWCAST_CHANNELS],
        "outputs": [
            {"point": "rain_prob_30min", "unit": "1", "meaning": "probability of heavy rain within 30 minutes"},
            {"point": "rain_alarm", "unit": "1",
             "meaning": "ALARM record when the probability rises through alarm; EVENT when it falls below clear"},
        ],
        "thresholds": {"alarm": 0.3, "clear": 0.15, "heavy_mmh": data.HEAVY_MMH, "horizon_min": float(data.HORIZON)},
        "training": {
            "seed": seed, "train_seeds": f"{data.TRAIN_SEEDS.start}..{data.TRAIN_SEEDS.stop - 1}",
            "train_days_per_station": data.TRAIN_DAYS, "train_rows": int(len(y)),
            "holdout_seeds": f"{data.HOLDOUT_SEEDS.start}..{data.HOLDOUT_SEEDS.stop - 1}",
            "holdout_days_per_station": data.HOLDOUT_DAYS, "climatology_rate": round(climatology, 6),
            "data": "drivers.physics.weather, one-minute samples quantised to 0.1 units",
            "model": "GradientBoostingClassifier(100 trees, depth 3, subsample 0.5)",
            "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
            **training.lib_versions(),
        },
    }
    folder = out_dir or Path(__file__).resolve().parent
    return training.finish(folder, onx.SerializeToString(), manifest,
                           lambda m: data.evaluate(m, climatology=climatology))


def main(seed: int = 0) -> None:  # pragma: no cover - CLI entry
    out = train(seed)
    print({k: out["metrics"][k] for k in ("brier", "baseline_brier_climatology", "probability_of_detection")})


if __name__ == "__main__":  # pragma: no cover
    main()
