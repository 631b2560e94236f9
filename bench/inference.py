"""Inference-stage benchmark (issue 5). Prints one JSON object.

- rows_per_s: readings/s through `InferenceStage.process` with all three models loaded, 200
  devices (160 WXT530-like stations with 8 points each, polled every minute; 40 junction
  controllers with 4 detectors = 8 points, reporting every 5 minutes), one process() call per
  minute of data (the pipeline's batching), timed over `TICKS` minutes after the windows are full.
  Every station-minute runs the fault detector (4 rows) and the nowcast (1 row); every fifth
  minute the traffic model runs (4 rows per junction).
- p99_batch_ms: p99 latency of process() for a batch of 64 readings (8 stations x 8 points,
  every call runs the fault detector on 32 rows and the nowcast on 8) -- the whole stage:
  routing, windows, features, session.run in the worker thread and the readings built back.
  `session_p99_ms_64_rows` gives each model's bare session.run for 64 rows.
- agent_rss_mb_with_models: RSS of a fresh interpreter that imports the agent runtime and loads
  the three models, against one that imports the agent runtime only and one that adds numpy;
  `onnxruntime_share_mb` is with_models minus agent+numpy (the runtime library, three sessions
  and our modules), `numpy_share_mb` the rest of the difference.

`--results` also rewrites the "## Inference (issue 5)" section of bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agent.inference import InferenceStage, ModelSpec
from core.reading import Reading
from edge_models.manifest import load_manifest
from edge_models.runtime import default_models_dir

STATIONS = 160
JUNCTIONS = 40
WARMUP_TICKS = 62
TICKS = 120
SPECS = [ModelSpec("wx_fault", "1.0.0"), ModelSpec("rain_nowcast", "1.0.0"), ModelSpec("traffic_demand", "1.0.0")]
WX_POINTS = [("air_temperature", "degC"), ("relative_humidity", "%"), ("air_pressure", "hPa"),
             ("wind_speed", "m/s"), ("rain_intensity", "mm/h"), ("wind_direction", "deg"),
             ("rain_accumulation", "mm"), ("dew_point", "degC")]
T0 = 1_750_000_000.0


def _weather_ticks(n_ticks: int, stations: int, rng: np.random.Generator) -> list[list[Reading]]:
    """Plausible one-minute station values (random walks around summer means), prebuilt."""
    base = np.array([26.0, 60.0, 1008.0, 3.0, 0.0, 120.0, 5.0, 17.0])
    step = np.array([0.1, 0.4, 0.03, 0.3, 0.0, 5.0, 0.0, 0.1])
    state = base + rng.normal(0, 1, (stations, 8)) * np.array([2, 5, 3, 1, 0, 30, 1, 1])
    ticks: list[list[Reading]] = []
    for k in range(n_ticks):
        state = state + rng.normal(0, 1, state.shape) * step
        vals = np.round(state, 1)
        ts = T0 + 60.0 * k
        ticks.append([Reading(f"wx{s:03d}", p, float(vals[s, i]), u, ts)
                      for s in range(stations) for i, (p, u) in enumerate(WX_POINTS)])
    return ticks


def _traffic_ticks(n_ticks: int, rng: np.random.Generator) -> list[list[Reading]]:
    ticks: list[list[Reading]] = []
    for k in range(n_ticks):
        ts = T0 + 60.0 * k
        if k % 5:
            ticks.append([])
            continue
        vols = rng.poisson(20, (JUNCTIONS, 4))
        occ = np.round(rng.uniform(2, 15, (JUNCTIONS, 4)), 1)
        ticks.append([r for j in range(JUNCTIONS) for d in range(4) for r in (
            Reading(f"jn{j:02d}", f"detector_volume.{d + 1}", float(vols[j, d]), "veh", ts),
            Reading(f"jn{j:02d}", f"detector_occupancy.{d + 1}", float(occ[j, d]), "%", ts))])
    return ticks


async def throughput() -> dict:
    rng = np.random.default_rng(1)
    n = WARMUP_TICKS + TICKS
    wx = _weather_ticks(n, STATIONS, rng)
    tr = _traffic_ticks(n, rng)
    stage = InferenceStage.from_config(SPECS)
    try:
        for k in range(WARMUP_TICKS):
            await stage.process(wx[k] + tr[k])
        before = stage.stats()["inferences"]
        readings = derived = 0
        t0 = time.perf_counter()
        for k in range(WARMUP_TICKS, n):
            batch = wx[k] + tr[k]
            out = await stage.process(batch)
            readings += len(batch)
            derived += len(out) - len(batch)
        dt = time.perf_counter() - t0
        rows = stage.stats()["inferences"] - before
    finally:
        stage.close()
    return {"rows_per_s": round(readings / dt), "readings": readings, "derived_records": derived,
            "model_rows": rows, "model_rows_per_s": round(rows / dt), "seconds": round(dt, 3)}


async def batch_latency(calls: int = 600) -> dict:
    rng = np.random.default_rng(2)
    ticks = _weather_ticks(WARMUP_TICKS + calls, 8, rng)
    stage = InferenceStage.from_config(SPECS)
    lat = []
    try:
        for k, batch in enumerate(ticks):
            t0 = time.perf_counter()
            await stage.process(batch)
            if k >= WARMUP_TICKS:
                lat.append((time.perf_counter() - t0) * 1000)
        session = {}
        for name, runner in stage._runners.items():  # bench looks inside on purpose
            x = np.random.default_rng(3).normal(size=(64, len(runner.head.manifest.features))).astype(np.float32)
            times = []
            for _ in range(500):
                t0 = time.perf_counter()
                runner.head.model.infer(x)
                times.append((time.perf_counter() - t0) * 1000)
            session[name] = round(float(np.percentile(times, 99)), 3)
    finally:
        stage.close()
    return {"p99_batch_ms": round(float(np.percentile(lat, 99)), 3),
            "p50_batch_ms": round(float(np.percentile(lat, 50)), 3),
            "batch_readings": len(ticks[0]), "session_p99_ms_64_rows": session}


_RSS_SNIPPET = """
import gc, importlib
for m in ("core.reading", "agent.config", "agent.pipeline", "agent.buffer", "agent.scheduler", "agent.drain"):
    try:
        importlib.import_module(m)
    except ImportError:
        pass
MODE = {mode!r}
if MODE in ("numpy", "models"):
    import numpy
if MODE == "models":
    from agent.inference import InferenceStage, ModelSpec
    stage = InferenceStage.from_config([ModelSpec("wx_fault", "1.0.0"), ModelSpec("rain_nowcast", "1.0.0"),
                                        ModelSpec("traffic_demand", "1.0.0")])
gc.collect()
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""


def rss() -> dict:
    out = {}
    for mode in ("agent", "numpy", "models"):
        r = subprocess.run([sys.executable, "-c", _RSS_SNIPPET.format(mode=mode)], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        out[mode] = int(r.stdout.strip()) / 1024
    return {
        "agent_rss_mb_with_models": round(out["models"], 1),
        "agent_rss_mb_without_models": round(out["agent"], 1),
        "numpy_share_mb": round(out["numpy"] - out["agent"], 1),
        "onnxruntime_share_mb": round(out["models"] - out["numpy"], 1),
    }


def model_metrics() -> dict:
    out = {}
    for name in ("wx_fault", "rain_nowcast", "traffic_demand"):
        m = load_manifest(default_models_dir() / name / "manifest.toml")
        keys = {"sensor_fault": ("f1_fault", "baseline_f1_fault", "macro_f1_classes", "false_flag_rate_ok"),
                "rain_nowcast": ("brier", "baseline_brier_climatology", "brier_skill_vs_climatology",
                                 "probability_of_detection", "median_lead_min", "false_alarms_per_station_day"),
                "traffic_demand": ("mae_veh_per_5min", "baseline_mae_persistence", "improvement_vs_persistence",
                                   "mae_mean_of_last_3")}[m.kind]
        out[m.tag] = {"size_bytes": m.size_bytes, **{k: m.metrics.get(k) for k in keys}}
    return out


def cpu_reference_ms() -> float:
    """Milliseconds for one million pure-Python additions (best of 3): how fast this host's core is
    today, so that figures from different days (the machine is shared and its speed moves) compare."""
    best = float("inf")
    for _ in range(3):
        t0, s = time.perf_counter(), 0
        for i in range(1_000_000):
            s += i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu)
        cpu = model.group(1).strip() if model else platform.processor()
    except OSError:
        cpu = platform.processor()
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(result: dict, path: Path) -> None:
    t, lat, mem, mm = result, result, result, result["models"]
    f, r, tr = mm["wx_fault@1.0.0"], mm["rain_nowcast@1.0.0"], mm["traffic_demand@1.0.0"]
    section = f"""## Inference (issue 5)

`python -m bench.inference` on {result['machine']} (shared with other work while measured).

| figure | result | target |
|---|---|---|
| rows_per_s (readings/s through the stage, 3 models, 200 devices, batched per minute of data) | {t['rows_per_s']:,} | >= 100,000 |
| model rows/s in the same run | {t['model_rows_per_s']:,} | - |
| p99_batch_ms (process() of 64 readings: 32 fault rows + 8 nowcast rows) | {lat['p99_batch_ms']} (p50 {lat['p50_batch_ms']}) | <= 5 |
| bare session.run p99 for 64 rows, ms | {', '.join(f'{k} {v}' for k, v in lat['session_p99_ms_64_rows'].items())} | - |
| agent_rss_mb_with_models | {mem['agent_rss_mb_with_models']} | report |
| agent RSS without models / numpy share / onnxruntime share (MB) | {mem['agent_rss_mb_without_models']} / {mem['numpy_share_mb']} / {mem['onnxruntime_share_mb']} | - |

| model | size | held-out metric | baseline | target |
|---|---|---|---|---|
| wx_fault 1.0.0 (MLP 32-16) | {f['size_bytes'] / 1024:.1f} KiB | F1 (fault vs ok) {f['f1_fault']}, macro-F1 over 5 classes {f['macro_f1_classes']}, false flags on good windows {f['false_flag_rate_ok']} | fixed per-channel thresholds F1 {f['baseline_f1_fault']} | F1 >= 0.9 |
| rain_nowcast 1.0.0 (GB 100x depth 3) | {r['size_bytes'] / 1024:.1f} KiB | Brier {r['brier']} (skill {r['brier_skill_vs_climatology']}); heavy-rain onsets warned {r['probability_of_detection']}, median lead {r['median_lead_min']} min, {r['false_alarms_per_station_day']} false alarms/station-day | climatology Brier {r['baseline_brier_climatology']} | better than climatology |
| traffic_demand 1.0.0 (MLP 32-16) | {tr['size_bytes'] / 1024:.1f} KiB | MAE {tr['mae_veh_per_5min']} veh/5 min ({tr['improvement_vs_persistence'] * 100:.1f} % below persistence; mean-of-last-3 {tr['mae_mean_of_last_3']}) | persistence MAE {tr['baseline_mae_persistence']} | >= 20 % below persistence |

The machine is shared with other sessions: over repeated runs rows_per_s moved between ~125k and
~165k and p99_batch_ms between ~2 and ~3 ms, once 5.6 ms while other work was busy (p50 stays
~1 ms); a 64-reading batch spends most of its time in the hop to the worker thread, not in the
models (see the bare session.run figures).

Metrics are the exported ONNX files' own, on seeded hold-out data from the shared physics
(`quanedge models evaluate NAME` recomputes them; tests/test_models_metrics.py checks them and
fresh seeds). The physics' storms always announce themselves by a pressure fall, so the nowcast's
skill here is an upper bound on what real stations will show.
"""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"## Inference \(issue 5\)\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main() -> None:
    result: dict = {}
    result.update(asyncio.run(throughput()))
    result.update(asyncio.run(batch_latency()))
    result.update(rss())
    result["models"] = model_metrics()
    result["machine"] = machine()
    result["cpu_reference_ms_per_1m_adds"] = cpu_reference_ms()
    print(json.dumps(result, indent=1))
    if "--results" in sys.argv[1:]:
        write_results(result, Path(__file__).resolve().parent / "RESULTS.md")


if __name__ == "__main__":
    main()
