"""The inference stage: between the drivers and the buffer, models judge readings near the device.

    readings --route--> per-(device, point) windows --(one batch per model, worker thread)-->
    onnxruntime --> SUSPECT flags on judged readings + derived readings + alarm/event records

- Models are declared in the box config (`[[model]]` name, version, devices, point_map,
  threshold; a point_map value may carry `{n}`, the detector number: `volume = "det{n}_volume"`
  binds NTCIP's det3_volume as detector 3) and loaded with `InferenceStage.from_config`; each
  file's sha256 is checked against its manifest first. A missing, corrupt or mismatched model is a `ModelLoadError` (a
  ConfigError) at start-up; with `strict=False` the stage starts without it and reports it.
- Every process() call runs each model at most once per wave over all devices (one
  session.run), in ONE dedicated worker thread (onnxruntime: one intra-op, one inter-op thread).
  A batch holding two samples of the same channel is split into waves, so every sample is
  judged in order.
- A model failing at run time never stops readings: they go on unjudged, the failure is counted
  (stats()), logged once per streak and recorded as an EVENT (`model_status.<name>`).
- `swap()` loads a new version beside the old one (off the loop) and switches it between two
  batches under the stage lock: no reading is lost and no batch mixes versions. If the new model
  reads the same windows, the windows and alarm states carry over; otherwise windows refill.

Readings the stage adds: `fault_score.<point>` / `rain_prob_30min` / `volume_15min_forecast[.n]`
(Quality.DERIVED, ROUTINE) and `fault_alarm.<point>` / `rain_alarm` (ALARM when raised, EVENT
when cleared; text = short JSON reason).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config_reader import NAME_RE, Table
from core.errors import ConfigError
from core.reading import Quality, Reading, RecordClass
from edge_models.heads import Binding, Head, Rows, make_head, units_compatible
from edge_models.manifest import ModelLoadError
from edge_models.runtime import ModelRunError, OnnxModel, default_models_dir, locate
from edge_models.windows import WindowStore

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "parse_model_specs", "InferenceStage", "ModelLoadError"]

_MODEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_SKIP = Quality.DERIVED
_ROUTINE = RecordClass.ROUTINE


@dataclass(frozen=True)
class ModelSpec:
    """One `[[model]]` table of the box config."""

    name: str
    version: str
    devices: tuple[str, ...] = ()                          # empty: every device with the inputs
    point_map: dict[str, str] = field(default_factory=dict, hash=False)  # model input -> device point
    threshold: float | None = None                           # alarm threshold override

    def __post_init__(self) -> None:
        if not _MODEL_NAME_RE.match(self.name):
            raise ValueError(f"model name must be lower-case letters, digits and _, got {self.name!r}")
        if not _VERSION_RE.match(self.version):
            raise ValueError(f'model version must be dotted digits like "1.0.0", got {self.version!r}')
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")


def parse_model_specs(raw: list[dict], file: str) -> tuple[ModelSpec, ...]:
    """Validate `[[model]]` tables; errors name the file, the key (`model[0].version`) and the value."""
    if not isinstance(raw, list):
        raise ConfigError("must be an array of tables", file=file, key="model", value=raw,
                          expected="[[model]] sections")
    specs: list[ModelSpec] = []
    for i, item in enumerate(raw):
        t = Table(item, file, f"model[{i}]")
        name = t.str("name", pattern=_MODEL_NAME_RE, expected="a shipped model name like wx_fault")
        version = t.str("version", pattern=_VERSION_RE, expected='a version like "1.0.0"')
        devices = t.str_list("devices", ())
        for d in devices:
            if not NAME_RE.match(d):
                raise t.error("devices", "invalid device name", d, "device names from the [[device]] tables")
        pm_raw = t.raw("point_map", {})
        if not isinstance(pm_raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in pm_raw.items()):
            raise t.error("point_map", "must be a table of model input = device point", pm_raw,
                          '{ air_temperature = "temp_2m" }')
        for k, v in pm_raw.items():
            rest = v.replace("{n}", "", 1)  # a second {n}, or any other brace, is left in `rest`
            if "{" in rest or "}" in rest:
                raise t.error(f"point_map.{k}", "only one {n} (the detector number) may appear", v,
                              '"det{n}_volume" or a plain point name')
        threshold = t.float("threshold", None, min=0.0, max=1.0, exclusive_min=True)
        if threshold is not None and threshold >= 1.0:
            raise t.error("threshold", "out of range", threshold, "a probability between 0 and 1")
        t.reject_unknown()
        if any(s.name == name for s in specs):
            raise t.error("name", "model declared twice", name, "each model once")
        specs.append(ModelSpec(name, version, devices, dict(pm_raw), threshold))
    return tuple(specs)


def _suffixes(base: str, seen: dict[str, str]) -> set[str]:
    """Detector suffixes (".3") under which a device has `base`: `base` / `base.3`, or for
    `det{n}_volume`, det3_volume."""
    if "{n}" not in base:
        return {p[len(base):] for p in seen if p == base or p.startswith(base + ".")}
    head, tail = base.split("{n}", 1)
    rx = re.compile(re.escape(head) + r"([0-9A-Za-z]+)" + re.escape(tail) + r"\Z")
    return {"." + m.group(1) for p in seen if (m := rx.match(p))}


def _point_for(base: str, sfx: str) -> str:
    return base.replace("{n}", sfx[1:]) if "{n}" in base else base + sfx


class _Runner:
    """One declared model: its head, window store, bindings and counters (survives a swap)."""

    def __init__(self, spec: ModelSpec, head: Head) -> None:
        self.spec = spec
        self.head = head
        m = head.manifest
        self.store = WindowStore(len(head.channels), m.window, m.sample_period_s)
        self.bindings: list[Binding] = []
        self.by_key: dict[tuple[str, str], Binding] = {}
        self.dirty: dict[int, int] = {}
        self.state: dict[Any, Any] = {}
        self.points = tuple(spec.point_map.get(c, p) for c, p in zip(head.channels, head.default_points()))
        self.rows = self.batches = self.failures = self.skipped = 0
        self.last_error: str | None = None
        self.failing = False

    def reads_same_windows(self, spec: ModelSpec, head: Head) -> bool:
        a, b = self.head.manifest, head.manifest
        points = tuple(spec.point_map.get(c, p) for c, p in zip(head.channels, head.default_points()))
        return (a.kind == b.kind and a.window == b.window and a.sample_period_s == b.sample_period_s
                and points == self.points and spec.devices == self.spec.devices)

    def bind(self, device: str, seen: dict[str, str]) -> list[Binding]:
        """New bindings for a device whose points now cover every input (per detector suffix)."""
        if self.spec.devices and device not in self.spec.devices:
            return []
        suffixes: set[str] | None = None
        for base in self.points:
            found = _suffixes(base, seen)
            suffixes = found if suffixes is None else suffixes & found
        new = []
        for sfx in sorted(suffixes or ()):
            if (device, sfx) in self.by_key:
                continue
            pts = tuple(_point_for(b, sfx) for b in self.points)
            bad = [(p, seen[p], u) for p, u in zip(pts, self.head.units()) if not units_compatible(seen[p], u)]
            if bad:
                log.error("%s not run on %s: unit of %s is %r, the model needs %r",
                          self.head.manifest.tag, device, *bad[0])
                self.by_key[(device, sfx)] = Binding(device, sfx, -1, ())  # remembered, never fed
                continue
            b = Binding(device, sfx, self.store.add_slot(), pts)
            self.bindings.append(b)
            self.by_key[(device, sfx)] = b
            new.append(b)
        return new


class InferenceStage:
    """The pipeline stage (see the module docstring). Not thread-safe: one event loop owns it."""

    def __init__(self, runners: list[_Runner], *, load_errors: Sequence[str] = (),
                 status_device: str = "agent") -> None:
        self._runners: dict[str, _Runner] = {r.spec.name: r for r in runners}
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quanedge-inference")
        self._routes: dict[str, dict[str, tuple[tuple[_Runner, int, int], ...]]] = {}
        self._seen: dict[str, dict[str, str]] = {}
        self._suspect: set[tuple[str, str]] = set()
        self._status_device = status_device
        self.load_errors = list(load_errors)
        self.swaps = 0
        self.last_error: str | None = None

    # --- construction --------------------------------------------------------------------------
    @staticmethod
    def _load(spec: ModelSpec, models_dir: Path) -> Head:
        model = OnnxModel.load(locate(models_dir, spec.name, spec.version), name=spec.name, version=spec.version)
        if spec.threshold is not None and "alarm" not in model.manifest.thresholds:
            log.warning("%s has no alarm threshold; the configured threshold %s is ignored",
                        model.manifest.tag, spec.threshold)
        return make_head(model, spec.threshold)

    @classmethod
    def from_config(cls, specs: Sequence[ModelSpec], models_dir: Path | None = None, *, strict: bool = True,
                    status_device: str = "agent") -> InferenceStage:
        """Load and verify every declared model. strict: raise ModelLoadError on the first bad one;
        otherwise start without it (readings still flow) and list it in stats()["load_errors"]."""
        base = Path(models_dir) if models_dir is not None else default_models_dir()
        runners, errors = [], []
        for spec in specs:
            try:
                runners.append(_Runner(spec, cls._load(spec, base)))
            except ModelLoadError as exc:
                if strict:
                    raise
                log.error("model %s@%s not loaded, running without it: %s", spec.name, spec.version, exc)
                errors.append(f"{spec.name}@{spec.version}: {exc}")
        return cls(runners, load_errors=errors, status_device=status_device)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # --- data path -----------------------------------------------------------------------------
    async def process(self, readings: list[Reading]) -> list[Reading]:
        """Judge a batch. Returns the readings (SUSPECT where judged faulty) + derived + alarm records."""
        if not self._runners:
            return list(readings)
        async with self._lock:
            out = list(readings)
            added: list[Reading] = []
            start, n = 0, len(out)
            while start < n:
                end = self._ingest(out, start)
                await self._run(added)
                if self._suspect:
                    self._flag(out, start, end)
                start = end
            out.extend(added)
            return out

    def _ingest(self, readings: list[Reading], start: int) -> int:
        """Feed windows from readings[start:]; stop before a second sample of a dirty channel."""
        routes_by_dev = self._routes
        i, n = start, len(readings)
        while i < n:
            r = readings[i]
            i += 1
            dev = routes_by_dev.get(r.device)
            routes = dev.get(r.point) if dev is not None else None
            if routes is None:
                routes, rebound = self._discover(r)
                if rebound:  # a device just completed a model's inputs: replay this wave into it
                    i = start  # (samples already taken are not due again, so nothing doubles)
                    continue
            if not routes or r.value is None or r.cls is not _ROUTINE or (r.quality and r.quality & _SKIP):
                continue
            for runner, slot, ch in routes:
                mask = runner.dirty.get(slot, 0)
                if mask >> ch & 1 and runner.store.would_take(slot, ch, r.ts):
                    return i - 1
                if runner.store.append(slot, ch, r.ts, r.value):
                    runner.dirty[slot] = mask | (1 << ch)
        return n

    def _discover(self, r: Reading) -> tuple[tuple, bool]:
        seen = self._seen.setdefault(r.device, {})
        seen[r.point] = r.unit
        new = [b for runner in self._runners.values() for b in runner.bind(r.device, seen)]
        self._rebuild_routes(r.device)
        return self._routes[r.device].get(r.point, ()), bool(new)

    def _rebuild_routes(self, device: str) -> None:
        table: dict[str, list[tuple[_Runner, int, int]]] = {p: [] for p in self._seen.get(device, {})}
        for runner in self._runners.values():
            for b in runner.bindings:
                if b.device == device:
                    for ch, p in enumerate(b.points):
                        table.setdefault(p, []).append((runner, b.slot, ch))
        self._routes[device] = {p: tuple(v) for p, v in table.items()}

    async def _run(self, added: list[Reading]) -> None:
        jobs: list[tuple[_Runner, Rows]] = []
        for runner in self._runners.values():
            if runner.dirty:
                rows = runner.head.select(runner.store, runner.dirty, runner.bindings)
                runner.dirty = {}
                if rows is not None:
                    jobs.append((runner, rows))
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, _compute, jobs)
        for (runner, rows), res in zip(jobs, results):
            if isinstance(res, Exception):
                self._failed(runner, res, rows, added)
                continue
            ok, values = res
            runner.batches += 1
            runner.rows += int(ok.sum())
            runner.skipped += int(len(ok) - ok.sum())
            if runner.failing:
                runner.failing = False
                log.warning("model %s recovered", runner.head.manifest.tag)
                added.append(self._status(runner, "recovered", None, rows))
            runner.head.emit(rows, ok, values, runner.state, added, self._suspect)

    def _failed(self, runner: _Runner, exc: Exception, rows: Rows, added: list[Reading]) -> None:
        runner.failures += 1
        runner.last_error = self.last_error = f"{runner.head.manifest.tag}: {exc}"
        if not runner.failing:
            runner.failing = True
            log.error("model %s failed, readings go on unjudged: %s", runner.head.manifest.tag, exc,
                      exc_info=not isinstance(exc, ModelRunError))
            added.append(self._status(runner, "failing", str(exc), rows))

    def _status(self, runner: _Runner, state: str, error: str | None, rows: Rows) -> Reading:
        text = json.dumps({"model": runner.head.manifest.tag, "state": state, "error": error,
                           "failures": runner.failures}, separators=(",", ":"))
        ts = float(rows.ts.max()) if len(rows.ts) else 0.0
        return Reading(self._status_device, f"model_status.{runner.spec.name}", float(runner.failures), "1", ts,
                       Quality.DERIVED, RecordClass.EVENT, text)

    def _flag(self, readings: list[Reading], start: int, end: int) -> None:
        suspect = self._suspect
        for i in range(start, end):
            r = readings[i]
            if (r.device, r.point) in suspect and not r.quality & Quality.SUSPECT:
                readings[i] = Reading(r.device, r.point, r.value, r.unit, r.ts, r.quality | Quality.SUSPECT,
                                      r.cls, r.text, r.seq)

    # --- hot swap ------------------------------------------------------------------------------
    async def swap(self, spec: ModelSpec, models_dir: Path | None = None) -> None:
        """Load `spec` beside the running version and switch to it between two batches.

        On failure raises ModelLoadError; the old model keeps running and the failure is counted.
        """
        base = Path(models_dir) if models_dir is not None else default_models_dir()
        try:
            head = await asyncio.to_thread(self._load, spec, base)
        except ModelLoadError as exc:
            self.last_error = f"swap to {spec.name}@{spec.version}: {exc}"
            self.load_errors.append(self.last_error)
            log.error("model swap refused, keeping the running version: %s", exc)
            raise
        async with self._lock:
            old = self._runners.get(spec.name)
            if old is not None and old.reads_same_windows(spec, head):
                old.head, old.spec = head, spec
            else:
                runner = _Runner(spec, head)
                if old is not None:
                    runner.state = old.state
                    runner.rows, runner.batches, runner.failures = old.rows, old.batches, old.failures
                self._runners[spec.name] = runner
                for device, seen in self._seen.items():
                    runner.bind(device, seen)
                    self._rebuild_routes(device)
            self.swaps += 1
        log.info("model %s now running", head.manifest.tag)

    def versions(self) -> dict[str, str]:
        return {name: r.head.manifest.version for name, r in self._runners.items()}

    def stats(self) -> dict[str, Any]:
        models = {
            name: {"version": r.head.manifest.version, "kind": r.head.manifest.kind, "rows": r.rows,
                   "batches": r.batches, "failures": r.failures, "skipped_rows": r.skipped,
                   "bindings": len(r.bindings), "failing": r.failing, "last_error": r.last_error,
                   "alarms_active": len(r.state)}
            for name, r in self._runners.items()
        }
        return {
            "inferences": sum(r.rows for r in self._runners.values()),
            "failures": {name: r.failures for name, r in self._runners.items()},
            "last_error": self.last_error,
            "swaps": self.swaps,
            "load_errors": list(self.load_errors),
            "suspect_channels": len(self._suspect),
            "models": models,
        }


def _compute(jobs: list[tuple[_Runner, Rows]]) -> list[Any]:
    """Worker thread: one gather + features + session.run per model. Errors are returned, not raised."""
    out: list[Any] = []
    for runner, rows in jobs:
        try:
            out.append(runner.head.compute(runner.store, rows))
        except Exception as exc:  # counted and reported by the stage; readings flow on unjudged
            out.append(exc)
    return out

