"""Helpers the train scripts share: writing the model file and its manifest (no scikit-learn here).

`finish()` writes model.onnx, a provisional manifest with its sha256, loads the file back through
the box's own runtime, lets the caller evaluate THAT (so the manifest's metrics are the exported
model's, not scikit-learn's), then writes the final manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_models.manifest import dumps_manifest, sha256_bytes
from edge_models.runtime import MANIFEST_NAME, OnnxModel

MODEL_FILE = "model.onnx"


def lib_versions() -> dict[str, str]:
    out = {}
    for dist in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[dist.replace("-", "_")] = "absent"
    return out


def finish(
    folder: Path,
    onnx_bytes: bytes,
    manifest: dict[str, Any],
    evaluate: Callable[[OnnxModel], dict[str, Any]],
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    data = dict(manifest)
    data["file"] = MODEL_FILE
    data["sha256"] = sha256_bytes(onnx_bytes)
    data["size_bytes"] = len(onnx_bytes)
    data.setdefault("metrics", {})
    (folder / MANIFEST_NAME).write_text(dumps_manifest(data), encoding="utf-8")
    model = OnnxModel.load(folder)
    t0 = time.perf_counter()
    data["metrics"] = evaluate(model)
    data["training"] = dict(data.get("training", {}), eval_s=round(time.perf_counter() - t0, 1))
    (folder / MANIFEST_NAME).write_text(dumps_manifest(data), encoding="utf-8")
    return data
