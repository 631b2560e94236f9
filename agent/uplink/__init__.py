"""Uplinks: transports that forward confirmed batches of readings. They know nothing of devices."""
