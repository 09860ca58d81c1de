"""Kernel side to typed events: load and attach the probes, drain the ring, decode records."""
