"""Fleet commands on the box (agent.fleet_commands, core.fleet_command): validated, run at most once
across restarts, not run after their deadline, and audited with their id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.commands import CommandRouter
from agent.fleet_commands import FleetCommands
from core.errors import CommandRefused
from core.fleet_command import FleetCommand, result_of_audit
from core.reading import Reading


class Gate:
    """A device whose writes are counted; 'jam' fails like a device error, 'close' is refused."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def write(self, command: str, args: dict[str, Any]) -> None:
        if command == "close":
            raise CommandRefused("lobby: close is not allowed on this controller")
        self.writes.append((command, args))


def _message(command_id: str, deadline: float = 2e9, command: str = "open", **extra: Any) -> bytes:
    body = {"id": command_id, "device": "lobby", "command": command, "args": {"door": 1}, "deadline": deadline,
            "origin": "fleet:op", **extra}
    return json.dumps(body).encode()


async def _run(tmp: Path, gate: Gate, messages: list[bytes], clock: float = 1e9) -> list[Reading]:
    audit: list[Reading] = []

    async def emit(rows: list[Reading]) -> None:
        audit.extend(rows)

    router = CommandRouter({"lobby": gate}, {"lobby": ["open", "close"]}, emit, clock=lambda: clock)
    commands = FleetCommands(tmp / "fleet_commands.db", clock=lambda: clock)
    commands.router = router
    task = asyncio.create_task(commands.run())
    for m in messages:
        commands.submit(m)
    while commands.received < len(messages):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return audit


def test_a_command_runs_once_even_when_delivered_again_after_a_restart(tmp_path: Path) -> None:
    gate = Gate()
    first = asyncio.run(_run(tmp_path, gate, [_message("c-00000000000000a1"), _message("c-00000000000000a1")]))
    again = asyncio.run(_run(tmp_path, gate, [_message("c-00000000000000a1"), _message("c-00000000000000a2")]))
    assert gate.writes == [("open", {"door": 1}), ("open", {"door": 1})]      # a1 once, a2 once
    results = [result_of_audit(r.text) for r in first + again]
    assert results == [("c-00000000000000a1", "done", "ok"), ("c-00000000000000a2", "done", "ok")]
    assert json.loads(first[0].text or "")["origin"] == "fleet:op"


def test_a_late_command_is_not_run_and_is_reported_expired(tmp_path: Path) -> None:
    gate = Gate()
    audit = asyncio.run(_run(tmp_path, gate, [_message("c-00000000000000b1", deadline=1e9 - 5)]))
    assert gate.writes == []
    (found,) = [result_of_audit(r.text) for r in audit]
    assert found is not None and found[:2] == ("c-00000000000000b1", "expired") and "after its deadline" in found[2]
    assert audit[0].value == -2.0


def test_a_refusal_is_audited_with_the_reason_and_malformed_messages_are_not_run(tmp_path: Path) -> None:
    gate = Gate()
    bad = [b"not json", _message("c-1"), _message("c-00000000000000c2", unknown=1),
           json.dumps({"id": "c-00000000000000c3", "device": "lobby", "command": "open", "deadline": "soon"}).encode()]
    audit = asyncio.run(_run(tmp_path, gate, [*bad, _message("c-00000000000000c1", command="close")]))
    assert gate.writes == []
    (found,) = [result_of_audit(r.text) for r in audit]
    assert found == ("c-00000000000000c1", "refused", "lobby: close is not allowed on this controller")


@pytest.mark.parametrize("payload, field", [
    ({"device": "lobby", "command": "open", "deadline": 1.0}, "id"),
    ({"id": "c-0000000000000001", "device": "", "command": "open", "deadline": 1.0}, "device"),
    ({"id": "c-0000000000000001", "device": "lobby", "command": "open", "deadline": True}, "deadline"),
    ({"id": "c-0000000000000001", "device": "lobby", "command": "open", "deadline": 1.0, "args": {"a": [[[1]]]}},
     "args.a"),
])
def test_a_malformed_command_names_its_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        FleetCommand.parse(json.dumps(payload).encode())


_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",)), min_size=1,
                max_size=20)


@given(st.from_regex(r"c-[0-9a-f]{16}", fullmatch=True), _text, _text,
       st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                       st.one_of(st.integers(-1000, 1000), st.booleans(), _text), max_size=5),
       st.floats(1.0, 1e10))
def test_the_wire_form_round_trips(command_id: str, device: str, command: str, args: dict[str, Any],
                                   deadline: float) -> None:
    sent = FleetCommand(command_id, device, command, args, deadline, "fleet:op")
    assert FleetCommand.parse(sent.to_json()) == sent
