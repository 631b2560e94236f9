"""drivers.modbus.timing: the wire-time numbers of devices.md, and the over-subscription prediction."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.timing import DeviceLoad, LineTiming, capacity_report, read_reply_bytes

L9600 = LineTiming(9600, "N")


def test_devices_md_numbers_at_9600_8n1() -> None:
    # "1 char = 10 bits = 1.042 ms; t3.5 = 3.65 ms, t1.5 = 1.56 ms"
    assert L9600.bits_per_char == 10
    assert L9600.char_s * 1000 == pytest.approx(1.042, abs=5e-4)
    assert L9600.t35_s * 1000 == pytest.approx(3.65, abs=5e-3)
    assert L9600.t15_s * 1000 == pytest.approx(1.56, abs=5e-3)
    # "A function-03 read of 10 registers = 8-byte request (8.3 ms) + 25-byte reply (26.0 ms) + two gaps
    #  + slave turnaround: about 62 ms at 20 ms turnaround, i.e. ~16 reads/s per bus."
    assert read_reply_bytes(10) == 25
    assert L9600.wire_s(8) * 1000 == pytest.approx(8.3, abs=0.05)
    assert L9600.wire_s(25) * 1000 == pytest.approx(26.0, abs=0.05)
    one = L9600.read_s(10, 0.020)
    assert one * 1000 == pytest.approx(62, abs=0.5)
    assert int(1 / one) == 16


def test_slower_baud_and_parity_and_fixed_gaps_above_19200() -> None:
    # "4800 baud doubles the wire time; 8E1 adds 10 %."
    assert LineTiming(4800).read_s(10, 0) == pytest.approx(2 * L9600.read_s(10, 0))
    assert LineTiming(9600, "E").read_s(10, 0) == pytest.approx(1.1 * L9600.read_s(10, 0))
    assert LineTiming(9600, "N", stopbits=2).bits_per_char == 11
    # "Above 19200 baud the gaps are fixed: t1.5 = 0.75 ms, t3.5 = 1.75 ms."
    for baud in (38400, 57600, 115200):
        line = LineTiming(baud)
        assert (line.t15_s, line.t35_s) == (0.00075, 0.00175)
    at19200 = LineTiming(19200)
    assert at19200.t35_s == pytest.approx(3.5 * 10 / 19200)
    assert str(LineTiming(19200, "E")) == "19200 8E1"


@pytest.mark.parametrize("kwargs, words", [
    ({"baudrate": 0}, "baudrate"), ({"baudrate": 9600, "parity": "X"}, "parity"),
    ({"baudrate": 9600, "stopbits": 3}, "stopbits"), ({"baudrate": 9600, "bytesize": 9}, "bytesize"),
])
def test_bad_line_settings_are_named(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        LineTiming(**kwargs)


def test_bad_loads_are_named() -> None:
    with pytest.raises(ValueError, match="1..125 registers"):
        read_reply_bytes(126)
    with pytest.raises(ValueError, match="d1: poll_s"):
        DeviceLoad("d1", 0, (10,))
    with pytest.raises(ValueError, match="d1: a poll needs"):
        DeviceLoad("d1", 1.0, ())
    with pytest.raises(ValueError, match="no devices"):
        capacity_report("b", L9600, [])


def test_a_bus_within_capacity_has_nobody_late() -> None:
    loads = [DeviceLoad(f"d{i}", 1.0, (10,)) for i in range(8)]  # 8 x 62 ms per second
    rep = capacity_report("b1", L9600, loads, 0.020)
    assert rep.demand == pytest.approx(8 * 0.0617, abs=0.002)
    assert not rep.oversubscribed and rep.late == () and rep.warnings() == []
    assert all(d.expected_period_s == d.poll_s for d in rep.devices)


def test_oversubscribed_bus_names_the_late_devices_and_by_how_much(caplog: pytest.LogCaptureFixture) -> None:
    # 20 devices want a 10-register read every 0.5 s: 20 x 61.7 ms = 1.23 s of wire time per 0.5 s.
    # A slow logger (every 60 s) keeps its interval; the fast ones share what is left round-robin.
    loads = [DeviceLoad(f"fast{i}", 0.5, (10,)) for i in range(20)] + [DeviceLoad("logger", 60.0, (10, 10))]
    rep = capacity_report("b1", L9600, loads, 0.020)
    cycle = L9600.read_s(10, 0.020)
    assert rep.oversubscribed and rep.demand == pytest.approx(20 * cycle / 0.5 + 2 * cycle / 60)
    late = {d.name: d for d in rep.late}
    assert set(late) == {f"fast{i}" for i in range(20)}
    period = 20 * cycle / (1 - 2 * cycle / 60)  # the round-robin period the scheduler gives them
    assert late["fast0"].expected_period_s == pytest.approx(period)
    assert late["fast0"].late_by_s == pytest.approx(period - 0.5)
    with caplog.at_level(logging.WARNING, logger="drivers.modbus.timing"):
        rep.log()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 20
    assert "fast3" in warnings[3] and "late by 0.736 s" in warnings[3] and "9600 8N1" in warnings[3]
    assert rep.as_dict()["oversubscribed"] is True


loads_st = st.lists(st.tuples(st.floats(0.05, 120.0), st.lists(st.integers(1, 125), min_size=1, max_size=4)),
                    min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(loads_st, st.sampled_from((1200, 4800, 9600, 19200, 115200)), st.sampled_from("NEO"), st.floats(0, 0.05))
def test_capacity_model_properties(raw: list, baud: int, parity: str, turnaround: float) -> None:
    line = LineTiming(baud, parity)
    loads = [DeviceLoad(f"d{i}", p, tuple(r)) for i, (p, r) in enumerate(raw)]
    rep = capacity_report("b", line, loads, turnaround)
    # late devices exist exactly when the bus is over-subscribed
    assert bool(rep.late) == rep.oversubscribed or abs(rep.demand - 1) < 1e-6
    for d in rep.devices:
        assert d.expected_period_s >= d.poll_s - 1e-9
        assert d.expected_period_s >= d.cycle_s - 1e-9  # never faster than its own wire time
    if rep.late:
        # the late share one period, no shorter than their own intervals, and the bus is then full
        periods = {round(d.expected_period_s, 9) for d in rep.late}
        assert len(periods) == 1
        used = sum(d.cycle_s / d.expected_period_s for d in rep.devices)
        assert used == pytest.approx(1.0, rel=1e-6)
        assert all(d.poll_s >= rep.late[0].expected_period_s - 1e-9 for d in rep.devices if d not in rep.late)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 125), st.sampled_from((2400, 4800, 9600, 19200, 38400)), st.floats(0, 0.05))
def test_wire_time_grows_with_registers_and_falls_with_baud(count: int, baud: int, turnaround: float) -> None:
    line = LineTiming(baud)
    t = line.read_s(count, turnaround)
    assert t == pytest.approx((8 + 5 + 2 * count) * 10 / baud + 2 * line.t35_s + turnaround)
    if count < 125:
        assert line.read_s(count + 1, turnaround) > t
    assert LineTiming(baud * 2).read_s(count, turnaround) < t
    assert line.timeout_floor_s(count, turnaround) == pytest.approx(t - line.t35_s)
