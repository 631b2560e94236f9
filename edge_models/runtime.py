"""Loading and running one exported model on the box (onnxruntime + numpy only).

The `Model` seam: `OnnxModel.load(folder)` checks the manifest, the file's sha256 and the
session's input/output shapes before anything runs; `infer(batch)` runs one batch. onnxruntime's
exceptions are mapped here, at this one boundary, to `ModelLoadError` (a ConfigError: the box
declared a model it cannot use) and `ModelRunError` (a batch failed; the caller keeps going).

One session per model, one intra-op and one inter-op thread, no spinning: a box has two cores
and the bus scheduler needs one of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import QuanedgeError
from edge_models.manifest import Manifest, ModelLoadError, load_manifest, sha256_bytes

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.toml"


class ModelRunError(QuanedgeError):
    """Running a batch through a loaded model failed; the readings go on unjudged."""


def default_models_dir() -> Path:
    """The models shipped with the agent: this package's folder."""
    return Path(__file__).resolve().parent


def locate(models_dir: Path, name: str, version: str) -> Path:
    """`models_dir/name/version/` when present (several versions side by side), else `models_dir/name/`."""
    versioned = Path(models_dir) / name / version
    if (versioned / MANIFEST_NAME).is_file():
        return versioned
    return Path(models_dir) / name


def _session(data: bytes, file: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a box image without the runtime
        raise ModelLoadError("onnxruntime is not installed on this box", file=file,
                             expected="the onnxruntime package") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelLoadError(f"not a loadable ONNX model: {exc}", file=file) from exc


class OnnxModel:
    """A loaded, verified model: its manifest and one onnxruntime session."""

    def __init__(self, manifest: Manifest, session: Any) -> None:
        self.manifest = manifest
        self._session = session
        self._input = manifest.onnx_input
        self._outputs = [manifest.onnx_output]

    @classmethod
    def load(cls, folder: Path, *, name: str | None = None, version: str | None = None) -> OnnxModel:
        folder = Path(folder)
        m = load_manifest(folder / MANIFEST_NAME)
        mfile = str(folder / MANIFEST_NAME)
        if name is not None and m.name != name:
            raise ModelLoadError("manifest is for another model", file=mfile, key="name", value=m.name, expected=name)
        if version is not None and m.version != version:
            raise ModelLoadError("model version does not match the box config", file=mfile, key="version",
                                 value=m.version, expected=version)
        path = folder / m.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError("model file is missing", file=str(path),
                                 expected=f"the file named by {mfile} [file]") from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file: {exc}", file=str(path)) from exc
        digest = sha256_bytes(data)
        if digest != m.sha256:
            raise ModelLoadError("model file does not match its manifest (corrupt or replaced)", file=str(path),
                                 key="sha256", value=digest, expected=m.sha256)
        session = _session(data, str(path))
        inputs = {i.name: i for i in session.get_inputs()}
        if m.onnx_input not in inputs:
            raise ModelLoadError("ONNX input not found", file=mfile, key="onnx_input", value=m.onnx_input,
                                 expected="one of " + ", ".join(inputs))
        width = inputs[m.onnx_input].shape[-1]
        if isinstance(width, int) and width != len(m.features):
            raise ModelLoadError("model input width differs from the manifest's feature list", file=mfile,
                                 key="features", value=len(m.features), expected=f"{width} features")
        outputs = [o.name for o in session.get_outputs()]
        if m.onnx_output not in outputs:
            raise ModelLoadError("ONNX output not found", file=mfile, key="onnx_output", value=m.onnx_output,
                                 expected="one of " + ", ".join(outputs))
        model = cls(m, session)
        try:
            out = model.infer(np.zeros((2, len(m.features)), dtype=np.float32))
        except ModelRunError as exc:
            raise ModelLoadError(f"model fails a trial batch: {exc}", file=str(path)) from exc
        if out.shape[0] != 2:
            raise ModelLoadError("model output has the wrong number of rows", file=str(path),
                                 value=out.shape, expected="one output row per input row")
        return model

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (rows x features, float32); returns the manifest's output as a 2-D float64 array."""
        try:
            out = self._session.run(self._outputs, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # the one boundary where onnxruntime's exceptions become ours
            raise ModelRunError(f"{self.manifest.tag}: {exc}") from exc
        out = np.asarray(out, dtype=np.float64)
        return out.reshape(len(x), -1)
