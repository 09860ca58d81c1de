"""The `rlguard` command: a thin layer over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from monitor.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from monitor.detectors.rules import RuleSet

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
    from monitor.service.preflight import run_checks, try_mount_tracefs

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
    _rules(cfg)  # a catalogue the detectors disagree with stops here, before the compile
    from monitor.sensor.probes import Sensor, SensorError, gpu_probe_patterns
    from monitor.service.preflight import try_mount_tracefs

    try_mount_tracefs()  # before the compile looks for it
    sensor = Sensor(cfg.probes, list(cfg.tags.keys), gpu_probe_patterns(cfg.gpu))
    # the longest part of start-up, overlapped with the checks and the rest; a failed
    # check exits before load() (the thread dies with the process)
    sensor.start_compile()
    _fail_preflight()
    from monitor.assembly import build_collector

    path = output if output is not None else cfg.output.path
    sink = build_sink(cfg, path)
    collector = build_collector(cfg, sink, sensor=sensor)
    collector.install_signal_handlers()
    try:
        collector.start()
    except SensorError as exc:
        sink.close()
        typer.echo(f"rlguard: {exc}", err=True)
        raise typer.Exit(1) from None
    metrics = None
    if cfg.service.metrics_listen:
        from monitor.sinks.metrics_http import MetricsServer

        def snapshot() -> dict[str, Any]:
            stats = dict(collector.last_stats or {})
            if hasattr(sink, "stats"):
                stats["sinks"] = sink.stats()
            stats["ring_pages"] = cfg.probes.ring_pages
            return stats

        try:
            metrics = MetricsServer(cfg.service.metrics_listen, snapshot)
        except (OSError, ValueError) as exc:
            typer.echo(f"rlguard: metrics endpoint {cfg.service.metrics_listen}: {exc}", err=True)
    typer.echo(
        f"rlguard: armed in {collector.armed_seconds:.2f}s, writing to "
        f"{'stdout' if path == '-' else path}",
        err=True,
    )
    try:
        collector.run(duration)
    finally:
        collector.close()
        sink.close()  # the SIEM sink delivers what it can, the rest stays spooled
        if metrics is not None:
            metrics.close()


def build_sink(cfg: Config, path: str) -> Any:
    """The file (or stdout) sink, plus the SIEM and live-socket sinks the config asks for."""
    from monitor.sinks.ndjson import NdjsonSink

    try:
        sinks: list[Any] = [
            NdjsonSink(
                path, rotate_bytes=cfg.output.rotate_bytes, rotate_keep=cfg.output.rotate_keep
            )
        ]
    except OSError as exc:
        typer.echo(f"rlguard: cannot open output {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    if cfg.siem.url:
        from monitor.sinks.siem import SiemSink

        try:
            sinks.append(
                SiemSink(
                    cfg.siem.url,
                    cfg.siem.spool_dir,
                    cfg.siem.spool_max_bytes,
                    cfg.siem.connect_timeout_s,
                    ca_file=cfg.siem.ca_file,
                )
            )
        except OSError as exc:
            typer.echo(f"rlguard: SIEM sink (spool {cfg.siem.spool_dir}): {exc}", err=True)
            raise typer.Exit(1) from None
    if cfg.output.live_socket:
        from monitor.sinks.live import LiveSocketSink

        try:
            live = LiveSocketSink(cfg.output.live_socket, cfg.output.live_group)
        except OSError as exc:
            typer.echo(
                f"rlguard: live socket {cfg.output.live_socket}: {exc.strerror or exc}", err=True
            )
            raise typer.Exit(1) from None
        if live.last_error:
            typer.echo(f"rlguard: {live.last_error}", err=True)
        sinks.append(live)
    if len(sinks) == 1:
        return sinks[0]
    from monitor.sinks.fanout import FanoutSink

    return FanoutSink(*sinks)


@app.command()
def tail(
    socket_path: str | None = typer.Option(None, "--socket", help="live socket of the service"),
    file: str | None = typer.Option(None, "--file", help="follow an NDJSON file instead"),
    config: Path | None = ConfigOpt,
) -> None:
    """Watch live events and alerts in a terminal UI (no root needed with the live socket)."""
    from monitor.tui import rlguard_tail

    if socket_path and file:
        typer.echo("rlguard tail: --socket or --file, not both", err=True)
        raise typer.Exit(2)
    if file:
        raise typer.Exit(rlguard_tail(file, "file"))
    path = socket_path or _load(config).output.live_socket
    if not path:
        typer.echo("rlguard tail: set [output] live_socket or pass --socket/--file", err=True)
        raise typer.Exit(2)
    raise typer.Exit(rlguard_tail(path, "socket"))


@app.command()
def check(
    config: Path | None = ConfigOpt,
    load: bool = typer.Option(
        True, "--load/--no-load", help="also compile, load and attach the probes once"
    ),
) -> None:
    """Preflight: report, line by line, whether the monitor can run here."""
    from monitor.detectors.rules import RuleError, load_rules
    from monitor.service.preflight import Check, run_checks

    cfg = _load(config)
    checks = run_checks()  # report the host as it is: `run` mounts tracefs, `check` does not
    try:
        ruleset = load_rules(settings=cfg.rules)
        enabled = sum(1 for r in ruleset.values() if r.enabled)
        detail = (
            f"{len(ruleset)} rules, each raised by its detector; {enabled} enabled, "
            f"min_severity {ruleset.min_severity}"
        )
        checks.append(Check("rules", True, detail))
    except RuleError as exc:
        fix = "reinstall rlguard: its rule catalogue and detectors disagree"
        checks.append(Check("rules", False, str(exc), fix))
    if load and all(c.ok for c in checks if c.required):
        import time

        from monitor.sensor.probes import Sensor, SensorError, gpu_probe_patterns

        sensor = Sensor(cfg.probes, list(cfg.tags.keys), gpu_probe_patterns(cfg.gpu))
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
    if cfg.ledger.enabled and cfg.ledger.url:
        from monitor.sinks.ledger.postgres import check_connection
        from monitor.sinks.ledger.store import StoreError

        try:
            checks.append(Check("fleet ledger", True, check_connection(cfg.ledger.url)))
        except StoreError as exc:
            checks.append(Check("fleet ledger", False, f"{exc}{exc.hint}", "docs/fleet.md"))
    for c in checks:
        typer.echo(c.line())
    failed = [c for c in checks if not c.ok and c.required]
    if failed:
        typer.echo(f"rlguard cannot run: {len(failed)} check(s) failed", err=True)
        raise typer.Exit(1)
    typer.echo("rlguard can run on this host")


service_app = typer.Typer(help="Install and inspect the systemd service.")
app.add_typer(service_app, name="service")


@service_app.command("install")
def service_install(
    no_start: bool = typer.Option(False, "--no-start", help="install only, do not start"),
) -> None:
    """Install rlguard.service (Type=notify, watchdog, hardened), /etc/rlguard/rlguard.toml
    and the `rlguard` group, then enable and start the service."""
    import os

    from monitor.service.systemd import install

    if os.geteuid() != 0:
        typer.echo("rlguard: service install needs root (sudo rlguard service install)", err=True)
        raise typer.Exit(1)
    for line in install(sys.prefix, start=not no_start):
        typer.echo(f"rlguard: {line}")


@service_app.command("unit")
def service_unit() -> None:
    """Print the unit file as `service install` would write it."""
    from monitor.service.systemd import render_unit

    typer.echo(render_unit(sys.prefix, str(DEFAULT_CONFIG)), nl=False)


def _rules(cfg: Config) -> RuleSet:
    """The effective rules (catalogue checked against the detectors, config applied)."""
    from monitor.detectors.rules import RuleError, load_rules

    try:
        return load_rules(settings=cfg.rules)
    except RuleError as exc:
        typer.echo(f"rlguard: rules error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def rules(
    as_json: bool = typer.Option(False, "--json", help="one JSON object per rule"),
    config: Path | None = ConfigOpt,
) -> None:
    """List every detection rule as the config leaves it: enabled, severity, ATT&CK, data."""
    import orjson

    from monitor.detectors.iocs import build_iocs

    cfg = _load(config)
    ruleset = _rules(cfg)
    iocs = build_iocs(cfg.detectors, cfg.allowlist)
    floor = ruleset.min_severity
    for rule in ruleset.values():
        raised = [s for s in rule.severities() if ruleset.raises(s)] if rule.enabled else []
        if as_json:
            typer.echo(
                orjson.dumps(
                    {
                        "id": rule.id,
                        "name": rule.name,
                        "category": rule.category,
                        "description": rule.description,
                        "enabled": rule.enabled,
                        "severity": rule.severity_for,
                        "severity_set_by": rule.severity_set_by,
                        "severities": list(rule.severities()),
                        "min_severity": floor,
                        "raised": raised,
                        "raised_on": rule.raised_on.replace("`", ""),
                        "detector": rule.detector,
                        "techniques": [{"id": t, "name": n} for t, n in rule.techniques],
                        "data_sources": list(rule.data_sources),
                    }
                ).decode()
            )
            continue
        techs = ", ".join(f"{t} {n}" for t, n in rule.techniques)
        if rule.severity_set_by == "rules.toml":
            sev = "by confidence: " + " ".join(f"{k}->{v}" for k, v in rule.severity_for.items())
        else:
            sev = f"{rule.severity_for['high']} for every alert ({rule.severity_set_by})"
        if not rule.enabled:
            state = f'disabled ([rules."{rule.id}"] enabled = false)'
        elif not raised:
            state = f"enabled, but never raised: every alert is below min_severity {floor}"
        elif len(raised) < len(rule.severities()):
            state = f"enabled; alerts below min_severity {floor} are not raised"
        else:
            state = "enabled"
        typer.echo(f"{rule.id}  {rule.name}")
        typer.echo(f"    {rule.description}")
        typer.echo(f"    state: {state}")
        typer.echo(f"    severity {sev}; can be {', '.join(rule.severities())}")
        typer.echo(f"    raised on: {rule.raised_on.replace('`', '')}")
        typer.echo(f"    detector: {rule.detector}")
        typer.echo(f"    ATT&CK: {techs}")
        typer.echo(f"    data: {', '.join(rule.data_sources)}")
    if not as_json:
        enabled = sum(1 for r in ruleset.values() if r.enabled)
        typer.echo(f"{len(ruleset)} rules, {enabled} enabled; min_severity {floor}")
        sizes = {
            "miner_names": len(iocs.miner_names),
            "miner_flags": len(iocs.miner_flags),
            "pool_url_schemes": len(iocs.pool_url_schemes),
            "pool_ports": len(iocs.pool_ports),
            "pool_domains": len(iocs.pool_domains),
            "miner_domains": len(iocs.miner_domains),
            "tunnel_tools": len(iocs.tunnel_tools),
            "tunnel_domains": len(iocs.tunnel_domains),
            "ssh_clients": len(iocs.ssh_clients),
            "shells": len(iocs.shells),
        }
        typer.echo(
            "IOC lists (monitor/data/iocs.toml + [detectors] config): "
            + ", ".join(f"{k}={v}" for k, v in sizes.items())
        )


@app.command()
def episodes(
    db: str | None = typer.Option(
        None, "--db", help="ledger database (default: ledger.path, else STATE_DIR/episodes.db)"
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help="the fleet's PostgreSQL (postgresql://...): episodes of every host",
    ),
    flagged: bool = typer.Option(False, "--flagged", help="only episodes with a critical alert"),
    run_id: str | None = typer.Option(None, "--run", help="only episodes of this run id"),
    host: str | None = typer.Option(None, "--host", help="only episodes of this host"),
    since: str | None = typer.Option(
        None, "--since", help="only episodes active since: 2h, 30m, 7d or an ISO 8601 time"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per episode"),
    config: Path | None = ConfigOpt,
) -> None:
    """List RL episodes from the ledger: counts, alerts, coverage and keep/review/drop."""
    from monitor.sinks.ledger import (
        LedgerError,
        StoreError,
        format_table,
        json_line,
        ledger_path,
        parse_since,
        read_episodes,
    )

    if url is not None and db is not None:
        typer.echo("rlguard episodes: give --db or --url, not both", err=True)
        raise typer.Exit(2)
    try:
        since_ns = parse_since(since) if since is not None else None
    except ValueError as exc:
        typer.echo(f"rlguard episodes: --since: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        if url is not None:
            from monitor.config import ledger_url_problem
            from monitor.sinks.ledger.postgres import read_fleet_episodes

            problem = ledger_url_problem(url)
            if problem:
                typer.echo(f"rlguard episodes: --url: {problem}", err=True)
                raise typer.Exit(2)
            found = read_fleet_episodes(url, flagged, run_id, since_ns, host)
        else:
            path = db if db is not None else ledger_path(_load(config))
            found = read_episodes(path, flagged=flagged, run=run_id, since_ns=since_ns, host=host)
    except (LedgerError, StoreError) as exc:
        hint = exc.hint if isinstance(exc, StoreError) else ""
        typer.echo(f"rlguard episodes: {exc}{hint}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        for episode in found:
            typer.echo(json_line(episode))
        return
    if not found:
        typer.echo("no episodes", err=True)
        return
    typer.echo(format_table(found, hosts=url is not None or len({e["host"] for e in found}) > 1))


@app.command()
def demo(
    output: str | None = typer.Option(
        None, "--output", "-o", help="also write every event as NDJSON to this file"
    ),
    hold: float = typer.Option(6.0, help="seconds the fake worker keeps tunnel and miner up"),
) -> None:
    """Stage the incident on this host and show rlguard catching it.

    Creates an "outside host" (a network namespace at a 198.51.100.0/24 address, with a real
    sshd on ports 22 and 443 and a fake mining pool), runs a fake RL worker with
    episode tags that opens a reverse SSH tunnel and starts a stratum client
    under an innocent name, lets the outside use the tunnel, prints the alerts.
    Act 2, the next episode: the miner speaks TLS through a SOCKS5 proxy, and is
    still caught.  Everything the demo made is removed.
    """
    import threading
    import time

    from monitor.detectors import stratum, tunnel

    cfg = _load(None)
    _rules(cfg)
    _fail_preflight()
    from monitor.assembly import build_collector
    from monitor.lab.incident import Incident
    from monitor.sensor.probes import SensorError
    from monitor.sinks.console import ConsoleAlertSink

    sink = ConsoleAlertSink(output)
    collector = build_collector(cfg, sink, heartbeat=False)
    try:
        collector.start()
    except SensorError as exc:
        typer.echo(f"rlguard: {exc}", err=True)
        raise typer.Exit(1) from None
    thread = threading.Thread(target=collector.run, daemon=True)
    thread.start()
    incident = Incident()
    typer.echo(f"rlguard demo: probes armed in {collector.armed_seconds:.2f}s")
    typer.echo(
        f"rlguard demo: outside host {incident.host.ip4} (sshd :22 :443, pool :3333); "
        f"worker tags RL_RUN_ID={incident.run} RL_EPISODE_ID={incident.episode} "
        f"RL_WORKER_ID={incident.worker}\n"
    )
    try:
        incident.setup()
        got = incident.stage(hold)
        typer.echo(
            f"\nrlguard demo: the outside host reached 127.0.0.1:8081 through the "
            f"tunnel: {got[:60]!r}\n"
        )
        deadline = time.monotonic() + hold + 5
        wanted = {tunnel.RULE_SSH_CONNECT_BACK, stratum.RULE_STRATUM}
        while time.monotonic() < deadline:
            seen = {
                a["rule"]["id"]
                for a in sink.alerts
                if a.get("rl", {}).get("episode_id") == incident.episode
            }
            if wanted <= seen:
                break
            time.sleep(0.2)
        typer.echo(
            f"\nrlguard demo: act 2, episode {incident.episode2}: the miner now wraps its "
            f"login in TLS and sends it through a SOCKS5 proxy on {incident.host.ip4}:1080\n"
        )
        incident.stage_act2(hold)
        deadline = time.monotonic() + hold + 10
        while time.monotonic() < deadline and not _act2_caught(sink.alerts, incident.episode2):
            time.sleep(0.2)
    finally:
        incident.cleanup()
        collector.stop_event.set()
        thread.join(timeout=10)
        collector.close()
        sink.close()
    ours = [a for a in sink.alerts if a.get("rl", {}).get("episode_id") == incident.episode]
    ids = sorted({a["rule"]["id"] for a in ours})
    act2 = [a for a in sink.alerts if a.get("rl", {}).get("episode_id") == incident.episode2]
    ids2 = sorted({a["rule"]["id"] for a in act2})
    typer.echo(
        f"\nrlguard demo: {len(ours)} alerts for {incident.episode} ({', '.join(ids) or 'none'}); "
        f"{len(act2)} for {incident.episode2} ({', '.join(ids2) or 'none'}); "
        "everything the demo created is removed"
    )
    if not wanted <= set(ids) or not _act2_caught(sink.alerts, incident.episode2):
        raise typer.Exit(1)


def _act2_caught(alerts: list[dict[str, Any]], episode: str) -> bool:
    """The TLS-through-SOCKS miner's login, read from the plaintext, behind the proxy."""
    from monitor.detectors.stratum import RULE_STRATUM

    for a in alerts:
        if a.get("rl", {}).get("episode_id") != episode or a["rule"]["id"] != RULE_STRATUM:
            continue
        if any("socks5>tls plaintext" in e["detail"] for e in a["rlguard"]["alert"]["evidence"]):
            return True
    return False


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
