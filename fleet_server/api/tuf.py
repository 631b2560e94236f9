"""The update repository, read-only: `GET|HEAD /tuf/metadata/{file}` and `/tuf/targets/{path}`.

No auth: everything here is signed and the box verifies it (agent.updater.verify). Only the two
public trees of the repository directory are reachable (never keys/, staging/, repo.json), no
listings, no dot-files, no `..`. Every file has a strong ETag (If-None-Match -> 304), and
`Accept-Ranges: bytes`: one range -> 206 with Content-Range, several -> multipart 206, a range
past the end -> 416 with `Content-Range: bytes */<size>`, If-Range with a stale ETag -> the whole
file (200). So a box resumes an interrupted download across a reboot and never gets a mix of two
versions of one file. Nothing here is rate-limited per request: a slow or resumed download is
served, never refused.

ETags: a target file is content-addressed (`<sha256>.<name>`, consistent snapshots), so its
hash prefix IS its identity; versioned metadata never changes; `timestamp.json` and `root.json`
are replaced atomically (new inode), so inode+size+mtime identify a version. Caching:
content-addressed and versioned files are immutable for a year; the two mutable files must be
revalidated (`no-cache`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response

__all__ = ["router"]

router = APIRouter(prefix="/tuf", tags=["updates"])

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_HASHED = re.compile(r"^([0-9a-f]{64})\.")
_VERSIONED = re.compile(r"^\d+\.(root|targets|snapshot)\.json$")
_IMMUTABLE = "public, max-age=31536000, immutable"


def _not_found(detail: str = "not served") -> JSONResponse:
    return JSONResponse({"error": "not_found", "detail": detail}, status_code=404)


def _resolve(repo_dir: Path, tree: str, rel: str) -> Path | None:
    """The file for a request path, or None unless every segment is a plain name under the tree."""
    parts = rel.split("/")
    if not parts or len(parts) > 8 or not all(_SEGMENT.match(p) for p in parts):
        return None
    return repo_dir / tree / Path(*parts)


def _etag(path: Path, st: os.stat_result) -> str:
    hashed = _HASHED.match(path.name)
    if hashed:
        return f'"{hashed[1][:32]}"'
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


async def _serve(request: Request, tree: str, rel: str) -> Response:
    repo_dir = request.app.state.fleet.settings.tuf_repo_dir
    if repo_dir is None:
        return _not_found("this fleet server has no update repository")
    path = _resolve(Path(repo_dir), tree, rel)
    if path is None:
        return _not_found()
    immutable = tree == "targets" or bool(_VERSIONED.match(path.name))
    try:
        st, data = await to_thread.run_sync(_stat_or_read, path, not immutable)
    except OSError:
        return _not_found()
    if not stat.S_ISREG(st.st_mode):
        return _not_found()
    etag = _etag(path, st)
    headers = {"etag": etag, "cache-control": _IMMUTABLE if immutable else "no-cache"}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    media = "application/json" if tree == "metadata" else "application/octet-stream"
    if data is not None:  # a mutable file, read in one go: a concurrent replace cannot tear it
        return Response(data, media_type=media, headers=headers)
    return FileResponse(path, headers=headers, media_type=media, stat_result=st)


def _stat_or_read(path: Path, read: bool) -> tuple[os.stat_result, bytes | None]:
    """stat an immutable file (streamed later, ranges allowed); read a mutable one (timestamp.json,
    root.json: small) through one descriptor, so its ETag and bytes belong to the same version.
    Ranges on those two are ignored (the whole file, 200), which RFC 9110 allows."""
    if not read:
        return os.stat(path), None
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        return st, (fh.read() if stat.S_ISREG(st.st_mode) else None)


@router.api_route("/metadata/{name}", methods=["GET", "HEAD"])
async def metadata(name: Annotated[str, PathParam(max_length=255)], request: Request) -> Response:
    return await _serve(request, "metadata", name)


@router.api_route("/targets/{rel:path}", methods=["GET", "HEAD"])
async def targets(rel: Annotated[str, PathParam(max_length=2048)], request: Request) -> Response:
    return await _serve(request, "targets", rel)
