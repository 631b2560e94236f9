"""`quanedge fleet export`: every reading matching the filters, streamed from the server to a file.

    quanedge fleet export --server URL --token T --since 2026-12-01 --until 2026-12-08 --format csv > week.csv
    quanedge fleet export --since 24h --box pole-17 --cls alarm --output alarms.ndjson

Reads `GET /api/v1/readings/export` (fleet_server.api.readings) as it streams, writing each chunk
as it comes (memory stays flat whatever the size) to stdout or to --output. Times are unix seconds,
ISO 8601 (UTC unless they name their offset) or an age like 30m, 12h, 7d. Progress (rows, bytes,
rate) goes to stderr, so stdout stays the data. A viewer's token is enough.

An export cut off midway (the server failed or the connection dropped) exits 1 naming how many
rows arrived; with --output nothing is left at that path (the rows go to PATH.part until the end).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fleet_server.cli_admin import _time as since_text
from fleet_server.cli_http import fail, reason

__all__ = ["RowCounter", "register"]

ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", envvar="QUANEDGE_SERVER", help="Fleet server URL.")
TokenOpt = typer.Option(..., "--token", "--admin-token", envvar=["QUANEDGE_TOKEN", "QUANEDGE_ADMIN_TOKEN"],
                        help="API token (viewer role or above).", show_default=False)


def register(app: typer.Typer) -> None:
    """Add `export` to the `quanedge fleet` group."""
    app.command("export")(export)


class RowCounter:
    """Counts the records of a stream as its chunks pass: NDJSON lines, or CSV records (a newline
    inside a quoted field is not a record's end; the header is not a record)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.lines = 0
        self.quoted = False   # CSV: inside a quoted field at the end of the last chunk

    def feed(self, chunk: bytes) -> None:
        if self.kind != "csv" or (b'"' not in chunk and not self.quoted):
            self.lines += chunk.count(b"\n")
            return
        # Split on quotes: the parts alternate outside / inside a quoted field ("" inside a field
        # is two quotes in a row, which leaves the state as it was, as it should).
        for i, part in enumerate(chunk.split(b'"')):
            if i:
                self.quoted = not self.quoted
            if not self.quoted:
                self.lines += part.count(b"\n")

    @property
    def rows(self) -> int:
        return max(self.lines - 1, 0) if self.kind == "csv" else self.lines


def export(
    since: Optional[str] = typer.Option(None, "--since", help="From this time (unix s, ISO 8601, or 30m/12h/7d ago)."),
    until: Optional[str] = typer.Option(None, "--until", help="Up to (not including) this time."),
    box: Optional[str] = typer.Option(None, "--box", help="One box only."),
    device: Optional[str] = typer.Option(None, "--device", help="One device only."),
    point: Optional[str] = typer.Option(None, "--point", help="One point only."),
    cls: Optional[str] = typer.Option(None, "--cls", help="One record class only: routine, event or alarm."),
    fmt: str = typer.Option("ndjson", "--format", help="ndjson (one JSON object a line) or csv (with a header)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout.",
                                          dir_okay=False),
    timeout: float = typer.Option(120.0, "--timeout", min=1.0, help="Seconds to wait for the next chunk."),
    server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """Export readings across boxes, in (ts, box, seq) order, as NDJSON or CSV."""
    if fmt not in ("ndjson", "csv"):
        fail(f"--format must be ndjson or csv, got {fmt!r}")
    now = time.time()
    params = {name: value for name, value in (
        ("since", since_text(since, now)), ("until", since_text(until, now)), ("box", box), ("device", device),
        ("point", point), ("cls", cls), ("format", fmt)) if value}
    part = None if output is None else output.with_name(output.name + ".part")
    counter = RowCounter(fmt)
    received = 0
    started = time.monotonic()
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    try:
        with httpx.stream("GET", server.rstrip("/") + "/api/v1/readings/export", params=params,
                          headers={"Authorization": f"Bearer {token}"},
                          timeout=httpx.Timeout(30.0, read=timeout)) as r:
            if r.status_code >= 400:
                r.read()
                fail(f"server refused ({r.status_code}): {reason(r)}")
            with _sink(part) as out, progress:
                task = progress.add_task("exporting")
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    received += len(chunk)
                    counter.feed(chunk)
                    progress.update(task, description=_status(counter.rows, received, started))
            if part is not None and output is not None:
                os.replace(part, output)
    except httpx.HTTPError as exc:
        if part is not None:
            part.unlink(missing_ok=True)
        what = f"after {counter.rows} rows" if received else "before any row"
        fail(f"the export from {server} broke off {what}: {exc or type(exc).__name__}")
    except OSError as exc:
        if part is not None:
            part.unlink(missing_ok=True)
        fail(f"cannot write the export: {exc}")
    typer.echo(f"{counter.rows} readings exported ({_size(received)}) in {time.monotonic() - started:.1f} s"
               + (f" to {output}" if output is not None else ""), err=True)


def _status(rows: int, received: int, started: float) -> str:
    elapsed = max(time.monotonic() - started, 1e-6)
    return f"{rows:,} readings, {_size(received)} ({rows / elapsed:,.0f} readings/s)"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@contextmanager
def _sink(path: Path | None) -> Iterator[IO[bytes]]:
    """stdout's bytes, or the .part file (closed on the way out; renamed by the caller)."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as file:
        yield file
