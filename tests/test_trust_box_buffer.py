"""Issue 9, box side: a record that cannot be stored is refused with its reason and never freezes
the buffer; a batch the uplink refuses as malformed is quarantined, not retried forever.

Real buffer (SQLite file, writer thread), real HttpUplink against a real HTTP server on loopback
that answers like the fleet server's ingest (422 {"error","detail","row","field"} for a bad row).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from agent.buffer import BufferSettings, DurableBuffer, _to_row
from agent.drain import Drain
from agent.pipeline import Pipeline
from agent.uplink.http import HttpSettings, HttpUplink
from core.errors import RecordRefused
from core.http_listener import HttpServer, Request, Response
from core.reading import Reading


def reading(point: str = "t", text: str | None = None, device: str = "dev", value: float | None = 1.0) -> Reading:
    return Reading(device, point, value, "C", time.time(), text=text)


@pytest.fixture
async def buffer(tmp_path: Path):
    buf = DurableBuffer(BufferSettings(path=tmp_path / "buffer.db", max_bytes=8 << 20))
    await buf.open()
    yield buf
    await buf.close()


async def test_a_lone_surrogate_is_refused_with_its_field_and_later_readings_commit(buffer) -> None:
    with pytest.raises(RecordRefused, match=r"record 1: text is not valid Unicode text \(lone surrogate"):
        await buffer.append([reading("a"), reading("b", text="\ud800")])
    for i in range(3):  # the writer goes on: no open transaction left behind
        await buffer.append([reading(f"ok{i}")])
    assert [r.point for r in await buffer.peek(10)] == ["ok0", "ok1", "ok2"]
    assert buffer.health()["state"] == "ok"


async def test_the_pipeline_refuses_only_the_readings_the_buffer_refuses(buffer) -> None:
    pipeline = Pipeline(buffer)
    runner = asyncio.create_task(pipeline.run())
    try:
        await pipeline.submit([reading("a"), reading("b", text="\ud800"), reading("c"),
                               reading("d", value=float("nan")), reading("e")])
        deadline = time.monotonic() + 10
        while pipeline.stored_total + pipeline.refused_total < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert (pipeline.stored_total, pipeline.refused_total) == (3, 2)
    assert pipeline.last_refusal is not None and pipeline.last_refusal.startswith("dev.d: value must be a finite")
    assert [r.point for r in await buffer.peek(10)] == ["a", "c", "e"]


async def test_a_group_commit_failing_on_its_data_refuses_only_the_bad_row(buffer) -> None:
    good, bad = _to_row(reading("good")), _to_row(reading("x"))
    bad = bad[:7] + ("\udc80 unencodable",)  # slipped past check_reading (a bug upstream): SQLite refuses it
    results = await asyncio.gather(buffer._submit_rows([good]), buffer._submit_rows([good, bad, good]),
                                   return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert results[1].refused and results[1].refused[0][0] == 1 and "UnicodeEncodeError" in results[1].refused[0][1]
    with pytest.raises(RecordRefused):
        await buffer._submit_rows([bad])  # alone: that append fails, with the reason
    await buffer.append([reading("after")])
    assert [r.point for r in await buffer.peek(10)] == ["good", "good", "good", "after"]
    assert buffer.health()["state"] == "ok"


async def test_the_pipeline_drops_only_the_bad_reading_and_counts_it(buffer) -> None:
    pipe = Pipeline(buffer)
    task = asyncio.create_task(pipe.run())
    try:
        await pipe.submit([reading("a"), reading("b", value=float("nan")), reading("c", text="\ud800")])
        await pipe.store([reading("d")])
        with pytest.raises(RecordRefused, match="text"):
            await pipe.store([reading("e", text="\ud800")])
        assert [r.point for r in await buffer.peek(10)] == ["a", "d"]
        assert pipe.stats()["refused"] == 2 and pipe.stats()["last_refusal"].startswith("dev.c: text is not valid")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_dead_writer_loop_restarts_and_health_says_so_meanwhile(buffer) -> None:
    await buffer.append([reading("before")])
    buffer._inject_writer_fault()
    for _ in range(200):
        if buffer.writer_restarts:
            break
        await asyncio.sleep(0.01)
    health = buffer.health()
    assert health["writer_restarts"] == 1 and "injected writer fault" in health["last_error"]
    assert health["last_error_at"] is not None
    await buffer.append([reading("after")])  # queued meanwhile, committed by the restarted loop
    assert buffer.health()["state"] == "ok"
    assert [r.point for r in await buffer.peek(10)] == ["before", "after"]


# --- drain: quarantine instead of retry-forever -------------------------------------------------------
class Ingest:
    """A loopback server speaking the fleet server's telemetry contract."""

    def __init__(self, *, refuse_device: str = "bad", named: bool = True, status: int = 422) -> None:
        self.refuse_device, self.named, self.status = refuse_device, named, status
        self.stored: list[list] = []
        self.requests = 0
        self.server = HttpServer(self.handle, name="ingest")

    async def handle(self, req: Request) -> Response:
        self.requests += 1
        if req.headers.get("authorization") != "Bearer good":
            return Response(401, b'{"detail":"unknown box credential"}')
        rows = json.loads(req.body)["readings"]
        for i, row in enumerate(rows):
            if row[2] == self.refuse_device:
                body = {"error": "bad_row", "detail": f"row {i}: device refused", "field": "device"}
                if self.named:
                    body["row"] = i
                return Response(self.status, json.dumps(body).encode())
        self.stored.extend(rows)
        return Response(200, json.dumps({"accepted": len(rows), "duplicates": 0,
                                         "max_seq": rows[-1][0]}).encode())


async def run_drain(buffer: DurableBuffer, ingest: Ingest, credential: str = "good", *, until) -> Drain:
    await ingest.server.start("127.0.0.1", 0)
    settings = HttpSettings(server=f"http://127.0.0.1:{ingest.server.port}", credential=credential, timeout_s=5)
    drain = Drain(buffer, lambda: HttpUplink(settings, "box-1"), name="http", batch_size=50)
    task = asyncio.create_task(drain.run())
    try:
        for _ in range(500):
            if until(drain):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ingest.server.stop()
    return drain


@pytest.mark.parametrize("named", [True, False], ids=["422-names-the-row", "400-bisect"])
async def test_a_row_the_server_refuses_is_quarantined_and_the_rest_delivered(buffer, named: bool) -> None:
    rows = [reading(f"p{i}", device="bad" if i in (3, 17) else "dev") for i in range(30)]
    await buffer.append(rows)
    ingest = Ingest(named=named, status=422 if named else 400)
    # Until the DRAIN has the confirmations (not merely the server the rows: cancelling it between
    # the two would leave the last batch unconfirmed, to be sent again, and the peek below not empty).
    drain = await run_drain(buffer, ingest, until=lambda d: d.sent_total == 28 and d.quarantined == 2)
    assert [r[3] for r in ingest.stored] == [f"p{i}" for i in range(30) if i not in (3, 17)]  # in order
    assert drain.quarantined == 2 and buffer.stats()["quarantined"] == 2
    kept = buffer.quarantined()
    assert sorted(json.loads(q["row"])[3] for q in kept) == ["p17", "p3"]
    assert all("refused by the uplink" in q["reason"] for q in kept)
    await buffer.append([reading("later")])  # the drain is not stuck behind them
    assert await buffer.peek(10) == [] or [r.point for r in await buffer.peek(10)] == ["later"]


async def test_a_row_breaking_the_wire_rules_is_quarantined_before_sending(buffer, tmp_path: Path) -> None:
    await buffer.append([reading("a")])
    await buffer._submit_rows([_to_row(reading("nan", value=float("inf")))])  # an old row from before the checks
    await buffer.append([reading("b")])
    ingest = Ingest()
    drain = await run_drain(buffer, ingest, until=lambda d: len(ingest.stored) == 2)
    assert [r[3] for r in ingest.stored] == ["a", "b"] and drain.quarantined == 1
    [q] = buffer.quarantined()
    assert "refused before sending: value must be a finite number" in q["reason"]
    db = sqlite3.connect(tmp_path / "buffer.db")
    assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1  # kept on disk
    db.close()


async def test_an_auth_refusal_is_not_malformed_rows_stay_buffered(buffer) -> None:
    await buffer.append([reading("a"), reading("b")])
    ingest = Ingest()
    drain = await run_drain(buffer, ingest, credential="stolen", until=lambda d: ingest.requests >= 1 and d.last_error)
    assert ingest.stored == [] and drain.quarantined == 0 and "401" in (drain.last_error or "")
    assert [r.point for r in await buffer.peek(10, after_seq=0)] == ["a", "b"]
    assert buffer.stats()["quarantined"] == 0


async def test_failing_commits_make_health_failing_until_a_commit_succeeds(tmp_path: Path) -> None:
    from core.errors import StorageError

    buf = DurableBuffer(BufferSettings(path=tmp_path / "small.db", max_bytes=1 << 20))
    await buf.open()
    try:
        huge = [reading(f"p{i}", text="x" * 8000) for i in range(300)]  # one append larger than the whole cap
        with pytest.raises(StorageError, match="disk full"):
            await buf.append(huge)
        health = buf.health()
        assert health["state"] == "failing" and "disk full" in health["last_error"] and health["last_error_at"]
        await buf.append([reading("small")])
        assert buf.health()["state"] == "ok" and buf.health()["last_error"]  # recovered; the last error is kept
    finally:
        await buf.close()


async def test_a_server_refusing_every_row_is_blamed_and_the_rows_are_kept(buffer, monkeypatch) -> None:
    import agent.drain as drain_module

    monkeypatch.setattr(drain_module, "REFUSED_STREAK_LIMIT", 3)  # a small limit, so few rows are needed
    await buffer.append([reading(f"p{i}", device="bad") for i in range(10)])
    ingest = Ingest(named=True)
    drain = await run_drain(buffer, ingest, until=lambda d: d.last_error and "accepted none" in d.last_error)
    assert drain.quarantined == 3 and "holding the rows" in drain.last_error
    assert len(await buffer.peek(100, after_seq=0)) == 7  # the rest stay buffered, not quarantined
