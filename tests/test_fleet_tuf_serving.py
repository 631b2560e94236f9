"""The fleet server serving the update repository: ETag/304, HTTP Range (206, 416, If-Range),
nothing outside metadata/ and targets/, the box's real TUF verifier through it, and the
timestamp keeper re-signing within the expiry."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rollout_support import AGENT, FIRMWARE, TARGETS, make_repo, open_app, serve_in_thread
from test_fleet_helpers import ADMIN, Clock, TestClient

from agent.updater.verify import UpdateVerifier
from firmware_manifests.repository import Repository
from fleet_server.app import create_app
from fleet_server.rollout.timestamps import TimestampKeeper
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port

FW_BYTES = TARGETS[2][5]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return make_repo(tmp_path_factory.mktemp("tuf"))


@pytest.fixture
def client(tmp_path: Path, repo: Repository) -> Iterator[TestClient]:
    store = SqliteStore(tmp_path / "fleet.db")
    yield from open_app(tmp_path, store, Clock(), repo.path)
    store.close()


def _target_url(repo: Repository, name: str) -> str:
    info = repo.targets().signed.targets[name]
    return "/tuf/targets/" + info.get_prefixed_paths()[0]


def test_metadata_and_targets_with_etag_and_304(client: TestClient, repo: Repository) -> None:
    r = client.get("/tuf/metadata/timestamp.json")
    assert r.status_code == 200 and r.json()["signed"]["_type"] == "timestamp"
    assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    assert client.get("/tuf/metadata/timestamp.json", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get("/tuf/metadata/1.root.json").headers["cache-control"].endswith("immutable")
    url = _target_url(repo, FIRMWARE)
    t = client.get(url)
    assert t.content == FW_BYTES and t.headers["accept-ranges"] == "bytes"
    assert t.headers["etag"] == '"' + hashlib.sha256(FW_BYTES).hexdigest()[:32] + '"'
    assert client.get(url, headers={"If-None-Match": t.headers["etag"]}).status_code == 304
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(FW_BYTES)) and not head.content
    model = client.get(_target_url(repo, "models/loop-anomaly-1.3.0.onnx"))   # a target in a sub-directory
    assert model.status_code == 200


def test_ranges_resume_a_download(client: TestClient, repo: Repository) -> None:
    url = _target_url(repo, FIRMWARE)
    size = len(FW_BYTES)
    first = client.get(url, headers={"Range": "bytes=0-999"})
    assert first.status_code == 206 and first.headers["content-range"] == f"bytes 0-999/{size}"
    rest = client.get(url, headers={"Range": "bytes=1000-", "If-Range": first.headers["etag"]})
    assert rest.status_code == 206 and first.content + rest.content == FW_BYTES
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == FW_BYTES[-10:]
    past = client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    stale = client.get(url, headers={"Range": "bytes=1000-", "If-Range": '"another-version"'})
    assert stale.status_code == 200 and stale.content == FW_BYTES     # changed file: start over
    multi = client.get(url, headers={"Range": "bytes=0-9,20-29"})
    assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
    assert client.get(url, headers={"Range": "lines=1-2"}).status_code == 400


@pytest.mark.parametrize("path", [
    "/tuf/keys/root.key", "/tuf/repo.json", "/tuf/staging/targets.json", "/tuf/metadata/../keys/root.key",
    "/tuf/metadata/%2e%2e%2fkeys%2froot.key", "/tuf/targets/../repo.json", "/tuf/targets/", "/tuf/targets/models",
    "/tuf/metadata/.hidden", "/tuf/metadata/nope.json", "/tuf/targets/a//b",
])
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404, path
    assert b"PRIVATE KEY" not in r.content


def test_no_repository_configured(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    for c in open_app(tmp_path, store, Clock(), None):
        assert c.get("/tuf/metadata/timestamp.json").status_code == 404
    store.close()


def test_the_boxs_verifier_updates_through_the_fleet_server(tmp_path: Path, repo: Repository) -> None:
    """The real TUF client (agent.updater.verify) against the fleet server over real HTTP."""
    port = free_port()
    store = SqliteStore(tmp_path / "fleet.db")
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, tuf_repo_dir=repo.path,
                                    port=port), store)
    try:
        with serve_in_thread(app, port) as url:
            _update_through(url, tmp_path, repo)
    finally:
        store.close()


def _update_through(url: str, tmp_path: Path, repo: Repository) -> None:
    meta = tmp_path / "box" / "metadata"
    meta.mkdir(parents=True)
    (meta / "root.json").write_bytes(repo.trusted_root(1))
    installed = {"device_firmware": "2.0.0", "agent_bundle": "0.1.0"}
    box = UpdateVerifier(meta, f"{url}/tuf", tmp_path / "box" / "cache", "qe-box-a",
                         lambda kind: installed.get(kind.value), clock_slack_s=0)
    fw = box.verify_and_fetch(FIRMWARE)
    assert fw.path.read_bytes() == FW_BYTES and str(fw.version) == "2.1.0"
    assert str(box.verify_and_fetch(AGENT).version) == "0.2.0"


def test_timestamp_keeper_resigns_within_the_expiry(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    now = [datetime.now(timezone.utc)]
    keeper = TimestampKeeper(repo.path, clock=lambda: now[0])
    before = repo.timestamp().signed
    assert keeper.refresh_if_due() is False                       # fresh: nothing to do
    now[0] += timedelta(hours=13)                                 # past half of its 24 h life
    assert keeper.refresh_if_due() is True
    after = repo.timestamp().signed
    assert after.version == before.version + 1 and after.expires > before.expires
    assert keeper.expires_in._value.get() > 23 * 3600             # type: ignore[attr-defined]
    (repo.path / "keys" / "timestamp.key").rename(tmp_path / "away.key")
    now[0] += timedelta(hours=13)
    with pytest.raises(Exception, match="timestamp key"):
        keeper.refresh_if_due()
    assert repo.timestamp().signed.version == after.version       # nothing half-written
