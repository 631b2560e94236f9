"""A model's manifest: what it is, what it eats, what it promises, and the hash of its file.

    name, version, kind, description, file, sha256, size_bytes
    sample_period_s, window, utc_offset_h     the input windows the features assume
    onnx_input, onnx_output, features, classes
    [[inputs]]     name, point (default device point), unit, role (judged | context | input)
    [[outputs]]    point, unit, meaning
    [thresholds]   kind-specific (alarm / clear probabilities, pattern volumes)
    [metrics]      held-out figures and the baseline they beat
    [training]     seed, library versions, data description

Loaded on the box with tomllib only; written by the train scripts with the tiny writer below
(no TOML-writing dependency). Every loading error names the file, the key and the bad value.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.compat import tomllib
from core.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")


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


class _Reader:
    def __init__(self, data: Mapping[str, Any], file: str, key: str = "") -> None:
        self.data, self.file, self.key = data, file, key

    def err(self, name: str, message: str, value: Any = None, expected: str | None = None) -> ModelLoadError:
        k = f"{self.key}.{name}" if self.key else name
        return ModelLoadError(message, file=self.file, key=k, value=value, expected=expected)

    def get(self, name: str, types: type | tuple[type, ...], expected: str, default: Any = ...) -> Any:
        if name not in self.data:
            if default is ...:
                raise self.err(name, "required key is missing", expected=expected)
            return default
        v = self.data[name]
        tt = types if isinstance(types, tuple) else (types,)
        if not isinstance(v, tt) or (isinstance(v, bool) and bool not in tt):
            raise self.err(name, "wrong type", v, expected)
        if isinstance(v, float) and not math.isfinite(v):
            raise self.err(name, "must be finite", v, expected)
        return v

    def str_list(self, name: str, default: Any = ...) -> tuple[str, ...]:
        v = self.get(name, list, "a list of strings", default)
        if not all(isinstance(x, str) and x for x in v):
            raise self.err(name, "must be a list of non-empty strings", v, "a list of strings")
        return tuple(v)

    def tables(self, name: str) -> list[_Reader]:
        v = self.get(name, list, f"[[{name}]] tables")
        if not all(isinstance(x, Mapping) for x in v):
            raise self.err(name, "must be an array of tables", v, f"[[{name}]] tables")
        return [_Reader(x, self.file, f"{name}[{i}]") for i, x in enumerate(v)]


def load_manifest(path: Path) -> Manifest:
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError("model manifest not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read model manifest: {exc}", file=file) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"model manifest is not valid TOML: {exc}", file=file) from exc
    r = _Reader(raw, file)
    name = r.get("name", str, "a model name like wx_fault")
    if not _NAME_RE.match(name):
        raise r.err("name", "invalid model name", name, "lower-case letters, digits and _")
    version = r.get("version", str, 'a version like "1.0.0"')
    if not _VERSION_RE.match(version):
        raise r.err("version", "invalid version", version, 'dotted digits like "1.0.0"')
    sha = r.get("sha256", str, "64 hex digits")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise r.err("sha256", "invalid hash", sha, "64 lower-case hex digits")
    window = r.get("window", int, "a positive integer")
    if window < 2:
        raise r.err("window", "out of range", window, "an integer >= 2")
    period = float(r.get("sample_period_s", (int, float), "seconds > 0"))
    if period <= 0:
        raise r.err("sample_period_s", "out of range", period, "seconds > 0")
    file_name = r.get("file", str, "the model file name, e.g. model.onnx")
    if "/" in file_name or "\\" in file_name or file_name.startswith("."):
        raise r.err("file", "must be a plain file name in the model folder", file_name, "e.g. model.onnx")
    thresholds = r.get("thresholds", dict, "a [thresholds] table", {})
    for k, v in thresholds.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise r.err(f"thresholds.{k}", "must be a number", v, "a finite number")
    inputs = tuple(
        InputSpec(t.get("name", str, "an input name"), t.get("point", str, "a device point name"),
                  t.get("unit", str, "a unit"), t.get("role", str, "judged | context | input", "input"))
        for t in r.tables("inputs"))
    outputs = tuple(
        OutputSpec(t.get("point", str, "an output point name"), t.get("unit", str, "a unit"),
                   t.get("meaning", str, "a short description", ""))
        for t in r.tables("outputs"))
    return Manifest(
        name=name, version=version, kind=r.get("kind", str, "sensor_fault | rain_nowcast | traffic_demand"),
        file=file_name, sha256=sha, size_bytes=r.get("size_bytes", int, "the file size in bytes"),
        sample_period_s=period, window=window,
        onnx_input=r.get("onnx_input", str, "the ONNX input name"),
        onnx_output=r.get("onnx_output", str, "the ONNX output name"),
        features=r.str_list("features"), inputs=inputs, outputs=outputs,
        thresholds={k: float(v) for k, v in thresholds.items()},
        description=r.get("description", str, "text", ""),
        utc_offset_h=float(r.get("utc_offset_h", (int, float), "hours", 8.0)),
        classes=r.str_list("classes", ()),
        metrics=r.get("metrics", dict, "a [metrics] table", {}),
        training=r.get("training", dict, "a [training] table", {}),
        path=path,
    )


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
