"""The supervisor's pure parts: the health judgement, the settings it reads, and the child it runs
(a real process from the current slot, restarted when it dies, gone when the supervisor dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import free_port, health, start_sim, stop
from updater_contract import ContractServer
from updater_support import box_config, wait_until, wired_source

from agent.updater.launcher import Supervisor, judge_health, read_settings
from agent.updater.slots import Slots
from core.errors import ConfigError


@pytest.mark.parametrize("doc, ok, says", [
    ({"devices": {"a": {"online": True}}, "uplink": {"sent": 3}}, True, "healthy"),
    ({"devices": {"a": {"online": True}, "b": {"online": False}}, "uplink": {"sent": 3}}, False, "not online: b"),
    ({"devices": {"a": {"online": None}}, "uplink": {"sent": 3}}, False, "not online: a"),
    ({"devices": {"cam": {"online": None, "listening": True}}, "uplink": {"sent": 1}}, True, "healthy"),
    ({"devices": {}, "uplink": {"sent": 0, "last_error": "refused"}}, False, "sent nothing yet (last error: refused)"),
    ({"devices": {}, "uplink": {"sent": True}}, False, "sent nothing"),
    (["not", "a", "dict"], False, "without a JSON object"),
])
def test_health_needs_devices_online_and_something_sent(doc, ok: bool, says: str) -> None:
    healthy, summary = judge_health(doc)
    assert healthy is ok and says in summary


def write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(f'[box]\nid = "b1"\ndata_dir = "data"\n{extra}\n[future_section]\nnew_key = 1\n')
    return path


def test_settings_read_only_what_the_supervisor_needs(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    s = read_settings(write(tmp_path, '[health]\nlisten = "0.0.0.0:9200"\n[updater]\nenabled = true\n'
                                      'trusted_root = "root.json"\n'))
    assert (s.health_host, s.health_port) == ("127.0.0.1", 9200)
    assert s.updater.root == tmp_path / "data" / "updater" and s.updater.enabled


@pytest.mark.parametrize("health", ['[health]\nlisten = "127.0.0.1:0"\n', '[health]\nenabled = false\n'])
def test_the_supervisor_needs_a_fixed_health_port(tmp_path: Path, health: str) -> None:
    with pytest.raises(ConfigError, match=r"\[health.listen\].*fixed port"):
        read_settings(write(tmp_path, health))


def test_the_supervisor_starts_each_slot_through_the_cli_its_bundle_has(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    settings = read_settings(write(tmp_path, '[health]\nlisten = "127.0.0.1:9200"\n[updater]\nenabled = true\n'
                                             'trusted_root = "root.json"\n'))
    sup = Supervisor(settings, tmp_path / "updater")
    new, old = tmp_path / "new", tmp_path / "old"
    (new / "quanedge").mkdir(parents=True)
    (new / "quanedge" / "__main__.py").write_text("")
    (old / "agent").mkdir(parents=True)
    assert sup._agent_main(new) == ("-m", "quanedge")
    assert sup._agent_main(old) == ("-m", "agent.cli")  # a bundle from before the root CLI: a rollback still starts
    assert Supervisor(settings, tmp_path / "updater", agent_main=("x.py",))._agent_main(new) == ("x.py",)


def test_the_supervisor_restarts_a_dead_agent_and_takes_it_along_when_killed(tmp_path: Path) -> None:
    sim, info = start_sim(tmp_path, "--tcp", "0")
    server = ContractServer()
    launcher = None
    try:
        hport = free_port()
        (tmp_path / "root.json").write_text("{}")
        config = box_config(tmp_path, box="sup-box", server=server, trusted_root=tmp_path / "root.json",
                            sim_port=info["tcp_port"], health_port=hport)
        Slots(tmp_path / "updater").bootstrap(wired_source(tmp_path / "src"), "0.1.0")
        with open(tmp_path / "launcher.log", "ab") as log:  # the child has its own copy of the descriptor
            launcher = subprocess.Popen([sys.executable, "-m", "agent.updater.launcher", "--config", str(config)],
                                        stderr=log)
        pid = launcher.pid

        def child() -> int | None:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            return int(kids[0]) if kids else None

        first = wait_until(lambda: child() and health(hport)["uplink"]["sent"] > 0 and child(), 60, "agent up")
        cwd = os.readlink(f"/proc/{first}/cwd")
        assert cwd == str((tmp_path / "updater" / "versions" / "0.1.0").resolve())  # runs from its slot
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: (c := child()) and c != first and health(hport)["uplink"]["sent"] > 0 and c,
                            60, "the agent restarted")
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(30)
        wait_until(lambda: not Path(f"/proc/{second}").exists() or
                   Path(f"/proc/{second}/stat").read_text().split()[2] == "Z", 10, "the child to die with it")
    finally:
        stop(launcher)
        stop(sim)
        server.close()
