"""Train the junction traffic-demand forecast: `quanedge models train traffic_demand`.

Dev only (scikit-learn + skl2onnx); seeded and repeatable. Predicts a detector's volume in the
5-minute interval ending 15 minutes from now, from the last hour of 5-minute volumes and
occupancies and the time of day / day of week. The MLP (15 -> 32 -> 16 -> 1, ~5 KiB) predicts
volume / level (level = mean of the last three volumes + 5); `features.traffic_volume` turns it
back into vehicles, so one model serves quiet and busy approaches alike.

The pattern thresholds (junction mean forecast per detector, veh per 5 min) are the defaults
`agent.traffic_control` uses to recommend 1 off-peak / 2 normal / 3 peak.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from edge_models import training
from edge_models.features import TRAFFIC_FEATURES, traffic_level
from edge_models.traffic_demand import data

NAME = "traffic_demand"
VERSION = "1.0.0"


def train(seed: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    x, y, _, vw = data.dataset(data.TRAIN_SEEDS, data.TRAIN_DAYS)
    t_data = time.perf_counter() - t0
    reg = Pipeline([("scale", StandardScaler()),
                    ("mlp", MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=60, early_stopping=True,
                                         random_state=seed))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(x, y / traffic_level(vw))
    t_fit = time.perf_counter() - t0 - t_data
    onx = to_onnx(reg, initial_types=[("features", FloatTensorType([None, x.shape[1]]))],
                  target_opset={"": 17, "ai.onnx.ml": 3})
    out_name = onx.graph.output[0].name
    manifest = {
        "name": NAME,
        "version": VERSION,
        "kind": "traffic_demand",
        "description": "Detector volume in the 5-minute interval ending 15 minutes ahead",
        "sample_period_s": data.PERIOD_S,
        "window": data.WINDOW,
        "utc_offset_h": data.UTC_OFFSET_H,
        "onnx_input": "features",
        "onnx_output": out_name,
        "features": list(TRAFFIC_FEATURES),
        "inputs": [
            {"name": "volume", "point": "detector_volume", "unit": "veh", "role": "input"},
            {"name": "occupancy", "point": "detector_occupancy", "unit": "%", "role": "input"},
        ],
        "outputs": [
            {"point": "volume_15min_forecast", "unit": "veh",
             "meaning": "vehicles in the 5-minute interval ending 15 minutes after the reading "
                        "(same suffix as the detector point)"},
        ],
        "thresholds": {"pattern_normal_from": 12.0, "pattern_peak_from": 28.0},
        "training": {
            "seed": seed, "train_seeds": f"{data.TRAIN_SEEDS.start}..{data.TRAIN_SEEDS.stop - 1}",
            "train_days_per_junction": data.TRAIN_DAYS, "train_rows": int(len(y)),
            "holdout_seeds": f"{data.HOLDOUT_SEEDS.start}..{data.HOLDOUT_SEEDS.stop - 1}",
            "holdout_days_per_junction": data.HOLDOUT_DAYS,
            "data": "drivers.physics.traffic, 4 detectors per junction, demand level 0.5-1.5x",
            "model": "StandardScaler + MLPRegressor(32, 16) on volume / level",
            "data_s": round(t_data, 1), "fit_s": round(t_fit, 1),
            **training.lib_versions(),
        },
    }
    folder = out_dir or Path(__file__).resolve().parent
    return training.finish(folder, onx.SerializeToString(), manifest, data.evaluate)


def main(seed: int = 0) -> None:  # pragma: no cover - CLI entry
    out = train(seed)
    keys = ("mae_veh_per_5min", "baseline_mae_persistence", "improvement_vs_persistence")
    print({k: out["metrics"][k] for k in keys})


if __name__ == "__main__":  # pragma: no cover
    main()
