"""Quanedge fleet server: enrollment, telemetry ingest (HTTP and MQTT), box registry.

Installed with the `[fleet]` extra only; the agent never imports this package. Layout:
    settings.py      ServerSettings (frozen, validated)
    errors.py        the FleetError tree
    store/           the Store seam (base.py) and its backends (sqlite.py)
    ingest.py        the one telemetry path, shared by HTTP and MQTT
    metrics.py       the app's own Prometheus registry
    api/             one router per resource
    app.py           create_app(): wiring, lifespan, FleetError -> HTTP
    mqtt_bridge.py   MQTT -> ingest, persistent session, ack after commit
    server.py        serve(): uvicorn + bridge in one event loop
"""
