"""The inference stage: config, loading checks, routing, batching, failures."""

from __future__ import annotations

import shutil
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import agent.inference as inference
from agent.inference import InferenceStage, ModelSpec, parse_model_specs
from core.errors import ConfigError
from core.reading import Quality, Reading, RecordClass
from edge_models.datagen import simulate_weather
from edge_models.manifest import ModelLoadError
from edge_models.runtime import default_models_dir

T0 = 1_750_000_000.0
UNITS = {"air_temperature": "degC", "relative_humidity": "%", "air_pressure": "hPa", "wind_speed": "m/s",
         "rain_intensity": "mm/h", "wind_direction": "deg"}
WX = [ModelSpec("wx_fault", "1.0.0"), ModelSpec("rain_nowcast", "1.0.0")]


@cache
def _weather(device: str) -> dict:
    w = simulate_weather(sum(map(ord, device)), 0.25)
    w["wind_direction"] = np.full(len(w["t"]), 120.0)
    return w


def station(device: str, ts: float, k: int, units: dict[str, str] = UNITS, rename: dict | None = None) -> list[Reading]:
    """One poll of a station, values from the shared weather physics (minute k)."""
    w = _weather(device)
    rename = rename or {}
    return [Reading(device, rename.get(p, p), round(float(w[p][k]), 1), units[p], ts) for p in UNITS]


async def feed(stage: InferenceStage, devices: list[str], minutes: int, start: int = 0, **kw) -> list[Reading]:
    out: list[Reading] = []
    for k in range(start, start + minutes):
        batch = [r for d in devices for r in station(d, T0 + 60.0 * k, k, **kw)]
        res = await stage.process(batch)
        assert res[: len(batch)] == batch, "healthy physics: nothing flagged SUSPECT"
        out.extend(res[len(batch):])
    return out


# --- config -------------------------------------------------------------------------------------
def test_parse_model_specs_accepts_a_full_table() -> None:
    specs = parse_model_specs([
        {"name": "wx_fault", "version": "1.0.0", "devices": ["wxt-1"], "point_map": {"air_temperature": "t2m"},
         "threshold": 0.6},
        {"name": "rain_nowcast", "version": "1.0.0"},
    ], "box.toml")
    assert specs[0] == ModelSpec("wx_fault", "1.0.0", ("wxt-1",), {"air_temperature": "t2m"}, 0.6)
    assert specs[1].devices == () and specs[1].point_map == {} and specs[1].threshold is None


@pytest.mark.parametrize("table, key, fragment", [
    ({"name": "wx_fault"}, "model[0].version", "missing"),
    ({"name": "wx_fault", "version": "v1"}, "model[0].version", "'v1'"),
    ({"name": "WX", "version": "1.0.0"}, "model[0].name", "'WX'"),
    ({"name": "wx_fault", "version": "1.0.0", "threshold": 1.5}, "model[0].threshold", "1.5"),
    ({"name": "wx_fault", "version": "1.0.0", "point_map": {"air_temperature": 3}}, "model[0].point_map", "3"),
    ({"name": "wx_fault", "version": "1.0.0", "devices": "wxt-1"}, "model[0].devices", "wxt-1"),
    ({"name": "traffic_demand", "version": "1.0.0", "point_map": {"volume": "det{n}_{n}"}},
     "model[0].point_map.volume", "only one {n}"),
    ({"name": "traffic_demand", "version": "1.0.0", "point_map": {"volume": "det{k}_volume"}},
     "model[0].point_map.volume", "det{k}_volume"),
    ({"name": "wx_fault", "version": "1.0.0", "treshold": 0.5}, "model[0].treshold", "unknown"),
])
def test_parse_model_specs_errors_name_file_key_value(table: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_model_specs([table], "/etc/quanedge/box.toml")
    assert e.value.file == "/etc/quanedge/box.toml" and e.value.key == key
    assert fragment in str(e.value)


def test_parse_model_specs_rejects_duplicates() -> None:
    with pytest.raises(ConfigError, match=r"model\[1\]\.name"):
        parse_model_specs([{"name": "wx_fault", "version": "1.0.0"}] * 2, "box.toml")


# --- loading --------------------------------------------------------------------------------------
@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    for name in ("wx_fault", "rain_nowcast", "traffic_demand"):
        dst = tmp_path / name
        dst.mkdir()
        for f in ("manifest.toml", "model.onnx"):
            shutil.copy(default_models_dir() / name / f, dst / f)
    return tmp_path


def test_missing_model_is_a_clear_startup_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="manifest not found") as e:
        InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0")], tmp_path)
    assert isinstance(e.value, ConfigError) and "wx_fault" in str(e.value)


def test_corrupt_model_file_is_refused(models_copy: Path) -> None:
    f = models_copy / "wx_fault" / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match its manifest") as e:
        InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0")], models_copy)
    assert e.value.key == "sha256" and str(f) in str(e.value)


def test_missing_model_file_and_version_mismatch(models_copy: Path) -> None:
    with pytest.raises(ModelLoadError, match="version does not match") as e:
        InferenceStage.from_config([ModelSpec("wx_fault", "2.0.0")], models_copy)
    assert e.value.value == "1.0.0" and e.value.expected == "2.0.0"
    (models_copy / "rain_nowcast" / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match="model file is missing"):
        InferenceStage.from_config([ModelSpec("rain_nowcast", "1.0.0")], models_copy)


def test_garbage_with_a_matching_hash_is_not_loadable(models_copy: Path) -> None:
    import hashlib

    folder = models_copy / "traffic_demand"
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    text = (folder / "manifest.toml").read_text()
    old = text.split('sha256 = "')[1].split('"')[0]
    (folder / "manifest.toml").write_text(text.replace(old, hashlib.sha256(b"not an onnx model").hexdigest()))
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        InferenceStage.from_config([ModelSpec("traffic_demand", "1.0.0")], models_copy)


async def test_non_strict_start_runs_without_the_bad_model(tmp_path: Path) -> None:
    stage = InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0")] + WX[1:], tmp_path, strict=False)
    try:
        batch = station("wx1", T0, 0)
        assert await stage.process(batch) == batch
        errors = stage.stats()["load_errors"]
        assert len(errors) == 2 and "wx_fault@1.0.0" in errors[0]
    finally:
        stage.close()


# --- data path ------------------------------------------------------------------------------------
async def test_readings_pass_through_and_derived_follow_once_windows_fill() -> None:
    stage = InferenceStage.from_config(WX)
    try:
        early = await feed(stage, ["wx1", "wx2"], 59)
        assert early == [], "no judgement before a full 60-minute window"
        later = await feed(stage, ["wx1", "wx2"], 2, start=59)
        points = sorted({(r.device, r.point) for r in later})
        assert ("wx1", "fault_score.air_temperature") in points and ("wx2", "rain_prob_30min") in points
        assert all(r.quality & Quality.DERIVED for r in later)
        scores = [r for r in later if r.point.startswith("fault_score.")]
        assert len(scores) == 2 * 2 * 4 and all(r.cls is RecordClass.ROUTINE for r in scores)
        assert all(0.0 <= r.value <= 1.0 for r in later)
        s = stage.stats()
        assert s["models"]["wx_fault"]["batches"] == 2 and s["models"]["wx_fault"]["bindings"] == 2
        assert s["inferences"] == 16 + 4
    finally:
        stage.close()


async def test_fast_polling_is_decimated_to_the_model_period() -> None:
    stage = InferenceStage.from_config(WX[1:])
    try:
        out = []
        for k in range(6 * 70):  # every 10 s for 70 minutes
            out += (await stage.process(station("wx1", T0 + 10.0 * k, k // 6)))[6:]
        probs = [r for r in out if r.point == "rain_prob_30min"]
        assert len(probs) == 12  # samples at 0, 50, 110, ..., 4190 s: one a minute after the first
        assert all(b.ts - a.ts == 60.0 for a, b in zip(probs, probs[1:]))
    finally:
        stage.close()


async def test_a_batch_holding_several_minutes_judges_every_minute() -> None:
    stage = InferenceStage.from_config(WX[:1])
    try:
        await feed(stage, ["wx1"], 60)
        batch = [r for k in range(60, 63) for r in station("wx1", T0 + 60.0 * k, k)]
        out = await stage.process(batch)
        assert out[: len(batch)] == batch
        temps = [r for r in out[len(batch):] if r.point == "fault_score.air_temperature"]
        assert [r.ts for r in temps] == [T0 + 60.0 * k for k in range(60, 63)]
    finally:
        stage.close()


async def test_device_filter_point_map_and_unit_check() -> None:
    specs = [ModelSpec("rain_nowcast", "1.0.0", devices=("wx2", "wx3"), point_map={"air_temperature": "t2m"})]
    stage = InferenceStage.from_config(specs)
    try:
        out = []
        for k in range(61):
            ts = T0 + 60.0 * k
            batch = (station("wx1", ts, k, rename={"air_temperature": "t2m"})
                     + station("wx2", ts, k, rename={"air_temperature": "t2m"})
                     + station("wx3", ts, k, units=dict(UNITS, wind_speed="km/h"), rename={"air_temperature": "t2m"}))
            res = await stage.process(batch)
            assert res[: len(batch)] == batch
            out += res[len(batch):]
        assert {r.device for r in out} == {"wx2"}, "wx1 not listed, wx3 reports wind in km/h"
        assert stage.stats()["models"]["rain_nowcast"]["bindings"] == 1
    finally:
        stage.close()


async def test_missing_values_flow_and_are_not_judged() -> None:
    stage = InferenceStage.from_config(WX[:1])
    try:
        batch = [Reading("wx1", "air_temperature", None, "degC", T0, Quality.MISSING)] + station("wx1", T0, 0)[1:]
        assert await stage.process(batch) == batch
    finally:
        stage.close()


class _Broken:
    def run(self, *a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : simulated")


async def test_runtime_failure_is_counted_reported_and_readings_flow() -> None:
    stage = InferenceStage.from_config(WX)
    try:
        await feed(stage, ["wx1"], 60)
        model = stage._runners["wx_fault"].head.model
        good, model._session = model._session, _Broken()
        batch = station("wx1", T0 + 3600.0, 60)
        out = await stage.process(batch)
        assert out[: len(batch)] == batch
        status = [r for r in out if r.point == "model_status.wx_fault"]
        assert len(status) == 1 and status[0].cls is RecordClass.EVENT and '"failing"' in status[0].text
        assert any(r.point == "rain_prob_30min" for r in out), "the other model still runs"
        out = await stage.process(station("wx1", T0 + 3660.0, 61))
        assert not any(r.point.startswith("model_status") for r in out), "reported once per streak"
        s = stage.stats()
        assert s["failures"]["wx_fault"] == 2 and "simulated" in s["last_error"]
        model._session = good
        out = await stage.process(station("wx1", T0 + 3720.0, 62))
        assert any(r.point == "model_status.wx_fault" and '"recovered"' in r.text for r in out)
        assert any(r.point == "fault_score.air_temperature" for r in out)
    finally:
        stage.close()


async def test_inference_runs_in_one_worker_thread_with_one_onnx_thread(monkeypatch) -> None:
    names = set()
    real = inference._compute

    def spy(jobs):
        names.add(threading.current_thread().name)
        return real(jobs)

    monkeypatch.setattr(inference, "_compute", spy)
    stage = InferenceStage.from_config(WX)
    try:
        await feed(stage, ["wx1"], 62)
        assert len(names) == 1 and next(iter(names)).startswith("quanedge-inference")
        assert names.isdisjoint({threading.main_thread().name})
        opts = stage._runners["wx_fault"].head.model._session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    finally:
        stage.close()


def test_public_api() -> None:
    assert set(inference.__all__) == {"ModelSpec", "parse_model_specs", "InferenceStage", "ModelLoadError"}
    assert np is not None


def test_window_store_grid_jitter_gap_and_order() -> None:
    from edge_models.windows import WindowStore

    st = WindowStore(channels=1, window=4, period_s=60.0)
    s = st.add_slot()
    taken = [st.append(s, 0, ts, ts) for ts in (0.0, 10.0, 59.0, 121.0, 179.5, 185.0, 240.2)]
    assert taken == [True, False, True, True, True, False, True], "one sample per minute, jitter tolerated"
    assert st.full(s)
    assert st.gather(np.array([s]))[0, 0].tolist() == [59.0, 121.0, 179.5, 240.2], "oldest first"
    assert st.append(s, 0, 1000.0, 1.0) and not st.full(s), "a long gap restarts the window"
    for _ in range(40):  # slots grow without losing data
        st.add_slot()
    assert st.gather(np.array([s]))[0, 0, -1] == 1.0
