"""Seq runs: the one function that turns reading seqs into (first, last) ranges, for the box (the
buffer's dropped ranges, agent.buffer_drops) and the fleet server (seq tracking,
fleet_server.seq_tracking) alike."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Range", "seq_ranges"]

Range = tuple[int, int]  # (first, last), first <= last, both inclusive


def seq_ranges(seqs: Sequence[int]) -> list[Range]:
    """The sorted, disjoint, non-adjacent ranges covering `seqs` (any order, duplicates allowed).
    O(n): an in-order batch of contiguous seqs is recognised without sorting."""
    if not seqs:
        return []
    lo, hi = min(seqs), max(seqs)
    distinct = set(seqs)
    if hi - lo + 1 == len(distinct):
        return [(lo, hi)]
    ranges: list[Range] = []
    ordered = sorted(distinct)
    first = prev = ordered[0]
    for seq in ordered[1:]:
        if seq != prev + 1:
            ranges.append((first, prev))
            first = seq
        prev = seq
    ranges.append((first, prev))
    return ranges
