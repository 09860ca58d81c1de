"""Unit tests for monitor.sinks.community_id against the specification's published vectors.

Sources of the expected values:
* SPEC_TABLE: corelight/community-id-spec, baseline/README.md, tables "Default
  settings" and "A custom seed=1 value".
* SPEC_PCAP: corelight/community-id-spec, baseline/baseline_deflt.json and
  baseline/baseline_seed1.json (flows of pcaps/combined.pcap.gz; ``null`` ports
  written as 0 here). For ICMP the JSON lists the port equivalents, which for
  these flows equal what type/code yield.
* PYCOMMUNITYID: corelight/pycommunityid, tests/communityid_test.py (extra ICMP
  one-way cases and the regression of pycommunityid issue #3).
"""

from __future__ import annotations

import base64
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.sinks.community_id import community_id_v1

pytestmark = pytest.mark.unit

_V6_A = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D"
_V6_B = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D"

# (proto, saddr, daddr, sport, dport, id with seed 0, id with seed 1)
Vector = tuple[int, str, str, int, int, str, str]

SPEC_TABLE: list[Vector] = [
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
    (132, "1.2.3.4", "5.6.7.8", 1122, 3344,
     "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=", "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (132, "5.6.7.8", "1.2.3.4", 3344, 1122,
     "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=", "1:uitchpn5MMGAQKBJh7bIr/bAr7s="),
    (1, "1.2.3.4", "5.6.7.8", 8, 0,
     "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (1, "5.6.7.8", "1.2.3.4", 0, 0,
     "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="),
    (1, "1.2.3.4", "5.6.7.8", 11, 0,
     "1:f/YiSyWqczrTgfUCZlBUnvHRcPk=", "1:1DD7cWGC/Yg91YGsQeni8du3pIA="),
    (58, _V6_A, _V6_B, 128, 0,
     "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    (58, _V6_B, _V6_A, 129, 0,
     "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE="),
    (58, _V6_A, _V6_B, 146, 0,
     "1:fYC8+pz24E+EhANP1EZhpX0Dw10=", "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s="),
    (46, "1.2.3.4", "5.6.7.8", 0, 0,
     "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
    (46, "5.6.7.8", "1.2.3.4", 0, 0,
     "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8="),
    (46, _V6_A, _V6_B, 0, 0,
     "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
    (46, _V6_B, _V6_A, 0, 0,
     "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM="),
]  # fmt: skip

SPEC_PCAP: list[Vector] = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136,
     "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 136, 135,
     "1:zavyT/cezQr1fmImYCwYnMXbgck=", "1:2hSqmsDZ2kdcY9kbiUzOEBic0iM="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0,
     "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=", "1:lVEtCZpYu84Xqaa++3lXFyuu2n4="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4,
     "1:hLZd0XGWojozrvxqE0dWB1iM6R0=", "1:W8MHwXpWzpoSTD+cGcaJr4u0ys8="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128,
     "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=", "1:GfZxjAkDk2MkegpBYHV6tadtFXQ="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134,
     "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=", "1:L7Ka0ZMYu+J3bL4ulW2PrqyXNo8="),
    (58, "fe80::260:97ff:fe07:69ea", "ff02::1", 134, 133,
     "1:pkvHqCL88/tg1k4cPigmZXUtL00=", "1:K/ee5UCqAMAQXDorP5nSa2CGLjc="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0,
     "1:YHxtAirCG//0OzkcVAukqKQN9xM=", "1:XjUibYHaafLQ3pxQeiMI8g25q20="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=", "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (132, "192.168.170.56", "192.168.170.8", 7, 7,
     "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=", "1:5w3ZRjeKBzqT3zsaEECDGjUbYeg="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855,
     "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585,
     "1:d/FP5EW3wiY1vCndhwleRRKHowQ=", "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (46, "10.1.12.1", "10.1.12.2", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
    (46, "10.1.12.2", "10.1.12.1", 0, 0,
     "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=", "1:rYir8gphR31noO9iDRQmF/BteEI="),
]  # fmt: skip

PYCOMMUNITYID: list[Vector] = [
    # ICMP type 20 has no counterpart: one-way, so the code is hashed too.
    (1, "192.168.0.89", "192.168.0.1", 20, 0,
     "1:3o2RFccXzUgjl7zDpqmY7yJi8rI=", "1:lCXHHxavE1Vq3oX9NH5ladQg02o="),
    (1, "192.168.0.89", "192.168.0.1", 20, 1,
     "1:tz/fHIDUHs19NkixVVoOZywde+I=", "1:Ie3wmFyxiEyikbsbcO03d2nh+PM="),
    # Echo reply: the code is ignored, so this pairs with the echo request.
    (1, "192.168.0.1", "192.168.0.89", 0, 20,
     "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=", "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 0,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=", "1:kHa1FhMYIT6Ym2Vm2AOtoOARDzY="),
    # One-way ICMPv6 (time exceeded): each direction is its own flow.
    (58, "3ffe:507:0:1:260:97ff:fe07:69ea", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0,
     "1:NdobDX8PQNJbAyfkWxhtL2Pqp5w=", "1:OlOWx9psIbBFi7lOCw/4MhlKR9M="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:507:0:1:260:97ff:fe07:69ea", 3, 0,
     "1:/OGBt9BN1ofenrmSPWYicpij2Vc=", "1:Ij4ZxnC87/MXzhOjvH2vHu7LRmE="),
    (132, "192.168.170.8", "192.168.170.56", 7, 80,
     "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ=", "1:Y1/0jQg6e+I3ZwZZ9LP65DNbTXU="),
    (132, "192.168.170.56", "192.168.170.8", 80, 7,
     "1:jQgCxbku+pNGw8WPbEc/TS/uTpQ=", "1:Y1/0jQg6e+I3ZwZZ9LP65DNbTXU="),
    # pycommunityid issue #3: ports must be compared as 16-bit numbers.
    (6, "10.0.0.1", "10.0.0.2", 10, 11569,
     "1:SXBGMX1lBOwhhoDrZynfROxnhnM=", "1:HmBRGR+fUyXF4t8WEtal7Y0gEAo="),
    (46, "10.1.24.4", "10.1.12.1", 0, 0,
     "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4=", "1:BK3BVW3U2eemuwVQVN3zd/GULno="),
    (46, "10.1.12.1", "10.1.24.4", 0, 0,
     "1:/nQI4Rh/TtY3mf0R2gJFBkVlgS4=", "1:BK3BVW3U2eemuwVQVN3zd/GULno="),
]  # fmt: skip


def _ids(vectors: list[Vector]) -> list[str]:
    return [f"{p}:{s}:{sp}->{d}:{dp}" for p, s, d, sp, dp, _, _ in vectors]


@pytest.mark.parametrize("vector", SPEC_TABLE, ids=_ids(SPEC_TABLE))
def test_spec_baseline_tables(vector: Vector) -> None:
    proto, saddr, daddr, sport, dport, seed0, seed1 = vector
    assert community_id_v1(saddr, daddr, sport, dport, proto) == seed0
    assert community_id_v1(saddr, daddr, sport, dport, proto, seed=1) == seed1


@pytest.mark.parametrize("vector", SPEC_PCAP, ids=_ids(SPEC_PCAP))
def test_spec_baseline_json(vector: Vector) -> None:
    proto, saddr, daddr, sport, dport, seed0, seed1 = vector
    assert community_id_v1(saddr, daddr, sport, dport, proto) == seed0
    assert community_id_v1(saddr, daddr, sport, dport, proto, seed=1) == seed1


@pytest.mark.parametrize("vector", PYCOMMUNITYID, ids=_ids(PYCOMMUNITYID))
def test_pycommunityid_vectors(vector: Vector) -> None:
    proto, saddr, daddr, sport, dport, seed0, seed1 = vector
    assert community_id_v1(saddr, daddr, sport, dport, proto) == seed0
    assert community_id_v1(saddr, daddr, sport, dport, proto, seed=1) == seed1


def test_ports_are_ignored_for_portless_protocols() -> None:
    assert community_id_v1("1.2.3.4", "5.6.7.8", 1, 2, 46) == "1:ikv3kmf89luf73WPz1jOs49S768="


def test_ipv4_mapped_ipv6_hashes_as_ipv4() -> None:
    expected = "1:wCb3OG7yAFWelaUydu0D+125CLM="
    assert community_id_v1("::ffff:1.2.3.4", "::ffff:5.6.7.8", 1122, 3344, 6) == expected
    assert community_id_v1("::ffff:1.2.3.4", "5.6.7.8", 1122, 3344, 6) == expected


@pytest.mark.parametrize(
    ("saddr", "daddr", "sport", "dport", "proto", "seed"),
    [
        ("1.2.3.4", "::1", 1, 2, 6, 0),  # mixed families
        ("1.2.3.4", "not-an-ip", 1, 2, 6, 0),
        ("1.2.3.4", "5.6.7.8", 65536, 2, 6, 0),
        ("1.2.3.4", "5.6.7.8", 1, -1, 17, 0),
        ("1.2.3.4", "5.6.7.8", 1, 2, 256, 0),
        ("1.2.3.4", "5.6.7.8", 1, 2, 6, 65536),
    ],
)
def test_invalid_input_raises_value_error(
    saddr: str, daddr: str, sport: int, dport: int, proto: int, seed: int
) -> None:
    with pytest.raises(ValueError):
        community_id_v1(saddr, daddr, sport, dport, proto, seed)


_V4 = st.ip_addresses(v=4).map(str)
# IPv6 ranges without IPv4-mapped addresses (those hash as IPv4, see above).
_V6 = st.one_of(
    st.ip_addresses(v=6, network="2000::/3"), st.ip_addresses(v=6, network="fe80::/10")
).map(str)
_PORT = st.integers(0, 0xFFFF)


@given(
    st.one_of(st.tuples(_V4, _V4), st.tuples(_V6, _V6)),
    _PORT,
    _PORT,
    st.sampled_from([6, 17, 132]),
    _PORT,
)
def test_both_directions_share_an_id(
    addrs: tuple[str, str], sport: int, dport: int, proto: int, seed: int
) -> None:
    saddr, daddr = addrs
    forward = community_id_v1(saddr, daddr, sport, dport, proto, seed)
    assert forward == community_id_v1(daddr, saddr, dport, sport, proto, seed)
    assert forward.startswith("1:")
    assert len(base64.b64decode(forward[2:], validate=True)) == 20  # a SHA-1 digest


@given(st.tuples(_V4, _V4), st.sampled_from(sorted({0, 8, 13, 14, 15, 16, 17, 18, 9, 10})))
def test_icmp_request_and_reply_share_an_id(addrs: tuple[str, str], icmp_type: int) -> None:
    saddr, daddr = addrs
    replies = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 9: 10, 10: 9}
    reply = replies[icmp_type]
    assert community_id_v1(saddr, daddr, icmp_type, 0, 1) == community_id_v1(
        daddr, saddr, reply, 0, 1
    )


def test_address_text_forms_are_equivalent() -> None:
    expanded = str(ipaddress.ip_address("2001:db8::1").exploded)
    assert community_id_v1(expanded, "2001:db8::2", 1, 2, 6) == community_id_v1(
        "2001:db8::1", "2001:DB8:0:0:0:0:0:2", 1, 2, 6
    )
