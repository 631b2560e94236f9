"""schemathesis over the fleet API of a real server process (with a signed update repository, so
rollouts can be created), bounded so the whole module runs in well under a minute.

Parametrized over credentials: each role's bearer token is one param (`_CREDENTIALS`): the
bootstrap admin token, and a viewer and an operator user created on the running server. Checks:
no 5xx, responses (status and body) conform to the OpenAPI where it documents them, and the
Content-Type matches. The last test prints the figures: requests fuzzed and 5xx seen, per
credential.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from e2e_support import free_port, stop, wait_for
from hypothesis import HealthCheck, settings
from rollout_support import make_repo
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

# Per operation and credential: ~1,900 requests in ~12 s. QUANEDGE_FUZZ_EXAMPLES=300 for a long run.
MAX_EXAMPLES = int(os.environ.get("QUANEDGE_FUZZ_EXAMPLES", "60"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
FIGURES: Counter[str] = Counter()

# role -> how to get its headers from the running server (admin: the bootstrap token).
def _user_token(role: str) -> Callable[[Server], dict[str, str]]:
    def headers(server: Server) -> dict[str, str]:
        if role not in server.user_tokens:
            r = httpx.post(server.url + "/api/v1/users", json={"name": f"fuzz-{role}", "role": role},
                           headers={"Authorization": f"Bearer {server.admin}"}, timeout=10)
            assert r.status_code == 201, r.text
            server.user_tokens[role] = r.json()["token"]
        return {"Authorization": f"Bearer {server.user_tokens[role]}"}

    return headers


_CREDENTIALS: dict[str, Callable[[Server], dict[str, str]]] = {
    "admin": lambda server: {"Authorization": f"Bearer {server.admin}"},
    "operator": _user_token("operator"),
    "viewer": _user_token("viewer"),
}


class Server:
    def __init__(self, tmp: Path) -> None:
        make_repo(tmp)
        self.port, self.admin = free_port(), secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.user_tokens: dict[str, str] = {}
        with open(tmp / "fleet.log", "ab") as log:  # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleet_server.server", "--db", str(tmp / "fuzz.db"), "--port", str(self.port),
                 "--admin-token", self.admin, "--tuf-repo", str(tmp / "repo")],
                stdout=subprocess.DEVNULL, stderr=log)
        self.log = tmp / "fleet.log"
        wait_for(lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200, 30, "fleet server")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("fuzz"))
    yield running
    stop(running.proc)


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document (the same one the server process serves at /openapi.json)."""
    store = SqliteStore(":memory:")
    try:
        return create_app(ServerSettings(db_path=":memory:", admin_token="x" * 32), store).openapi()
    finally:
        store.close()


schema = schemathesis.openapi.from_dict(_openapi())


@schema.parametrize()
@pytest.mark.parametrize("role", sorted(_CREDENTIALS))
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fleet_api_never_answers_5xx_and_matches_its_openapi(case: schemathesis.Case, server: Server,
                                                             role: str) -> None:
    headers = _CREDENTIALS[role](server)
    response = case.call(base_url=server.url, headers=headers, timeout=10)
    FIGURES[f"{role} requests"] += 1
    if response.status_code >= 500:
        FIGURES[f"{role} 5xx"] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_zz_fuzz_figures(server: Server) -> None:
    """Runs after the fuzzing above (same module, defined last): report and hold the figures."""
    lines = [f"{role}: {FIGURES[role + ' requests']} requests fuzzed, {FIGURES[role + ' 5xx']} 5xx"
             for role in sorted(_CREDENTIALS)]
    print("\nschemathesis figures -", "; ".join(lines))
    if not FIGURES:
        pytest.skip("the fuzz test did not run in this session")
    for role in _CREDENTIALS:
        assert FIGURES[f"{role} requests"] > 0
        assert FIGURES[f"{role} 5xx"] == 0, server.log.read_text()[-3000:]
