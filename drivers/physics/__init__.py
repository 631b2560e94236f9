"""Seeded physics shared by the device simulators and by model training."""
