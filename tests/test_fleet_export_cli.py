"""`quanedge fleet export` against a real server (uvicorn in a thread): what it writes is what the
paged API gives, refusals exit 1 with the server's reason, an export cut off midway exits 1 and
leaves no file behind."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_support import serve_in_thread
from test_fleet_helpers import ADMIN
from typer.testing import CliRunner

from core.reading import Reading, RecordClass
from fleet_server.access import Role
from fleet_server.api import readings as readings_api
from fleet_server.app import create_app
from fleet_server.cli_export import RowCounter
from fleet_server.errors import StoreError
from fleet_server.readings_out import BoxReading, ReadingKey, ReadingsQuery
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port
from quanedge.cli import build_app

T0 = 1_764_000_000.0


class FailingStore(SqliteStore):
    """Fails the page after `fail_after` pages (None: never), as a database that goes away."""

    fail_after: int | None = None
    pages = 0

    def readings_page(self, query: ReadingsQuery) -> tuple[list[BoxReading], ReadingKey | None]:
        self.pages += 1
        if self.fail_after is not None and self.pages > self.fail_after:
            raise StoreError("the database went away")
        return super().readings_page(query)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, FailingStore]]:
    store = FailingStore(tmp_path / "fleet.db")
    store.provision_boxes([(b, "hw", "site", [], None) for b in ("box-1", "box-2")])
    for n, box in enumerate(("box-1", "box-2")):
        store.ingest(box, [Reading("meter", "kw", seq * 1.5 + n, "kW", T0 + seq // 2, cls=list(RecordClass)[seq % 3],
                                   text='say "hi",\nthen go' if seq == 7 else None, seq=seq)
                           for seq in range(1, 151)])
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, port=port), store)
    with serve_in_thread(app, port) as url:
        yield url, store
    store.close()


def run(*args: str, token: str | None = ADMIN) -> tuple[int, bytes, str]:
    env = {"QUANEDGE_ADMIN_TOKEN": token, "QUANEDGE_TOKEN": None, "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(list(args)), list(args), env=env)
    return result.exit_code, result.stdout_bytes, result.stderr


def pages(url: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 50, **({"cursor": cursor} if cursor else {})}
        body = httpx.get(url + "/api/v1/readings", params=query, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=10).json()
        rows += body["readings"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def test_ndjson_to_stdout_and_csv_to_a_file_are_the_pages(server: tuple[str, FailingStore], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, store = server
    monkeypatch.setattr(readings_api, "EXPORT_PAGE", 40)
    expected = pages(url)
    assert len(expected) == 300
    code, out, err = run("fleet", "export", "--server", url)
    assert code == 0, err
    assert [json.loads(line) for line in out.decode().splitlines()] == expected
    assert "300 readings exported" in err

    viewer = store.create_user("city", Role.VIEWER, "", "test")[1]
    target = tmp_path / "alarms.csv"
    code, out, err = run("fleet", "export", "--server", url, "--token", viewer, "--format", "csv", "--cls", "alarm",
                         "--box", "box-2", "--since", str(T0 + 10), "--until", "2025-11-24T16:01:00Z",
                         "--output", str(target))
    assert code == 0, err
    assert out == b"" and not target.with_name("alarms.csv.part").exists()
    wanted = pages(url, cls="alarm", box="box-2", since=T0 + 10, until=T0 + 60)
    assert wanted and f"{len(wanted)} readings exported" in err and str(target) in err
    with open(target, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["box_id"], int(r["seq"]), float(r["ts"]), r["cls"]) for r in rows] == [
        (r["box_id"], r["seq"], r["ts"], r["cls"]) for r in wanted]


def test_refusals_exit_1_with_the_servers_reason(server: tuple[str, FailingStore], tmp_path: Path) -> None:
    url, _ = server
    code, out, err = run("fleet", "export", "--server", url, "--cls", "sometimes")
    assert code == 1 and out == b"" and "400" in err and "cls must be one of" in err
    target = tmp_path / "out" / "x.csv"
    target.parent.mkdir()
    code, _, err = run("fleet", "export", "--server", url, "--box", "no-such-box", "--output", str(target))
    assert code == 1 and "404" in err and not list(target.parent.iterdir())
    code, _, err = run("fleet", "export", "--server", url, token="not-a-token-0123456789")
    assert code == 1 and "401" in err
    code, _, err = run("fleet", "export", "--server", url, "--format", "xml")
    assert code == 1 and "--format must be ndjson or csv" in err


def test_an_export_cut_off_midway_exits_1_and_leaves_no_file(server: tuple[str, FailingStore], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    url, store = server
    monkeypatch.setattr(readings_api, "EXPORT_PAGE", 25)
    store.pages, store.fail_after = 0, 3
    target = tmp_path / "all.ndjson"
    code, _, err = run("fleet", "export", "--server", url, "--output", str(target))
    assert code == 1, err
    assert "broke off after 75 rows" in err   # three pages of 25 arrived
    assert [r.getMessage() for r in caplog.records if r.name == "fleet_server.api.readings"] == [
        "readings export broke off: the database went away"]     # one line, no traceback
    assert not target.exists() and not target.with_name("all.ndjson.part").exists()
    store.pages, store.fail_after = 0, None
    code, _, err = run("fleet", "export", "--server", url, "--output", str(target))
    assert code == 0 and len(target.read_text().splitlines()) == 300


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_row_counter_counts_csv_records_not_lines(size: int) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["box_id", "text"])
    records = [["b1", 'a "quoted"\nline'], ["b2", ""], ["b3", '"\n"\n""'], ["b4", "plain"], ["b5", "x,\r\ny"]]
    writer.writerows(records)
    data = out.getvalue().encode()
    counter = RowCounter("csv")
    for i in range(0, len(data), size):
        counter.feed(data[i:i + size])
    assert counter.rows == len(records)
    lines, text = RowCounter("ndjson"), b'{"a":"x\\ny"}\n{"b":1}\n'
    for i in range(0, len(text), size):
        lines.feed(text[i:i + size])
    assert lines.rows == 2
