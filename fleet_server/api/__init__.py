"""HTTP API of the fleet server: one router per resource, no SQL (storage goes through `Store`)."""
