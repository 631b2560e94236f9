"""Train the weather-station sensor fault detector: `quanedge models train wx_fault`.

Dev only (scikit-learn + skl2onnx). Seeded and repeatable: the same seed gives the same data,
the same weights and the same model file bytes.

Rows are (station, channel, 60-minute window at one-minute samples); the model is a small MLP
(26 -> 32 -> 16 -> 5 classes, ~8 KiB) behind a standard scaler. Score = 1 - P(ok).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from edge_models import training
from edge_models.features import FAULT_CHANNELS, FAULT_CLASSES, FAULT_FEATURES
from edge_models.wx_fault import data

NAME = "wx_fault"
VERSION = "1.0.0"
UNITS = {"air_temperature": "degC", "relative_humidity": "%", "air_pressure": "hPa", "wind_speed": "m/s"}


def train(seed: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    x, y, ch = data.dataset(data.TRAIN_SEEDS, data.TRAIN_DAYS, stride=2)
    keep = y >= 0
    x, y, ch = x[keep], y[keep], ch[keep]
    t_data = time.perf_counter() - t0
    mlp = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, early_stopping=True, random_state=seed)
    clf = Pipeline([("scale", StandardScaler()), ("mlp", mlp)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    t_fit = time.perf_counter() - t0 - t_data
    baseline = data.fit_baseline(x, y, ch)
    onx = to_onnx(clf, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                  options={id(mlp): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    manifest = {
        "name": NAME,
        "version": VERSION,
        "kind": "sensor_fault",
        "description": "Weather-station channel fault class and score from a 60-minute window per channel",
        "sample_period_s": data.PERIOD_S,
        "window": data.WINDOW,
        "utc_offset_h": data.UTC_OFFSET_H,
        "onnx_input": "features",
        "onnx_output": "probabilities",
        "classes": list(FAULT_CLASSES),
        "features": list(FAULT_FEATURES),
        "inputs": [{"name": c, "point": c, "unit": UNITS[c], "role": "judged"} for c in FAULT_CHANNELS]
        + [{"name": "rain_intensity", "point": "rain_intensity", "unit": "mm/h", "role": "context"}],
        "outputs": [
            {"point": "fault_score.<channel>", "unit": "1",
             "meaning": "1 - P(ok) for the newest sample; text = fault class; >= alarm sets Quality.SUSPECT"},
            {"point": "fault_alarm.<channel>", "unit": "1",
             "meaning": "ALARM record when a channel turns faulty (maintenance); EVENT when it clears"},
        ],
        "thresholds": {"alarm": 0.5, "clear": 0.3},
        "training": {
            "seed": seed, "train_seeds": f"{data.TRAIN_SEEDS.start}..{data.TRAIN_SEEDS.stop - 1}",
            "train_days_per_station": data.TRAIN_DAYS, "train_rows": int(len(y)),
            "holdout_seeds": f"{data.HOLDOUT_SEEDS.start}..{data.HOLDOUT_SEEDS.stop - 1}",
            "holdout_days_per_station": data.HOLDOUT_DAYS,
            "data": "drivers.physics.weather + drivers.physics.faults, quantised to 0.1 units",
            "model": "StandardScaler + MLPClassifier(32, 16)",
            "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
            "baseline_thresholds": {k: v for k, v in baseline.items()},
            **training.lib_versions(),
        },
    }
    folder = out_dir or Path(__file__).resolve().parent
    return training.finish(folder, onx.SerializeToString(), manifest,
                           lambda m: data.evaluate(m, baseline=baseline))


def main(seed: int = 0) -> None:  # pragma: no cover - CLI entry
    out = train(seed)
    print({k: out["metrics"][k] for k in ("f1_fault", "baseline_f1_fault", "macro_f1_classes")})


if __name__ == "__main__":  # pragma: no cover
    main()
