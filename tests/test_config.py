"""Box config: validated once at load; every error names file, key, value and expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from core.errors import ConfigError

GOOD = """
[box]
id = "pole-0017"
site = "lixia-01"
hardware = "rk3568"
data_dir = "var/pole"

[buffer]
max_bytes = "64MB"
ttl_s = 86400

[uplink]
kind = "mqtt"
batch_size = 500

[uplink.mqtt]
host = "127.0.0.1"
port = 1883

[health]
listen = "127.0.0.1:0"

[[bus]]
name = "rs485-1"
kind = "rtu"
port = "/dev/ttyUSB0"
baudrate = 19200

[[bus]]
name = "gw"
kind = "tcp"
host = "10.0.0.9"
port = 5020

[[device]]
name = "wxt-1"
bus = "rs485-1"
profile = "vaisala_wxt530"
unit = 1
poll_s = 2

[[device]]
name = "wxt-2"
bus = "gw"
profile = "vaisala_wxt530"
unit = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "box.toml"
    p.write_text(text)
    return p


def test_good_config_loads_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.box.id == "pole-0017"
    assert cfg.box.data_dir == tmp_path / "var/pole"          # relative to the config file
    assert cfg.buffer.max_bytes == 64_000_000
    assert cfg.buffer.path == tmp_path / "var/pole/buffer.db"
    assert cfg.uplink.kind == "mqtt" and cfg.uplink.mqtt.host == "127.0.0.1"
    assert cfg.health.port == 0
    assert [b.kind for b in cfg.buses] == ["rtu", "tcp"]
    assert cfg.buses[0].timeout_s == 0.2                      # short by default, not pymodbus's 3 s
    assert cfg.devices[0].poll_s == 2.0 and cfg.devices[0].profile.points


BAD = [
    # (replace this, with this, key named, words expected in the message)
    ('id = "pole-0017"', 'id = "pole 17!"', "box.id", "1-64 chars"),
    ('max_bytes = "64MB"', 'max_bytes = "lots"', "buffer.max_bytes", "256MB"),
    ('max_bytes = "64MB"', 'max_bytes = 1000', "buffer.max_bytes", "at least 1MiB"),
    ('kind = "mqtt"', 'kind = "carrier-pigeon"', "uplink.kind", "one of http, mqtt"),
    ("port = 1883", "port = 70000", "uplink.mqtt.port", "from 1 to 65535"),
    ('listen = "127.0.0.1:0"', 'listen = "nowhere"', "health.listen", "HOST:PORT"),
    ("baudrate = 19200", 'baudrate = "fast"', "bus[0].baudrate", "an integer"),
    ('kind = "rtu"', 'kind = "rs232"', "bus[0].kind", "one of rtu, tcp"),
    ('bus = "rs485-1"', 'bus = "rs485-9"', "device[0].bus", "one of gw, rs485-1"),
    ("unit = 1\npoll_s = 2", "unit = 300\npoll_s = 2", "device[0].unit", "from 1 to 247"),
    ("poll_s = 2", "poll_s = -1", "device[0].poll_s", "from 0.01 to 86400"),
    ("poll_s = 2", "poll_s = 2\npoll_ms = 5", "device[0].poll_ms", "unknown key"),
    ('name = "wxt-2"', 'name = "wxt-1"', "device[1].name", "duplicate device name"),
]


@pytest.mark.parametrize("old,new,key,words", BAD, ids=[b[2] for b in BAD])
def test_bad_values_name_file_key_value_and_expectation(tmp_path: Path, old: str, new: str, key: str,
                                                        words: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and f"[{key}]" in msg and words in msg, msg


def test_two_slaves_with_one_address_on_one_bus_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace('bus = "gw"', 'bus = "rs485-1"')
    with pytest.raises(ConfigError, match=r"device\[1\].unit.*already used by device 'wxt-1'"):
        load_config(write(tmp_path, text))


def test_missing_section_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[box\]: required key is missing"):
        load_config(write(tmp_path, '[uplink]\nkind = "http"\n'))
    # No [uplink]: HTTP to the enrolled server, the embedded default.
    assert load_config(write(tmp_path, '[box]\nid = "a"\n')).uplink.kind == "http"
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[box\nid = 1"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_check_config_cli_prints_a_clear_error_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 1883", "port = 0"))
    r = subprocess.run([sys.executable, "-m", "quanedge", "agent", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "[uplink.mqtt.port]" in r.stderr and "got 0" in r.stderr and "Traceback" not in r.stderr
    ok = subprocess.run([sys.executable, "-m", "quanedge", "agent", "check-config", str(write(tmp_path, GOOD))],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "box pole-0017" in ok.stdout
