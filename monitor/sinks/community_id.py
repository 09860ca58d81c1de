"""Community ID v1 flow hashes, so our flows join up with Zeek, Suricata and Elastic.

Specification: https://github.com/corelight/community-id-spec (reference
implementation ``community-id.py`` there, and corelight/pycommunityid). The ID is
``"1:" + base64(sha1(seed | addr_lo | addr_hi | proto | 0 | port_lo | port_hi))``
with all integers big-endian, where the endpoints are ordered so that both
directions of a flow hash the same.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from functools import lru_cache
from typing import Final

__all__ = ["community_id_v1"]

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMP6: Final = 58
PROTO_SCTP: Final = 132

# Only these protocols put ports (or ICMP type/code) into the hash; for any
# other protocol the spec hashes addresses and protocol alone.
_PORT_PROTOS: Final = frozenset({PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMP6, PROTO_SCTP})

# ICMP has no ports: the spec (after Zeek) uses the message type as the source
# "port" and, for request/reply pairs, the counterpart type as the destination
# "port", so that an echo request and its reply share one ID. Types missing
# here are one-way: the code is the destination "port" and no reordering occurs.
_ICMP4_COUNTERPART: Final = {
    8: 0,  # echo -> echo reply
    0: 8,
    13: 14,  # timestamp
    14: 13,
    15: 16,  # information
    16: 15,
    10: 9,  # router solicitation -> advertisement
    9: 10,
    17: 18,  # address mask
    18: 17,
}
_ICMP6_COUNTERPART: Final = {
    128: 129,  # echo request -> reply
    129: 128,
    130: 131,  # multicast listener query -> report
    131: 130,
    133: 134,  # router solicitation -> advertisement
    134: 133,
    135: 136,  # neighbor solicitation -> advertisement
    136: 135,
    139: 140,  # node information query -> response
    140: 139,
    144: 145,  # home agent address discovery request -> reply
    145: 144,
}

_SEED: Final = struct.Struct("!H")
_PROTO_PAD: Final = struct.Struct("!BB")
_PORTS: Final = struct.Struct("!HH")


_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _packed(addr: str) -> bytes:
    # inet_pton, not ipaddress: this runs for every network line (~10x cheaper)
    try:
        if ":" not in addr:
            return socket.inet_pton(socket.AF_INET, addr)
        raw = socket.inet_pton(socket.AF_INET6, addr)
    except (OSError, TypeError) as exc:
        raise ValueError(f"not an IP address: {addr!r}") from exc
    # An AF_INET6 socket talking to an IPv4 peer reports ::ffff:a.b.c.d, but
    # the packets on the wire are IPv4: hash what a network sensor would see.
    if raw[:12] == _V4_MAPPED:
        return raw[12:]
    return raw


# one flow's lines come close together; most 5-tuples are new (ephemeral ports), so a
# large cache would only hold memory (~400 bytes an entry)
@lru_cache(maxsize=4096)
def _community_id(saddr: str, daddr: str, sport: int, dport: int, proto: int, seed: int) -> str:
    src = _packed(saddr)
    dst = _packed(daddr)
    if len(src) != len(dst):
        raise ValueError(f"address families differ: {saddr!r} and {daddr!r}")
    if not 0 <= proto <= 0xFF:
        raise ValueError(f"protocol out of range: {proto}")
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"seed out of range: {seed}")

    if proto in _PORT_PROTOS:
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise ValueError(f"port out of range: {sport}, {dport}")
        one_way = False
        if proto in (PROTO_ICMP, PROTO_ICMP6):
            counterparts = _ICMP4_COUNTERPART if proto == PROTO_ICMP else _ICMP6_COUNTERPART
            counterpart = counterparts.get(sport)
            if counterpart is None:
                one_way = True
            else:
                dport = counterpart
        # Order endpoints by (address, port) in network byte order, so both
        # directions of a flow give the same ID; one-way ICMP keeps its order.
        if not one_way and (dst, dport) < (src, sport):
            src, dst, sport, dport = dst, src, dport, sport
        ports = _PORTS.pack(sport, dport)
    else:
        if dst < src:
            src, dst = dst, src
        ports = b""

    data = _SEED.pack(seed) + src + dst + _PROTO_PAD.pack(proto, 0) + ports
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def community_id_v1(
    saddr: str, daddr: str, sport: int, dport: int, proto: int, seed: int = 0
) -> str:
    """Return the Community ID v1 string (``"1:..."``) of a flow.

    ``saddr``/``daddr`` are IPv4 or IPv6 addresses as text (IPv4-mapped IPv6
    addresses count as IPv4); ``proto`` is the IP protocol number. For TCP, UDP
    and SCTP pass the ports; for ICMP and ICMPv6 pass the message type as
    ``sport`` and the code as ``dport``, as the spec does. For other protocols
    the ports are ignored. Either direction of a flow gives the same ID.
    Results are cached, so hashing every event of a long-lived flow is cheap.

    Raises ValueError for unparsable addresses, mixed address families, or a
    port, protocol or seed out of range.
    """
    if proto not in _PORT_PROTOS:
        sport = dport = 0  # not hashed: keep them out of the cache key too
    return _community_id(saddr, daddr, sport, dport, proto, seed)
