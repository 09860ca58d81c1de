"""Running as a service: systemd notify/watchdog/heartbeat, the unit, host preflight checks."""
