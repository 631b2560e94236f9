"""Logging set-up shared by the agent's entry points (`quanedge agent run|supervise`, the launcher).

One line per event worth a person's attention. Libraries that log routine traffic are turned down
unless --verbose: httpx and httpcore log every request at INFO (one line per telemetry POST: 144 of
152 lines in two minutes on a field box); pymodbus logs every timeout at ERROR with frame dumps,
while our DriverErrors carry the detail and the scheduler logs state changes once each way.
"""

from __future__ import annotations

import logging

__all__ = ["FORMAT", "QUIET_LOGGERS", "setup_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: logger -> the lowest level it may log at without --verbose
QUIET_LOGGERS = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "pymodbus": logging.CRITICAL}


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    if not verbose:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
