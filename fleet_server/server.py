"""`serve(settings)`: run the fleet server (HTTP API, plus the MQTT bridge when configured).

The bridge runs in uvicorn's event loop, started and stopped by the app lifespan
(`fleet_server.app.create_app`). `lifespan="on"` makes a failing startup (store cannot open)
stop the process instead of serving without storage. The CLI (`quanedge fleet serve`) calls this.
"""

from __future__ import annotations

import contextlib

import uvicorn

from fleet_server.app import create_app
from fleet_server.settings import ServerSettings

__all__ = ["serve"]


def serve(settings: ServerSettings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (bridge stopped, store closed).

    After that shutdown uvicorn re-raises the signal it caught: SIGTERM then ends the process as
    "terminated" (what process managers expect), SIGINT arrives as KeyboardInterrupt, which is
    the Ctrl-C the operator asked for, so this function simply returns.
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on",
        proxy_headers=False, server_header=False, log_level="info",
    )
    with contextlib.suppress(KeyboardInterrupt):  # raised only after the graceful shutdown (see above)
        uvicorn.Server(config).run()
