"""`serve(settings)`: run the fleet server (HTTP API, plus the MQTT bridge when configured).

The bridge runs in uvicorn's event loop, started and stopped by the app lifespan
(`fleet_server.app.create_app`). `lifespan="on"` makes a failing startup (store cannot open)
stop the process instead of serving without storage. The CLI (`quanedge fleet serve`) calls this.

`python -m fleet_server.server --db F --admin-token T [--port P] [--tuf-repo DIR]
[--checkin-interval S]` serves with the rollout settings too (benchmarks, tests, simulators).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

import uvicorn

from fleet_server.app import create_app
from fleet_server.settings import ServerSettings

__all__ = ["serve"]


#: GIL switch interval for the server process (CPython's default is 0.005 s).
SWITCH_INTERVAL_S = 0.0005

def serve(settings: ServerSettings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (bridge stopped, store closed).

    After that shutdown uvicorn re-raises the signal it caught: SIGTERM then ends the process as
    "terminated" (what process managers expect), SIGINT arrives as KeyboardInterrupt, which is
    the Ctrl-C the operator asked for, so this function simply returns.
    """
    # Worker threads (store commits, ingest parsing) and the event loop trade the GIL all the time;
    # at CPython's default 5 ms switch interval each hand-over could stall the other side for up to
    # 5 ms, which cost ~9 ms per MQTT message (end-to-end drain 38k rows/s -> see bench/RESULTS.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on",
        proxy_headers=False, server_header=False, log_level="info", access_log=settings.access_log,
        ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file,  # HTTPS when both are set
    )
    with contextlib.suppress(KeyboardInterrupt):  # raised only after the graceful shutdown (see above)
        uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet_server.server", description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--admin-token", default=os.environ.get("QUANEDGE_ADMIN_TOKEN"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tuf-repo", default=None)
    parser.add_argument("--tuf-keys", default=None)
    parser.add_argument("--checkin-interval", type=int, default=60)
    parser.add_argument("--public-url", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(ServerSettings(
        db_path=args.db, admin_token=args.admin_token or "", host=args.host, port=args.port,
        tuf_repo_dir=args.tuf_repo, tuf_keys_dir=args.tuf_keys, checkin_interval_s=args.checkin_interval,
        public_url=args.public_url,
    ))


if __name__ == "__main__":
    main()
