"""Device drivers: frames and profiles, nothing of buffers or uplinks."""
