"""Quarantine: messages the server acknowledged but could not process, kept for an operator.

A message the MQTT bridge cannot process (malformed, from an unknown box, or one that made the
bridge's own code fail) must not block the messages behind it: it is acknowledged and kept here
with its topic, a reason code, a human detail and the time, then listed by
`GET /api/v1/quarantine` and `quanedge fleet quarantine list`.

Bounds (the senders are untrusted, so a flood of poison must not fill the disk): at most
PAYLOAD_MAX bytes of each payload are kept (`size` is the original length), topic and detail are
capped, and only the newest KEEP_MAX messages are kept.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["DETAIL_MAX", "KEEP_MAX", "PAYLOAD_MAX", "TOPIC_MAX", "QuarantineStore", "QuarantinedMessage", "clean"]

PAYLOAD_MAX = 64 * 1024
TOPIC_MAX = 512
DETAIL_MAX = 1000
KEEP_MAX = 10_000


def clean(text: str, max_len: int) -> str:
    """`text` cut to `max_len` characters and made storable (a lone surrogate becomes '\\udXXX')."""
    return text[:max_len].encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """One kept message. `payload` holds at most PAYLOAD_MAX bytes of the `size` received."""

    id: int
    received_at: float
    transport: str
    topic: str
    reason: str
    detail: str
    size: int
    payload: bytes

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.size

    def to_dict(self) -> dict[str, object]:
        """JSON form: the payload as text when it is UTF-8, and always as base64."""
        try:
            text: str | None = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {"id": self.id, "received_at": self.received_at, "transport": self.transport,
                "topic": self.topic, "reason": self.reason, "detail": self.detail, "size": self.size,
                "truncated": self.truncated, "payload_text": text,
                "payload_base64": base64.b64encode(self.payload).decode("ascii")}


@runtime_checkable
class QuarantineStore(Protocol):
    """The quarantine part of the `Store` seam."""

    def quarantine(self, transport: str, topic: str, payload: bytes, reason: str, detail: str,
                   now: float) -> int:
        """Keep one message (payload, topic and detail capped as above); return its id. Drops the
        oldest beyond KEEP_MAX in the same transaction."""
        ...

    def quarantined(self, after_id: int = 0, limit: int = 100, reason: str | None = None) -> list[QuarantinedMessage]:
        """Kept messages with id > after_id, oldest first, at most `limit`, optionally one reason."""
        ...

    def count_quarantined(self) -> int:
        """How many messages the quarantine holds."""
        ...
