"""Prometheus metrics of one fleet server app, in a registry the app owns (not the global one).

Owning the registry keeps two apps in one process (tests, or a server plus a tool) from
colliding on metric names, and keeps the agent's metrics out of the server's scrape.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from fleet_server.store.base import IngestResult, Store

__all__ = ["FleetMetrics"]


#: Dropped-range reasons the agent uses; any other (valid) reason is counted as "other", so a box
#: cannot grow the metric's label set (the store keeps the reason as sent).
DROPPED_REASONS = frozenset({"disk_cap", "ttl", "quarantined", "refused"})


class FleetMetrics:
    """Counters for ingest (per transport: http, mqtt), seq gaps and announced drops (issue 11),
    quarantined messages, enrollments, clients gone mid-body, and the enrolled-box gauge."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.readings_ingested = Counter(
            "quanedge_fleet_readings_ingested", "Readings newly stored.",
            ["transport"], registry=self.registry,
        )
        self.readings_duplicate = Counter(
            "quanedge_fleet_readings_duplicate", "Re-delivered readings already stored (not stored again).",
            ["transport"], registry=self.registry,
        )
        self.batches_rejected = Counter(
            "quanedge_fleet_batches_rejected",
            "Telemetry or status messages refused (nothing stored), by reason.",
            ["transport", "reason"], registry=self.registry,
        )
        self.seq_gaps = Counter(
            "quanedge_fleet_seq_gaps", "Seq gaps found (each raised as a seq_gap alert), by reason.",
            ["reason"], registry=self.registry,
        )
        self.seq_gap_readings = Counter(
            "quanedge_fleet_seq_gap_readings", "Seqs in the gaps found: readings that will never arrive, by reason.",
            ["reason"], registry=self.registry,
        )
        self.readings_dropped_by_box = Counter(
            "quanedge_fleet_readings_dropped_by_box",
            "Readings the boxes announced they deleted undelivered (each announced range counted once), by reason.",
            ["reason"], registry=self.registry,
        )
        self.quarantined_messages = Counter(
            "quanedge_fleet_quarantined",
            "Messages acknowledged but not processed, kept in the quarantine, by reason.",
            ["transport", "reason"], registry=self.registry,
        )
        self.enrollments = Counter(
            "quanedge_fleet_enrollments", "Enrollment attempts, by outcome.",
            ["outcome"], registry=self.registry,
        )
        self.client_disconnects = Counter(
            "quanedge_fleet_client_disconnects",
            "Requests whose client went away while its body was being read (a box that lost power or "
            "its link mid-upload); nothing of such a body is stored.",
            ["route"], registry=self.registry,
        )
        self.mqtt_connected = Gauge(
            "quanedge_fleet_mqtt_connected", "1 while the MQTT bridge is connected and subscribed.",
            registry=self.registry,
        )
        self.boxes_enrolled = Gauge(
            "quanedge_fleet_boxes_enrolled", "Boxes enrolled (read from the store at scrape time).",
            registry=self.registry,
        )
        self.boxes_enrolled.set_function(lambda: float(store.count_boxes()))

    def ingested(self, transport: str, result: IngestResult) -> None:
        self.readings_ingested.labels(transport).inc(result.accepted)
        self.readings_duplicate.labels(transport).inc(result.duplicates)
        for gap in result.seq_gaps:
            self.seq_gaps.labels(gap.reason).inc()
            self.seq_gap_readings.labels(gap.reason).inc(gap.missing)
        for reason, seqs in result.dropped:
            self.readings_dropped_by_box.labels(reason if reason in DROPPED_REASONS else "other").inc(seqs)

    def rejected(self, transport: str, reason: str) -> None:
        self.batches_rejected.labels(transport, reason).inc()

    def client_disconnected(self, route: str) -> None:
        self.client_disconnects.labels(route).inc()

    def quarantined(self, transport: str, reason: str) -> None:
        self.quarantined_messages.labels(transport, reason).inc()

    def value(self, name: str, **labels: str) -> float:
        """Current value of one sample (0.0 when never touched); for health pages and tests."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
