"""Fleet storage: the `Store` seam and its backends. Import backends from their own modules."""

from fleet_server.store.base import Box, IngestResult, Store

__all__ = ["Box", "IngestResult", "Store"]
