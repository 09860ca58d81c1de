"""What the monitor remembers about the host.

Processes, episodes (registry, cgroups), GPU holders, and the attribution built on them.
"""
