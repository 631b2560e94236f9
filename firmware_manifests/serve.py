"""Serve a repository's ``metadata/`` and ``targets/`` over plain HTTP (tests and demos).

Only those two trees are reachable: ``keys/``, ``staging/`` and ``repo.json`` answer 404, and
directory listings are off. Later the fleet server serves the same two trees itself.

    with RepoServer("/srv/updates") as server:
        UpdateVerifier(..., repo_url=server.url, ...)
"""

from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

__all__ = ["RepoRequestHandler", "RepoServer"]

logger = logging.getLogger(__name__)

SERVED_TREES = ("/metadata/", "/targets/")


class RepoRequestHandler(SimpleHTTPRequestHandler):
    """GET/HEAD under /metadata/ and /targets/ only; subclass to inject faults in tests."""

    timeout = 15  # seconds a stalled client may hold a handler thread

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        raw = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        path = posixpath.normpath(raw)
        if not path.startswith(SERVED_TREES) or raw.endswith("/") or "/." in path:
            self.send_error(404, "not served")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        self.send_error(404, "no listings")
        return None

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("repo http %s " + format, self.client_address[0], *args)


class RepoServer:
    """A ``ThreadingHTTPServer`` on ``host`` (port 0 = a free port) in a daemon thread."""

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: type[RepoRequestHandler] = RepoRequestHandler,
    ) -> None:
        self.repo_dir = Path(repo_dir)
        directory = str(self.repo_dir)

        # the way http.server's own `python -m http.server --directory` binds it
        self._httpd = ThreadingHTTPServer((host, port), functools.partial(handler, directory=directory))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.socket.getsockname()[:2]  # server_address, as bound
        return f"http://{host}:{port}/"

    def start(self) -> RepoServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"repo-http-{self.url}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's ``serve`` command)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def __enter__(self) -> RepoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
