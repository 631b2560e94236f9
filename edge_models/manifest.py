"""A model's manifest: what it is, what it eats, what it promises, and the hash of its file.

    name, version, kind, description, file, sha256, size_bytes
    sample_period_s, window, utc_offset_h     the input windows the features assume
    onnx_input, onnx_output, features, classes
    [[inputs]]     name, point (default device point), unit, role (judged | context | input)
    [[outputs]]    point, unit, meaning
    [thresholds]   kind-specific (alarm / clear probabilities, pattern volumes)
    [metrics]      held-out figures and the baseline they beat
    [training]     seed, library versions, data description

Loaded on the box through core.config_reader (the one TOML reader); written by the train scripts with the
tiny writer below (no TOML-writing dependency). Every loading error names the file, the key and the bad value.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config_reader import Table, load_toml
from core.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ROLES = ("judged", "context", "input")
_REQUIRED = object()


class ModelLoadError(ConfigError):
    """A declared model cannot be used: missing, corrupt, mismatched or malformed.

    A ConfigError, because the box config names a model the box cannot load; the message names
    the file, the key, the bad value and what was expected.
    """


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    point: str
    unit: str
    role: str = "input"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    point: str
    unit: str
    meaning: str


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    kind: str
    file: str
    sha256: str
    size_bytes: int
    sample_period_s: float
    window: int
    onnx_input: str
    onnx_output: str
    features: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    thresholds: Mapping[str, float]
    description: str = ""
    utc_offset_h: float = 8.0
    classes: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_manifest(path: Path) -> Manifest:
    r = load_toml(path, "model manifest", error=ModelLoadError)
    name = r.str("name", pattern=_NAME_RE, expected="a model name: lower-case letters, digits and _")
    version = r.str("version", pattern=_VERSION_RE, expected='dotted digits like "1.0.0"')
    sha = r.str("sha256", pattern=_SHA_RE, expected="64 lower-case hex digits")
    window = r.int("window", min=2)
    period = r.float("sample_period_s", min=0, exclusive_min=True)
    file_name = r.str("file", expected="the model file name, e.g. model.onnx")
    if "/" in file_name or "\\" in file_name or file_name.startswith("."):
        raise r.error("file", "must be a plain file name in the model folder", file_name, "e.g. model.onnx")
    thresholds = r.mapping("thresholds", {})
    for k, v in thresholds.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise r.error(f"thresholds.{k}", "must be a number", v, "a finite number")
    inputs = tuple(
        InputSpec(t.str("name", expected="an input name"), t.str("point", expected="a device point name"),
                  _text(t, "unit", expected="a unit"), t.str("role", "input", choices=_ROLES))
        for t in r.tables("inputs"))
    outputs = tuple(OutputSpec(t.str("point", expected="an output point name"), _text(t, "unit", expected="a unit"),
                               _text(t, "meaning", "")) for t in r.tables("outputs"))
    return Manifest(
        name=name, version=version, kind=r.str("kind", expected="sensor_fault | rain_nowcast | traffic_demand"),
        file=file_name, sha256=sha, size_bytes=r.int("size_bytes", min=0),
        sample_period_s=period, window=window,
        onnx_input=r.str("onnx_input", expected="the ONNX input name"),
        onnx_output=r.str("onnx_output", expected="the ONNX output name"),
        features=r.str_list("features"), inputs=inputs, outputs=outputs,
        thresholds={k: float(v) for k, v in thresholds.items()},
        description=_text(r, "description", ""),
        utc_offset_h=r.float("utc_offset_h", 8.0),
        classes=r.str_list("classes", ()),
        metrics=r.mapping("metrics", {}),
        training=r.mapping("training", {}),
        path=path,
    )


def _text(t: Table, name: str, default: Any = _REQUIRED, *, expected: str = "text") -> str:
    """A string that may be empty (a dimensionless unit, no description)."""
    v = t.raw(name, default)
    if v is _REQUIRED:
        raise t.error(name, "required key is missing", None, expected)
    if not isinstance(v, str):
        raise t.error(name, "must be a string", v, expected)
    return v


# --- writing (train scripts only) ------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(round(v, 6))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _emit_table(lines: list[str], prefix: str, table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    for k, v in scalars.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in table.items():
        if isinstance(v, Mapping):
            name = f"{prefix}.{k}" if prefix else k
            lines.append("")
            lines.append(f"[{name}]")
            _emit_table(lines, name, v)


def dumps_manifest(data: Mapping[str, Any]) -> str:
    """Top-level scalars, then [[inputs]] / [[outputs]], then tables, in a stable order."""
    lines: list[str] = []
    arrays = {k: v for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    for k, v in data.items():
        if k not in arrays and k not in tables:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, rows in arrays.items():
        for row in rows:
            lines.append("")
            lines.append(f"[[{k}]]")
            _emit_table(lines, k, row)
    for k, v in tables.items():
        lines.append("")
        lines.append(f"[{k}]")
        _emit_table(lines, k, v)
    return "\n".join(lines) + "\n"
