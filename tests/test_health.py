"""Metrics and the health endpoint, scraped over real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agent import health
from agent.health import Metrics, serve_health

NOW = 1_700_000_100.0


class FakeBuffer:
    """Stands in for the buffer's stats callable (the buffer itself is another module)."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"depth": 0, "bytes": 4096, "oldest_unsent_ts": None, "dropped": {}}
        self.broken = False

    def __call__(self) -> Mapping[str, Any]:
        if self.broken:
            raise OSError("disk gone")
        return self.stats


@pytest.fixture
def buffer() -> FakeBuffer:
    return FakeBuffer()


@pytest.fixture
def state() -> dict[str, Any]:
    return {"status": "ok", "devices": {"ws-1": "online"}, "buffer_depth": 0, "uplink": "connected"}


@pytest.fixture
async def server(buffer: FakeBuffer, state: dict[str, Any]) -> AsyncIterator[tuple[Metrics, int]]:
    metrics = Metrics(buffer, clock=lambda: NOW)
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def ready() -> Mapping[str, Any]:
        if state.get("explode"):
            raise RuntimeError("ready() is broken")
        return state

    task = asyncio.create_task(serve_health(metrics, "127.0.0.1", 0, ready, on_ready=bound.set_result))
    port = await asyncio.wait_for(bound, 5)
    yield metrics, port
    task.cancel()
    await asyncio.wait((task,))


async def raw(port: int, request: bytes, *, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the whole response (the server closes after one), parse status/headers/body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: box\r\nUser-Agent: test\r\n\r\n".encode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_scrape_shows_every_figure(server: tuple[Metrics, int], buffer: FakeBuffer) -> None:
    metrics, port = server
    metrics.device_read("ws-1", 30)
    metrics.device_read("ws-1")
    metrics.device_read("gate-2", 4)
    metrics.device_state("ws-1", True)
    metrics.device_state("gate-2", False)
    metrics.device_error("gate-2", "timeout")
    metrics.device_error("gate-2", "timeout")
    metrics.stored(35)
    metrics.sent("mqtt", 20)
    metrics.uplink_state("mqtt", True)
    buffer.stats = {"depth": 15, "bytes": 123_456, "oldest_unsent_ts": NOW - 42.5,
                    "dropped": {("disk_cap", "routine"): 7, ("ttl", "routine"): 2}}

    status, headers, body = await raw(port, get("/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(body)
    s = samples(body.decode())
    assert s[("quanedge_readings_read_total", (("device", "ws-1"),))] == 31
    assert s[("quanedge_readings_read_total", (("device", "gate-2"),))] == 4
    assert s[("quanedge_device_online", (("device", "ws-1"),))] == 1
    assert s[("quanedge_device_online", (("device", "gate-2"),))] == 0
    assert s[("quanedge_device_errors_total", (("device", "gate-2"), ("kind", "timeout")))] == 2
    assert s[("quanedge_readings_stored_total", ())] == 35
    assert s[("quanedge_readings_sent_total", (("uplink", "mqtt"),))] == 20
    assert s[("quanedge_uplink_connected", (("uplink", "mqtt"),))] == 1
    assert s[("quanedge_buffer_depth", ())] == 15
    assert s[("quanedge_buffer_bytes", ())] == 123_456
    assert s[("quanedge_oldest_unsent_age_seconds", ())] == 42.5
    assert s[("quanedge_readings_dropped_total", (("cls", "routine"), ("reason", "disk_cap")))] == 7
    assert s[("quanedge_readings_dropped_total", (("cls", "routine"), ("reason", "ttl")))] == 2

    buffer.stats = {"depth": 0, "bytes": 4096, "oldest_unsent_ts": None, "dropped": {}}  # pulled at each scrape
    s = samples((await raw(port, get("/metrics")))[2].decode())
    assert s[("quanedge_buffer_depth", ())] == 0 and s[("quanedge_oldest_unsent_age_seconds", ())] == 0


def test_public_api_is_pinned() -> None:
    assert health.__all__ == ["Metrics", "serve_health", "REQUEST_TIMEOUT_S", "health_header", "uplink_status"]


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # a second one would raise "Duplicated timeseries" on a shared registry
    a.stored(3)
    assert b"quanedge_readings_stored_total 0.0" in b.render()
    assert REGISTRY.get_sample_value("quanedge_readings_stored_total") is None


def test_drops_come_from_one_source_pushed_or_pulled() -> None:
    metrics = Metrics()
    worker = threading.Thread(target=lambda: [metrics.dropped("disk_cap", "routine", 5) for _ in range(100)])
    worker.start()  # the buffer calls on_drop from its writer thread
    worker.join()
    metrics.dropped("ttl", "event", 1)
    s = samples(metrics.render().decode())
    assert s[("quanedge_readings_dropped_total", (("cls", "routine"), ("reason", "disk_cap")))] == 500
    assert s[("quanedge_readings_dropped_total", (("cls", "event"), ("reason", "ttl")))] == 1
    assert not any(name == "quanedge_buffer_depth" for name, _ in s)  # no buffer yet: absent, not zero

    buffer = FakeBuffer()
    buffer.stats["dropped"] = {("disk_cap", "routine"): 500}
    metrics.buffer_stats = buffer  # the buffer's durable counts already include the pushed drops
    s = samples(metrics.render().decode())
    assert s[("quanedge_readings_dropped_total", (("cls", "routine"), ("reason", "disk_cap")))] == 500
    assert ("quanedge_readings_dropped_total", (("cls", "event"), ("reason", "ttl"))) not in s
    assert s[("quanedge_buffer_bytes", ())] == 4096
    with pytest.raises(ValueError):
        metrics.dropped("ttl", "event", -1)


async def test_healthz_is_200_when_ok_and_503_when_degraded(server: tuple[Metrics, int],
                                                          state: dict[str, Any]) -> None:
    _, port = server
    status, headers, body = await raw(port, get("/healthz?verbose=1"))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == state
    state.update(status="degraded", uplink="down", oldest_unsent_age_s=900.0)
    status, _, body = await raw(port, get("/healthz"))
    assert status == 503 and json.loads(body)["uplink"] == "down"


@pytest.mark.parametrize("request_bytes, status", [
    (get("/nope"), 404),
    (get("/metrics", "POST"), 405),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 400),                      # HTTP/1.1 needs Host
    (b"GET /metrics HTTP/2.0\r\nHost: b\r\n\r\n", 400),
    (b"GET metrics HTTP/1.1\r\nHost: b\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost b\r\n\r\n", 400),            # header without colon
    (b"GET /metrics HTTP/1.1\r\nHost: b\r\nContent-Length: x\r\n\r\n", 400),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: b\r\n\r\n", 431),     # head over the limit
    (b"GET /metrics HTTP/1.1\r\nHost: \xff\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.0\r\n\r\n", 200),                       # 1.0 without Host is fine
])
async def test_bad_and_unknown_requests(server: tuple[Metrics, int], request_bytes: bytes, status: int) -> None:
    _, port = server
    assert (await raw(port, request_bytes))[0] == status


async def test_head_has_headers_only(server: tuple[Metrics, int]) -> None:
    _, port = server
    status, headers, body = await raw(port, get("/metrics", "HEAD"))
    assert status == 200 and int(headers["Content-Length"]) > 0 and body == b""


async def test_broken_callables_give_500_and_the_server_keeps_going(
        server: tuple[Metrics, int], buffer: FakeBuffer, state: dict[str, Any]) -> None:
    _, port = server
    buffer.broken = True
    state["explode"] = True
    assert (await raw(port, get("/metrics")))[0] == 500
    assert (await raw(port, get("/healthz")))[0] == 500
    buffer.broken = False
    del state["explode"]
    assert (await raw(port, get("/metrics")))[0] == 200


async def test_slow_client_gets_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "REQUEST_TIMEOUT_S", 0.2)
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_health(Metrics(), "127.0.0.1", 0, lambda: {"status": "ok"},
                                            on_ready=bound.set_result))
    try:
        port = await asyncio.wait_for(bound, 5)
        status, _, _ = await raw(port, b"GET /metrics HTTP/1.1\r\n")  # never finishes its head
        assert status == 408
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancel_closes_listener_and_open_connections() -> None:
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_health(Metrics(), "127.0.0.1", 0, lambda: {"status": "ok"},
                                            on_ready=bound.set_result))
    port = await asyncio.wait_for(bound, 5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # an idle half-request holds a handler open
    await writer.drain()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait((task,))
    assert task.cancelled()
    assert await asyncio.wait_for(reader.read(), 2) == b""  # its connection was closed
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
