"""Version shims, in one place: Python 3.10 lacks tomllib, TaskGroup and asyncio.timeout."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout

    import tomllib
else:  # pragma: no cover - exercised on 3.10 boxes only
    import tomli as tomllib
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup  # noqa: F401 - builtins on 3.11
    from taskgroup import TaskGroup, timeout

__all__ = ["tomllib", "TaskGroup", "timeout"]
