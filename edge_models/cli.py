"""`quanedge models ...`: list, verify, train and evaluate the edge models.

Wire it into the agent CLI with `app.add_typer(edge_models.cli.app, name="models")`.
`list` and `verify` need only the box runtime; `train` and `evaluate` are dev tools (training
needs the dev extra: scikit-learn, skl2onnx, onnx; evaluation needs hil_tests' physics).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Optional

import typer

from edge_models.manifest import ModelLoadError, load_manifest
from edge_models.runtime import MANIFEST_NAME, OnnxModel, default_models_dir

app = typer.Typer(help="Edge models: list, verify, train, evaluate.", no_args_is_help=True)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_HEADLINE = {
    "sensor_fault": ("f1_fault", "baseline_f1_fault"),
    "rain_nowcast": ("brier", "baseline_brier_climatology"),
    "traffic_demand": ("mae_veh_per_5min", "baseline_mae_persistence"),
}
DirOption = typer.Option(None, "--models-dir", help="Folder of model folders (default: the shipped models).")


def _folders(models_dir: Optional[Path]) -> list[Path]:
    base = models_dir or default_models_dir()
    return sorted(p.parent for p in base.glob(f"*/{MANIFEST_NAME}"))


@app.command("list")
def list_models(models_dir: Optional[Path] = DirOption) -> None:
    """Name, version, size and the held-out metric against its baseline, per model."""
    for folder in _folders(models_dir):
        try:
            m = load_manifest(folder / MANIFEST_NAME)
        except ModelLoadError as exc:
            typer.echo(f"{folder.name}: BAD MANIFEST: {exc}")
            continue
        metric, base = _HEADLINE.get(m.kind, ("", ""))
        typer.echo(f"{m.name:16} {m.version:8} {m.kind:15} {m.size_bytes / 1024:6.1f} KiB  "
                   f"{metric}={m.metrics.get(metric)} (baseline {m.metrics.get(base)})")


@app.command()
def verify(name: Optional[str] = typer.Argument(None), models_dir: Optional[Path] = DirOption) -> None:
    """Check each model file against its manifest and run a trial batch. Exit 1 on any failure."""
    bad = 0
    for folder in _folders(models_dir):
        if name and folder.name != name:
            continue
        try:
            m = OnnxModel.load(folder).manifest
            typer.echo(f"ok   {m.tag} sha256 {m.sha256[:12]}")
        except ModelLoadError as exc:
            bad += 1
            typer.echo(f"FAIL {folder.name}: {exc}")
    if bad:
        raise typer.Exit(1)


def _module(name: str, part: str):
    if not _NAME_RE.match(name) or not (default_models_dir() / name / f"{part}.py").is_file():
        raise typer.BadParameter(f"no model named {name!r} with a {part}.py in {default_models_dir()}")
    return importlib.import_module(f"edge_models.{name}.{part}")


@app.command()
def train(name: str, seed: int = typer.Option(0, help="Training seed (data seeds are fixed per model)."),
          out: Optional[Path] = typer.Option(None, help="Write here instead of the model's folder.")) -> None:
    """Regenerate the data, train, export to ONNX, evaluate the exported file, write the manifest."""
    try:
        mod = _module(name, "train")
        result = mod.train(seed, out)
    except ImportError as exc:
        typer.echo(f"training needs the dev extra (scikit-learn, skl2onnx, onnx): {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"model": f"{result['name']}@{result['version']}", "sha256": result["sha256"],
                           "size_bytes": result["size_bytes"], "metrics": result["metrics"]}, indent=1))


@app.command()
def evaluate(name: str, models_dir: Optional[Path] = DirOption) -> None:
    """Recompute the held-out metrics of the installed model from fresh seeded data."""
    data = _module(name, "data")
    folder = (models_dir or default_models_dir()) / name
    try:
        model = OnnxModel.load(folder)
    except ModelLoadError as exc:
        typer.echo(f"FAIL {name}: {exc}", err=True)
        raise typer.Exit(1) from exc
    kwargs = {}
    if model.manifest.kind == "sensor_fault":
        kwargs["baseline"] = model.manifest.training.get("baseline_thresholds")
    elif model.manifest.kind == "rain_nowcast":
        kwargs["climatology"] = model.manifest.training.get("climatology_rate")
    typer.echo(json.dumps(data.evaluate(model, **kwargs), indent=1))


if __name__ == "__main__":  # pragma: no cover
    app()
