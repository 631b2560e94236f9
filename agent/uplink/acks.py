"""The fleet server's end-to-end acknowledgements, as the box receives them on `{prefix}/{box}/ack`.

Payloads (JSON object; the fleet server's `fleet_server.acks` writes them):
    stored:   {"first": a, "last": b, "rows": n, "stored": s, "duplicates": d}
    refused:  {"first": a, "last": b, "rows": n,
               "refused": {"code": "...", "detail": "...", "row": i, "seq": s, "field": "..."}}
`first`/`last` are the first and last seq of the batch as the server read it. A waiting send for
seqs a..b is confirmed by a stored-ack whose [first, last] covers [a, b] (an ack for an older,
larger sending of the same rows counts too). A refusal with a data code (the batch or one of its
rows is malformed) fails the send with UplinkMalformed, naming the row when the server did, so the
drain can quarantine that row alone; any other refusal is UplinkRejected (the rows stay).

Everything on the topic is untrusted input: a payload that is not such an object is counted and
logged once, and never confirms anything.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, TypeGuard

from core.errors import UplinkMalformed, UplinkRejected
from core.validate import json_object

__all__ = ["Ack", "AckWaiters", "parse_ack"]

log = logging.getLogger(__name__)

_MAX_SEQ = 2**63 - 1
_MALFORMED_CODES = frozenset({"bad_json", "bad_body", "bad_row", "batch_too_large"})


@dataclass(frozen=True, slots=True)
class Ack:
    first: int
    last: int
    refused: dict[str, Any] | None = None


def _seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_SEQ


def parse_ack(payload: bytes | bytearray | str) -> Ack:
    """Decode one ack payload; ValueError naming what is wrong."""
    body = json_object(payload, "ack", max_bytes=65536)
    first, last = body.get("first"), body.get("last")
    if not _seq(first) or not _seq(last) or first > last:
        raise ValueError(f"ack needs seqs first <= last in 1..2**63-1, got {str(first)[:30]}..{str(last)[:30]}")
    refused = body.get("refused")
    if refused is not None and not isinstance(refused, dict):
        raise ValueError("ack 'refused' must be an object")
    return Ack(first, last, refused)


class AckWaiters:
    """Sends waiting for their batch's ack, and the handler of what arrives on the ack topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._waiting: dict[asyncio.Future[None], list[int]] = {}
        self.malformed = 0
        self.unmatched = 0

    def expect(self, seqs: list[int]) -> asyncio.Future[None]:
        """A future for the batch with these seqs (in order): set when its ack arrives."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[fut] = seqs
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        self._waiting.pop(fut, None)

    def deliver(self, topic: str, payload: Any) -> None:
        if topic != self.topic:
            return
        if not isinstance(payload, (bytes, bytearray, str)):
            payload = str(payload)
        try:
            ack = parse_ack(payload)
        except ValueError as exc:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("ignoring a malformed message on %s (further ones only counted): %s", topic, exc)
            return
        matched = False
        for fut, seqs in list(self._waiting.items()):
            first, last = seqs[0], seqs[-1]
            if fut.done() or not (ack.first <= first and last <= ack.last):
                continue
            matched = True
            if ack.refused is None:
                fut.set_result(None)
            elif ack.first == first and ack.last == last:  # a refusal concerns exactly the batch it names
                fut.set_exception(_refusal(ack, seqs))
        if not matched:
            self.unmatched += 1  # an ack for a batch no longer waited for (a resend already confirmed)


def _refusal(ack: Ack, seqs: list[int]) -> Exception:
    info = ack.refused or {}
    code = str(info.get("code", "refused"))[:40]
    detail = str(info.get("detail", ""))[:300]
    text = f"the fleet server refused seq {ack.first}..{ack.last} ({code}): {detail}"
    if code in _MALFORMED_CODES:
        # The server names the row by its seq as well as its index: the seq is what identifies it
        # if the rows between first and last changed since the server read them.
        seq, field = info.get("seq"), info.get("field")
        row = seqs.index(seq) if _seq(seq) and seq in seqs else None
        return UplinkMalformed(text, row=row, field=field[:64] if isinstance(field, str) else None)
    return UplinkRejected(text)
