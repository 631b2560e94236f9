"""`quanedge sim <model>` for the non-Modbus devices: each simulator runs as its own process, over its
real transport, and is read with the real driver (hil_tests/sims/cli.py, via its __main__ dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import DeviceException, DeviceTimeout
from core.reading import Quality, Reading

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hil_tests.sims.cli"]
STAGES = ({1, 5}, {2, 6}, {3, 7}, {4, 8})


@pytest.fixture
async def sims(tmp_path: Path):
    """Starts simulator processes; whatever a test did not stop is killed afterwards."""
    started: list[asyncio.subprocess.Process] = []

    async def start(name: str, *args: str) -> tuple[asyncio.subprocess.Process, dict]:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(*CLI, name, *args, stdout=asyncio.subprocess.PIPE,
                                                        stderr=err, cwd=ROOT, start_new_session=True)
        started.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, f"{name} did not start: {log.read_text()[-2000:]}"
        return proc, json.loads(line)

    yield start
    for proc in started:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def stop_cleanly(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    assert proc.stdout is not None and await proc.stdout.read() == b""  # one JSON line, nothing more


async def control(port: int, msg: dict) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(json.dumps(msg).encode() + b"\n")
        await writer.drain()
        return json.loads(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()


async def eventually(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- WXT530 ASCII / NMEA on a pty ----------------------------------------------------------------
@pytest.mark.parametrize("mode, sig", [("ascii", signal.SIGTERM), ("nmea", signal.SIGINT)])
async def test_wxt_serial_is_polled_on_its_pty(sims, mode: str, sig: int) -> None:
    from drivers.wxt_serial.driver import WxtSerialDriver
    from drivers.wxt_serial.settings import WxtSerialSettings

    proc, info = await sims("wxt-serial", "--mode", mode, "--seed", "5", "--control", "0")
    assert info["device"] == "wxt530" and info["protocol"] == mode and info["pty"].startswith("/dev/")
    baud = int(info["line"].split()[0])
    assert baud == (19200 if mode == "ascii" else 4800)
    drv = WxtSerialDriver(WxtSerialSettings(name="wxt1", port=info["pty"], mode=mode, baudrate=baud, timeout_s=0.5,
                                            quiet_s=0.15, points=("Dm", "Sm", "Ta", "Ua", "Pa", "Rc")))
    await drv.open()
    try:
        r = {x.point: x for x in await drv.read()}
        assert all(x.quality is Quality.GOOD for x in r.values()), r
        pa_hpa = r["Pa"].value * (1000 if mode == "nmea" else 1)  # NMEA XDR carries bar
        assert -40 < r["Ta"].value < 60 and r["Ta"].unit == "degC"
        assert 0 <= r["Ua"].value <= 100 and 900 < pa_hpa < 1100 and 0 <= r["Sm"].value < 60
        assert (await control(info["control_port"], {"fault": "silence"})) == {"ok": True, "fault": "silence"}
        with pytest.raises(DeviceTimeout):
            await drv.read(["Ta"])
        assert (await control(info["control_port"], {"fault": "none"}))["ok"]
        (ta,) = await drv.read(["Ta"])
        assert ta.quality is Quality.GOOD
        status = await control(info["control_port"], {"status": True})
        assert status["ok"] and status["requests"] == 3
        bad = await control(info["control_port"], {"fault": "melted"})
        assert not bad["ok"] and "unknown fault 'melted'" in bad["error"]
    finally:
        await drv.close()
    await stop_cleanly(proc, sig)


# --- NTCIP 1202 over SNMP/UDP --------------------------------------------------------------------
async def test_ntcip_controller_is_read_and_commanded_over_snmp(sims) -> None:
    from drivers.ntcip.driver import NtcipDriver
    from drivers.ntcip.settings import NtcipSettings

    proc, info = await sims("ntcip", "--port", "0", "--pattern", "2", "--time-unit", "ds", "--seed", "3",
                            "--control", "0")
    assert info["device"] == "ntcip1202" and info["udp_port"] > 0
    drv = NtcipDriver(NtcipSettings(name="asc1", host="127.0.0.1", port=info["udp_port"], timeout_s=1.0, retries=1,
                                    detectors=(1, 2), patterns=(2, 3), pattern_time_unit="ds",
                                    allowed_patterns=frozenset({3})))
    await drv.open()
    try:
        r = {x.point: x for x in await drv.read()}
        assert r["coord_pattern"].text == "pattern 2" and r["local_free"].text == "notFree"
        assert (r["pattern2_cycle"].value, r["pattern2_offset"].value) == (120.0, 36.0)  # 1200 ds decoded
        assert (r["pattern3_cycle"].value, r["pattern3_offset"].value) == (80.0, 10.0)
        colors = {p: r[f"phase{p}_color"].text for p in range(1, 9)}
        assert set(colors.values()) <= {"red", "yellow", "green"}
        running = {p for p, c in colors.items() if c != "red"}
        assert any(running <= stage for stage in STAGES), colors  # one stage of the dual ring at a time
        assert all(r[f"det{d}_volume"].quality is Quality.GOOD for d in (1, 2))
        assert (await control(info["control_port"], {"detector": 1, "code": 212}))["ok"]
        (occ,) = await drv.read(["det1_occupancy"])
        assert occ.quality is Quality.MISSING and occ.text == "open loop fault"
        await drv.write("set_pattern", {"pattern": 3})
        (pattern,) = await drv.read(["coord_pattern"])
        assert pattern.text == "pattern 3"
        assert (await control(info["control_port"], {"status": True}))["sets"] == 1
    finally:
        await drv.close()
    await stop_cleanly(proc)


# --- GB/T 20999 over TCP -------------------------------------------------------------------------
async def test_gbt20999_controller_is_read_reports_stages_and_takes_plans(sims) -> None:
    from drivers.gbt20999.driver import GbtDriver
    from drivers.gbt20999.settings import GbtSettings

    proc, info = await sims("gbt20999", "--plan", "2", "--mode", "local_actuated", "--time-factor", "50",
                            "--control", "0")
    assert info["device"] == "gbt20999" and info["mode"] == "local_actuated"
    reports: list[Reading] = []
    drv = GbtDriver(GbtSettings(name="tsc1", host="127.0.0.1", port=info["tcp_port"], timeout_s=0.5, plans=(2,),
                                detectors=(1,), allowed_plans=frozenset({3})), on_report=reports.append)
    await drv.open()
    try:
        r = {x.point: x for x in await drv.read()}
        assert r["run_mode"].value == 0x22 and r["run_mode"].text == "local_actuated"
        assert r["current_plan"].value == 2.0 and r["current_stage"].value in (1.0, 2.0, 3.0, 4.0)
        assert (r["plan2_cycle"].value, r["plan2_offset"].value) == (100.0, 10.0)
        assert r["det1_flow"].quality is Quality.GOOD and r["det1_speed"].unit == "km/h"
        # 50x: the 100 s cycle takes 2 s of wall time, so stage changes are reported unsolicited
        await eventually(lambda: len({x.value for x in reports}) >= 2, 5, "two stage reports")
        assert all(x.point == "current_stage" and x.value in (1.0, 2.0, 3.0, 4.0) for x in reports)
        await drv.write("set_plan", {"plan": 3})
        (plan,) = await drv.read(["current_plan"])
        assert plan.value == 3.0
        assert (await control(info["control_port"], {"fault": "silence"}))["ok"]
        with pytest.raises(DeviceTimeout):
            await drv.read(["run_mode"])
    finally:
        await drv.close()
    await stop_cleanly(proc)


# --- plate camera pushing to a receiver ----------------------------------------------------------
async def test_plate_camera_pushes_to_the_receiver_and_keeps_records_offline(sims) -> None:
    from drivers.plate_camera.driver import PlateReceiverDriver
    from drivers.plate_camera.settings import PlateCameraSettings

    got: list[Reading] = []
    port = free_port()
    from drivers.push_auth import PushCredential

    rx = PlateReceiverDriver(PlateCameraSettings(name="gate1", listen_host="127.0.0.1", listen_port=port,
                                                 allow_list=frozenset({"鲁A12345"}),
                                                 cameras=(PushCredential("cam-T", "cam-T-secret"),)),
                             got.append)
    await rx.open()
    try:
        url = f"http://cam-T:cam-T-secret@127.0.0.1:{port}/devicemanagement/php/plateresult.php"  # Basic auth
        proc, info = await sims("plate-camera", "--push-url", url, "--interval", "0.2", "--plate", "鲁A12345",
                                "--plate", "京C11111", "--heartbeat-s", "0.2", "--serialno", "cam-T",
                                "--seed", "4", "--control", "0")
        assert info["push_url"] == url.replace("cam-T-secret", "***") and info["serialno"] == "cam-T"
        await eventually(lambda: len(got) >= 3, 10, "three pushed cars")
        events = [json.loads(x.text) for x in got]
        assert all(e["camera"] == "cam-T" and e["plate"] in ("鲁A12345", "京C11111") for e in events)
        assert all(e["open"] is (e["plate"] == "鲁A12345") for e in events)
        (online,) = await rx.read(["online.cam-T"])
        assert online.value == 1.0  # heartbeats arrive
        ctl = info["control_port"]
        assert await control(ctl, {"plate": "鲁A12345"}) == {"ok": True, "result": "opened"}
        assert await control(ctl, {"plate": "京C11111", "confidence": 99}) == {"ok": True, "result": "refused"}

        await rx.close()  # the receiver is down: the camera keeps its records
        assert await control(ctl, {"plate": "鲁A12345"}) == {"ok": True, "result": "offline"}
        await rx.open()   # same port: the camera re-sends what it kept
        await eventually(lambda: any(json.loads(x.text)["offline"] for x in got), 10, "an offline record re-sent")
        await control(ctl, {"push_offline": True})
        assert (await control(ctl, {"status": True}))["offline"] == 0
        offline = [json.loads(x.text) for x in got if json.loads(x.text)["offline"]]
        assert all(not e["open"] for e in offline)  # offline records are logged, never open the barrier
        await stop_cleanly(proc)
    finally:
        await rx.close()


# --- access controller over HTTP (digest) --------------------------------------------------------
async def test_access_controller_is_commanded_and_pushes_events(sims) -> None:
    from drivers.access_controller.driver import AccessControllerDriver
    from drivers.access_controller.settings import AccessControllerSettings
    from drivers.push_auth import PushCredential

    proc, info = await sims("access-controller", "--card", "1001", "--no-permission", "2002", "--password", "s3cret",
                            "--doors", "2", "--control", "0")
    assert info["url"] == f"http://127.0.0.1:{info['tcp_port']}" and info["doors"] == 2
    events: list[Reading] = []
    drv = AccessControllerDriver(AccessControllerSettings(
        name="acs1", url=info["url"], username="admin", password="s3cret", doors=(1, 2), allow_commands=("open",),
        listen_host="127.0.0.1", listen_port=0,
        event_senders=(PushCredential("acs1", "acs-push-secret", "controller"),)),
        on_event=events.append)
    await drv.open()
    try:
        ctl = info["control_port"]
        assert (await control(ctl, {"event_url": f"http://controller:acs-push-secret@127.0.0.1:{drv.listen_port}/"}))["ok"]
        await drv.write("open", {"door": 1})
        r = {x.point: x.value for x in await drv.read()}
        assert (r["door1_lock"], r["door1_state"], r["door2_lock"]) == (1.0, 4.0, 0.0)
        assert await control(ctl, {"swipe": "1001", "door": 2}) == {"ok": True, "event": "valid_card"}
        assert await control(ctl, {"swipe": "2002"}) == {"ok": True, "event": "no_permission"}
        assert await control(ctl, {"face": False}) == {"ok": True, "event": "face_fail"}
        assert (await control(ctl, {"swipe": "1001", "door": 3}))["ok"] is False  # only 2 doors
        (lock2,) = await drv.read(["door2_lock"])
        assert lock2.value == 1.0  # the valid card unlocked door 2
        names = [json.loads(e.text)["event"] for e in events]
        assert names == ["remote_open", "valid_card", "no_permission", "face_fail"]
    finally:
        await drv.close()
    wrong = AccessControllerDriver(AccessControllerSettings(name="acs1", url=info["url"], username="admin",
                                                            password="hik12345", allow_commands=("open",)))
    await wrong.open()
    try:
        with pytest.raises(DeviceException) as err:
            await wrong.write("open", {})
        assert err.value.code == 401
    finally:
        await wrong.close()
    await stop_cleanly(proc)


# --- bad options and a cheap import --------------------------------------------------------------
def test_bad_options_give_one_line_naming_the_option_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = [
            (["ntcip", "--pattern", "9"], "--pattern must be one of 1, 2, 3, got 9"),
            (["wxt-serial", "--mode", "modbus"], "--mode must be ascii or nmea"),
            (["plate-camera"], "--push-url is required"),
            (["gbt20999", "--port", str(busy.getsockname()[1])], "--port: cannot listen"),
        ]
        for args, words in cases:
            out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=20, cwd=ROOT)
            assert out.returncode == 2, (args, out.stderr)
            assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
            assert out.stderr.startswith("error: ") and words in out.stderr, out.stderr


def test_importing_the_commands_stays_cheap() -> None:
    probe = ("import sys, hil_tests.sims.cli as c; "
             "assert callable(c.device_simulators()['ntcip']); "
             # the kinds' settings load (stdlib only)
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('pysnmp', 'httpx', 'serial', 'pyasn1', 'pymodbus', 'websockets', 'ocpp')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=20, cwd=ROOT,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_quanedge_sim_lists_and_runs_every_device_simulator() -> None:
    """The installer's entry point (`quanedge sim ...`) carries the same commands, bad options included."""
    quanedge = [sys.executable, "-m", "quanedge", "sim"]
    listing = subprocess.run([*quanedge, "--help"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert listing.returncode == 0, listing.stderr
    for name in ("wxt530", "modbus", "fleet", "wxt-serial", "ntcip", "gbt20999", "plate-camera", "access-controller"):
        assert name in listing.stdout, name
    out = subprocess.run([*quanedge, "ntcip", "--pattern", "9"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2 and "--pattern must be one of 1, 2, 3, got 9" in out.stderr, out.stderr
