"""[streams] and [mining_behaviour]: defaults, bounds and the cross-field rules."""

from __future__ import annotations

import pytest

from monitor.config import ConfigError, parse_config

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    c = parse_config("")
    assert (c.streams.bytes, c.streams.reply_bytes, c.streams.window_s) == (4096, 1024, 60.0)
    assert c.streams.tls and c.mining_behaviour.enabled and c.mining_behaviour.min_age_s == 600


@pytest.mark.parametrize(
    "text,key",
    [
        ("[streams]\nbytes = 3000", "streams.bytes"),  # not a power of two
        ("[streams]\nbytes = 128", "streams.bytes"),
        ("[streams]\nreply_bytes = 300", "streams.reply_bytes"),
        ("[streams]\nbytes = 1024\nreply_bytes = 2048", "streams.reply_bytes"),
        ("[streams]\nja4 = ['nonsense=x']", "streams.ja4[0]"),
        ("[streams]\ntls_libraries = ['relative/libssl.so*']", "streams.tls_libraries[0]"),
        ("[mining_behaviour]\ncpu_fraction = 0", "mining_behaviour.cpu_fraction"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.toml")
    assert err.value.key == key, err.value.message


def test_good_values() -> None:
    c = parse_config(
        "[streams]\nbytes = 16384\nreply_bytes = 0\n"
        "ja4 = ['t13d1516h2_8daaf6152771_d8a2da3f94cd=chrome']\n"
        "[mining_behaviour]\nmin_age_s = 30\nmax_destination_users = 3\n"
    )
    assert c.streams.reply_bytes == 0 and c.streams.ja4[0].endswith("=chrome")
    assert c.mining_behaviour.max_destination_users == 3
