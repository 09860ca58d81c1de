"""The trainer registry: runs and episodes announced over a Unix socket (docs/registry.md)."""
