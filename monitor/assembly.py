"""One place that builds the whole pipeline: sensor, state, attribution, detectors, sinks.

Every part gets what it needs through its constructor; nothing is wired after the fact.
`rlguard run`, `rlguard demo`, the benchmarks and the tests all build the monitor here.
"""

from __future__ import annotations

from typing import Any

from monitor.clock import Clock
from monitor.collector import Collector
from monitor.config import Config
from monitor.detectors.behaviour import MiningBehaviour
from monitor.detectors.engine import DetectionEngine
from monitor.detectors.fingerprints import load_fingerprints
from monitor.detectors.gpu_driver import GpuRuleDriver
from monitor.detectors.iocs import build_iocs
from monitor.detectors.rules import load_rules
from monitor.sensor.events import tag_values
from monitor.sensor.port import SensorPort
from monitor.sensor.probes import TAG_VALUE_LEN, Sensor, gpu_probe_patterns
from monitor.sensor.tls_libs import TlsLibraries
from monitor.service.systemd import Heartbeat
from monitor.sinks.ecs import Renderer
from monitor.sinks.fanout import FanoutSink
from monitor.sinks.ledger import ledger_for
from monitor.state.attribution import Attributor
from monitor.state.cgroups import CgroupResolver
from monitor.state.gpu import GpuHolders
from monitor.state.process_table import ProcessTable, Tagset
from monitor.state.registry.gate import RegistryGate, Trust
from monitor.state.registry.state import Registry
from monitor.streams.tracker import StreamTracker


def kernel_tagset_reader(sensor: SensorPort, keys: list[str]) -> Any:
    """A tagset the stream did not carry (a dropped record), read back from the kernel map."""

    def read(tagset_id: int) -> Tagset | None:
        got = sensor.kernel_tagset(tagset_id)
        if got is None:
            return None
        mask, blob = got
        values = tag_values(blob, mask, TAG_VALUE_LEN, len(keys))
        return Tagset({k: v for k, v in zip(keys, values, strict=True) if v is not None})

    return read


def build_collector(
    config: Config,
    sink: Any,
    sensor: SensorPort | None = None,
    heartbeat: bool = True,
    ledger: bool | None = None,
) -> Collector:
    """The monitor, ready to ``start()``.

    ``sink`` is one output or a :class:`FanoutSink` of several.  The demo and the tests
    run beside the service: without ``heartbeat`` they leave its heartbeat alone, and
    the episode ledger follows ``heartbeat`` unless ``ledger`` says otherwise.
    """
    if sensor is None:
        sensor = Sensor(
            config.probes,
            list(config.tags.keys),
            gpu_probe_patterns(config.gpu),
            config.streams,
        )
    keys = list(config.tags.keys)
    pt = config.process_table
    table = ProcessTable(
        config.tags,
        max_lineage=pt.max_lineage,
        exit_grace_s=pt.exit_grace_s,
        max_entries=pt.max_entries,
        max_exited=pt.max_exited,
        tagset_fallback=kernel_tagset_reader(sensor, keys),
    )
    att = config.attribution
    cgroups = CgroupResolver(att.container_patterns, att.sandbox_patterns)
    registry = (
        Registry(int(config.registry.retain_s * 1e9), cgroups.mount)
        if config.registry.socket
        else None
    )
    attributor = Attributor(table, att, registry, cgroups)
    gate = (
        RegistryGate(registry, attributor, table, cgroups, Trust.from_config(config.registry))
        if registry is not None
        else None
    )
    clock = Clock()
    renderer = Renderer(table, clock)
    engine = DetectionEngine(
        build_iocs(config.detectors, config.allowlist),
        load_rules(settings=config.rules),
        dns_tunnel=config.dns_tunnel,
        fingerprints=load_fingerprints(config.streams.ja4),
    )
    gpu = GpuHolders(config.gpu, table, cgroups, sensor)
    gpu_rules = GpuRuleDriver(config.gpu, gpu, engine, attributor, cgroups, clock)
    keep_ledger = heartbeat if ledger is None else ledger
    episode_ledger = ledger_for(config, renderer.host) if keep_ledger else None
    sc = config.streams
    streams = StreamTracker(
        max_streams=sc.max_streams, window_s=sc.window_s, unwrap_depth=sc.unwrap_depth
    )
    behaviour = MiningBehaviour(config.mining_behaviour, sc.activity_interval_s, gpu, engine)
    output = sink if isinstance(sink, FanoutSink) else FanoutSink(sink)
    return Collector(
        config,
        output=output,
        sensor=sensor,
        table=table,
        attributor=attributor,
        renderer=renderer,
        engine=engine,
        gpu=gpu,
        gpu_rules=gpu_rules,
        registry=registry,
        gate=gate,
        cgroups=cgroups,
        ledger=episode_ledger,
        heartbeat=Heartbeat.in_dir(config.service.state_dir) if heartbeat else None,
        streams=streams,
        tls_libs=TlsLibraries(sc, sensor),
        behaviour=behaviour,
    )
