"""The durable buffer: ordering, durability, eviction policy, TTL, crash safety."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.buffer import BufferSettings, DurableBuffer
from core.errors import BufferClosed
from core.reading import Quality, Reading, RecordClass


def reading(i: int, cls: RecordClass = RecordClass.ROUTINE, ts: float | None = None) -> Reading:
    return Reading(f"dev-{i % 7}", "air_temperature", 20.0 + i / 100, "degC", ts if ts is not None else time.time(),
                   Quality.GOOD, cls)


async def drain_all(buf: DurableBuffer) -> list[Reading]:
    out: list[Reading] = []
    while True:
        batch = await buf.peek(500)
        if not batch:
            return out
        out.extend(batch)
        await buf.ack(batch[-1].seq)


async def test_append_assigns_increasing_seqs_and_round_trips(tmp_path: Path) -> None:
    async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
        a = await buf.append([reading(0), reading(1)])
        b = await buf.append([Reading("gate-1", "plate", None, "", 1.5, Quality.MISSING, RecordClass.ALARM,
                                      '{"p":"鲁A1"}')])
        s0 = a.first_seq
        assert (a.last_seq, b.first_seq, b.last_seq) == (s0 + 1, s0 + 2, s0 + 2)
        rows = await buf.peek(10)
        assert [r.seq for r in rows] == [s0, s0 + 1, s0 + 2]
        assert rows[2] == Reading("gate-1", "plate", None, "", 1.5, Quality.MISSING, RecordClass.ALARM, '{"p":"鲁A1"}',
                                  s0 + 2)


async def test_concurrent_appends_are_group_committed_in_order(tmp_path: Path) -> None:
    async with DurableBuffer(BufferSettings(tmp_path / "b.db", commit_max_delay_s=0.005)) as buf:
        results = await asyncio.gather(*[buf.append([reading(i * 10 + k) for k in range(10)]) for i in range(200)])
        seqs = sorted((r.first_seq, r.last_seq) for r in results)
        assert seqs[-1][1] - seqs[0][0] == 1999
        assert all(b[0] == a[1] + 1 for a, b in zip(seqs, seqs[1:]))  # contiguous, no overlap
        assert len(await drain_all(buf)) == 2000


async def test_seqs_never_reused_after_everything_was_acked_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with DurableBuffer(BufferSettings(path)) as buf:
        first = await buf.append([reading(i) for i in range(5)])
        await drain_all(buf)
        await buf.ack(first.last_seq, wait=True)
        assert buf.stats()["depth"] == 0
    async with DurableBuffer(BufferSettings(path)) as buf:
        r = await buf.append([reading(9)])
        assert r.first_seq == first.last_seq + 1


async def test_a_new_buffer_file_starts_above_what_a_wiped_one_sent(tmp_path: Path) -> None:
    """A replaced SD card must not restart at seq 1: the server would drop the new readings as resends."""
    async with DurableBuffer(BufferSettings(tmp_path / "old.db")) as buf:
        old = await buf.append([reading(i) for i in range(1000)])
    async with DurableBuffer(BufferSettings(tmp_path / "new.db")) as buf:
        new = await buf.append([reading(0)])
    assert new.first_seq > old.last_seq


async def test_unacked_rows_are_resent_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with DurableBuffer(BufferSettings(path)) as buf:
        r = await buf.append([reading(i) for i in range(10)])
        first = await buf.peek(4)
        buf.mark_handed_out(first[-1].seq)          # sent, but the uplink never confirmed
    async with DurableBuffer(BufferSettings(path)) as buf:
        assert [x.seq for x in await buf.peek(100)] == list(range(r.first_seq, r.last_seq + 1))


async def test_rewind_after_uplink_failure_resends_from_oldest_unacked(tmp_path: Path) -> None:
    async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
        s0 = (await buf.append([reading(i) for i in range(10)])).first_seq - 1
        a = await buf.peek(3)
        await buf.ack(a[-1].seq)
        b = await buf.peek(3)
        buf.mark_handed_out(b[-1].seq)
        assert [r.seq - s0 for r in await buf.peek(3)] == [7, 8, 9]
        buf.rewind()
        assert [r.seq - s0 for r in await buf.peek(3)] == [4, 5, 6]


async def test_closed_buffer_refuses_appends(tmp_path: Path) -> None:
    buf = DurableBuffer(BufferSettings(tmp_path / "b.db"))
    await buf.open()
    await buf.close()
    with pytest.raises(BufferClosed):
        await buf.append([reading(1)])


async def test_disk_cap_evicts_oldest_routine_first_and_keeps_alarms(tmp_path: Path) -> None:
    cap = 1024 * 1024
    path = tmp_path / "b.db"
    async with DurableBuffer(BufferSettings(path, max_bytes=cap)) as buf:
        alarms = []
        for i in range(400):
            batch = [reading(i * 100 + k) for k in range(100)]
            if i % 40 == 0:
                batch.append(reading(i, RecordClass.ALARM))
            r = await buf.append(batch)
            if i % 40 == 0:
                alarms.append(r.last_seq)
        st_ = buf.stats()
        dropped = st_["dropped"]
        assert dropped.get(("disk_cap", "routine"), 0) > 0
        assert ("disk_cap", "alarm") not in dropped
        rows = await drain_all(buf)
        kept_alarms = [r.seq for r in rows if r.cls is RecordClass.ALARM]
        assert kept_alarms == alarms  # every alarm kept
        routine = [r.seq for r in rows if r.cls is RecordClass.ROUTINE]
        assert routine == sorted(routine) and routine[-1] == rows[-1].seq  # the newest routine rows kept
        total = 400 * 100 + len(alarms)
        assert len(rows) + dropped[("disk_cap", "routine")] == total  # every missing row is counted
    assert path.stat().st_size <= cap
    db = sqlite3.connect(path)  # counters are durable too
    assert dict(((r, c), n) for r, c, n in db.execute("SELECT reason, cls, count FROM drops")) == dropped


async def test_alarms_go_last_when_nothing_else_is_left(tmp_path: Path) -> None:
    async with DurableBuffer(BufferSettings(tmp_path / "b.db", max_bytes=1024 * 1024)) as buf:
        for i in range(150):
            last = await buf.append([reading(i * 100 + k, RecordClass.ALARM) for k in range(100)])
        assert buf.stats()["dropped"].get(("disk_cap", "alarm"), 0) > 0
        rows = await drain_all(buf)
        assert rows[-1].seq == last.last_seq  # the newest alarms are the ones kept


async def test_ttl_expiry_runs_per_class(tmp_path: Path) -> None:
    now = time.time()
    async with DurableBuffer(BufferSettings(tmp_path / "b.db", ttl_s=3600, alarm_ttl_s=86400)) as buf:
        r = await buf.append([reading(1, ts=now - 7200), reading(2, RecordClass.ALARM, ts=now - 7200),
                              reading(3, RecordClass.EVENT, ts=now - 7200), reading(4, ts=now)])
        assert await buf.expire(now) == 2
        assert [x.seq - r.first_seq for x in await buf.peek(10)] == [1, 3]
        assert buf.stats()["dropped"] == {("ttl", "routine"): 1, ("ttl", "event"): 1}
        assert await buf.expire(now + 2 * 86400) == 2


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 30), st.sampled_from(list(RecordClass))),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_model_based_buffer_matches_a_simple_list(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    """Any sequence of appends, acks and restarts: the buffer behaves like an ordered list."""
    path = tmp_path_factory.mktemp("m") / "b.db"

    async def run() -> None:
        model: list[Reading] = []
        next_seq: int | None = None
        buf = DurableBuffer(BufferSettings(path))
        await buf.open()
        try:
            for op in ops:
                if op[0] == "append":
                    batch = [Reading(f"d{k}", "p", float(k), "u", 1.0 + k, Quality.GOOD, op[2]) for k in range(op[1])]
                    r = await buf.append(batch)
                    next_seq = r.first_seq if next_seq is None else next_seq
                    assert r.first_seq == next_seq
                    model.extend(b.with_seq(next_seq + i) for i, b in enumerate(batch))
                    next_seq += len(batch)
                elif op[0] == "ack":
                    head = await buf.peek(op[1], after_seq=0)
                    if head:
                        await buf.ack(head[-1].seq, wait=True)
                        model = model[len(head):]
                else:
                    await buf.close()
                    buf = DurableBuffer(BufferSettings(path))
                    await buf.open()
                assert await buf.peek(10_000, after_seq=0) == model
                assert buf.stats()["depth"] == len(model)
        finally:
            await buf.close()

    asyncio.run(run())


_WRITER = textwrap.dedent("""
    import asyncio, os, sys, time
    from pathlib import Path
    from agent.buffer import BufferSettings, DurableBuffer
    from core.reading import Reading
    async def main():
        log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        async with DurableBuffer(BufferSettings(Path(sys.argv[1]))) as buf:
            i = 0
            while True:
                r = await buf.append([Reading("d", "p", float(i + k), "u", time.time()) for k in range(50)])
                os.write(log, f"{r.first_seq} {r.last_seq}\\n".encode())  # acknowledged
                i += 50
    asyncio.run(main())
""")


def test_kill9_never_loses_an_acknowledged_reading(tmp_path: Path) -> None:
    db, ack_log = tmp_path / "b.db", tmp_path / "acks"
    rng = random.Random(1)
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(ack_log)])
        time.sleep(rng.uniform(0.5, 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
    acked = [tuple(map(int, line.split())) for line in ack_log.read_text().splitlines() if line.strip()]
    assert acked, "the writer never acknowledged anything"
    conn = sqlite3.connect(db)
    stored = [r[0] for r in conn.execute("SELECT seq FROM readings ORDER BY seq")]
    assert stored == list(range(stored[0], stored[0] + len(stored)))  # no gaps, no reuse across 8 crashes
    assert max(last for _, last in acked) <= stored[-1]
    stored_set = set(stored)
    for first, last in acked:
        assert first in stored_set and last in stored_set
