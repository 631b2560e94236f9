"""End-to-end acknowledgement on the MQTT path (issue 11), at the drain + uplink level.

A real broker (the shared one on 127.0.0.1:1883) and, in place of the fleet server, a small
acknowledger speaking `fleet_server.acks`: it decides what is acknowledged and when, so the tests
can show that a PUBACK alone never deletes a row, that an unacknowledged batch is sent again, and
that a refusal quarantines only the named row. The real fleet server is in test_e2e_zero_loss.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.buffer import BufferSettings, DurableBuffer
from agent.drain import Drain
from agent.uplink.acks import AckWaiters, parse_ack
from agent.uplink.mqtt import MqttSettings, MqttUplink
from core.reading import Reading
from fleet_server.acks import refused_ack, stored_ack
from fleet_server.errors import PayloadError

BROKER = ("127.0.0.1", 1883)


class Acker:
    """Subscribes to a box's telemetry; records every seq received; acks (or refuses) on request."""

    def __init__(self, prefix: str, box: str, *, refuse_seq: int | None = None) -> None:
        self.prefix, self.box = prefix, box
        self.refuse_seq = refuse_seq
        self.acking = threading.Event()
        self.received: list[int] = []
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acker-{secrets.token_hex(3)}")
        self.c.on_message = self._on_message
        self.c.connect(*BROKER)
        self.c.subscribe(f"{prefix}/{box}/telemetry", qos=1)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        body = json.loads(msg.payload)
        seqs = [row[0] for row in body["readings"]]
        with self.lock:
            self.received.extend(seqs)
            self.bodies.append(body)
        if not self.acking.is_set():
            return
        if self.refuse_seq in seqs:
            row = seqs.index(self.refuse_seq)
            answer = refused_ack(msg.payload, PayloadError("bad_row", f"readings[{row}]: value is bad",
                                                           row=row, field="value"))
        else:
            answer = stored_ack(seqs[0], seqs[-1], len(seqs), len(seqs), 0)
        c.publish(f"{self.prefix}/{self.box}/ack", answer, qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _readings(n: int) -> list[Reading]:
    return [Reading("ws1", "air_temp", float(i), "degC", 1_700_000_000.0 + i) for i in range(n)]


async def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_puback_alone_deletes_nothing_and_unacknowledged_batches_are_sent_again(tmp_path: Path) -> None:
    prefix, box = f"qe-ack-{secrets.token_hex(3)}", "ack-box"
    acker = Acker(prefix, box)
    settings = MqttSettings(*BROKER, topic_prefix=prefix, ack_timeout_s=1.0, window=3)
    try:
        async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
            first = (await buf.append(_readings(2500))).first_seq
            drain = Drain(buf, lambda: MqttUplink(settings, box), name="mqtt", batch_size=500)
            task = asyncio.create_task(drain.run())
            try:
                # The broker takes the first window (3 batches) but nobody acknowledges: nothing leaves.
                await _wait(lambda: len(acker.received) >= 1500, 10, "the first window to reach the broker")
                await _wait(lambda: drain.last_error is not None, 10, "the ack timeout")
                assert "did not acknowledge" in drain.last_error
                assert drain.last_error_at is not None
                assert buf.stats()["depth"] == 2500 and drain.sent_total == 0
                await _wait(lambda: len(acker.received) >= 3000, 20, "the unacknowledged window to be sent again")
                with acker.lock:
                    assert set(acker.received) == set(range(first, first + 1500))  # the same rows, no further
                # Reconnecting to the broker (which works) does not clear the error: only a confirmed batch does.
                assert "did not acknowledge" in (drain.last_error or "")
                acker.acking.set()
                await _wait(lambda: drain.sent_total == 2500, 30, "every row to be acknowledged")
                await _wait(lambda: buf.stats()["depth"] == 0, 10, "the buffer to empty")
                assert drain.last_error is None and drain.last_error_at is None  # cleared on recovery
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        with acker.lock:
            assert set(acker.received) == set(range(first, first + 2500))
            assert all(b["base"] == first and b["low"] <= b["readings"][0][0] for b in acker.bodies)
    finally:
        acker.close()


async def test_a_refusal_quarantines_only_the_named_row(tmp_path: Path) -> None:
    prefix, box = f"qe-ack-{secrets.token_hex(3)}", "ack-box"
    async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
        first = (await buf.append(_readings(1000))).first_seq
        bad = first + 637
        acker = Acker(prefix, box, refuse_seq=bad)
        acker.acking.set()
        settings = MqttSettings(*BROKER, topic_prefix=prefix, ack_timeout_s=5.0, window=4)
        drain = Drain(buf, lambda: MqttUplink(settings, box), name="mqtt", batch_size=300)
        task = asyncio.create_task(drain.run())
        try:
            await _wait(lambda: drain.sent_total == 999 and drain.quarantined == 1, 30, "999 acked, 1 quarantined")
            await _wait(lambda: buf.stats()["depth"] == 0, 10, "the buffer to empty")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            acker.close()
        [kept] = buf.quarantined()
        assert kept["seq"] == bad and "field value" in kept["reason"]
        # The quarantined row was announced to the server as dropped in a later message (never silently
        # gone), and once that message was acknowledged it is no longer announced.
        with acker.lock:
            assert any([bad, bad, "quarantined"] in body.get("dropped", []) for body in acker.bodies)
        assert (await buf.next_batch(10))[1].dropped == ()


async def test_garbage_on_the_ack_topic_confirms_nothing() -> None:
    waiters = AckWaiters("p/box/ack")
    fut = waiters.expect([5, 6, 7])
    for junk in (b"", b"nonsense", b"[]", b'{"first": 5}', b'{"first": 7, "last": 5}',
                 b'{"first": true, "last": 7}', b'{"first": 5, "last": 99999999999999999999999}',
                 b'{"first": 5, "last": 7, "refused": 3}', b"{" * 100_000):
        waiters.deliver("p/box/ack", junk)
    waiters.deliver("p/other/ack", b'{"first": 5, "last": 7}')  # another box's topic
    waiters.deliver("p/box/ack", b'{"first": 5, "last": 6}')    # does not cover seq 7
    assert not fut.done() and waiters.malformed == 9
    waiters.deliver("p/box/ack", b'{"first": 1, "last": 7, "rows": 7, "stored": 7, "duplicates": 0}')
    assert fut.done() and fut.exception() is None


def test_parse_ack_names_what_is_wrong() -> None:
    for payload, words in ((b"{", "not JSON"), (b"1", "JSON object"), (b'{"first": 0, "last": 1}', "first <= last"),
                           (b'{"first": 1, "last": 2, "refused": []}', "'refused'")):
        try:
            parse_ack(payload)
        except ValueError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{payload!r} was accepted")
    assert parse_ack(b'{"first": 1, "last": 2}').last == 2


async def test_delivery_marks_announce_drops_until_acknowledged(tmp_path: Path) -> None:
    async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
        r = await buf.append(_readings(100))
        batch, marks = await buf.next_batch(10)
        assert marks.low == marks.base == r.first_seq and marks.dropped == ()
        # Expire the oldest 30 (by ts) and quarantine one more: both announced; low = the oldest row kept.
        assert await buf.expire(now=1_700_000_000.0 + 30 + 7 * 86400.0) == 30
        rest, _ = await buf.next_batch(100)
        assert rest[0].seq == r.first_seq + 30 and rest[20].seq == r.first_seq + 50
        await buf.quarantine([(rest[20], "test")])
        _, marks = await buf.next_batch(10)
        assert marks.dropped == ((r.first_seq, r.first_seq + 29, "ttl"),
                                 (r.first_seq + 50, r.first_seq + 50, "quarantined"))
        assert marks.low == r.first_seq + 30
        buf.forget_drops(marks.dropped)
        await buf.ack(r.last_seq, wait=True)
        _, marks = await buf.next_batch(10)
        assert marks.dropped == () and marks.low == r.last_seq + 1 and marks.base == r.first_seq


async def test_rows_evicted_while_waiting_for_acks_are_announced_never_silent(tmp_path: Path) -> None:
    """The byte cap still holds while rows wait for the server: evicted rows are announced as
    dropped, so every seq the box took is either delivered or announced."""
    prefix, box = f"qe-ack-{secrets.token_hex(3)}", "ack-box"
    acker = Acker(prefix, box)
    settings = MqttSettings(*BROKER, topic_prefix=prefix, ack_timeout_s=1.0, window=2)
    try:
        async with DurableBuffer(BufferSettings(tmp_path / "b.db", max_bytes=1024 * 1024)) as buf:
            drain = Drain(buf, lambda: MqttUplink(settings, box), name="mqtt", batch_size=200)
            task = asyncio.create_task(drain.run())
            try:
                first = None
                for _ in range(40):  # ~40k rows into a 1 MiB buffer while nothing is acknowledged
                    r = await buf.append(_readings(1000))
                    first = first or r.first_seq
                last = r.last_seq
                assert sum(buf.stats()["dropped"].values()) > 0, "nothing was evicted: the cap did not bite"
                acker.acking.set()
                await _wait(lambda: buf.stats()["depth"] == 0, 60, "the buffer to drain")
                # One more message after everything is acknowledged carries whatever is still pending.
                await buf.append(_readings(1))
                await _wait(lambda: buf.stats()["depth"] == 0, 30, "the last reading")
                marks = (await buf.next_batch(1))[1]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert marks.dropped == ()  # every announced range was acknowledged
        with acker.lock:
            covered = set(acker.received)
            for body in acker.bodies:
                for a, b, reason in body.get("dropped", []):
                    assert reason == "disk_cap"
                    covered.update(range(a, b + 1))
        missing = set(range(first, last + 2)) - covered
        assert not missing, f"{len(missing)} seqs neither delivered nor announced, e.g. {sorted(missing)[:5]}"
    finally:
        acker.close()


class _Recorder:
    """An uplink that confirms every batch at once and records their sizes."""

    name, window = "rec", 1

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def __aenter__(self) -> _Recorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, batch, marks=None) -> None:
        self.sizes.append(len(batch))


async def test_a_backlog_drains_in_catch_up_batches_and_live_data_in_small_ones(tmp_path: Path) -> None:
    recorder = _Recorder()
    async with DurableBuffer(BufferSettings(tmp_path / "b.db")) as buf:
        for _ in range(5):
            await buf.append(_readings(5000))  # 25,000 waiting: a backlog
        drain = Drain(buf, lambda: recorder, name="rec", batch_size=500)
        assert drain.catchup_batch_size == 2000
        task = asyncio.create_task(drain.run())
        try:
            await _wait(lambda: drain.sent_total == 25_000, 30, "the backlog to drain")
            await buf.append(_readings(300))  # live data
            await _wait(lambda: drain.sent_total == 25_300, 10, "the live readings")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert recorder.sizes[0] == 2000 and recorder.sizes.count(2000) >= 8  # while >= 4 x 2000 waited
    assert max(recorder.sizes[-3:]) <= 500 and recorder.sizes[-1] == 300
    assert sum(recorder.sizes) == 25_300
