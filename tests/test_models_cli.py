"""`quanedge models ...` (the typer sub-app the agent CLI mounts as `models`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_models.cli import app
from edge_models.manifest import load_manifest
from edge_models.runtime import default_models_dir

runner = CliRunner()


def test_list_shows_each_model_with_its_baseline() -> None:
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0
    for name in ("wx_fault", "rain_nowcast", "traffic_demand"):
        assert name in r.output
    assert "baseline" in r.output


def test_verify_passes_shipped_and_fails_tampered(tmp_path: Path) -> None:
    assert runner.invoke(app, ["verify"]).exit_code == 0
    shutil.copytree(default_models_dir() / "traffic_demand", tmp_path / "traffic_demand",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (tmp_path / "traffic_demand" / "model.onnx").write_bytes(b"tampered")
    r = runner.invoke(app, ["verify", "--models-dir", str(tmp_path)])
    assert r.exit_code == 1 and "FAIL traffic_demand" in r.output and "sha256" in r.output


def test_train_refuses_unknown_names() -> None:
    r = runner.invoke(app, ["train", "../etc"])
    assert r.exit_code != 0
    r = runner.invoke(app, ["train", "no_such_model"])
    assert r.exit_code != 0


def test_evaluate_recomputes_the_manifest_metrics() -> None:
    r = runner.invoke(app, ["evaluate", "traffic_demand"])
    assert r.exit_code == 0, r.output
    shipped = load_manifest(default_models_dir() / "traffic_demand" / "manifest.toml").metrics
    assert json.loads(r.output)["mae_veh_per_5min"] == shipped["mae_veh_per_5min"]


@pytest.mark.slow
def test_training_is_seeded_repeatable_and_reaches_the_shipped_metrics(tmp_path: Path) -> None:
    """Training twice gives the same bytes; the result scores what the shipped manifest says (~25 s).

    Byte equality with the SHIPPED file is not asserted: the MLP's float sums go through the
    machine's BLAS kernels (AVX2 vs AVX-512 round differently), so another CPU trains weights that
    differ in the last bits and drift apart over the epochs. Same machine, same seed: same bytes."""
    outs = []
    for i in (1, 2):
        r = runner.invoke(app, ["train", "traffic_demand", "--out", str(tmp_path / str(i))])
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.output))
    assert outs[0]["sha256"] == outs[1]["sha256"]
    assert (tmp_path / "1" / "model.onnx").read_bytes() == (tmp_path / "2" / "model.onnx").read_bytes()
    shipped = load_manifest(default_models_dir() / "traffic_demand" / "manifest.toml").metrics
    trained = load_manifest(tmp_path / "1" / "manifest.toml").metrics
    assert trained["baseline_mae_persistence"] == shipped["baseline_mae_persistence"], "same hold-out data"
    assert abs(trained["mae_veh_per_5min"] - shipped["mae_veh_per_5min"]) < 0.05 * shipped["mae_veh_per_5min"]
    assert trained["improvement_vs_persistence"] >= 0.20
