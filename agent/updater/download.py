"""Resumable, verified download of one update target.

python-tuf's ngclient downloads a target in one go; a box on a flaky cellular link (or one
that loses power) would start over every time (Mender's MEN-2293). Here the bytes of a target
go into `<cache>/parts/<sha256>.<name>.part`, are fsynced every `fsync_every` bytes, and the
fsynced length is written to the update journal. After a restart or a dropped connection the
download resumes with `Range: bytes=<journaled offset>-`.

Verification is not ours: `ResumingFetcher` plugs into `UpdateVerifier` (its public
`fetcher_factory`), so the normal TUF workflow runs unchanged: metadata refresh, Quanedge policy
(hardware, downgrade), then ngclient's `download_target`, which reads the WHOLE file through
this fetcher — first the bytes already on disk, then the rest from the network — and checks
length and sha256 against signed metadata. The verifier's own wrapper cuts the stream at the
signed length (endless data). Only then does the file land in the cache as a `VerifiedTarget`.
A part file is named after the content-addressed URL (`<sha256>.<name>`), so a resumed download
never mixes two versions of a target. A rejected download deletes its part file; a resumed file
that fails the hash check is retried once from byte 0 before it is called tampered.

Server answers: 206 (the range we asked for), 200 (a server that ignores ranges: the prefix we
have is skipped), 416 (nothing left to send: the part is complete; the hash check decides).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib import parse

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface, Urllib3Fetcher

from agent.updater.journal import Job, Journal
from agent.updater.verify import ReasonCode, UpdateRejected, UpdateVerifier, VerifiedTarget
from firmware_manifests.schema import TargetKind

__all__ = ["ResumingFetcher", "fetch_target"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_USER_AGENT = "quanedge-agent"


class DownloadStopped(tuf_exc.DownloadError):
    """The updater asked the download to stop (deadline, cancel)."""


class ResumingFetcher(FetcherInterface):
    """Metadata: a plain fetch. Targets (URLs under `targets_base`): resumed from a .part file.

    `start_offset(part_name)` says how many bytes of the part are journaled as durable;
    `on_durable(part_name, length)` is called after each fsync; `pause(point)` is called at the "downloading" checkpoint
    (agent.updater.checkpoints).
    """

    def __init__(self, parts_dir: Path, *, targets_base: str, start_offset: Callable[[str], int],
                 on_durable: Callable[[str, int], None], stop: threading.Event | None = None,
                 timeout_s: float = 30.0, chunk_size: int = 32 * 1024, fsync_every: int = 128 * 1024,
                 pause: Callable[[str], None] | None = None) -> None:
        self.parts_dir = Path(parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._targets_base = targets_base
        self._start_offset = start_offset
        self._on_durable = on_durable
        self._stop = stop or threading.Event()
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._chunk = chunk_size
        self._fsync_every = fsync_every
        self._pause = pause
        self._meta = Urllib3Fetcher(socket_timeout=int(timeout_s), app_user_agent=_USER_AGENT)
        self._pool = urllib3.PoolManager(headers={"User-Agent": _USER_AGENT},
                                         retries=urllib3.Retry(total=2, read=0, status=0, redirect=0))
        self.requests: list[tuple[str, int]] = []  # (part name, start offset) of every target request

    def part_path(self, part_name: str) -> Path:
        return self.parts_dir / f"{part_name}.part"

    @staticmethod
    def part_name(url: str) -> str:
        name = parse.unquote(url.rsplit("/", 1)[-1])
        return _SAFE.sub("_", name)[:200] or "target"

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(self._targets_base):
            return self._meta.fetch(url)
        return self._resume(url)

    def _resume(self, url: str) -> Iterator[bytes]:
        name = self.part_name(url)
        path = self.part_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            offset = max(0, min(self._start_offset(name), size))
            if size != offset:  # bytes past the journaled offset may not be durable: drop them
                os.ftruncate(fd, offset)
                os.fsync(fd)
            self.requests.append((name, offset))
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp: urllib3.BaseHTTPResponse | None
            try:
                resp = self._pool.request("GET", url, headers=headers, preload_content=False,
                                          timeout=self._timeout)
            except urllib3.exceptions.HTTPError as exc:
                raise tuf_exc.DownloadError(f"GET {url}: {exc}") from exc
            skip = 0
            if resp.status == 416:  # nothing after `offset`: the part is (claimed) complete
                resp.release_conn()
                resp = None
            elif resp.status == 206:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if m is None or int(m[1]) != offset:
                    resp.release_conn()
                    raise tuf_exc.DownloadError(f"GET {url}: asked for bytes {offset}-, got "
                                                f"{resp.headers.get('Content-Range')!r}")
            elif resp.status == 200:
                skip = offset  # the server ignores ranges: it sends the whole file again
            else:
                resp.release_conn()
                raise tuf_exc.DownloadHTTPError(f"GET {url}: HTTP {resp.status}", resp.status)
        except BaseException:
            os.close(fd)
            raise
        return self._stream(fd, path, name, offset, resp, skip, url)

    def _stream(self, fd: int, path: Path, name: str, offset: int, resp, skip: int, url: str) -> Iterator[bytes]:
        durable = offset
        try:
            with open(path, "rb") as prefix:  # the durable prefix, for the verifier's hash
                left = offset
                while left > 0:
                    chunk = prefix.read(min(self._chunk, left))
                    if not chunk:
                        raise tuf_exc.DownloadError(f"{path}: shorter than its journaled length")
                    left -= len(chunk)
                    yield chunk
            if resp is None:
                return
            os.lseek(fd, offset, os.SEEK_SET)
            written = offset
            try:
                for chunk in resp.stream(self._chunk):
                    if self._stop.is_set():
                        raise DownloadStopped(f"download of {url} stopped at byte {written}")
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    os.write(fd, chunk)
                    written += len(chunk)
                    if written - durable >= self._fsync_every:
                        durable = self._sync(fd, name, written)
                    yield chunk
            except urllib3.exceptions.HTTPError as exc:  # connection dropped, read timeout
                raise tuf_exc.DownloadError(f"GET {url} broke off at byte {written}: {exc}") from exc
            finally:
                if written > durable:
                    self._sync(fd, name, written)
        finally:
            if resp is not None:
                resp.release_conn()
            os.close(fd)

    def _sync(self, fd: int, name: str, length: int) -> int:
        os.fsync(fd)
        self._on_durable(name, length)
        if self._pause is not None:
            self._pause("downloading")
        return length


def fetch_target(job: Job, journal: Journal, *, root: Path, hardware: str,
                 installed_version: Callable[[TargetKind], str | None], clock_slack_s: float,
                 bootstrap_root: bytes | None, stop: threading.Event | None = None,
                 pause: Callable[[str], None] | None = None, fsync_every: int = 128 * 1024) -> VerifiedTarget:
    """Blocking: verify and fetch `job`'s target, resuming from the journaled offset."""
    holder = {"job": job}
    cache = root / "cache"

    def start_offset(name: str) -> int:
        j = holder["job"]
        return j.offset if j.part_name == name else 0

    def on_durable(name: str, length: int) -> None:
        holder["job"] = journal.record_progress(holder["job"], name, length)

    repo_url = job.action.repo_url if job.action.repo_url.endswith("/") else job.action.repo_url + "/"
    fetcher = ResumingFetcher(cache / "parts", targets_base=repo_url + "targets/", start_offset=start_offset,
                              on_durable=on_durable, stop=stop, pause=pause, fsync_every=fsync_every)
    verifier = UpdateVerifier(root / "tuf", repo_url, cache, hardware, installed_version,
                              clock_slack_s=clock_slack_s, bootstrap_root=bootstrap_root,
                              fetcher_factory=lambda: fetcher)
    for attempt in (1, 2):
        seen = len(fetcher.requests)
        try:
            target = verifier.verify_and_fetch(job.action.target_name)
        except UpdateRejected as exc:
            if exc.reason_code is ReasonCode.REPOSITORY_UNREACHABLE:
                raise  # keep the part: the next attempt resumes
            resumed = any(offset > 0 for _, offset in fetcher.requests[seen:])
            _discard_parts(fetcher)
            holder["job"] = journal.record_progress(holder["job"], None, 0)  # type: ignore[arg-type]
            if attempt == 1 and resumed and exc.reason_code in (ReasonCode.TAMPERED, ReasonCode.ENDLESS_DATA):
                log.warning("resumed download of %s failed its hash check; downloading it again from byte 0",
                            job.action.target_name)
                continue
            raise
        _discard_parts(fetcher)
        return target
    raise AssertionError("unreachable")


def _discard_parts(fetcher: ResumingFetcher) -> None:
    for name, _ in fetcher.requests:
        fetcher.part_path(name).unlink(missing_ok=True)
