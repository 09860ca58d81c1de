"""Detectors: pure functions over attributed events (see docs/detections.md)."""
