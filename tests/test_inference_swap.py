"""Hot swap: a new version loads beside the old one and takes over between batches, losing nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from agent.inference import InferenceStage, ModelSpec
from core.compat import tomllib
from core.reading import Quality, Reading, RecordClass
from drivers.physics.faults import CHANNELS, Fault, FaultInjector, FaultKind
from drivers.physics.traffic import TrafficModel
from drivers.physics.weather import WeatherModel
from edge_models.manifest import ModelLoadError, dumps_manifest, sha256_bytes
from edge_models.runtime import default_models_dir

T0 = 1_750_000_000.0
OFFSET = 1000.0  # the test's v1.1.0 adds this to every forecast, so each output shows its version


def make_version(tmp: Path, name: str, version: str, offset: float | None = None) -> Path:
    """Copy a shipped model into tmp/name/version/ as a new version (optionally shifting its output)."""
    src = default_models_dir() / name
    dst = tmp / name / version
    dst.mkdir(parents=True)
    manifest = tomllib.loads((src / "manifest.toml").read_text())
    data = (src / "model.onnx").read_bytes()
    if offset is not None:
        m = onnx.load_from_string(data)
        out = manifest["onnx_output"]
        for node in m.graph.node:
            node.output[:] = [o + "_raw" if o == out else o for o in node.output]
        m.graph.initializer.append(numpy_helper.from_array(np.array([[offset]], dtype=np.float32), "shift"))
        m.graph.node.append(helper.make_node("Add", [out + "_raw", "shift"], [out]))
        data = m.SerializeToString()
    (dst / "model.onnx").write_bytes(data)
    manifest.update(version=version, sha256=sha256_bytes(data), size_bytes=len(data))
    (dst / "manifest.toml").write_text(dumps_manifest(manifest))
    return dst


def junction_batch(models: list[TrafficModel], first: int) -> list[Reading]:
    out = []
    for j, m in enumerate(models):
        iv = m.step()
        for d, (v, o) in enumerate(zip(iv.volume, iv.occupancy), start=1):
            out += [Reading(f"jn-{first + j}", f"detector_volume.{d}", float(v), "veh", iv.t_end),
                    Reading(f"jn-{first + j}", f"detector_occupancy.{d}", float(o), "%", iv.t_end)]
    return out


async def test_hot_swap_under_load_loses_nothing_and_never_mixes_versions(tmp_path: Path) -> None:
    make_version(tmp_path, "traffic_demand", "1.1.0", OFFSET)
    stage = InferenceStage.from_config([ModelSpec("traffic_demand", "1.0.0")])
    producers, per_producer, intervals = 4, 8, 40
    junctions = [[TrafficModel(seed=100 + p * per_producer + j, start=T0) for j in range(per_producer)]
                 for p in range(producers)]
    sent = returned = 0
    seen_versions: list[str] = []  # in completion order
    swapped = asyncio.Event()

    async def producer(p: int) -> None:
        nonlocal sent, returned
        for k in range(intervals):
            batch = junction_batch(junctions[p], p * per_producer)
            out = await stage.process(batch)
            sent += len(batch)
            assert out[: len(batch)] == batch, "every reading comes back, unchanged and in order"
            returned += len(batch)
            forecasts = [r for r in out[len(batch):] if r.point.startswith("volume_15min_forecast")]
            if k >= 11:
                assert len(forecasts) == per_producer * 4, "no inference skipped across the swap"
                high = [r.value >= OFFSET for r in forecasts]
                assert all(high) or not any(high), "one batch, one model version"
                seen_versions.append("1.1.0" if high[0] else "1.0.0")
            if k == 20 and p == 0:
                swapped.set()
            await asyncio.sleep(0)

    async def swapper() -> None:
        await swapped.wait()
        await stage.swap(ModelSpec("traffic_demand", "1.1.0"), tmp_path)

    try:
        await asyncio.gather(*(producer(p) for p in range(producers)), swapper())
    finally:
        stage.close()
    assert sent == returned == producers * per_producer * 8 * intervals
    assert stage.versions() == {"traffic_demand": "1.1.0"}
    first_new = seen_versions.index("1.1.0")
    assert first_new > 0 and all(v == "1.1.0" for v in seen_versions[first_new:])
    assert stage.stats()["swaps"] == 1


async def test_a_bad_new_version_is_refused_and_the_old_one_keeps_running(tmp_path: Path) -> None:
    bad = make_version(tmp_path, "traffic_demand", "1.2.0")
    (bad / "model.onnx").write_bytes(b"\x00" * 100)
    stage = InferenceStage.from_config([ModelSpec("traffic_demand", "1.0.0")])
    models = [TrafficModel(seed=7, start=T0)]
    try:
        for _ in range(12):
            await stage.process(junction_batch(models, 0))
        with pytest.raises(ModelLoadError, match="does not match its manifest"):
            await stage.swap(ModelSpec("traffic_demand", "1.2.0"), tmp_path)
        with pytest.raises(ModelLoadError, match="manifest not found"):
            await stage.swap(ModelSpec("traffic_demand", "9.0.0"), tmp_path / "nowhere")
        out = await stage.process(junction_batch(models, 0))
        assert sum(r.point.startswith("volume_15min_forecast") for r in out) == 4
        s = stage.stats()
        assert stage.versions() == {"traffic_demand": "1.0.0"} and len(s["load_errors"]) == 2
        assert "1.2.0" in s["last_error"] or "9.0.0" in s["last_error"]
    finally:
        stage.close()


async def test_alarm_state_carries_over_a_swap(tmp_path: Path) -> None:
    make_version(tmp_path, "wx_fault", "1.0.1")
    weather = WeatherModel(seed=31, storms_per_day=0.0)
    onset = weather.t + 90 * 60.0
    inj = FaultInjector(CHANNELS["air_temperature"], [Fault(FaultKind.STUCK, onset, onset + 5 * 3600.0)])
    stage = InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0")])
    alarms: list[dict] = []
    suspect_after_swap = 0
    try:
        for k in range(1, 200):
            s = weather.advance(weather.t + 60.0)
            batch = [Reading("wx", "air_temperature", inj.apply(s.t, round(s.temperature_c, 1))[0], "degC", s.t),
                     Reading("wx", "relative_humidity", round(s.humidity_pct, 1), "%", s.t),
                     Reading("wx", "air_pressure", round(s.pressure_hpa, 1), "hPa", s.t),
                     Reading("wx", "wind_speed", round(s.wind_speed_ms, 1), "m/s", s.t),
                     Reading("wx", "rain_intensity", round(s.rain_rate_mmh, 1), "mm/h", s.t)]
            out = await stage.process(batch)
            alarms += [json.loads(r.text) for r in out if r.cls is RecordClass.ALARM]
            if k == 150:
                await stage.swap(ModelSpec("wx_fault", "1.0.1"), tmp_path)
            if k > 150:
                suspect_after_swap += bool(out[0].quality & Quality.SUSPECT)
    finally:
        stage.close()
    assert [a["state"] for a in alarms] == ["raised"], "no second alarm for the same fault after the swap"
    assert suspect_after_swap == 49
