"""Gate allow-lists: the versioned document, its atomic file, and the plate camera running it
(restart survival against the camera simulator, version ordering, a corrupt file, the audit record)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.commands import AUDIT_POINT, CommandRouter
from agent.devices import BuildContext
from core.errors import CommandRefused, DriverError
from core.reading import Quality, Reading
from drivers import allowlist_store
from drivers.access_controller.driver import AccessControllerDriver
from drivers.access_controller.settings import AccessControllerSettings
from drivers.access_controller.sim import AccessControllerSim
from drivers.allowlist import MAX_ENTRIES, AllowList, parse_document
from drivers.allowlist_store import AllowListStore, AllowListUnreadable, store_path
from drivers.plate_camera import KIND
from drivers.plate_camera.driver import PlateReceiverDriver
from drivers.plate_camera.settings import COMMANDS, PlateCameraSettings
from drivers.plate_camera.sim import PlateCameraSim
from drivers.push_auth import PushCredential, parse_sources

SIM_CAMERA = (PushCredential("fe71e106-57263272", sources=parse_sources(["127.0.0.1"])),)
CONFIG_PLATES = frozenset({"鲁A12345", "鲁A88888"})


def _settings(**kw: Any) -> PlateCameraSettings:
    return PlateCameraSettings(name="gate", listen_host="127.0.0.1", listen_port=0, cameras=SIM_CAMERA,
                               allow_list=CONFIG_PLATES, **kw)


def _driver(data_dir: Path | None, got: list[Reading] | None = None) -> PlateReceiverDriver:
    store = None if data_dir is None else AllowListStore(store_path(data_dir, "gate"), cards=False)
    return PlateReceiverDriver(_settings(), (got if got is not None else []).append, allowlist=store)


async def _version(rx: PlateReceiverDriver) -> Reading:
    (r,) = await rx.read(["allowlist_version"])
    return r


# --- the document --------------------------------------------------------------------------------
@pytest.mark.parametrize("doc, field", [
    ([1, 2], "allowlist must be an object"),
    ({"plates": []}, "allowlist.version is required"),
    ({"version": 0}, "allowlist.version must be in 1.."),
    ({"version": True}, "allowlist.version must be an integer"),
    ({"version": "3"}, "allowlist.version must be an integer"),
    ({"version": 2**60}, "allowlist.version must be in 1.."),
    ({"version": 1, "plates": "鲁A12345"}, "allowlist.plates must be a list"),
    ({"version": 1, "plates": ["鲁A12345", 7]}, "allowlist.plates[1] must be a string"),
    ({"version": 1, "plates": ["鲁A12345", "a", " - "]}, "allowlist.plates[2] is not a plate"),
    ({"version": 1, "plates": ["A" * 33]}, "allowlist.plates[0] is not a plate"),
    ({"version": 1, "plates": ["\ud800A1"]}, "allowlist.plates[0] is not valid Unicode text"),
    ({"version": 1, "plates": ["A\x001"]}, "allowlist.plates[0] must not contain NUL"),
    ({"version": 1, "plates": ["A1"] * (MAX_ENTRIES + 1)}, f"allowlist.plates holds at most {MAX_ENTRIES}"),
    ({"version": 1, "cards": ["1", "  "]}, "allowlist.cards[1] is not a card number"),
    ({"version": 1, "cards": ["9" * 33]}, "allowlist.cards[0] is not a card number"),
    ({"version": 1, "plates": [], "owner": "x"}, "allowlist has an unknown field 'owner'"),
])
def test_validation_errors_name_the_field(doc: Any, field: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_document(doc)
    assert str(exc.value).startswith(field), str(exc.value)


def test_plates_normalised_duplicates_folded_cards_optional() -> None:
    doc = parse_document({"version": 3, "plates": ["鲁a-12345", "鲁A 12345", "鲁A.12345", "京C1"],
                          "cards": [" 324 ", "324", "5"]})
    assert doc == AllowList(3, ("京C1", "鲁A12345"), ("324", "5"))
    assert parse_document({"version": 1}) == AllowList(1)
    with pytest.raises(ValueError, match=r"^allowlist.cards: this device has no card reader"):
        parse_document({"version": 1, "cards": ["1"]}, cards=False)
    with pytest.raises(ValueError, match=r"^allowlist.plates: this device reads no plates"):
        parse_document({"version": 1, "plates": ["A1"]}, plates=False)
    full = parse_document({"version": 1, "plates": [f"A{i}" for i in range(MAX_ENTRIES)]})
    assert len(full.plates) == MAX_ENTRIES  # the cap itself is accepted


_plate = st.text(st.sampled_from("鲁京ABCZ0189 -."), min_size=1, max_size=20).filter(lambda p: p.strip(" -."))
_card = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=32).filter(lambda c: c.strip())


@settings(max_examples=200, deadline=None)
@given(version=st.integers(1, 2**53), plates=st.lists(_plate, max_size=30), cards=st.lists(_card, max_size=30))
def test_document_round_trip(version: int, plates: list[str], cards: list[str]) -> None:
    doc = parse_document({"version": version, "plates": plates, "cards": cards})
    assert parse_document(json.loads(doc.to_json())) == doc  # what is stored reads back as the same list
    assert parse_document({"version": version, "plates": list(doc.plates), "cards": list(doc.cards)}) == doc
    with tempfile.TemporaryDirectory() as tmp:
        store = AllowListStore(store_path(Path(tmp), "gate"))
        store.save(doc)
        assert store.load() == doc


# --- the file ------------------------------------------------------------------------------------
def test_store_writes_0600_ignores_and_clears_crash_leftovers(tmp_path: Path) -> None:
    path = store_path(tmp_path, "gate")
    store = AllowListStore(path)
    assert store.load() is None  # nothing stored yet
    store.save(AllowList(1, ("A1",)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftover = path.parent / ".gate.json.k3j2.tmp"  # a crash mid-write left half a document
    leftover.write_bytes(b'{"version": 99, "plates": ["B')
    assert store.load() == AllowList(1, ("A1",))  # never read
    store.save(AllowList(2, ("A2",)))
    assert not leftover.exists() and sorted(p.name for p in path.parent.iterdir()) == ["gate.json"]


def test_failed_write_keeps_the_old_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AllowListStore(store_path(tmp_path, "gate"))
    store.save(AllowList(1, ("A1",)))

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(allowlist_store.os, "replace", crash)
    with pytest.raises(OSError):
        store.save(AllowList(2, ("A2",)))
    monkeypatch.undo()
    assert store.load() == AllowList(1, ("A1",))
    assert [p.name for p in store.path.parent.iterdir()] == ["gate.json"]  # its temp file removed


@pytest.mark.parametrize("content, reason", [
    (b'{"version": 3, "plates": ["A1"', "not a JSON document"),
    (b"\xff\xfe", "not a JSON document"),
    (b'{"version": 0, "plates": []}', "allowlist.version must be in 1.."),
    (b'{"version": 3, "cards": ["1"]}', "allowlist.cards: this device has no card reader"),
])
def test_unreadable_document_names_file_and_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = store_path(tmp_path, "gate")
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(AllowListUnreadable) as exc:
        AllowListStore(path, cards=False).load()
    assert str(path) in str(exc.value) and reason in str(exc.value)


def test_oversized_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allowlist_store, "MAX_FILE_BYTES", 100)
    store = AllowListStore(store_path(tmp_path, "gate"))
    store.save(AllowList(1, tuple(f"A{i}" for i in range(50))))
    with pytest.raises(AllowListUnreadable, match="larger than 100 bytes"):
        store.load()


def test_store_path_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    for bad in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            store_path(tmp_path, bad)


# --- the plate camera running it -----------------------------------------------------------------
async def _gate_opens(rx: PlateReceiverDriver, plates: list[str]) -> list[bool | None]:
    """Each plate at the simulated camera: did the barrier open (decided by this driver)?"""
    await rx.open()
    try:
        async with PlateCameraSim(f"http://127.0.0.1:{rx.port}/") as cam:
            return [await cam.recognise(p) for p in plates]
    finally:
        await rx.close()


async def test_changes_survive_a_restart(tmp_path: Path) -> None:
    rx = _driver(tmp_path)
    assert (await _version(rx)).value == 0.0  # the config list
    assert await _gate_opens(rx, ["鲁A12345", "京C11111"]) == [True, False]
    await rx.write("allow_plate", {"plate": "京C-11111"})
    await rx.write("revoke_plate", {"plate": "鲁A12345"})  # a config plate: revocable too
    # on disk before the command returned: a crash now loses nothing
    on_disk = json.loads(store_path(tmp_path, "gate").read_bytes())
    assert on_disk == {"version": 2, "plates": ["京C11111", "鲁A88888"], "cards": []}
    del rx

    again = _driver(tmp_path)  # the box restarted (same data dir, same config); no network anywhere
    r = await _version(again)
    assert (r.value, r.quality, r.text) == (2.0, Quality.GOOD, "2 plates, stored")
    assert await _gate_opens(again, ["鲁A12345", "京C11111", "鲁A88888"]) == [False, True, True]


async def test_no_op_commands_write_nothing_and_bad_plates_are_refused(tmp_path: Path) -> None:
    rx = _driver(tmp_path)
    await rx.write("allow_plate", {"plate": "鲁A12345"})  # already on the config list
    await rx.write("revoke_plate", {"plate": "京Z99999"})  # not on it
    assert rx.allowlist.version == 0 and not store_path(tmp_path, "gate").exists()
    for args in ({}, {"plate": ""}, {"plate": 5}, {"plate": "A" * 40}):
        with pytest.raises(CommandRefused, match="plate"):
            await rx.write("allow_plate", args)
    assert rx.allowlist.version == 0


async def test_set_allowlist_only_takes_a_newer_version(tmp_path: Path) -> None:
    rx = _driver(tmp_path)
    await rx.write("set_allowlist", {"version": 5, "plates": ["京C11111"]})
    assert rx.rules.allow == {"京C11111"}  # replaces the config list
    with pytest.raises(CommandRefused, match="version 5 is not newer than the running version 5"):
        await rx.write("set_allowlist", {"version": 5, "plates": ["京C11111"]})  # a fleet re-send
    with pytest.raises(CommandRefused, match="version 3 is not newer than the running version 5"):
        await rx.write("set_allowlist", {"version": 3, "plates": ["鲁A12345"]})  # delivered late
    assert rx.rules.allow == {"京C11111"}
    await rx.write("allow_plate", {"plate": "鲁B1"})
    assert rx.allowlist.version == 6  # box-local change: the fleet sees it on the point and sends 7+
    with pytest.raises(CommandRefused, match=r"allowlist.plates\[0\] is not a plate"):
        await rx.write("set_allowlist", {"version": 9, "plates": ["--"]})
    with pytest.raises(CommandRefused, match="no card reader"):
        await rx.write("set_allowlist", {"version": 9, "plates": [], "cards": ["324"]})
    await rx.write("set_allowlist", {"version": 7, "plates": []})  # an empty list is a list: nobody on it
    assert rx.rules.allow == frozenset() and _driver(tmp_path).rules.allow == frozenset()


async def test_corrupt_document_falls_back_to_the_config_list_and_reports_it(tmp_path: Path) -> None:
    path = store_path(tmp_path, "gate")
    path.parent.mkdir()
    path.write_bytes(b'{"version": 4, "plates": ["\xe4\xba\xac')  # torn by something other than our writes
    rx = _driver(tmp_path)  # builds: one bad file does not stop the agent
    r = await _version(rx)
    assert r.value is None and r.quality == Quality.COMM_FAILURE
    assert r.text is not None and "running the config list (2 plates)" in r.text and str(path) in r.text
    assert rx.rules.allow == CONFIG_PLATES
    with pytest.raises(CommandRefused, match="refused while the stored allow-list is unusable"):
        await rx.write("allow_plate", {"plate": "京C11111"})
    await rx.write("set_allowlist", {"version": 1, "plates": ["京C11111"]})  # the fleet repairs it
    r = await _version(rx)
    assert (r.value, r.quality) == (1.0, Quality.GOOD)
    assert _driver(tmp_path).rules.allow == {"京C11111"}


async def test_without_a_data_dir_changes_stay_in_memory() -> None:
    rx = _driver(None)
    await rx.write("allow_plate", {"plate": "京C11111"})
    r = await _version(rx)
    assert (r.value, r.text) == (1.0, "3 plates, in memory only")


async def test_write_failure_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rx = _driver(tmp_path)

    def full(*a: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(allowlist_store.os, "replace", full)
    with pytest.raises(DriverError, match="cannot store allow-list version 1 .*nothing changed"):
        await rx.write("allow_plate", {"plate": "京C11111"})
    assert rx.allowlist.version == 0 and rx.rules.allow == CONFIG_PLATES


async def test_kind_build_keeps_the_list_under_the_box_data_dir(tmp_path: Path) -> None:
    async def emit(rs: list[Reading]) -> None:
        pass

    async with AsyncExitStack() as stack:
        rx = KIND.build(_settings(), BuildContext({}, stack, emit, data_dir=tmp_path))
        assert isinstance(rx, PlateReceiverDriver)
        await rx.write("allow_plate", {"plate": "京C11111"})
    assert (tmp_path / "allowlists" / "gate.json").exists()
    assert stat.S_IMODE((tmp_path / "allowlists").stat().st_mode) == 0o700


async def test_command_router_audits_every_allowlist_command(tmp_path: Path) -> None:
    rx = _driver(tmp_path)
    audit: list[Reading] = []

    async def emit(rs: list[Reading]) -> None:
        audit.extend(rs)

    router = CommandRouter({"gate": rx}, {"gate": COMMANDS}, emit)
    done = await router.execute("gate", "set_allowlist", {"version": 2, "plates": ["京C11111"]}, "fleet")
    assert done.status == "done"
    with pytest.raises(CommandRefused, match="version 2 is not newer than the running version 2"):
        await router.execute("gate", "set_allowlist", {"version": 2, "plates": ["京C11111"]}, "fleet")
    big = {"version": 3, "plates": [f"A{i}" for i in range(1000)]}
    assert (await router.execute("gate", "set_allowlist", big, "fleet")).status == "done"
    await router.execute("gate", "revoke_plate", {"plate": "A7"}, "local:cli")
    records = [json.loads(r.text or "") for r in audit]
    assert all(r.point == AUDIT_POINT and r.device == "gate" for r in audit)
    assert [(x["command"], x["result"]) for x in records] == [
        ("set_allowlist", "done"), ("set_allowlist", "refused"), ("set_allowlist", "done"), ("revoke_plate", "done")]
    assert records[0]["args"] == {"version": 2, "plates": ["京C11111"]}
    assert "version 2 is not newer" in records[1]["message"]
    assert records[2]["args"] == "(too long to keep)"  # a whole list is too big for an audit record
    assert rx.allowlist.version == 4 and len(rx.rules.allow) == 999


def test_atomic_write_uses_fsync_and_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(allowlist_store.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(allowlist_store.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    AllowListStore(store_path(tmp_path, "gate")).save(AllowList(1, ("A1",)))
    assert calls == ["fsync", "replace", "fsync"]  # file data, rename, then the folder


async def test_a_command_that_times_out_still_ends_with_disk_and_memory_equal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rx = _driver(tmp_path)
    store = rx.allowlist.store
    assert store is not None
    real_save = store.save

    def slow_save(doc: AllowList) -> None:
        time.sleep(0.3)  # a slow SD card
        real_save(doc)

    monkeypatch.setattr(store, "save", slow_save)
    with pytest.raises(asyncio.TimeoutError):  # what CommandRouter's timeout does to the write
        await asyncio.wait_for(rx.write("allow_plate", {"plate": "京C11111"}), 0.05)
    for _ in range(100):
        if rx.allowlist.version == 1:
            break
        await asyncio.sleep(0.02)
    assert rx.allowlist.version == 1 and "京C11111" in rx.rules.allow  # the shielded change completed
    assert json.loads(store.path.read_bytes())["version"] == 1


# --- the access controller: cards stored and reported, decided by the controller itself ----------
def _acs(url: str, data_dir: Path | None, **kw: Any) -> AccessControllerDriver:
    s = AccessControllerSettings(name="acs1", url=url, username="admin", password="hik12345",
                                 allow_commands=("open", "set_allowlist"), **kw)
    store = None if data_dir is None else AllowListStore(store_path(data_dir, "acs1"), plates=False)
    return AccessControllerDriver(s, allowlist=store)


async def test_access_controller_card_list_is_versioned_stored_and_reported(tmp_path: Path) -> None:
    async with AccessControllerSim(cards=frozenset({"1001"})) as sim:
        drv = _acs(sim.url, tmp_path)
        await drv.open()
        try:
            await drv.write("set_allowlist", {"version": 3, "cards": ["1001", " 2002 ", "2002"]})
            with pytest.raises(CommandRefused, match="version 2 is not newer than the running version 3"):
                await drv.write("set_allowlist", {"version": 2, "cards": []})
            with pytest.raises(CommandRefused, match="reads no plates"):
                await drv.write("set_allowlist", {"version": 4, "plates": ["鲁A12345"]})
            r = {x.point: x for x in await drv.read(["door1_lock", "allowlist_version"])}
            assert r["door1_lock"].value == 0.0 and r["allowlist_version"].value == 3.0
            assert r["allowlist_version"].text == "2 cards, stored; kept on the box, not pushed to the controller"
            assert sim.cards == {"1001"}  # the controller's own list: no card endpoint exists to change it
        finally:
            await drv.close()
    # the controller is gone (offline box): the version is still read, from the box, after a restart
    again = _acs("http://127.0.0.1:9", tmp_path)
    (r,) = await again.read(["allowlist_version"])
    assert r.value == 3.0 and again.allowlist.current.cards == ("1001", "2002")


async def test_access_controller_set_allowlist_needs_allow_commands(tmp_path: Path) -> None:
    s = AccessControllerSettings(name="acs1", url="http://127.0.0.1:9", username="a", password="b")
    drv = AccessControllerDriver(s, allowlist=AllowListStore(store_path(tmp_path, "acs1"), plates=False))
    with pytest.raises(CommandRefused, match="not allowed"):
        await drv.write("set_allowlist", {"version": 1, "cards": ["1"]})
    assert AccessControllerSettings(name="acs1", url="http://x", username="a", password="b",
                                    points=("allowlist_version",)).points == ("allowlist_version",)
