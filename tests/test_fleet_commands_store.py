"""Commands to boxes in the store (both backends) and the service around it: results arrive with
the box's audit record in ingest, expiry, re-sends, the long-poll."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS
from rollout_support import provision

from core.reading import Reading, RecordClass
from fleet_server.command_service import CommandService
from fleet_server.commands import BoxCommand, CommandQuery, CommandRequest, UnknownCommand
from fleet_server.errors import PayloadError, UnknownBox

pytestmark = BOTH_BACKENDS


def _command(command_id: str, box: str = "b00000", deadline: float = 1e9, created: float = 100.0) -> BoxCommand:
    return BoxCommand(command_id, box, "lobby", "open", {"door": 1}, "fleet:op", created, deadline)


def _audit(command_id: str, result: str, seq: int, message: str = "ok") -> Reading:
    text = json.dumps({"command": "open", "args": {"door": 1}, "origin": "fleet:op", "result": result,
                       "message": message, "ms": 3.0, "id": command_id}, separators=(",", ":"))
    return Reading("lobby", "_command", 1.0, "", 200.0 + seq, cls=RecordClass.EVENT, text=text, seq=seq)


def test_a_result_arrives_with_the_audit_record_and_only_the_first_counts(store: Any) -> None:
    provision(store, 2)
    store.create_commands([_command("c-0000000000000001"), _command("c-0000000000000002", "b00001")])
    assert [c.command_id for c in store.open_commands("b00000", 150.0)] == ["c-0000000000000001"]
    store.mark_sent(["c-0000000000000001"], 150.0)
    sent = store.get_command("c-0000000000000001")
    assert (sent.state, sent.sent_at, sent.sends) == ("sent", 150.0, 1)
    store.ingest("b00000", [_audit("c-0000000000000001", "done", 1)])
    done = store.get_command("c-0000000000000001")
    assert (done.state, done.message) == ("done", "ok") and done.finished_at is not None
    store.ingest("b00000", [_audit("c-0000000000000001", "failed", 2, "late copy")])   # a second record: ignored
    assert store.get_command("c-0000000000000001").state == "done"
    store.ingest("b00000", [_audit("c-0000000000000002", "done", 3)])   # another box's command: not b00000's to close
    assert store.get_command("c-0000000000000002").state == "pending"
    assert store.open_commands("b00000", 150.0) == []


def test_expiry_closes_open_commands_and_a_late_box_result_wins(store: Any) -> None:
    provision(store, 1)
    store.create_commands([_command("c-00000000000000aa", deadline=500.0), _command("c-00000000000000bb")])
    assert store.expire_commands(499.0) == []
    assert store.expire_commands(500.0) == ["c-00000000000000aa"]
    assert store.get_command("c-00000000000000aa").state == "expired"
    store.ingest("b00000", [_audit("c-00000000000000aa", "done", 1)])   # the box ran it just in time
    assert store.get_command("c-00000000000000aa").state == "done"
    assert store.get_command("c-00000000000000bb").state == "pending"


def test_unknown_box_stores_nothing_and_listing_pages_newest_first(store: Any) -> None:
    provision(store, 1)
    with pytest.raises(UnknownBox):
        store.create_commands([_command("c-0000000000000010"), _command("c-0000000000000011", "ghost")])
    assert store.list_commands(CommandQuery()) == []
    store.create_commands([_command(f"c-{i:016x}", created=float(i)) for i in range(1, 6)])
    first = store.list_commands(CommandQuery(limit=2))
    assert [c.command_id for c in first] == ["c-0000000000000005", "c-0000000000000004"]
    rest = store.list_commands(CommandQuery(before=(first[-1].created_at, first[-1].command_id), limit=10))
    assert [c.command_id for c in rest] == ["c-0000000000000003", "c-0000000000000002", "c-0000000000000001"]
    assert len(store.list_commands(CommandQuery(box_id="b00000", state="pending"))) == 5
    with pytest.raises(UnknownCommand):
        store.get_command("c-00000000000000ff")


def test_the_service_pushes_resends_until_a_result_and_expires(store: Any) -> None:
    provision(store, 2, site="river-rd")
    now = [1000.0]
    published: list[tuple[str, dict[str, Any]]] = []
    up = [True]

    async def publish(box_id: str, payload: bytes) -> bool:
        if up[0]:
            published.append((box_id, json.loads(payload)))
        return up[0]

    service = CommandService(store, publish=publish, clock=lambda: now[0], resend_after_s=10)
    request = CommandRequest.parse(json.dumps({"device": "lobby", "command": "open", "args": {"door": 2},
                                               "site": "river-rd", "deadline_s": 60}).encode())

    async def run() -> None:
        sent = await service.send(request, "op")
        assert sorted(c.box_id for c in sent) == ["b00000", "b00001"] and {c.state for c in sent} == {"sent"}
        assert [p[1]["args"] for p in published] == [{"door": 2}, {"door": 2}]
        assert all(p[1]["deadline"] == 1060.0 and p[1]["origin"] == "fleet:op" for p in published)
        store.ingest("b00000", [_audit(sent[0].command_id if sent[0].box_id == "b00000" else sent[1].command_id,
                                       "done", 1)])
        published.clear()
        now[0] += 5
        await service.dispatch()
        assert published == []                      # not yet due again
        now[0] += 6
        await service.dispatch()
        assert [p[0] for p in published] == ["b00001"]   # no result yet: sent again; b00000 answered
        up[0] = False
        now[0] += 60
        await service.dispatch()
        assert service.expired == 1
        states = {c.box_id: c.state for c in store.list_commands(CommandQuery())}
        assert states == {"b00000": "done", "b00001": "expired"}

    asyncio.run(run())


def test_the_long_poll_answers_at_once_wakes_on_a_send_and_times_out_empty(store: Any) -> None:
    provision(store, 1)
    service = CommandService(store, poll_s=5.0)
    request = CommandRequest.parse(b'{"device": "lobby", "command": "open", "box_ids": ["b00000"]}')

    async def run() -> None:
        started = time.monotonic()
        assert await service.wait_for("b00000", 0.3) == []
        assert 0.25 < time.monotonic() - started < 2
        waiting = asyncio.create_task(service.wait_for("b00000", 20))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        (sent,) = await service.send(request, "op")
        (got,) = await asyncio.wait_for(waiting, 5)
        assert got.command_id == sent.command_id and time.monotonic() - started < 1
        assert store.get_command(sent.command_id).state == "sent"
        (again,) = await service.wait_for("b00000", 0)   # still open (no result yet): handed out again
        assert again.command_id == sent.command_id

    asyncio.run(run())


@pytest.mark.parametrize("body, field", [
    (b'{"command": "open", "box_ids": ["b1"]}', "device"),
    (b'{"device": "lobby", "command": "", "box_ids": ["b1"]}', "command"),
    (b'{"device": "lobby", "command": "open", "args": [1], "box_ids": ["b1"]}', "args"),
    (b'{"device": "lobby", "command": "open", "deadline_s": 0, "box_ids": ["b1"]}', "deadline_s"),
    (b'{"device": "lobby", "command": "open", "box_ids": ["bad id"]}', "box_ids"),
    (b'{"device": "lobby", "command": "open"}', "box_ids"),
    (b'{"device": "lobby", "command": "open", "box_ids": ["b1"], "site": "s"}', "box_ids"),
    (b'{"device": "lobby", "command": "open", "box_ids": ["b1"], "color": 1}', "color"),
])
def test_a_bad_request_names_its_field(store: Any, body: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        CommandRequest.parse(body)
    assert caught.value.field == field, caught.value
