"""bcc's layouts (from probes/rlguard.h) match the unit tests' mirrors."""

from __future__ import annotations

import pytest

from monitor.config import load_config
from monitor.sensor.probes import Sensor
from tests.unit.test_decode import (
    Connect,
    Exec,
    GpuClose,
    GpuOpen,
    Hdr,
    Send,
    StreamRec,
    TlsData,
    Unix,
)

pytestmark = pytest.mark.integration


def fields(cls: type) -> list[tuple[str, int, int]]:
    out = []
    for name, _ctype, *_ in cls._fields_:  # type: ignore[attr-defined]
        if name.startswith("__pad"):
            continue
        out.append((name, getattr(cls, name).offset, getattr(cls, name).size))
    return out


def test_mirrors_match_bcc() -> None:
    cfg = load_config(None)
    s = Sensor(cfg.probes, list(cfg.tags.keys))
    s.load()
    try:
        lay = s.layouts()
        assert fields(lay["exec"]) == fields(Exec)
        assert fields(lay["connect"]) == fields(Connect)
        assert fields(lay["send"]) == fields(Send)
        assert fields(lay["gpu_open"]) == fields(GpuOpen)
        assert fields(lay["gpu_close"]) == fields(GpuClose)
        assert fields(lay["unix_listen"]) == fields(lay["unix_connect"]) == fields(Unix)
        assert fields(lay["stream"]) == fields(StreamRec)
        assert fields(lay["tls_data"]) == fields(TlsData)
        assert fields(lay["exec"]._fields_[0][1]) == fields(Hdr)
    finally:
        s.close()
