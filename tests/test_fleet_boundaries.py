"""Issue 9, findings 4 and 6, against a real fleet server process: no 500 for hostile bodies, and
a body cap on every route enforced before parsing (the server's RSS does not grow)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import Fleet, start_fleet, stop

HUGE = "1" + "0" * 400  # 10**400 as JSON text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    server = start_fleet(tmp_path_factory.mktemp("fleet"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="module")
def credential(fleet: Fleet) -> str:
    r = httpx.post(fleet.url + "/api/v1/enroll", json={"token": fleet.token(), "box_id": "box-b", "hardware": "hw-b"})
    r.raise_for_status()
    return str(r.json()["credential"])


def _admin(fleet: Fleet) -> dict[str, str]:
    return {"Authorization": f"Bearer {fleet.admin}"}


def _row(seq: str = "1", ts: str = "1700000000", device: str = '"rs1"', value: str = "21.5") -> str:
    return f'[{seq}, {ts}, {device}, "air_temp", {value}, "degC", 0, "routine", null]'


@pytest.mark.parametrize(("row", "field"), [
    (_row(value=HUGE), "value"), (_row(ts=HUGE), "ts"), (_row(seq=HUGE), "seq"),
    (_row(device='"\\ud800"'), "device"), (_row(value='"\\ud800"'), "value"),
])
def test_telemetry_with_huge_numbers_or_lone_surrogates_is_422(fleet: Fleet, credential: str, row: str,
                                                               field: str) -> None:
    body = '{"box_id": "box-b", "readings": [' + row + "]}"
    r = httpx.post(fleet.url + "/api/v1/telemetry", content=body.encode(),
                   headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert len(r.text) < 400  # the message never echoes 400 digits


@pytest.mark.parametrize("waves", [[""], ["x"], [{"size": ""}], ["1", "\ud800"], ["0%"], [10]])
def test_rollout_with_bad_waves_is_422(fleet: Fleet, waves: list[Any]) -> None:
    body = json.dumps({"target_name": "agent-0.2.0.tar", "kind": "agent", "waves": waves})
    r = httpx.post(fleet.url + "/api/v1/rollouts", content=body,
                   headers={**_admin(fleet), "Content-Type": "application/json"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("tz", ["Europe", "A" * 300, "Europe/" + "B" * 300, "../../etc/passwd", "/etc/localtime",
                                "\ud800", "", 5, "Nowhere/Atlantis"])
def test_maintenance_with_bad_timezone_is_422(fleet: Fleet, tz: Any) -> None:
    body = json.dumps({"timezone": tz, "windows": []})
    r = httpx.put(fleet.url + "/api/v1/sites/s1/maintenance", content=body, headers=_admin(fleet))
    assert r.status_code == 422, r.text
    assert r.json() == {"error": "bad_timezone", "detail": r.json()["detail"], "field": "timezone"}


def test_maintenance_with_a_real_zone_is_stored(fleet: Fleet) -> None:
    r = httpx.put(fleet.url + "/api/v1/sites/s1/maintenance", headers=_admin(fleet),
                  json={"timezone": "America/Argentina/Salta",
                        "windows": [{"days": "daily", "start": "22:00", "end": "05:00"}]})
    assert r.status_code == 200, r.text


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_huge(url: str, path: str, total: int, *, chunked: bool, headers: str = "") -> bytes:
    """Send up to `total` bytes of body (as fast as the server takes them); return its answer."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    chunk = b"x" * 65536
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = 0
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: what we want
        sock.settimeout(10)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    return answer


@pytest.mark.parametrize(("path", "chunked"), [
    ("/api/v1/enroll", False), ("/api/v1/enroll", True), ("/api/v1/rollouts", False), ("/api/v1/rollouts", True),
    ("/api/v1/enrollment-tokens", True), ("/api/v1/telemetry", False), ("/api/v1/telemetry", True),
])
def test_a_huge_body_is_refused_before_parsing_without_growing_the_server(fleet: Fleet, path: str,
                                                                          chunked: bool) -> None:
    """250 MB at /api/v1/enroll took main from 87 to 1,241 MB. Now: 413 with no auth, RSS flat."""
    httpx.get(fleet.url + "/healthz")
    before = _rss_kib(fleet.proc.pid)
    started = time.monotonic()
    answer = _send_huge(fleet.url, path, 250 * 1024 * 1024, chunked=chunked)
    after = _rss_kib(fleet.proc.pid)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"error":"batch_too_large"' in answer
    assert after - before < 16 * 1024, f"RSS grew from {before} to {after} KiB"
    assert time.monotonic() - started < 30
    print(f"{path} chunked={chunked}: 413, RSS {before} -> {after} KiB")
    assert httpx.get(fleet.url + "/healthz").status_code == 200


def test_bodies_over_the_route_limit_are_refused_before_the_token_is_checked(fleet: Fleet) -> None:
    wrong = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
    r = httpx.post(fleet.url + "/api/v1/enrollment-tokens", content=b"{" + b" " * 70_000 + b"}", headers=wrong)
    assert r.status_code == 413 and r.json()["error"] == "batch_too_large"
    r = httpx.post(fleet.url + "/api/v1/rollouts", content=b"{" + b" " * (8 * 1024 * 1024) + b"}", headers=wrong)
    assert r.status_code == 413 and r.json()["error"] == "batch_too_large"
    r = httpx.post(fleet.url + "/api/v1/enrollment-tokens", content=b"{}", headers=wrong)
    assert r.status_code == 401


def test_a_rollout_may_name_many_boxes(fleet: Fleet) -> None:
    """The rollout route's own cap (8 MiB) admits a filter listing 50,000 box ids (~600 KB)."""
    body = {"target_name": "agent-0.2.0.tar", "kind": "agent",
            "filter": {"box_ids": [f"box-{n:06d}" for n in range(50_000)]}}
    r = httpx.post(fleet.url + "/api/v1/rollouts", json=body, headers=_admin(fleet), timeout=30)
    # Past the cap and the model: refused only because this server has no update repository.
    assert (r.status_code, r.json()["error"]) == (503, "repository_unavailable"), r.text


def test_an_empty_body_is_422_and_a_malformed_content_length_400(fleet: Fleet) -> None:
    assert _send_huge(fleet.url, "/api/v1/enroll", 0, chunked=False).startswith(b"HTTP/1.1 422")
    host, port = fleet.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n{}")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/rollouts", '{"target_name": "agent-0.2.0.tar", "kind": "agent", "name": "\\ud800"}'),
    ("POST", "/api/v1/rollouts", '{"target_name": "x", "kind": "agent", "filter": {"tags": ["\\udfff"]}}'),
    ("PUT", "/api/v1/sites/s1/maintenance", '{"timezone": "UTC", "windows": [{"start": "00:00", "end": "01:00",'
                                            ' "kinds": [[1]]}]}'),
    ("PUT", "/api/v1/sites/s1/maintenance", "[" * 50_000),
    ("POST", "/api/v1/rollouts", "[" * 50_000),
    ("POST", "/api/v1/rollouts", b"\xff\xfe"),
    ("POST", "/api/v1/rollouts", '{"target_name": "a", "kind": "agent", "success_pct": NaN}'),
    ("POST", "/api/v1/rollouts", '{"target_name": "a", "kind": "agent", "rate_per_min": -Infinity}'),
    ("POST", "/api/v1/enrollment-tokens", '{"ttl_s": NaN}'),
    ("POST", "/api/v1/enrollment-tokens", '{"note": "\\ud800", "bogus": NaN}'),
])
def test_admin_bodies_with_surrogates_odd_types_or_deep_nesting_are_4xx(fleet: Fleet, method: str, path: str,
                                                                        body: str | bytes) -> None:
    r = httpx.request(method, fleet.url + path, content=body,
                      headers={**_admin(fleet), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize(("path", "body", "admin"), [
    ("/api/v1/enroll", {"token": "t" * 20, "box_id": "box-z", "hardware": "hw", "site": "lixia\x00"}, False),
    ("/api/v1/enroll", {"token": "t" * 20, "box_id": "box-z", "hardware": "hw\x00", "site": ""}, False),
    ("/api/v1/enroll", {"token": "t" * 20, "box_id": "box-z", "hardware": "hw", "tags": ["a\x00"]}, False),
    ("/api/v1/users", {"name": "nul-note", "role": "viewer", "note": "night\x00shift"}, True),
])
def test_text_with_nul_is_422_on_enrolment_and_users(fleet: Fleet, path: str, body: dict[str, Any],
                                                     admin: bool) -> None:
    """The same text rule as every other body (CleanStr): refused at the model, before the token
    is spent or anything is stored."""
    r = httpx.post(fleet.url + path, json=body, headers=_admin(fleet) if admin else {})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("body", [
    '{"agent_version": "\\ud800", "hardware": "hw-b"}',
    '{"agent_version": "1", "hardware": "hw-b", "models": {"\\ud800": "1"}}',
    '{"agent_version": ' + HUGE + ', "hardware": "hw-b"}',
    "[" * 50_000,
])
def test_box_inventory_with_hostile_values_is_4xx(fleet: Fleet, credential: str, body: str) -> None:
    r = httpx.put(fleet.url + "/api/v1/boxes/box-b/inventory", content=body,
                  headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_a_site_path_of_invalid_utf8_is_decoded_with_replacement_characters_not_a_500(fleet: Fleet) -> None:
    r = httpx.put(fleet.url + "/api/v1/sites/%ED%A0%80/maintenance", json={"timezone": "UTC"}, headers=_admin(fleet))
    assert r.status_code == 200 and r.json()["site"] == "\ufffd" * 3
