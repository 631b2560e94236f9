"""Seq tracking (issue 11, "gaps are never silent"): which seqs of a box the fleet server has
covered, and which went missing. Pure rules, no I/O: state in, state and gaps out.

Every reading a box makes gets a per-box seq (agent/buffer.py: strictly increasing, never reused;
a new buffer file starts at its creation time in microseconds). Besides its readings, a telemetry
message may say (`SeqReport`, all optional):
    low      every seq of the box below `low` (and >= base) was stored by the server (acknowledged
             to the box) or announced in a `dropped` range, in this message or an earlier one;
    base     the first seq the box's current buffer file assigned (it grows when the file is replaced);
    dropped  [(first, last, reason)]: ranges the box deleted WITHOUT delivering them.

A seq is *covered* once the server stored it (new or duplicate) or the box announced it dropped.
Per box the state is `contig` (every seq in [start..contig] is covered or was reported; None until
tracking starts) and `above`: the sorted, disjoint, non-adjacent covered ranges above contig + 1.
`track(state, covered, report)` applies one accepted message, in this order:

1. cover the batch's seq ranges (`seq_ranges`, O(rows)) and the dropped ranges;
2. `base` given: when tracking has not started and the box is `fresh` (every seq it ever sent went
   through tracking), tracking starts at the lowest seq known (min(base, lowest covered)); then if
   base > contig + 1 the buffer was replaced: the holes between contig + 1 and the highest covered
   seq below base are gaps ("buffer_replaced") and contig moves to base - 1 (seqs above the highest
   covered one may never have been assigned: not reported);
3. `low` given: when tracking has not started, contig = low - 1 (history before tracking is
   unknown: not reported); else every hole in [contig + 1, low - 1] is a gap ("unannounced") and
   contig moves to low - 1;
4. contig advances through the covered ranges that touch it;
5. memory bound: while more than `max_ranges` (MAX_RANGES) ranges are above, the lowest hole is
   reported as a gap ("untracked") and contig moves past the lowest range (before tracking starts,
   the lowest range only becomes the start of tracking). Only a box whose messages arrive with
   thousands of holes between them gets there; it costs that box gaps that are perhaps not real,
   never the server's memory.

Holes at or above `low` are never gaps (still in flight), except by rule 5. A message without
`low`, `base` and `dropped` (an older agent) is only coverage: no gap checking.

Guarantees (tests/test_fleet_seq_tracking.py checks them with hypothesis): a seq is reported at
most once; never a seq covered before (or by the message in which) a low passed it; a seq below a
low that nothing covers is reported exactly once (if tracking had started below it). And order
does not matter: for a box that keeps the agent's contract (low passes only seqs whose storing was
acknowledged, dropped ranges it announces in this message or in an acknowledged one, its lost ones),
any processing order that respects those acknowledgements (replicas, MQTT redelivery, duplicates)
ends in the same state with the same set of gap seqs. Two races remain, both at a boundary: before
tracking starts on a box that had readings stored without it (the first low decides the start),
and a message of a replaced buffer that is still in flight when the new buffer's first message is
processed (its seqs can be reported "buffer_replaced" although they arrive later).

Cost per message: O(ranges in the batch + ranges above + dropped ranges); for an in-order batch of
contiguous seqs that is a min, a max and a set of its seqs: ~60 us for 1,000 sixteen-digit seqs,
of which `track` itself ~4 us.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.seq_ranges import Range, seq_ranges

__all__ = [
    "BUFFER_REPLACED", "DROPPED_MAX", "MAX_RANGES", "REASON_PATTERN", "SEQ_MAX", "UNANNOUNCED", "UNTRACKED",
    "Gap", "Range", "SeqReport", "SeqState", "Tracked", "check_reason", "seq_ranges", "track",
]

#: Largest seq (SQLite INTEGER range); every seq, low, base and dropped bound is in 1..SEQ_MAX.
SEQ_MAX = 2**63 - 1
#: At most this many covered ranges are kept above contig per box (rule 5).
MAX_RANGES = 4096
#: At most this many dropped ranges in one message.
DROPPED_MAX = 256
#: A dropped range's reason: 1-32 characters [a-z0-9_] (the agent uses disk_cap, ttl, quarantined, refused).
REASON_PATTERN = r"^[a-z0-9_]{1,32}$"
_REASON = re.compile(r"[a-z0-9_]{1,32}")

UNANNOUNCED = "unannounced"          # a low passed seqs that nothing covered
BUFFER_REPLACED = "buffer_replaced"  # a new buffer file (base) left seqs of the old one missing
UNTRACKED = "untracked"              # the hole was too old to keep track of (rule 5)



def check_reason(reason: object) -> bool:
    """True when `reason` is a valid dropped-range reason (REASON_PATTERN)."""
    return isinstance(reason, str) and _REASON.fullmatch(reason) is not None


@dataclass(frozen=True, slots=True)
class SeqState:
    """What the server knows of one box's seqs. `fresh`: every seq the box ever sent went through
    tracking (no readings were stored for it before), so tracking may start at its `base`."""

    contig: int | None = None
    above: tuple[Range, ...] = ()
    base: int | None = None   # the highest base seen
    fresh: bool = False


@dataclass(frozen=True, slots=True)
class SeqReport:
    """The optional seq fields of one telemetry message (validated by `ingest.parse_telemetry`)."""

    low: int | None = None
    base: int | None = None
    dropped: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs first..last (inclusive) that will never arrive, and why the server concluded so."""

    first: int
    last: int
    reason: str

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Tracked:
    """The outcome of one message: the new state and the gaps it revealed (lowest first)."""

    state: SeqState
    gaps: tuple[Gap, ...]


def track(state: SeqState, covered: Sequence[Range], report: SeqReport | None = None, *,
          max_ranges: int = MAX_RANGES) -> Tracked:
    """Apply one accepted message: `covered` are its readings' ranges (`seq_ranges`), `report`
    its optional low / base / dropped. Returns the new state and the gaps found (see the module)."""
    if max_ranges < 1:
        raise ValueError(f"max_ranges must be at least 1, got {max_ranges}")
    contig = state.contig
    new = list(covered)
    if report is not None and report.dropped:
        new = _union(new, [(first, last) for first, last, _ in report.dropped])
    above = _union(list(state.above), new)   # ranges at or below contig: dropped by _advance
    gaps: list[Gap] = []
    seen_base = state.base
    if report is not None:
        base, low = report.base, report.low
        if base is not None:
            seen_base = base if seen_base is None else max(seen_base, base)
            if contig is None and state.fresh:
                contig = min(base, above[0][0]) - 1 if above else base - 1
            if contig is not None and base > contig + 1:
                upto = _highest_below(above, base)
                if upto is not None and upto > contig:
                    gaps += _holes(contig, above, upto, BUFFER_REPLACED)
                contig = base - 1
        if low is not None:
            if contig is None:
                contig = low - 1
            elif low - 1 > contig:
                gaps += _holes(contig, above, low - 1, UNANNOUNCED)
                contig = low - 1
    if contig is not None:
        contig, above = _advance(contig, above)
    while len(above) > max_ranges:
        first, last = above[0]
        if contig is not None:
            gaps.append(Gap(contig + 1, first - 1, UNTRACKED))
        contig, above = _advance(last, above[1:])
    return Tracked(SeqState(contig, tuple(above), seen_base, state.fresh), tuple(gaps))


def _union(a: list[Range], b: list[Range]) -> list[Range]:
    """Sorted, coalesced union of two lists of ranges (each sorted; b may overlap itself)."""
    if not b:
        return a
    if not a and len(b) == 1:
        return b
    merged: list[Range] = []
    for first, last in sorted(a + b):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _advance(contig: int, above: list[Range]) -> tuple[int, list[Range]]:
    """Move contig through every range that touches it; drop the ranges it passed."""
    i = 0
    while i < len(above) and above[i][0] <= contig + 1:
        contig = max(contig, above[i][1])
        i += 1
    return contig, above[i:] if i else above


def _highest_below(above: list[Range], bound: int) -> int | None:
    """The highest covered seq below `bound`, or None."""
    i = bisect.bisect_left(above, bound, key=lambda r: r[0])   # ranges before i start below bound
    return None if i == 0 else min(above[i - 1][1], bound - 1)


def _holes(contig: int, above: list[Range], upto: int, reason: str) -> list[Gap]:
    """The uncovered stretches of [contig + 1, upto], lowest first."""
    gaps: list[Gap] = []
    pos = contig + 1
    for first, last in above:
        if first > upto or pos > upto:
            break
        if first > pos:
            gaps.append(Gap(pos, first - 1, reason))
        pos = max(pos, last + 1)
    if pos <= upto:
        gaps.append(Gap(pos, upto, reason))
    return gaps
