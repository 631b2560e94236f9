"""Shipped models: manifests match their files, promise what the issue asks, and load lean."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_models import features
from edge_models.manifest import ModelLoadError, dumps_manifest, load_manifest
from edge_models.runtime import OnnxModel, default_models_dir

MODELS = ("wx_fault", "rain_nowcast", "traffic_demand")
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", MODELS)
def test_manifest_matches_file(name: str) -> None:
    folder = default_models_dir() / name
    m = load_manifest(folder / "manifest.toml")
    data = (folder / m.file).read_bytes()
    assert m.name == name
    assert hashlib.sha256(data).hexdigest() == m.sha256
    assert len(data) == m.size_bytes
    assert m.size_bytes < 256 * 1024, "edge models stay well under 1 MiB"
    for part in ("train.py", "data.py"):
        assert (folder / part).is_file()
    assert m.window >= 2 and m.sample_period_s > 0
    assert all(i.unit for i in m.inputs), "every input names its unit"
    assert m.metrics and m.training.get("seed") is not None


@pytest.mark.parametrize("name", MODELS)
def test_manifest_features_are_the_runtime_features(name: str) -> None:
    m = load_manifest(default_models_dir() / name / "manifest.toml")
    expected = {"sensor_fault": features.FAULT_FEATURES, "rain_nowcast": features.NOWCAST_FEATURES,
                "traffic_demand": features.TRAFFIC_FEATURES}[m.kind]
    assert tuple(m.features) == expected
    model = OnnxModel.load(default_models_dir() / name, name=name, version=m.version)
    assert model.infer(__import__("numpy").zeros((3, len(expected)), dtype="float32")).shape[0] == 3


def test_manifest_metrics_meet_the_issue_targets() -> None:
    d = default_models_dir()
    f = load_manifest(d / "wx_fault" / "manifest.toml").metrics
    assert f["f1_fault"] >= 0.9 and f["f1_fault"] > f["baseline_f1_fault"]
    r = load_manifest(d / "rain_nowcast" / "manifest.toml").metrics
    assert r["brier"] < r["baseline_brier_climatology"]
    t = load_manifest(d / "traffic_demand" / "manifest.toml").metrics
    assert t["mae_veh_per_5min"] <= 0.8 * t["baseline_mae_persistence"]


def test_results_file_reports_the_shipped_metrics() -> None:
    text = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    assert "## Inference (issue 5)" in text
    for name in MODELS:
        m = load_manifest(default_models_dir() / name / "manifest.toml")
        headline = {"sensor_fault": "f1_fault", "rain_nowcast": "brier", "traffic_demand": "mae_veh_per_5min"}[m.kind]
        assert str(m.metrics[headline]) in text, f"{name}: RESULTS.md is stale"


def test_box_runtime_imports_no_training_stack() -> None:
    code = (
        "import sys, json\n"
        "from agent.inference import InferenceStage, ModelSpec\n"
        "s = InferenceStage.from_config([ModelSpec('wx_fault', '1.0.0'), ModelSpec('rain_nowcast', '1.0.0'),"
        " ModelSpec('traffic_demand', '1.0.0')])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('sklearn', 'skl2onnx', 'onnx', 'hil_tests', 'scipy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout) == []


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    src = load_manifest(default_models_dir() / "traffic_demand" / "manifest.toml")
    raw = (default_models_dir() / "traffic_demand" / "manifest.toml").read_text()
    p = tmp_path / "manifest.toml"
    p.write_text(raw.replace(f'version = "{src.version}"', 'version = "one"'))
    with pytest.raises(ModelLoadError) as e:
        load_manifest(p)
    assert "[version]" in str(e.value) and "'one'" in str(e.value) and str(p) in str(e.value)
    p.write_text(raw.replace("window = 12", 'window = "12"'))
    with pytest.raises(ModelLoadError, match=r"\[window\]"):
        load_manifest(p)
    p.write_text(dumps_manifest({"name": "x_y", "version": "2.0", "nested": {"a": 1.5, "b": [1, 2]}}))
    assert "[nested]" in p.read_text() and 'version = "2.0"' in p.read_text()
