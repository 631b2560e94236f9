"""The rollout rules without I/O: wave planning, thresholds, rate limit, maintenance windows."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.errors import PayloadError
from fleet_server.rollout import planner
from fleet_server.rollout.model import RolloutSpec, RolloutView, WaveSpec, WaveView
from fleet_server.rollout.windows import SitePolicy


def _view(*waves: WaveView, status: str = "running", rate: float | None = None, tokens: float = 0.0) -> RolloutView:
    return RolloutView("r-1", "n", "agent", "t", "1.0", "", status, sum(w.capacity for w in waves), 1, waves,
                       60, rate, True, 10, 0.0, 0.0, tokens=tokens, tokens_at=0.0)


def test_planner_rules() -> None:
    full = WaveView(1, 10, 90.0, 10.0, assigned=10, succeeded=8, failed=1)
    nxt = WaveView(2, 90, 90.0, 10.0)
    assert planner.pick_wave(_view(full, nxt), 0).reason == "waiting_for_wave"
    ok = WaveView(1, 10, 90.0, 10.0, assigned=10, succeeded=9, failed=1)
    assert planner.pick_wave(_view(ok, nxt), 0).wave == 2
    assert planner.breached_wave(_view(WaveView(1, 10, 90.0, 10.0, assigned=10, failed=2))) is not None
    assert planner.breached_wave(_view(WaveView(1, 10, 90.0, 10.0, assigned=10, failed=2, errors_acked=2))) is None
    assert planner.pick_wave(_view(ok, nxt, status="paused"), 0).reason == "paused"
    accepted = WaveView(1, 10, 90.0, 10.0, assigned=10, succeeded=8, failed=2, errors_acked=2)
    assert planner.pick_wave(_view(accepted, nxt), 0).wave == 2     # 90 % of the 8 not accepted as failed
    limited = _view(WaveView(1, 10, 90.0, 10.0), rate=60.0, tokens=0.0)
    assert planner.pick_wave(limited, 0.5).reason == "rate_limited"
    assert planner.pick_wave(limited, 1.0).wave == 1
    assert planner.refill(limited, 1000.0) == planner.burst(60.0) == 5.0
    done = WaveView(1, 2, 90.0, 10.0, assigned=2, succeeded=1, canceled=1)
    assert planner.is_finished(_view(done)) and not planner.is_finished(_view(done, nxt))


def test_wave_spec_validation() -> None:
    assert WaveSpec("10%").reach(1000) == 100 and WaveSpec("1").reach(0) == 0 and WaveSpec("0.5%").reach(10) == 1
    for bad in ("0%", "101%", "1.5", "-1", "x"):
        with pytest.raises(PayloadError):
            WaveSpec(bad)
    with pytest.raises(PayloadError):
        RolloutSpec("n", "agent", "t", "1", ("hw",), waves=(WaveSpec("50%"),))


def test_windows_follow_dst_and_wrap_midnight() -> None:
    policy = SitePolicy.from_json("s", {"timezone": "Europe/Berlin",
                                        "windows": [{"days": "fri", "start": "22:00", "end": "05:00"}]})

    def at(text: str) -> bool:
        return policy.allows("firmware",
                             datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp())

    assert at("2026-03-27T22:30:00") and at("2026-03-28T04:59:00")    # Friday night into Saturday
    assert not at("2026-03-28T05:00:00") and not at("2026-03-27T21:59:00")
    assert at("2026-10-23T23:00:00") and not at("2026-10-24T23:00:00")  # Saturday night is not Friday's
    # the night the clocks go forward (Sunday 29 March): local wall time is what counts
    assert not SitePolicy.from_json("s", {"timezone": "Europe/Berlin", "windows": [
        {"days": "sun", "start": "02:00", "end": "03:00"}]}).allows(
        "agent", datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("UTC")).timestamp())   # 03:30 CEST




@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5000), sizes=st.lists(st.integers(1, 100), min_size=0, max_size=5),
       success_pct=st.floats(0, 100), outcomes=st.lists(st.booleans(), min_size=1, max_size=400))
def test_waves_never_overfill_and_open_only_after_success(total: int, sizes: list[int], success_pct: float,
                                                          outcomes: list[bool]) -> None:
    """Assign boxes one by one (each succeeding or failing at once, error threshold 100 %): no wave
    exceeds its capacity, and a box joins wave k+1 only once wave k met its success threshold."""
    waves = (tuple(WaveSpec(f"{p}%", success_pct, 100.0) for p in sorted(set(sizes)))
             + (WaveSpec("100%", success_pct, 100.0),))
    caps = RolloutSpec("n", "agent", "t", "1", ("hw",), waves=waves).capacities(total)
    assert sum(c for _, c in caps) == total
    counters = [dict(assigned=0, succeeded=0, failed=0) for _ in caps]
    current = 1
    for ok in outcomes:
        view = _view(*(WaveView(i + 1, c, w.success_pct, 100.0, **counters[i]) for i, (w, c) in enumerate(caps)))
        view = replace(view, current_wave=current)
        pick = planner.pick_wave(view, 0.0)
        if pick.wave is None:
            assert pick.reason in ("waiting_for_wave", "all_assigned")
            break
        for before in range(pick.wave - 1):
            w, c = caps[before]
            assert counters[before]["assigned"] == c
            assert counters[before]["succeeded"] >= w.success_pct / 100 * c - 1e-9
        counters[pick.wave - 1]["assigned"] += 1
        counters[pick.wave - 1]["succeeded" if ok else "failed"] += 1
        current = pick.current_wave
    for (_, c), n in zip(caps, counters):
        assert n["assigned"] <= c


def test_public_api_is_pinned() -> None:
    import importlib

    expected = {
        "fleet_server.rollout.model": ["BOX_STATES", "ERROR_STATES", "FINAL_STATES", "KINDS", "ActionView",
                                       "CheckinOutcome", "Inventory", "ReportOutcome", "RolloutSpec", "RolloutView",
                                       "StatusReport", "TargetFilter", "WaveSpec", "WaveView"],
        "fleet_server.rollout.planner": ["Pick", "breached_wave", "burst", "can_assign", "is_finished", "pick_wave",
                                         "refill"],
        "fleet_server.rollout.windows": ["SitePolicy", "Window"],
        "fleet_server.rollout.errors": ["ActionClosed", "RepositoryUnavailable", "RolloutConflict", "UnknownAction",
                                        "UnknownRollout"],
        "fleet_server.rollout.engine": ["Answer", "BoxRef", "RolloutEngine", "resolve_target"],
        "fleet_server.rollout.timestamps": ["TimestampKeeper"],
        "fleet_server.rollout.cli": ["app", "render"],
        "fleet_server.store.sql_rollouts": ["RolloutTables", "split_action_id"],
    }
    for name, names in expected.items():
        module = importlib.import_module(name)
        assert sorted(module.__all__) == sorted(names), name
        assert all(hasattr(module, attr) for attr in names), name
