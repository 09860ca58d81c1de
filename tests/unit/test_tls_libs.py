"""TLS library discovery: globs, /proc/PID/maps, container copies, once per inode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.sensor.tls_libs import TlsLibraries, library_kind, maps_libraries
from tests.support.sensor import FakeSensor

pytestmark = pytest.mark.unit


def maps_line(path: str, rng: str = "7f0000000000-7f0000001000") -> str:
    return f"{rng} r-xp 00000000 08:01 1234 {path}\n"


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libssl.so.3").write_bytes(b"\x7fELF host")
    (lib / "libgnutls.so.30").write_bytes(b"\x7fELF gnutls")
    (lib / "libssl.so").symlink_to("libssl.so.3")
    proc = tmp_path / "proc"
    for pid in ("100", "101", "102"):
        (proc / pid).mkdir(parents=True)
    (proc / "100" / "maps").write_text(
        maps_line(str(lib / "libssl.so.3")) + maps_line("/usr/lib/libc.so.6") + maps_line("[vdso]")
    )
    # a container: the path inside it does not exist on the host, its copy is behind root
    inner = proc / "101" / "root" / "opt" / "rlg-test-nowhere"
    inner.mkdir(parents=True)
    (inner / "libssl.so.3").write_bytes(b"\x7fELF container")
    (proc / "101" / "maps").write_text(maps_line("/opt/rlg-test-nowhere/libssl.so.3"))
    (proc / "102" / "maps").write_text(maps_line(str(lib / "libssl.so.3")))  # the same file
    return {"lib": lib, "proc": proc}


def libs(tree: dict[str, Path], sensor: FakeSensor, **kw) -> TlsLibraries:
    cfg = dataclasses.replace(
        load_config(None).streams, tls_libraries=(str(tree["lib"] / "libgnutls.so*"),), **kw
    )
    return TlsLibraries(cfg, sensor, proc=str(tree["proc"]))


def test_kinds_and_maps_parsing() -> None:
    assert library_kind("/x/libssl.so.3") == "openssl"
    assert library_kind("/x/libgnutls.so.30 (deleted)") == "gnutls"
    assert library_kind("/x/libssl3.so") is None  # NSS, not OpenSSL
    text = (maps_line("/a/libssl.so.1.1") + maps_line("/a/libcrypto.so.3")).encode()
    assert maps_libraries(text) == {("/a/libssl.so.1.1", "7f0000000000-7f0000001000")}


def test_start_attaches_each_file_once_host_and_container(tree) -> None:
    sensor = FakeSensor()
    t = libs(tree, sensor)
    got = t.start()
    assert [lib.found_by for lib in got] == ["glob"], "the maps are read at the first tick"
    got += t.tick(now=0.0)
    paths = sorted(lib.path for lib in got)
    assert str(tree["lib"] / "libgnutls.so.30") in paths
    assert str(tree["lib"] / "libssl.so.3") in paths
    assert str(tree["proc"] / "101" / "root" / "opt" / "rlg-test-nowhere" / "libssl.so.3") in paths
    assert len(got) == 3 == len(sensor.tls_attached), "pid 102 maps the host file: no repeat"
    assert {lib.found_by for lib in got} == {"glob", "maps"}
    assert t.start() == [] and t.tick(now=1.0) == [] and t.scan_all() == []


def test_exec_checks_come_due_and_the_rescan_is_periodic(tree) -> None:
    sensor = FakeSensor()
    t = libs(tree, sensor, tls_rescan_s=100.0)
    t.start()
    t.tick(now=0.0)  # the first scan
    sensor.tls_attached.clear()
    (tree["proc"] / "103").mkdir()
    (tree["proc"] / "103" / "maps").write_text(maps_line(str(tree["lib"] / "libssl.so.3")))
    (tree["lib"] / "libssl.so.1.1").write_bytes(b"\x7fELF other version")
    (tree["proc"] / "103" / "maps").write_text(maps_line(str(tree["lib"] / "libssl.so.1.1")))
    t.on_exec(103, now=10.0)
    assert t.tick(now=10.1) == []  # not due yet, and no rescan before tls_rescan_s
    got = t.tick(now=10.6)
    assert [lib.found_by for lib in got] == ["exec"]
    assert t.stats()["pending_checks"] == 1  # the later look is still queued
    t.tick(now=101.0)
    assert t.scans == 2, "the periodic scan ran"


def test_a_file_that_cannot_be_probed_is_reported_once(tree) -> None:
    class Refusing(FakeSensor):
        def attach_tls(self, path: str, kind: str) -> list[str]:
            raise RuntimeError("no symbols")

    t = libs(tree, Refusing())
    assert t.start() == [] and t.tick(now=0.0) == []
    assert t.stats()["failed"] == 3 and t.stats()["attached"] == 0
    assert t.scan_all() == []


def test_off_does_nothing(tree) -> None:
    sensor = FakeSensor()
    t = libs(tree, sensor, tls=False)
    t.on_exec(100, now=0.0)
    assert t.start() == [] and t.tick(now=100.0) == [] and not sensor.tls_attached
