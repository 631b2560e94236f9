"""Fixtures shared by the test files (pytest finds them here; a file that needs something else
defines its own fixture of the same name, which wins in that file).

    clock    a settable clock (test_fleet_helpers.Clock) starting at 1_700_000_000
    store    a fresh fleet SqliteStore on that clock, in tmp_path/fleet.db; a test module runs its
             tests on both backends with `pytestmark = BOTH_BACKENDS` (pg_support.py)
    client   the fleet app over that store with small limits (test_fleet_helpers.open_client)

The fleet server is imported only by the tests that ask for these, so agent-only runs stay lean.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def clock() -> Any:
    from test_fleet_helpers import Clock

    return Clock()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Any) -> Iterator[Any]:
    from test_fleet_helpers import open_store

    yield from open_store(tmp_path, clock, getattr(request, "param", "sqlite"))


@pytest.fixture
def client(tmp_path: Path, store: Any) -> Iterator[Any]:
    from test_fleet_helpers import open_client

    yield from open_client(tmp_path, store)
