"""Readings out over HTTP (fleet_server.api.readings): the cursor-paged API across boxes, its 400s
naming each refused parameter, who may read, and the streamed export (NDJSON, CSV) whose content
is exactly what the pages give; a client that goes away stops the export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import BOTH_BACKENDS
from rollout_support import serve_in_thread
from test_fleet_helpers import ADMIN, TestClient, admin, bearer

from core.reading import Quality, Reading, RecordClass
from fleet_server.access import Role
from fleet_server.api import readings as readings_api
from fleet_server.app import create_app
from fleet_server.readings_out import EXPORT_FIELDS, BoxReading, ReadingKey, ReadingsQuery
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port

T0 = 1_700_000_000.0
BOXES = ("box-a", "box-b", "box-c")


def fill(store: Any, per_box: int = 40) -> None:
    """Readings of three boxes sharing timestamps, every class, some without a value, one text
    with a comma, quotes and a newline (CSV quoting)."""
    store.provision_boxes([(b, "hw", "site", [], None) for b in BOXES])
    for b, box in enumerate(BOXES):
        store.ingest(box, [
            Reading(f"dev{seq % 2}", f"p{seq % 3}", None if seq % 5 == 0 else seq + b / 8, "kW",
                    T0 + (seq // 3) * 60.0 + (0.125 if seq % 7 == 0 else 0.0), Quality(seq % 4),
                    list(RecordClass)[seq % 3], 'gate "north", opened\nby operator' if seq == 4 else None, seq=seq)
            for seq in range(1, per_box + 1)])


def page(client: TestClient, headers: dict[str, str] | None = None, **params: Any) -> Any:
    return client.get("/api/v1/readings", params=params, headers=admin() if headers is None else headers)


def all_pages(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        r = page(client, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        rows += r.json()["readings"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return rows
        assert isinstance(cursor, str) and cursor.isascii()
    raise AssertionError("paging did not end")


def from_csv(text: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    assert tuple(next(reader)) == EXPORT_FIELDS
    out = []
    for box_id, seq, ts, device, point, value, unit, quality, cls, note in reader:
        out.append({"box_id": box_id, "seq": int(seq), "ts": float(ts), "device": device, "point": point,
                    "value": float(value) if value else None, "unit": unit, "quality": int(quality), "cls": cls,
                    "text": note or None})
    return out


def from_ndjson(text: str) -> list[dict[str, Any]]:
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# -- the paged API ----------------------------------------------------------------------------------

@BOTH_BACKENDS
def test_pages_walk_every_box_in_one_order(client: TestClient, store: Any) -> None:
    fill(store)
    rows = all_pages(client, limit=7)
    assert len(rows) == 3 * 40
    assert [(r["ts"], r["box_id"], r["seq"]) for r in rows] == sorted((r["ts"], r["box_id"], r["seq"]) for r in rows)
    stored = [BoxReading(box, r) for box in BOXES for r in store.readings(box, limit=1000)]
    assert rows == [r.to_dict() for r in sorted(stored, key=lambda r: r.key)]
    assert list(rows[0]) == list(EXPORT_FIELDS)
    first = page(client, limit=50).json()     # max_page of the test app is 50
    assert len(first["readings"]) == 50 and first["next_cursor"]
    assert page(client).json()["readings"] == first["readings"]  # default: min(1000, max_page)


@BOTH_BACKENDS
def test_filters_over_http(client: TestClient, store: Any) -> None:
    fill(store)
    everything = all_pages(client, limit=50)
    until = T0 + 6 * 60
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"since": T0 + 120, "until": until}, lambda r: T0 + 120 <= r["ts"] < until),
        ({"since": "2023-11-14T22:15:20Z"}, lambda r: r["ts"] >= T0 + 120),   # T0 is 22:13:20 UTC
        ({"until": "2023-11-14T23:19:20+01:00"}, lambda r: r["ts"] < until),
        ({"box": "box-b", "cls": "alarm"}, lambda r: r["box_id"] == "box-b" and r["cls"] == "alarm"),
        ({"device": "dev1", "point": "p2"}, lambda r: (r["device"], r["point"]) == ("dev1", "p2")),
        ({"box": "", "device": "", "cls": ""}, lambda r: True),                # empty: not given
    ]
    for params, keep in cases:
        expected = [r for r in everything if keep(r)]
        assert expected, params
        assert all_pages(client, limit=4, **params) == expected, params


@pytest.mark.parametrize("query, field", [
    ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
    ({"cursor": "%%%"}, "cursor"),
    ({"cursor": "WzEsMTcwMDAwMDAwMC4wLCJiL2MiLDFd"}, "cursor"),   # a well-formed JSON key with a bad box id
    ({"since": "1700000100", "until": "1700000000"}, "until"),
    ({"since": "2023-11-15", "until": "2023-11-14T23:00:00Z"}, "until"),
    ({"limit": "0"}, "limit"),
    ({"limit": "51"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "99999999999999999999999"}, "limit"),
    ({"cls": "routin"}, "cls"),
    ({"cls": "ROUTINE"}, "cls"),
    ({"box": "box/a"}, "box"),
    ({"box": "b" * 65}, "box"),
    ({"since": "yesterday"}, "since"),
    ({"since": "-5"}, "since"),
    ({"until": "2300-01-01T00:00:00Z"}, "until"),
    ({"until": "nan"}, "until"),
    ({"device": "d" * 129}, "device"),
    ({"point": "a\x00b"}, "point"),
    ({"sinse": "1700000000"}, "sinse"),
    ({"after_seq": "5"}, "after_seq"),
])
def test_each_bad_parameter_is_a_400_naming_it(client: TestClient, store: Any, query: dict[str, str],
                                               field: str) -> None:
    fill(store, 3)
    r = page(client, **query)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_parameter" and r.json()["field"] == field, r.json()
    assert r.json()["detail"]
    # the export takes the same filters and refuses the same way (limit and cursor: it has none)
    export = client.get("/api/v1/readings/export", params=query, headers=admin())
    assert export.status_code == 400 and export.json()["field"] == field, export.text


def test_a_parameter_given_twice_and_a_bad_format_are_refused(client: TestClient, store: Any) -> None:
    fill(store, 3)
    r = client.get("/api/v1/readings?box=box-a&box=box-b", headers=admin())
    assert (r.status_code, r.json()["field"]) == (400, "box")
    r = client.get("/api/v1/readings/export?format=xml", headers=admin())
    assert (r.status_code, r.json()["field"]) == (400, "format")
    r = client.get("/api/v1/readings/export?cursor=x", headers=admin())   # the export has no cursor
    assert (r.status_code, r.json()["field"]) == (400, "cursor")


@BOTH_BACKENDS
def test_an_unknown_box_is_a_404_on_both_routes(client: TestClient, store: Any) -> None:
    fill(store, 3)
    for path in ("/api/v1/readings", "/api/v1/readings/export"):
        r = client.get(path, params={"box": "no-such-box"}, headers=admin())
        assert (r.status_code, r.json()["error"]) == (404, "unknown_box"), path


def test_viewers_may_read_box_credentials_may_not(client: TestClient, store: Any) -> None:
    fill(store, 3)
    viewer = store.create_user("city-platform", Role.VIEWER, "data out", "test")[1]
    credential = store.provision_boxes([("box-x", "hw", "site", [], None)])[0]
    for path in ("/api/v1/readings", "/api/v1/readings/export"):
        assert client.get(path, headers=bearer(viewer)).status_code == 200, path
        for headers in ({}, bearer(credential), bearer("not-a-token-0123456789")):
            r = client.get(path, headers=headers)
            assert (r.status_code, r.json()["error"]) == (401, "not_authenticated"), (path, headers)
    assert len(page(client, bearer(viewer)).json()["readings"]) == 9


# -- the export --------------------------------------------------------------------------------------

@BOTH_BACKENDS
def test_export_ndjson_and_csv_are_the_pages_rows(client: TestClient, store: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fill(store)
    monkeypatch.setattr(readings_api, "EXPORT_PAGE", 7)   # many pages, the last one short
    csv_text = ""
    for params in ({}, {"box": "box-c", "since": T0 + 60, "until": T0 + 600}, {"cls": "event", "device": "dev1"}):
        expected = all_pages(client, limit=9, **params)
        assert expected, params
        nd = client.get("/api/v1/readings/export", params={**params, "format": "ndjson"}, headers=admin())
        assert nd.status_code == 200 and nd.headers["content-type"] == "application/x-ndjson"
        assert nd.headers["content-disposition"] == 'attachment; filename="readings.ndjson"'
        assert from_ndjson(nd.text) == expected, params
        assert from_ndjson(client.get("/api/v1/readings/export", params=params, headers=admin()).text) == expected
        cs = client.get("/api/v1/readings/export", params={**params, "format": "csv"}, headers=admin())
        assert cs.status_code == 200 and cs.headers["content-type"] == "text/csv; charset=utf-8"
        assert cs.headers["content-disposition"] == 'attachment; filename="readings.csv"'
        assert from_csv(cs.text) == expected, params
        csv_text = csv_text or cs.text
    assert '"gate ""north"", opened\nby operator"' in csv_text   # RFC 4180 quoting


def test_an_empty_export_is_a_header_or_nothing(client: TestClient, store: Any) -> None:
    fill(store, 3)
    params = {"since": T0 + 10**6}
    assert client.get("/api/v1/readings/export", params={**params, "format": "csv"}, headers=admin()).text \
        == ",".join(EXPORT_FIELDS) + "\r\n"
    r = client.get("/api/v1/readings/export", params=params, headers=admin())
    assert (r.status_code, r.text) == (200, "")


class CountingStore(SqliteStore):
    """Counts the pages read; each takes `delay` seconds, as on a busy database."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages = 0
        self.delay = 0.0

    def readings_page(self, query: ReadingsQuery) -> tuple[list[BoxReading], ReadingKey | None]:
        self.pages += 1
        time.sleep(self.delay)
        return super().readings_page(query)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, CountingStore]]:
    store = CountingStore(tmp_path / "fleet.db")
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, port=port), store)
    with serve_in_thread(app, port) as url:
        yield url, store
    store.close()


def test_a_client_that_goes_away_stops_the_export(served: tuple[str, CountingStore],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, store = served
    fill(store, 400)
    monkeypatch.setattr(readings_api, "EXPORT_PAGE", 5)   # 240 pages, 20 ms each: ~5 s in all
    store.pages, store.delay = 0, 0.02
    with httpx.stream("GET", url + "/api/v1/readings/export", headers=admin(), timeout=10) as r:
        assert r.status_code == 200
        first = next(r.iter_bytes())
        assert first.startswith(b'{"box_id":"box-a","seq":1,')
    # the connection is closed: the server notices and reads no further page (going on, it
    # would have read ~50 more in the second that follows)
    time.sleep(0.5)
    stopped_at = store.pages
    time.sleep(0.5)
    assert store.pages == stopped_at < 15, (stopped_at, store.pages)
    # and it goes on serving: the whole export, to a client that stays
    store.pages, store.delay = 0, 0.0
    whole = httpx.get(url + "/api/v1/readings/export", headers=admin(), timeout=30)
    assert len(from_ndjson(whole.text)) == 1200 and store.pages == 240


def test_export_pages_are_read_off_the_event_loop(client: TestClient, store: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fill(store, 10)
    monkeypatch.setattr(readings_api, "EXPORT_PAGE", 4)
    on_a_loop: list[bool] = []
    real = store.readings_page

    def spy(query: ReadingsQuery) -> Any:
        try:
            asyncio.get_running_loop()
            on_a_loop.append(True)
        except RuntimeError:   # no event loop runs in this thread: a worker thread
            on_a_loop.append(False)
        return real(query)

    monkeypatch.setattr(store, "readings_page", spy)
    for path in ("/api/v1/readings/export", "/api/v1/readings"):
        assert client.get(path, headers=admin()).status_code == 200
    assert on_a_loop == [False] * 9   # 8 export pages (30 rows, 4 a page), then the one page
