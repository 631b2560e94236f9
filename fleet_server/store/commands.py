"""The storage seam for commands to boxes (fleet_server.commands): a small Protocol that `Store` includes.

Contract every backend keeps: one row per (command, box), created pending in one transaction with
its siblings; a box's result is taken inside the ingest transaction that stores its audit record
(sql_commands.apply_results) and replaces an open state or a server-side "expired", never another
result; "expired" is set only on open commands past their deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from fleet_server.commands import BoxCommand, CommandQuery

__all__ = ["CommandStore"]


@runtime_checkable
class CommandStore(Protocol):
    def create_commands(self, commands: Sequence[BoxCommand]) -> None:
        """Store new commands; UnknownBox (nothing stored) for a box that is not enrolled."""
        ...

    def get_command(self, command_id: str) -> BoxCommand:
        """One command; UnknownCommand when there is none with that id."""
        ...

    def list_commands(self, query: CommandQuery) -> list[BoxCommand]:
        """Commands matching the query, newest first, at most `query.limit`."""
        ...

    def open_commands(self, box_id: str, now: float, limit: int = 100) -> list[BoxCommand]:
        """The box's open commands before their deadline, oldest first."""
        ...

    def commands_to_send(self, now: float, resend_after_s: float, limit: int = 1000) -> list[BoxCommand]:
        """Open commands before their deadline that were never sent or not for `resend_after_s`."""
        ...

    def mark_sent(self, command_ids: Sequence[str], now: float) -> None:
        """Record a send (pending -> sent; sends + 1) of each still-open command."""
        ...

    def expire_commands(self, now: float) -> list[str]:
        """Close open commands past their deadline as expired; return their ids."""
        ...
