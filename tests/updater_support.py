"""Loopback services for the updater tests: a TUF repository server with HTTP Range and faults,
bundle builders (with the runtime wiring the updater needs) and a box config. The check-in
contract server is in updater_contract.py.

Everything is real: HTTP over sockets, python-tuf metadata signed with Ed25519 keys, tar.gz
bundles built from this repository's own packages.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from updater_contract import ContractServer

from agent.enroll import Credential, save_credential
from agent.updater.bundle import PACKAGES, build_bundle
from firmware_manifests.repository import Repository
from firmware_manifests.serve import RepoRequestHandler, RepoServer

REPO_ROOT = Path(__file__).resolve().parents[1]
HW = "qe-box-v1"
_RANGE = re.compile(r"^bytes=(\d+)-$")


# --- TUF repository over HTTP with Range and faults ---------------------------------------------
@dataclass
class Faults:
    cut_after: int | None = None      # drop the connection after this many body bytes (once per cut)
    cuts_left: int = 0
    extra: bytes = b""                # appended to every target body (endless data)
    targets_down: bool = False        # every target request answers 503
    ignore_range: bool = False        # answer 200 with the whole file, like a server without Range
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)
    lock: threading.Lock = field(default_factory=threading.Lock)


def range_handler(faults: Faults) -> type[RepoRequestHandler]:
    class RangeHandler(RepoRequestHandler):
        protocol_version = "HTTP/1.1"

        def send_head(self):
            if not self.path.startswith("/targets/"):
                return super().send_head()
            rng = self.headers.get("Range")
            if faults.targets_down:
                self._log(rng, 503)
                self.send_error(503, "down")
                return None
            path = self.translate_path(self.path)
            try:
                fh = open(path, "rb")  # noqa: SIM115
            except OSError:
                self._log(rng, 404)
                self.send_error(404, "not found")
                return None
            size = Path(path).stat().st_size
            start = 0
            m = None if faults.ignore_range else _RANGE.match(rng or "")
            if m:
                start = int(m[1])
                if start >= size:
                    fh.close()
                    self._log(rng, 416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self._log(rng, 206 if m else 200)
            self.send_header("Content-Length", str(size - start + len(faults.extra)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            fh.seek(start)
            return fh

        def copyfile(self, source, outputfile) -> None:
            with faults.lock:
                cut = faults.cut_after if faults.cuts_left > 0 and self.path.startswith("/targets/") else None
                if cut is not None:
                    faults.cuts_left -= 1
            if cut is None:
                shutil.copyfileobj(source, outputfile)
                if self.path.startswith("/targets/") and faults.extra:
                    outputfile.write(faults.extra)
                return
            outputfile.write(source.read(cut))
            outputfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _log(self, rng: str | None, status: int) -> None:
            with faults.lock:
                faults.requests.append((self.path, rng, status))

    return RangeHandler


class TufRepo:
    """A signed repository served over loopback with Range support."""

    def __init__(self, path: Path) -> None:
        self.repo = Repository.init(path)
        self.faults = Faults()
        self.server = RepoServer(path, handler=range_handler(self.faults)).start()
        self.url = self.server.url

    def publish(self, file: Path, *, kind: str, version: str, name: str | None = None,
                hardware: tuple[str, ...] = (HW,)) -> str:
        info = self.repo.add_target(file, kind=kind, version=version, hardware=list(hardware), name=name)
        self.repo.sign()
        return info.path

    def trusted_root(self, dest: Path) -> Path:
        dest.write_bytes(self.repo.trusted_root(1))
        return dest

    def target_requests(self) -> list[tuple[str, str | None, int]]:
        with self.faults.lock:
            return [r for r in self.faults.requests if r[0].startswith("/targets/")]

    def close(self) -> None:
        self.server.stop()


# --- bundles --------------------------------------------------------------------------------------
def wired_source(dest: Path) -> Path:
    """A copy of this repository's agent packages (what an agent bundle is made from)."""
    for name in PACKAGES:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def break_uplink(tree: Path) -> None:
    """A real bug: the drain never starts, so the new version never reaches the uplink."""
    drain = tree / "agent" / "drain.py"
    text = drain.read_text()
    old = "    async def run(self) -> None:\n"
    assert text.count(old) == 1
    drain.write_text(text.replace(old, old + "        await asyncio.Event().wait()  # BUG\n"))


def crash_on_start(tree: Path) -> None:
    """A real bug: the agent exits at start."""
    runtime = tree / "agent" / "runtime.py"
    text = runtime.read_text()
    old = "    stop = stop or asyncio.Event()\n"
    assert text.count(old) == 1
    runtime.write_text(text.replace(old, old + "    raise SystemExit(3)  # BUG\n"))


def agent_bundle(src: Path, version: str, out: Path, patch=None) -> Path:
    return build_bundle(src, version, out, patch=patch)


def model_bundle(version: str, out: Path, *, name: str = "wx_fault", corrupt_onnx: bool = False) -> Path:
    """A model bundle: the shipped model's folder with a new version (optionally a broken ONNX file)."""
    import tarfile

    src = REPO_ROOT / "edge_models" / name
    manifest = (src / "manifest.toml").read_text()
    manifest = re.sub(r'(?m)^version = "[^"]+"$', f'version = "{version}"', manifest, count=1)
    onnx = (src / "model.onnx").read_bytes()
    if corrupt_onnx:
        onnx = b"not an onnx model" * 10
        manifest = re.sub(r'(?m)^sha256 = "[0-9a-f]+"$', f'sha256 = "{hashlib.sha256(onnx).hexdigest()}"', manifest)
        manifest = re.sub(r"(?m)^size_bytes = \d+$", f"size_bytes = {len(onnx)}", manifest)
    work = out.parent / f".model-{version}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.toml").write_text(manifest)
    (work / "model.onnx").write_bytes(onnx)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(work / "manifest.toml", "manifest.toml")
        tar.add(work / "model.onnx", "model.onnx")
    shutil.rmtree(work)
    return out


# --- a box ------------------------------------------------------------------------------------------
def box_config(tmp: Path, *, box: str, server: ContractServer, trusted_root: Path, sim_port: int | None,
               health_port: int, poll_s: float = 0.2, health_deadline_s: float = 20, models: str = "",
               extra_updater: str = "") -> Path:
    credential = f"cred-{box}"
    server.add_box(box, credential)
    save_credential(tmp / "box" / "credential.json", Credential(box, credential, server.url))
    bus = dev = ""
    if sim_port is not None:
        bus = f'[[bus]]\nname = "b1"\nkind = "tcp"\nhost = "127.0.0.1"\nport = {sim_port}\ntimeout_ms = 300\n'
        dev = f'[[device]]\nname = "wxt-1"\nbus = "b1"\nprofile = "vaisala_wxt530"\nunit = 1\npoll_s = {poll_s}\n'
    path = tmp / "box.toml"
    path.write_text(f"""[box]
id = "{box}"
hardware = "{HW}"
data_dir = "{tmp / 'box'}"

[buffer]
max_bytes = "64MB"

[uplink]
kind = "http"
batch_size = 200

[uplink.http]
server = "{server.url}"

[health]
listen = "127.0.0.1:{health_port}"

[updater]
enabled = true
server = "{server.url}"
root = "{tmp / 'updater'}"
trusted_root = "{trusted_root}"
poll_interval_s = 0.5
health_deadline_s = {health_deadline_s}
max_boot_attempts = 2
stop_grace_s = 10
clock_slack_s = 0
model_health_s = 1
{extra_updater}
{bus}
{dev}
{models}
""")
    return path


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")
