"""[[device]] kinds: every kind parses into its typed config and builds its driver; every bad value errors precisely."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from agent.config import DeviceConfig, load_config
from agent.devices import ManagedDriver, build_devices, line_of, listens
from core.errors import ConfigError
from drivers.base import Driver
from drivers.registry import KINDS

HEAD = """
[box]
id = "gate-box"
data_dir = "var"

[uplink]
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"

[health]
listen = "127.0.0.1:9108"

[[bus]]
name = "rs485-1"
kind = "rtu"
port = "/dev/ttyUSB0"
"""

DEVICES = """
[[device]]
name = "wxt-modbus"
bus = "rs485-1"
profile = "vaisala_wxt530"

[[device]]
name = "wxt-ascii"
kind = "wxt_serial"
port = "/dev/ttyUSB1"
mode = "ascii"
baudrate = 19200
parity = "N"
points = ["Ta", "Ua", "Pa", "Rc"]
allow_commands = ["reset_rain"]

[[device]]
name = "junction-7"
kind = "ntcip"
host = "10.20.0.7"
port = 161
community = "public"
pattern_time_unit = "ds"
detectors = [1, 2]
patterns = [1, 2, 3]
allowed_patterns = [1, 2, 3]
allow_commands = ["set_pattern"]
poll_s = 0.5

[[device]]
name = "tsc-12"
kind = "gbt20999"
host = "10.20.0.12"
port = 5000
controller_id = 12
allowed_plans = [1, 2]
allowed_modes = ["centre_manual", 0x21]
allow_commands = ["set_plan"]

[[device]]
name = "north-gate"
kind = "plate_camera"
listen = "0.0.0.0:8081"
allow_list = "plates.txt"
deny_list = ["鲁B66666"]
cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]
relay = 0
allow_commands = ["allow_plate", "revoke_plate"]
[device.rules]
allow_prefixes = ["鲁A8"]
min_confidence = 85

[[device]]
name = "lobby-door"
kind = "access_controller"
url = "http://192.168.1.64"
username = "admin"
password = "hik12345"
doors = [1, 2]
listen = "0.0.0.0:8082"
event_secret = "acs-push-secret"
allow_commands = ["open", "always_close"]
"""


def write(tmp_path: Path, devices: str = DEVICES, head: str = HEAD) -> Path:
    (tmp_path / "plates.txt").write_text("# residents\n鲁A12345\n鲁 A-67890  # visitor\n\n", encoding="utf-8")
    p = tmp_path / "box.toml"
    p.write_text(head + devices, encoding="utf-8")
    return p


def test_every_kind_parses_into_its_typed_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path))
    kinds = {d.name: d for d in cfg.devices}
    assert [d.kind for d in cfg.devices] == ["modbus", "wxt_serial", "ntcip", "gbt20999", "plate_camera",
                                            "access_controller"]
    assert isinstance(kinds["wxt-modbus"], DeviceConfig) and kinds["wxt-modbus"].bus == "rs485-1"
    wxt = kinds["wxt-ascii"]
    assert (wxt.port, wxt.mode, wxt.baudrate, wxt.points, wxt.allow_commands) == (
        "/dev/ttyUSB1", "ascii", 19200, ("Ta", "Ua", "Pa", "Rc"), ("reset_rain",))
    asc = kinds["junction-7"]
    assert asc.pattern_time_unit == "ds" and asc.allowed_patterns == {1, 2, 3} and asc.poll_s == 0.5
    assert kinds["tsc-12"].allowed_modes == {0x15, 0x21} and kinds["tsc-12"].controller_id == 12
    gate = kinds["north-gate"]
    assert gate.allow_list == {"鲁A12345", "鲁A67890"}           # from the file, normalised
    assert gate.deny_list == {"鲁B66666"} and gate.allow_prefixes == ("鲁A8",) and gate.min_confidence == 85
    assert (gate.listen_host, gate.listen_port, gate.poll_s) == ("0.0.0.0", 8081, 30.0)
    acs = kinds["lobby-door"]
    assert acs.doors == (1, 2) and acs.listen_port == 8082 and acs.auth == "digest"
    assert "hik12345" not in repr(acs)
    assert cfg.device("tsc-12") is kinds["tsc-12"] and cfg.device("nope") is None


def test_wxt_nmea_defaults_to_4800_and_optional_keys_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[[device]]\nname = "w"\nkind = "wxt_serial"\nport = "/dev/ttyS1"\n'
                                      'mode = "nmea"\n'
                                      '[[device]]\nname = "g"\nkind = "plate_camera"\n'
                                      'cameras = [{ serial = "c1", sources = ["10.0.0.7"] }]\n'))
    w, g = cfg.devices
    assert w.baudrate == 4800 and w.allow_commands == () and w.timeout_s == 1.0
    assert g.allow_list == frozenset() and g.listen_port == 8080 and g.min_confidence == 80
    assert g.listen_host == "127.0.0.1"  # loopback unless configured


async def test_every_kind_builds_its_driver_on_its_own_line(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path))
    async def emit(readings: list) -> None: ...
    async with AsyncExitStack() as stack:
        devices = build_devices(cfg, emit, None, stack)
        assert set(devices.drivers) == {d.name for d in cfg.devices}
        assert all(isinstance(d, ManagedDriver) and isinstance(d.inner, Driver) for d in devices.drivers.values())
        assert [s.bus for s in devices.schedulers] == ["rs485-1", "wxt_serial:wxt-ascii", "ntcip:junction-7",
                                                      "gbt20999:tsc-12", "plate_camera:north-gate",
                                                      "access_controller:lobby-door"]
        assert sorted(lst.name for lst in devices.listeners) == ["lobby-door", "north-gate"]
        assert sorted(s.name for s in devices.sinks) == ["lobby-door", "north-gate", "tsc-12"]  # GB/T reports too
        assert not devices.drivers["north-gate"].owns_open and devices.drivers["junction-7"].owns_open
        gate = devices.drivers["north-gate"].inner
        assert gate.rules.allow == {"鲁A12345", "鲁A67890"} and gate.settings.relay == 0
    assert [line_of(d) for d in cfg.devices][0] == "rs485-1" and listens(cfg.devices[4])


def test_every_kind_declares_its_commands_once_for_config_and_driver() -> None:
    """A kind's descriptor lists the commands allow_commands may name; its driver accepts exactly those."""
    import importlib

    assert set(KINDS) >= {"modbus", "wxt_serial", "ntcip", "gbt20999", "plate_camera", "access_controller"}
    for name, kind in KINDS.items():
        if name == "modbus":  # a Modbus device's commands come from its profile (data)
            continue
        module = importlib.import_module(f"drivers.{name}.driver")
        drivers = [c for c in vars(module).values()
                   if isinstance(c, type) and c.__module__ == module.__name__ and "COMMANDS" in vars(c)]
        assert len(drivers) == 1, (name, drivers)
        assert tuple(drivers[0].COMMANDS) == kind.commands, name
    from drivers.gbt20999.driver import _COMMANDS as GBT
    from drivers.ocpp_charger.commands import ARGS as OCPP_ARGS

    assert tuple(GBT) == KINDS["gbt20999"].commands and set(OCPP_ARGS) == set(KINDS["ocpp_charger"].commands)


BAD = [
    # (replace this, with this, key named, words expected in the message)
    ('kind = "wxt_serial"', 'kind = "wxt_modbus"', "device[1].kind", "one of access_controller, gbt20999, modbus"),
    ('mode = "ascii"', 'mode = "binary"', "device[1].mode", "one of ascii, nmea"),
    ("baudrate = 19200", "baudrate = 14400", "device[1].baudrate", "one of 1200, 2400"),
    ('parity = "N"', 'parity = "X"', "device[1].parity", "one of E, N, O"),
    ('points = ["Ta", "Ua", "Pa", "Rc"]', 'points = ["Tx"]', "device[1].points", "WXT field codes"),
    ('allow_commands = ["reset_rain"]', 'allow_commands = ["format_disk"]', "device[1].allow_commands",
     "one of reset_rain, set_polled_mode"),
    ('port = "/dev/ttyUSB1"', 'port = "/dev/ttyUSB0"', "device[1].port", "already used by [[bus]] 'rs485-1'"),
    ('host = "10.20.0.7"', 'host = "10.20.0.7 oops"', "device[2].host", "a host name or IP address"),
    ('pattern_time_unit = "ds"', 'pattern_time_unit = "ms"', "device[2].pattern_time_unit", "one of ds, s"),
    ("allowed_patterns = [1, 2, 3]", "allowed_patterns = [1, 254]", "device[2].allowed_patterns", "from 1 to 253"),
    ("detectors = [1, 2]", "detectors = [1, 1]", "device[2].detectors", "distinct numbers"),
    ("poll_s = 0.5", "poll_s = 0", "device[2].poll_s", "from 0.05 to 86400"),
    ('community = "public"', 'community = ""', "device[2].community", "non-empty string"),
    ("port = 5000", "port = 0", "device[3].port", "from 1 to 65535"),
    ("controller_id = 12", "controller_id = -1", "device[3].controller_id", "from 0 to 4294967295"),
    ('allowed_modes = ["centre_manual", 0x21]', 'allowed_modes = ["warp"]', "device[3].allowed_modes", "centre_manual"),
    ('allow_commands = ["set_plan"]', 'allow_commands = ["set_pattern"]', "device[3].allow_commands",
     "one of set_plan, set_stage, set_mode"),
    ('listen = "0.0.0.0:8081"', 'listen = "8081"', "device[4].listen", "HOST:PORT"),
    ('listen = "0.0.0.0:8081"', 'listen = "0.0.0.0:9108"', "device[4].listen", "already used by [health] listen"),
    ('allow_list = "plates.txt"', 'allow_list = "missing.txt"', "device[4].allow_list", "one plate per line"),
    ('allow_list = "plates.txt"', 'allow_list = 5', "device[4].allow_list", "or \"plates.txt\""),
    ('deny_list = ["鲁B66666"]', 'deny_list = ["--"]', "device[4].deny_list", "1-32 characters"),
    ("relay = 0", "relay = 7", "device[4].relay", "from 0 to 3"),
    ("min_confidence = 85", "min_confidence = 101", "device[4].rules.min_confidence", "from 0 to 100"),
    ("min_confidence = 85", "min_confidence = 85\nmax_speed = 3", "device[4].rules.max_speed", "unknown key"),
    ('url = "http://192.168.1.64"', 'url = "ftp://192.168.1.64"', "device[5].url", "base URL"),
    ('password = "hik12345"', 'password = ""', "device[5].password", "the device password"),
    ("doors = [1, 2]", "doors = [0]", "device[5].doors", "from 1 to 64"),
    ("doors = [1, 2]", "doors = []", "device[5].doors", "at least one door"),
    ('listen = "0.0.0.0:8082"', 'listen = "127.0.0.1:8081"', "device[5].listen", "already used by device 'north-gate'"),
    ('allow_commands = ["open", "always_close"]', 'allow_commands = ["explode"]', "device[5].allow_commands",
     "one of open, close, always_open, always_close, resume"),
    ('username = "admin"', 'username = "admin"\nbus = "rs485-1"', "device[5].bus", "unknown key"),
    # issue 9: a receiver must authenticate its senders; an empty or name-only list is an error
    ('cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
     'cameras = ["fe71e106-57263272"]', "device[4].cameras", "a serial alone is not authentication"),
    ('cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
     'cameras = []', "device[4].cameras", "an empty list would let anyone open the gate"),
    ('cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
     'cameras = [{ serial = "fe71e106-57263272" }]', "device[4].cameras[0].secret", "a name alone is not"),
    ('cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
     'cameras = [{ serial = "x", secret = "short" }]', "device[4].cameras[0].secret", "8-256 printable"),
    ('cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
     'cameras = [{ serial = "x", sources = ["10.0.0.300"] }]', "device[4].cameras[0].sources", "IP addresses"),
    ('event_secret = "acs-push-secret"\n', '', "device[5].event_secret", "event_sources"),
]


@pytest.mark.parametrize("old,new,key,words", BAD, ids=[f"{b[2]}:{b[1][:20]}" for b in BAD])
def test_bad_values_name_file_key_value_and_expectation(tmp_path: Path, old: str, new: str, key: str,
                                                        words: str) -> None:
    assert old in DEVICES, old
    path = write(tmp_path, DEVICES.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and f"[{key}]" in msg and words in msg, msg


def test_two_serial_devices_cannot_share_a_port_even_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "by-id-wxt"
    link.symlink_to("/dev/ttyUSB1")
    extra = f'[[device]]\nname = "wxt-2"\nkind = "wxt_serial"\nport = "{link}"\n'
    with pytest.raises(ConfigError, match=r"device\[6\]\.port.*already used by device 'wxt-ascii'"):
        load_config(write(tmp_path, DEVICES + extra))


def test_a_bad_line_in_the_plate_file_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / "plates.txt").write_text("鲁A12345\n" + "X" * 40 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"device\[4\]\.allow_list.*line of plates.txt: 2 is not a plate"):
        load_config(path)


def test_modbus_stays_the_default_and_keeps_its_rules(tmp_path: Path) -> None:
    twice = '[[device]]\nname = "a"\nbus = "rs485-1"\nprofile = "vaisala_wxt530"\n' * 1 + \
            '[[device]]\nname = "b"\nkind = "modbus"\nbus = "rs485-1"\nprofile = "vaisala_wxt530"\n'
    with pytest.raises(ConfigError, match=r"device\[1\]\.unit.*already used by device 'a'"):
        load_config(write(tmp_path, twice))
    with pytest.raises(ConfigError, match=r"device\[0\]\.port.*unknown key"):
        load_config(write(tmp_path, '[[device]]\nname = "a"\nbus = "rs485-1"\nprofile = "vaisala_wxt530"\nport = 1\n'))


# --- one rule, one place: the settings class refuses the same value from the file and from code ---
def _refused_by_both(tmp_path: Path, old: str, new: str, key: str, build) -> None:
    from drivers.settings_rules import SettingError

    with pytest.raises(SettingError) as direct:  # code that builds the settings itself: a ValueError
        build()
    assert isinstance(direct.value, ValueError) and direct.value.key == key
    path = write(tmp_path, DEVICES.replace(old, new, 1))
    with pytest.raises(ConfigError) as loaded:
        load_config(path)
    err = loaded.value
    assert (err.file, err.key.split(".", 1)[1]) == (str(path), key), str(err)
    assert direct.value.message in str(err) and err.expected == direct.value.expected  # the same rule's words


def test_a_plate_camera_rule_lives_once_in_its_settings(tmp_path: Path) -> None:
    from drivers.plate_camera.settings import PlateCameraSettings

    _refused_by_both(
        tmp_path, 'cameras = [{ serial = "fe71e106-57263272", secret = "cam-secret-1", sources = ["192.168.1.100"] }]',
        "cameras = []", "cameras", lambda: PlateCameraSettings(name="north-gate", cameras=()))


def test_an_access_controller_rule_lives_once_in_its_settings(tmp_path: Path) -> None:
    from drivers.access_controller.settings import AccessControllerSettings

    _refused_by_both(
        tmp_path, 'event_secret = "acs-push-secret"\n', "", "event_secret",
        lambda: AccessControllerSettings(name="lobby-door", url="http://192.168.1.64", username="admin",
                                         password="hik12345", listen_host="0.0.0.0", listen_port=8082))
