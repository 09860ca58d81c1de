"""Test harness: a live in-process monitor, network-namespace hosts, C helpers."""
