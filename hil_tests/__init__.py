"""Device simulators and hardware-in-the-loop scenarios."""
