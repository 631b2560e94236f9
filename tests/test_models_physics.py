"""The physics the models train on: sensor faults and junction traffic behave as documented."""

from __future__ import annotations

import random

import numpy as np
import pytest

from drivers.physics.faults import CHANNELS, Fault, FaultInjector, FaultKind, inject, random_faults
from drivers.physics.traffic import INTERVAL_S, SignalControllerSim, TrafficModel, demand_shape

T = CHANNELS["air_temperature"]


def _series(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    t = 1_750_000_000.0 + 60.0 * np.arange(n)
    return t, 20.0 + 0.03 * np.arange(n) + np.sin(np.arange(n) / 5.0)


def test_each_fault_kind_does_what_it_says() -> None:
    t, v = _series()
    faults = [
        Fault(FaultKind.STUCK, t[10], t[30]),
        Fault(FaultKind.SPIKE, t[40], t[41], 8.0),
        Fault(FaultKind.DRIFT, t[50], t[80], 3.0),
        Fault(FaultKind.DEAD, t[90], t[110], 0.0),
    ]
    out, code = inject(t, v, T, faults)
    assert np.all(out[10:30] == out[9]) and code[10] == 1
    assert out[40] == pytest.approx(round(v[40] + 8.0, 1)) and code[40] == 2 and code[41] == 0
    assert out[79] - round(v[79], 1) == pytest.approx(3.0 * 29 / 60, abs=0.11) and code[60] == 3
    assert np.all(out[90:110] == 0.0) and code[95] == 4
    assert np.all(np.abs(out * 10 - np.round(out * 10)) < 1e-6), "quantised to 0.1"


def test_streaming_injector_matches_batch_injection() -> None:
    t, v = _series()
    rng = random.Random(3)
    faults = random_faults(rng, T, t[0], t[-1], episodes_per_day=40, spikes_per_day=60)
    batch, _ = inject(t, v, T, faults)
    inj = FaultInjector(T, faults)
    stream = [inj.apply(float(ti), float(vi))[0] for ti, vi in zip(t, v)]
    assert np.allclose(batch, stream)


def test_random_faults_are_seeded_and_separated() -> None:
    a = random_faults(random.Random(7), T, 0.0, 20 * 86400.0)
    b = random_faults(random.Random(7), T, 0.0, 20 * 86400.0)
    assert a == b and len(a) > 10
    episodes = [f for f in a if f.kind is not FaultKind.SPIKE]
    assert all(e2.start >= e1.end for e1, e2 in zip(episodes, episodes[1:]))
    assert all(not any(e.active(s.start) for e in episodes) for s in a if s.kind is FaultKind.SPIKE)


def test_traffic_is_seeded_and_peaks_on_weekday_mornings_and_evenings() -> None:
    s1 = TrafficModel(seed=4).series(288 * 7)
    s2 = TrafficModel(seed=4).series(288 * 7)
    assert np.array_equal(s1["volume"], s2["volume"])
    assert demand_shape(7.8, True, 0.9, 0.4) > 2 * demand_shape(3.0, True, 0.9, 0.4)
    assert demand_shape(17.8, True, 0.4, 0.9) > demand_shape(12.0, True, 0.4, 0.9)
    assert demand_shape(7.8, False, 0.9, 0.4) < demand_shape(7.8, True, 0.9, 0.4)
    assert np.all(s1["volume"] >= 0) and np.all((s1["occupancy"] >= 0) & (s1["occupancy"] <= 98))
    assert np.all(np.diff(s1["t_end"]) == INTERVAL_S)


def test_incidents_raise_occupancy_and_cut_volume() -> None:
    s = TrafficModel(seed=11, incidents_per_day=6.0).series(288 * 10)
    inc = s["incident"]
    assert inc.any()
    # an approach under an incident with demand near its reduced capacity queues: occupancy climbs
    busy = s["demand"] > 300
    assert s["occupancy"][inc & busy].mean() > s["occupancy"][~inc & busy].mean()


def test_controller_sim_pedestrian_bitmaps_and_pattern_at_cycle_boundary() -> None:
    c = SignalControllerSim(seed=1, ped_call_prob=1.0)
    assert c.state(3.0).ped_walk == 1 << 1            # phase 2 walking
    assert c.state(10.0).ped_clear == 1 << 1          # then clearance
    assert c.state(30.0).ped_walk == c.state(30.0).ped_clear == 0
    assert c.state(62.0).ped_walk == 1 << 5           # phase 6
    c.set_pattern(3, 130.0)
    assert c.state(200.0).pattern == 2 and c.state(240.0).pattern == 3
    quiet = SignalControllerSim(seed=1, ped_call_prob=0.0)
    assert all(quiet.state(float(t)).ped_walk == 0 for t in range(0, 600, 3))
