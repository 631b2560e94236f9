"""The pure seq-tracking rules (fleet_server.seq_tracking), checked against a naive set-based model
and with an honest box simulated: any processing order its acknowledgements allow gives the same
result, lost seqs are reported exactly once, covered ones never."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.seq_tracking import (
    BUFFER_REPLACED,
    UNANNOUNCED,
    UNTRACKED,
    Gap,
    SeqReport,
    SeqState,
    check_reason,
    seq_ranges,
    track,
)

# -- a naive model of the same rules: explicit sets of seqs, no ranges ------------------------------


class Model:
    def __init__(self, fresh: bool = False) -> None:
        self.contig: int | None = None
        self.covered: set[int] = set()   # covered seqs above contig
        self.base: int | None = None
        self.fresh = fresh

    def apply(self, seqs: list[int], report: SeqReport | None) -> list[tuple[int, str]]:
        new = set(seqs)
        for first, last, _ in report.dropped if report else ():
            new |= set(range(first, last + 1))
        if self.contig is not None:
            new = {s for s in new if s > self.contig}
        self.covered |= new
        gaps: list[tuple[int, str]] = []
        if report is not None:
            if report.base is not None:
                self.base = report.base if self.base is None else max(self.base, report.base)
                if self.contig is None and self.fresh:
                    self.contig = min([report.base, *self.covered]) - 1
                if self.contig is not None and report.base > self.contig + 1:
                    below = [s for s in self.covered if s < report.base]
                    if below:
                        gaps += [(s, BUFFER_REPLACED) for s in range(self.contig + 1, max(below) + 1)
                                 if s not in self.covered]
                    self.contig = report.base - 1
            if report.low is not None:
                if self.contig is None:
                    self.contig = report.low - 1
                elif report.low - 1 > self.contig:
                    gaps += [(s, UNANNOUNCED) for s in range(self.contig + 1, report.low) if s not in self.covered]
                    self.contig = report.low - 1
        if self.contig is not None:
            while self.contig + 1 in self.covered:
                self.contig += 1
            self.covered = {s for s in self.covered if s > self.contig}
        return gaps

    def state(self) -> SeqState:
        return SeqState(self.contig, tuple(seq_ranges(sorted(self.covered))), self.base, self.fresh)


def runs(gaps: list[tuple[int, str]]) -> list[Gap]:
    out: list[Gap] = []
    for seq, reason in gaps:
        if out and out[-1].reason == reason and out[-1].last + 1 == seq:
            out[-1] = Gap(out[-1].first, seq, reason)
        else:
            out.append(Gap(seq, seq, reason))
    return out


def gap_seqs(gaps: list[Gap] | tuple[Gap, ...]) -> list[int]:
    return [s for g in gaps for s in range(g.first, g.last + 1)]


# -- arbitrary messages -----------------------------------------------------------------------------

SEQ = st.integers(1, 60)


@st.composite
def messages(draw: st.DrawFn, bases: tuple[int, ...] = (1, 20, 45)) -> tuple[list[int], SeqReport | None]:
    seqs = draw(st.lists(SEQ, max_size=8))
    if draw(st.integers(0, 5)) == 0:
        return seqs, None   # an older agent: readings only
    base = draw(st.none() | st.sampled_from(bases))
    low = draw(st.none() | st.integers(1, 62))
    if low is not None and base is not None and low < base:
        low = base
    dropped = draw(st.lists(st.tuples(SEQ, SEQ, st.sampled_from(["disk_cap", "ttl"])), max_size=3))
    return seqs, SeqReport(low, base, tuple((min(a, b), max(a, b), r) for a, b, r in dropped))


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(messages(), max_size=12))
def test_track_matches_the_naive_model(fresh: bool, msgs: list[tuple[list[int], SeqReport | None]]) -> None:
    state, model = SeqState(fresh=fresh), Model(fresh)
    for seqs, report in msgs:
        out = track(state, seq_ranges(seqs), report)
        assert list(out.gaps) == runs(model.apply(seqs, report))
        state = out.state
        assert state == model.state()
        if state.contig is not None and state.above:
            assert state.above[0][0] > state.contig + 1   # contig always advanced as far as it can


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.sampled_from([2, 3, 4096]), st.lists(messages(bases=(1,)), max_size=12))
def test_reported_once_never_when_covered_before_and_every_lost_seq_below_low(
        fresh: bool, max_ranges: int, msgs: list[tuple[list[int], SeqReport | None]]) -> None:
    state = SeqState(fresh=fresh)
    covered: set[int] = set()
    reported: list[int] = []
    start: int | None = None   # where tracking started
    for seqs, report in msgs:
        out = track(state, seq_ranges(seqs), report, max_ranges=max_ranges)
        covered |= set(seqs) | {s for lo, hi, _ in (report.dropped if report else ()) for s in range(lo, hi + 1)}
        if start is None and out.state.contig is not None:   # tracking started with this message
            if fresh and report is not None and report.base is not None:
                start = min([report.base, *covered])
            elif report is not None and report.low is not None:
                start = report.low
            else:   # by the range bound: the lowest range became the start (checked from contig on)
                start = out.state.contig + 1
        new = gap_seqs(out.gaps)
        assert not set(new) & covered, "a gap names a seq covered before or by this message"
        reported += new
        state = out.state
        assert len(state.above) <= max_ranges
    assert len(reported) == len(set(reported)), "a seq was reported twice"
    lows = [r.low for _, r in msgs if r is not None and r.low is not None]
    if start is not None and lows:
        never = {s for s in range(start, max(lows)) if s not in covered}
        assert never <= set(reported), "a seq below a low that nothing covered went unreported"


# -- an honest box, and every processing order its acknowledgements allow ----------------------------


@dataclass(frozen=True)
class Msg:
    seqs: tuple[int, ...]
    report: SeqReport
    deps: frozenset[int]   # messages whose acknowledgement the box had when it sent this one


@dataclass
class Box:
    base: int
    next_seq: int = 0
    held: list[tuple[int, int]] = field(default_factory=list)    # chunks in the buffer, unacknowledged
    sent: set[tuple[int, int]] = field(default_factory=set)
    pending: list[tuple[int, int, str]] = field(default_factory=list)   # dropped, announcement not acked
    lost: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    msgs: list[Msg] = field(default_factory=list)
    chunk_of: list[tuple[int, int] | None] = field(default_factory=list)


@st.composite
def honest_history(draw: st.DrawFn) -> Box:
    box = Box(base=draw(st.integers(1, 10)))
    box.next_seq = box.base
    for _ in range(draw(st.integers(1, 40))):
        action = draw(st.sampled_from(["produce", "produce", "send", "send", "ack", "ack", "drop", "lose"]))
        if action == "produce":
            n = draw(st.integers(1, 4))
            box.held.append((box.next_seq, box.next_seq + n - 1))
            box.next_seq += n
        elif action == "send":   # oldest chunks most often; resends happen (duplicates)
            chunk = box.held[draw(st.integers(0, len(box.held) - 1))] if box.held else None
            low = box.held[0][0] if box.held else box.next_seq
            seqs = tuple(range(chunk[0], chunk[1] + 1)) if chunk else ()
            box.msgs.append(Msg(seqs, SeqReport(low, box.base, tuple(box.pending)), frozenset(box.acked)))
            box.chunk_of.append(chunk)
            if chunk:
                box.sent.add(chunk)
        elif action == "ack":
            waiting = [i for i in range(len(box.msgs)) if i not in box.acked]
            if waiting:
                i = draw(st.sampled_from(waiting))
                box.acked.add(i)
                chunk = box.chunk_of[i]
                if chunk in box.held:
                    box.held.remove(chunk)
                done = set(box.msgs[i].report.dropped)
                box.pending = [d for d in box.pending if d not in done]
        elif action == "drop" and box.held:   # disk cap: the oldest goes, announced
            first, last = box.held.pop(0)
            box.pending.append((first, last, "disk_cap"))
        elif action == "lose":   # the bug issue 11 is about: deleted, never sent, never announced
            never_sent = [c for c in box.held if c not in box.sent]
            if never_sent:
                chunk = draw(st.sampled_from(never_sent))
                box.held.remove(chunk)
                box.lost |= set(range(chunk[0], chunk[1] + 1))
    return box


def run(msgs: list[Msg], order: list[int]) -> tuple[SeqState, list[int]]:
    state, seqs = SeqState(fresh=True), []
    for i in order:
        out = track(state, seq_ranges(list(msgs[i].seqs)), msgs[i].report)
        state = out.state
        seqs += gap_seqs(out.gaps)
    return state, seqs


@st.composite
def allowed_order(draw: st.DrawFn, msgs: list[Msg]) -> list[int]:
    """Each message after the ones it depends on, plus re-deliveries (also after their deps)."""
    copies = draw(st.lists(st.integers(0, max(len(msgs) - 1, 0)), max_size=5)) if msgs else []
    nodes = list(range(len(msgs))) + copies
    done: set[int] = set()
    order: list[int] = []
    while nodes:
        ready = [k for k, i in enumerate(nodes) if msgs[i].deps <= done]
        k = ready[draw(st.integers(0, len(ready) - 1))]
        order.append(nodes.pop(k))
        done.add(order[-1])
    return order


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_order_the_acknowledgements_allow_gives_the_same_state_and_gaps(data: st.DataObject) -> None:
    box = data.draw(honest_history())
    canonical_state, canonical_gaps = run(box.msgs, list(range(len(box.msgs))))
    lows = [m.report.low for m in box.msgs if m.report.low is not None]
    expected = {s for s in box.lost if lows and s < max(lows)}
    assert sorted(canonical_gaps) == sorted(expected)   # exactly the lost seqs a low passed, once each
    for _ in range(3):
        state, gaps = run(box.msgs, data.draw(allowed_order(box.msgs)))
        assert state == canonical_state
        assert sorted(gaps) == sorted(canonical_gaps)


# -- examples -------------------------------------------------------------------------------------


def test_seq_ranges() -> None:
    assert seq_ranges([]) == []
    assert seq_ranges(list(range(5, 1005))) == [(5, 1004)]
    assert seq_ranges([7, 3, 4, 4, 9, 8, 1]) == [(1, 1), (3, 4), (7, 9)]
    assert seq_ranges([1, 1, 3]) == [(1, 1), (3, 3)]   # as many distinct seqs as the span: not contiguous


def test_clean_batches_with_low_leave_no_gap_and_a_lost_batch_is_one_gap() -> None:
    state = SeqState(fresh=True)
    for first in (100, 110, 120):
        out = track(state, [(first, first + 9)], SeqReport(low=first, base=100))
        assert out.gaps == ()
        state = out.state
    assert state == SeqState(129, (), 100, True)
    out = track(state, [(140, 149)], SeqReport(low=140, base=100))   # 130..139 never came
    assert out.gaps == (Gap(130, 139, UNANNOUNCED),) and out.gaps[0].missing == 10
    assert out.state.contig == 149
    assert track(out.state, [(130, 139)], SeqReport(low=150, base=100)).gaps == ()   # late: no second report


def test_holes_above_low_are_in_flight_not_gaps() -> None:
    out = track(SeqState(contig=9), [(30, 39), (50, 59)], SeqReport(low=10))
    assert out.gaps == () and out.state == SeqState(9, ((30, 39), (50, 59)))
    out = track(out.state, [], SeqReport(low=45, dropped=((10, 19, "ttl"),)))
    assert out.gaps == (Gap(20, 29, UNANNOUNCED), Gap(40, 44, UNANNOUNCED))
    assert out.state == SeqState(44, ((50, 59),))


def test_tracking_starts_at_the_first_low_unless_the_box_is_fresh() -> None:
    old = track(SeqState(), [(500, 509)], SeqReport(low=500, base=1))
    assert old.gaps == () and old.state.contig == 509   # history before tracking is unknown
    fresh = track(SeqState(fresh=True), [(500, 509)], SeqReport(low=500, base=1))
    assert fresh.gaps == (Gap(1, 499, UNANNOUNCED),)
    no_fields = track(SeqState(), [(1, 10)], None)
    assert no_fields.gaps == () and no_fields.state == SeqState(None, ((1, 10),))


def test_a_replaced_buffer_reports_the_old_holes_up_to_the_last_seq_seen() -> None:
    state = SeqState(contig=99, above=((110, 119), (130, 139)), base=1)
    out = track(state, [(5_000_000, 5_000_009)], SeqReport(low=5_000_000, base=5_000_000))
    assert out.gaps == (Gap(100, 109, BUFFER_REPLACED), Gap(120, 129, BUFFER_REPLACED))
    assert out.state == SeqState(5_000_009, (), 5_000_000)
    # A late message of the old buffer changes nothing.
    late = track(out.state, [(140, 149)], SeqReport(low=140, base=1))
    assert late.gaps == () and late.state == out.state


def test_the_range_bound_reports_the_lowest_hole_as_untracked() -> None:
    state = SeqState(contig=0)
    for first in (10, 20, 30):
        state = track(state, [(first, first)], SeqReport(low=1), max_ranges=2).state
    assert state.above == ((20, 20), (30, 30)) and state.contig == 10
    out = track(state, [(40, 40)], None, max_ranges=2)
    assert out.gaps == (Gap(11, 19, UNTRACKED),) and out.state.above == ((30, 30), (40, 40))
    before = track(SeqState(), [(10, 10), (20, 20), (30, 30)], None, max_ranges=2)
    assert before.gaps == () and before.state == SeqState(10, ((20, 20), (30, 30)))   # tracking starts


def test_dropped_ranges_cover_and_big_numbers_work() -> None:
    top = 2**63 - 1
    out = track(SeqState(contig=top - 10), [(top, top)], SeqReport(low=top, dropped=((top - 9, top - 5, "ttl"),)))
    assert out.gaps == (Gap(top - 4, top - 1, UNANNOUNCED),) and out.state == SeqState(top, ())


@pytest.mark.parametrize("reason, ok", [("disk_cap", True), ("a" * 32, True), ("a" * 33, False), ("", False),
                                        ("Disk", False), ("x-y", False), (3, False), ("ttl\n", False)])
def test_check_reason(reason: object, ok: bool) -> None:
    assert check_reason(reason) is ok
