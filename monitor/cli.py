"""The `rlguard` command: a thin layer over the library."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from monitor.config import Config, ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="eBPF host monitor for RL training hosts: every exec, fork, exit, connect, "
    "TCP state change, first bytes and DNS query, attributed to the RL episode.",
)

DEFAULT_CONFIG = Path("/etc/rlguard/rlguard.toml")

ConfigOpt = typer.Option(
    None, "--config", "-c", help="TOML config (default: /etc/rlguard/rlguard.toml if present)"
)


def _load(config: Path | None) -> Config:
    path = config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        typer.echo(f"rlguard: config error: {exc}", err=True)
        raise typer.Exit(2) from None
    for key, pattern in cfg.tags.denied:
        typer.echo(
            f"rlguard: tag key {key} is never read: it matches the deny pattern {pattern!r}",
            err=True,
        )
    return cfg


def _fail_preflight() -> None:
    from monitor.preflight import run_checks, try_mount_tracefs

    try_mount_tracefs()
    failed = [c for c in run_checks() if not c.ok and c.required]
    if failed:
        typer.echo("rlguard: cannot run here:", err=True)
        for c in failed:
            typer.echo("  " + c.line(), err=True)
        typer.echo("run `rlguard check` for the full report", err=True)
        raise typer.Exit(1)


@app.command()
def run(
    config: Path | None = ConfigOpt,
    output: str | None = typer.Option(
        None, "--output", "-o", help="NDJSON destination: a file path, or - for stdout"
    ),
    duration: float | None = typer.Option(
        None, "--duration", help="stop after this many seconds (default: run until signalled)"
    ),
) -> None:
    """Monitor this host and write one NDJSON line per event."""
    cfg = _load(config)
    _fail_preflight()
    from monitor.collector import Collector
    from monitor.probes import SensorError
    from monitor.sinks.ndjson import NdjsonSink

    path = output if output is not None else cfg.output.path
    try:
        sink = NdjsonSink(path)
    except OSError as exc:
        typer.echo(f"rlguard: cannot open output {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    collector = Collector(cfg, sink)
    collector.install_signal_handlers()
    try:
        collector.start()
    except SensorError as exc:
        typer.echo(f"rlguard: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"rlguard: armed in {collector.armed_seconds:.2f}s, writing to "
        f"{'stdout' if path == '-' else path}",
        err=True,
    )
    try:
        collector.run(duration)
    finally:
        collector.close()


@app.command()
def check(
    config: Path | None = ConfigOpt,
    load: bool = typer.Option(
        True, "--load/--no-load", help="also compile, load and attach the probes once"
    ),
) -> None:
    """Preflight: report, line by line, whether the monitor can run here."""
    from monitor.preflight import Check, run_checks

    cfg = _load(config)
    checks = run_checks()  # report the host as it is: `run` mounts tracefs, `check` does not
    if load and all(c.ok for c in checks if c.required):
        import time

        from monitor.probes import Sensor, SensorError

        sensor = Sensor(cfg.probes, list(cfg.tags.keys))
        t0 = time.monotonic()
        try:
            sensor.load()
            checks.append(
                Check(
                    "probes", True, f"compiled, loaded and attached in {time.monotonic() - t0:.2f}s"
                )
            )
        except SensorError as exc:
            checks.append(Check("probes", False, str(exc), "see the message above"))
        finally:
            sensor.close()
    for c in checks:
        typer.echo(c.line())
    failed = [c for c in checks if not c.ok and c.required]
    if failed:
        typer.echo(f"rlguard cannot run: {len(failed)} check(s) failed", err=True)
        raise typer.Exit(1)
    typer.echo("rlguard can run on this host")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
