"""``quanedge manifest``: sign and publish update metadata (the lead mounts ``app`` as ``manifest``).

    quanedge manifest init DIR [--keys KEYDIR] [--timestamp-expiry-hours 24]
    quanedge manifest add DIR FILE --kind device_firmware --version 2.1.0 --hardware signctl-v2 \
        [--hardware signctl-v3] [--min-from 2.0.0] [--name NAME]
    quanedge manifest sign DIR                  publish staged targets (targets + snapshot + timestamp keys)
    quanedge manifest refresh-timestamp DIR     the fleet server's periodic job (online keys only)
    quanedge manifest rotate-key DIR --role root|targets|snapshot|timestamp
    quanedge manifest show DIR
    quanedge manifest serve DIR [--port 8080]   plain HTTP over metadata/ and targets/ (demo)

Key files may be passphrase-encrypted: set QUANEDGE_KEY_PASSPHRASE (or --passphrase). Errors are
one line naming the file or key, exit code 1, no traceback.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.errors import QuanedgeError
from firmware_manifests.keys import OFFLINE_ROLES
from firmware_manifests.layout import ExpiryPolicy, RepoStatus
from firmware_manifests.repository import Repository
from firmware_manifests.schema import TargetKind

app = typer.Typer(
    help="Sign and publish Quanedge update metadata (a TUF repository).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


class Role(str, enum.Enum):
    root = "root"
    targets = "targets"
    snapshot = "snapshot"
    timestamp = "timestamp"


DirArg = Annotated[Path, typer.Argument(help="Repository directory.", show_default=False)]
KeysOpt = Annotated[
    Optional[Path],  # typer needs Optional on 3.10
    typer.Option("--keys", help="Key directory (default DIR/keys); offline keys may be on removable media."),
]
PassOpt = Annotated[
    Optional[str],
    typer.Option(
        "--passphrase",
        envvar="QUANEDGE_KEY_PASSPHRASE",
        help="Passphrase of the key files. Prefer the env var: arguments are visible in `ps`.",
        show_default=False,
    ),
]


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    try:
        yield
    except (QuanedgeError, OSError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def init(
    directory: DirArg,
    keys: KeysOpt = None,
    passphrase: PassOpt = None,
    ask_passphrase: Annotated[bool, typer.Option(help="Prompt for a passphrase for the new keys.")] = False,
    timestamp_expiry_hours: Annotated[float, typer.Option(min=0.01)] = 24.0,
    snapshot_expiry_days: Annotated[float, typer.Option(min=0.01)] = 7.0,
    targets_expiry_days: Annotated[float, typer.Option(min=0.01)] = 90.0,
    root_expiry_days: Annotated[float, typer.Option(min=0.01)] = 365.0,
) -> None:
    """Create a repository: four Ed25519 keys and version 1 of every role."""
    if ask_passphrase:
        passphrase = typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=True)
    with _friendly_errors():
        expiry = ExpiryPolicy(
            root=timedelta(days=root_expiry_days),
            targets=timedelta(days=targets_expiry_days),
            snapshot=timedelta(days=snapshot_expiry_days),
            timestamp=timedelta(hours=timestamp_expiry_hours),
        )
        repo = Repository.init(directory, keys_dir=keys, passphrase=passphrase, expiry=expiry)
    console.print(f"Initialised update repository in [bold]{escape(str(repo.path))}[/bold]")
    console.print(f"  keys written to {repo.keys.directory} (mode 0600"
                  f"{', encrypted' if passphrase else ', NOT encrypted'})")
    console.print("  move root.key and targets.key to offline media; the fleet server keeps "
                  "snapshot.key and timestamp.key")
    console.print(f"  provision boxes with {repo.metadata_dir / '1.root.json'} as their root.json")


@app.command()
def add(
    directory: DirArg,
    file: Annotated[Path, typer.Argument(help="The file to publish.", show_default=False)],
    kind: Annotated[TargetKind, typer.Option(help="What the file installs.", show_default=False)],
    version: Annotated[str, typer.Option(help="Its version, e.g. 2.1.0.", show_default=False)],
    hardware: Annotated[
        list[str],
        typer.Option(help="Compatible hardware id; repeat or comma-separate.", show_default=False),
    ],
    min_from: Annotated[
        Optional[str],
        typer.Option(help="Oldest installed version this can upgrade from."),
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(help="Target name (default: the file name)."),
    ] = None,
) -> None:
    """Stage FILE as a target; publish it with `sign`."""
    ids = [h.strip() for item in hardware for h in item.split(",") if h.strip()]
    with _friendly_errors():
        info = Repository(directory).add_target(
            file, kind=kind.value, version=version, hardware=ids, min_from=min_from, name=name
        )
    console.print(f"Staged [bold]{escape(info.path)}[/bold] ({info.length} bytes, sha256 "
                  f"{info.hashes['sha256'][:16]}…); run `sign` to publish")


@app.command()
def sign(directory: DirArg, keys: KeysOpt = None, passphrase: PassOpt = None) -> None:
    """Publish staged targets: new targets, snapshot and timestamp versions."""
    with _friendly_errors():
        published = Repository(directory, keys_dir=keys, passphrase=passphrase).sign()
    console.print(f"Published targets v{published.targets}, snapshot v{published.snapshot}, "
                  f"timestamp v{published.timestamp}")


@app.command("refresh-timestamp")
def refresh_timestamp(directory: DirArg, keys: KeysOpt = None, passphrase: PassOpt = None) -> None:
    """Re-sign timestamp (and snapshot when due) with the online keys; run it on a schedule."""
    with _friendly_errors():
        published = Repository(directory, keys_dir=keys, passphrase=passphrase).refresh_timestamp()
    console.print(f"timestamp v{published.timestamp} (snapshot v{published.snapshot})")


@app.command("rotate-key")
def rotate_key(
    directory: DirArg,
    role: Annotated[Role, typer.Option(help="Role whose key to replace.", show_default=False)],
    keys: KeysOpt = None,
    passphrase: PassOpt = None,
) -> None:
    """Replace a role's key; a new root version (signed by old and new root keys) says so."""
    with _friendly_errors():
        rotation = Repository(directory, keys_dir=keys, passphrase=passphrase).rotate_key(role.value)
    console.print(f"Rotated {rotation.role} key to {rotation.new_keyid[:16]} in root "
                  f"v{rotation.root_version}; old key file moved to keys/retired/ (destroy it)")


@app.command()
def show(directory: DirArg) -> None:
    """List the roles (version, expiry, keys) and the targets with their custom fields."""
    with _friendly_errors():
        status = Repository(directory).status()
    _render(status, datetime.now(timezone.utc))


@app.command()
def serve(
    directory: DirArg,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
) -> None:
    """Serve metadata/ and targets/ over plain HTTP (for demos; keys are never served)."""
    from firmware_manifests.serve import RepoServer

    with _friendly_errors():
        Repository(directory)  # refuse to serve something that is not a repository
        server = RepoServer(directory, host=host, port=port)
    console.print(f"Serving {escape(str(directory))} at {server.url} (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _render(status: RepoStatus, now: datetime) -> None:
    roles = Table(title="Roles")
    for col in ("Role", "Version", "Expires (UTC)", "Left", "Key ids", "Threshold", "Custody"):
        roles.add_column(col, no_wrap=col != "Key ids")
    for r in status.roles:
        left = r.expires - now
        custody = "offline" if r.role in OFFLINE_ROLES else "online"
        roles.add_row(
            r.role, str(r.version), f"{r.expires:%Y-%m-%d %H:%M}",
            "[red]EXPIRED[/red]" if left <= timedelta(0) else _human(left),
            ", ".join(k[:12] for k in r.keyids), str(r.threshold), custody,
        )
    console.print(roles)
    targets = Table(title="Targets")
    for col in ("Target", "State", "Kind", "Version", "Hardware", "Min from", "Bytes", "sha256"):
        targets.add_column(col)
    for t in status.targets:
        m = t.meta
        targets.add_row(
            escape(t.name),
            "[yellow]staged[/yellow]" if t.staged else "published",
            m.kind.value if m else "[red]invalid custom fields[/red]",
            str(m.version) if m else "",
            "\n".join(m.hardware) if m else "",
            str(m.min_from_version) if m and m.min_from_version else "-",
            str(t.length),
            t.sha256[:12],
        )
    console.print(targets if status.targets else "No targets yet.")


def _human(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f}d"
