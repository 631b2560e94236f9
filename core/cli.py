"""What every command group shares: one way to fail (one red line on stderr, exit code 2) and logging."""

from __future__ import annotations

from typing import NoReturn

import typer

__all__ = ["fail", "setup_logging"]


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def setup_logging(verbose: bool) -> None:
    from core.logs import setup_logging as setup

    setup(verbose)
