"""Mining detectors: pool protocol payloads, miner command lines and configs, pool names.

Pure functions, no I/O: the engine hands in what it saw (the first bytes a process
sent on a new outbound TCP connection, an exec's argv and executable path, the
text of a config file named on that command line, a looked-up DNS name, a
destination port) and gets back :class:`~monitor.detectors.signals.Signal` lists.

What the payload detector recognises, and where each message shape comes from
(repository + path of the miner that sends it), is listed case by case in
``tests/corpus/mining/cases.toml``.  In short:

* Stratum v1 JSON-RPC lines (cpuminer, cgminer/BFGMiner, ESP-Miner, ethminer):
  ``mining.subscribe``, ``mining.authorize``, ``mining.configure`` (BIP 310),
  ``mining.extranonce.subscribe``, ``mining.suggest_*``, ``mining.capabilities``,
  ``mining.submit``, and ``mining.hello`` (NiceHash EthereumStratum/2.0.0, which
  ethminer sends first).  Real Stratum V2 is a binary Noise handshake: nothing
  here can see it; the DNS and port signals are what remain for it.
* The CryptoNote pool login (XMRig, xmr-stak, cpuminer-multi):
  ``{"method":"login","params":{"login":WALLET,"pass":..,"agent":..}}``.
* ethproxy ``eth_submitLogin`` (ethminer ``-P ethproxy://``).
* Solo mining against a node: ``getblocktemplate`` / ``getwork`` (cpuminer,
  XMRig ``--daemon`` to monerod's ``/json_rpc``), ``eth_getWork`` (ethminer
  getwork mode), usually as HTTP POST bodies, and the ``X-Mining-Extensions``
  header cpuminer and cgminer put on every such POST.  In a 256-byte capture the
  headers often leave no room for the body, so a miner's own ``User-Agent``
  (``XMRig/6.x``, ``cpuminer/2.5.1``) counts too.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from monitor.detectors.iocs import Iocs, domain_match
from monitor.detectors.signals import Confidence, Signal, bounded

__all__ = [
    "RULES",
    "RULE_MINER_ARGV",
    "RULE_POOL_DNS",
    "RULE_POOL_PORT",
    "RULE_STRATUM",
    "miner_argv_signals",
    "miner_config_path",
    "noise_handshake_start",
    "pool_dns_signal",
    "pool_port_signal",
    "stratum_payload_signals",
    "stratum_reply_signals",
    "stratum_stream_signals",
    "stratum_v2_signals",
]

# The rules these detectors raise (monitor/data/rules.toml; checked against it at load).
RULE_STRATUM: Final = "RLG-MIN-001"  # stratum_payload_signals
RULE_MINER_ARGV: Final = "RLG-MIN-002"  # miner_argv_signals
RULE_POOL_DNS: Final = "RLG-MIN-003"  # pool_dns_signal
RULE_POOL_PORT: Final = "RLG-MIN-004"  # pool_port_signal, only with pool_port_connects = "alert"
RULES: Final = (RULE_STRATUM, RULE_MINER_ARGV, RULE_POOL_DNS, RULE_POOL_PORT)

# --- Limits ---------------------------------------------------------------------------
# bounded() appends "…[+N bytes]" past its limit, so 200 keeps a detail under 256.
DETAIL_LIMIT: Final = 200
# Payload bytes looked at: the engine captures 256 by default; never scan more than this.
SCAN_LIMIT: Final = 4096
# Newline-delimited messages parsed per payload (a miner may pipeline a few).
MAX_LINES: Final = 8
# lines of a stream's opening looked at for JSON after a greeting
MAX_GREETING_LINES: Final = 32
MAX_HEADERS: Final = 32
# argv entries and characters per entry looked at; config characters parsed.
MAX_ARGS: Final = 256
MAX_ARG_LEN: Final = 4096
CONFIG_LIMIT: Final = 65536

# --- Payload vocabulary -------------------------------------------------------------
# Stratum methods a *client* sends (server notifications such as mining.notify are not
# here: we only ever look at bytes the local process sent).  Compared lower-cased.
STRATUM_METHODS: Final = frozenset(
    {
        "mining.subscribe",
        "mining.authorize",
        "mining.configure",
        "mining.extranonce.subscribe",
        "mining.hello",
        "mining.submit",
        "mining.suggest_difficulty",
        "mining.suggest_target",
        "mining.capabilities",
        "mining.noop",
    }
)
# ethproxy login (ethminer EthStratumClient ETHPROXY mode); lower-case -> canonical.
ETHPROXY_LOGIN: Final = {"eth_submitlogin": "eth_submitLogin", "submitlogin": "submitLogin"}
# Work requests to a node: only miners ask for block templates or PoW work.
WORK_RPC_METHODS: Final = {
    "getblocktemplate": "getblocktemplate",
    "get_block_template": "get_block_template",
    "getwork": "getwork",
    "eth_getwork": "eth_getWork",
    "eth_submitwork": "eth_submitWork",
    "eth_submithashrate": "eth_submitHashrate",
}
# A bare "login" method is common JSON-RPC; the CryptoNote pool login also carries one
# of these next to "login" (XMRig Client::login, xmr-stak jpsock::cmd_login).
LOGIN_SHAPE_KEYS: Final = ("agent", "pass", "algo", "rigid")
# HTTP request headers only mining clients send (cpuminer json_rpc_call, cgminer).
MINING_HEADERS: Final = frozenset({b"x-mining-extensions", b"x-mining-hashrate"})
# User-Agent prefixes of miners' own HTTP clients.  XMRig's daemon mode (solo mining
# against monerod) sends "XMRig/6.x (...)" in ~190 bytes of sorted headers
# (HttpClient::handshake), so in a 256-byte capture the body is barely visible.
MINER_AGENT_PREFIXES: Final = (
    b"xmrig/", b"xmrig-", b"xmr-stak", b"cpuminer", b"cgminer/", b"bfgminer/", b"sgminer/",
    b"ethminer", b"minerd/", b"ccminer/", b"kawpowminer", b"srbminer",
)  # fmt: skip

_WS: Final = b" \t\r\n"
_WS_BYTES: Final = frozenset(_WS)
_HTTP_METHODS: Final = (b"POST ", b"GET ", b"PUT ", b"PATCH ", b"HEAD ", b"OPTIONS ")
_HTTP_FIRST: Final = frozenset(m[0] for m in _HTTP_METHODS)

# Fallback for a message cut off mid-JSON: bounded patterns over the raw bytes.
_METHOD_RE: Final = re.compile(rb'"method"\s*:\s*"([A-Za-z0-9_.]{1,64})"')
_PARAMS_OBJ_RE: Final = re.compile(rb'"params"\s*:\s*\{')
_FIRST_PARAM_RE: Final = re.compile(rb'"params"\s*:\s*\[\s*"([^"\\]{1,200})')
_LOGIN_RE: Final = re.compile(rb'"login"\s*:\s*"([^"\\]{0,200})("?)')
_AGENT_RE: Final = re.compile(rb'"agent"\s*:\s*"([^"\\]{1,200})')
_SHAPE_KEY_RE: Final = re.compile(rb'"(?:agent|pass|algo|rigid)"\s*:')

# --- Wallet shapes ------------------------------------------------------------------
_B58: Final = "1-9A-HJ-NP-Za-km-z"
# Monero: 95 base58 characters from 4 (main) or 8 (subaddress); integrated: 106.
_MONERO_RE: Final = re.compile(rf"(?<![{_B58}])[48][{_B58}]{{94}}(?:[{_B58}]{{11}})?(?![{_B58}])")
# A Monero address cut off by the end of a truncated payload.
_MONERO_PREFIX_RE: Final = re.compile(rf"[48][{_B58}]{{63,}}\Z")
_ETH_RE: Final = re.compile(r"(?<![0-9A-Za-z])0x[0-9a-fA-F]{40}(?![0-9A-Za-z])")
_BECH32_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])(?:bc|ltc|tb)1[02-9ac-hj-np-z]{11,87}(?![0-9A-Za-z])", re.IGNORECASE
)
_WALLET_RES: Final = (_MONERO_RE, _ETH_RE, _BECH32_RE)

# --- Command-line vocabulary --------------------------------------------------------
# Options whose value is a pool URL (XMRig/cpuminer/T-Rex -o/--url, ethminer -P,
# lolMiner/SRBMiner --pool, PhoenixMiner -pool, GMiner --server).
POOL_OPTIONS: Final = frozenset({"-o", "--url", "--pool", "--pool-url", "-P", "-pool", "--server"})
# Options whose value is the pool user: a wallet, often as <wallet>.<worker>.
USER_OPTIONS: Final = frozenset(
    {"-u", "--user", "--username", "-O", "--userpass", "--wallet", "-w", "-wal", "--login"}
)
ALGO_OPTIONS: Final = frozenset({"-a", "--algo", "--algorithm", "-algo"})
CONFIG_OPTIONS: Final = frozenset({"-c", "--config"})
_VALUE_OPTIONS: Final = POOL_OPTIONS | USER_OPTIONS | ALGO_OPTIONS | CONFIG_OPTIONS
# Short options getopt lets carry their value attached ("-ostratum+tcp://...").
_ATTACHED_SHORT: Final = frozenset({"-o", "-u", "-a", "-O", "-P", "-w"})
# Single-dash long options (PhoenixMiner style) that must not be split as "-p" + "ool".
_SINGLE_DASH_LONG: Final = frozenset(
    {"-pool", "-wal", "-worker", "-coin", "-pass", "-algo", "-epsw", "-proto"}
)
# Listed miner flags whose name alone is ordinary elsewhere: RL training scripts take
# `--algo ppo` (rl-baselines3-zoo), Jupyter `--kernel`, many tools `--worker`.  They
# count only next to an unambiguous miner flag; --algo is judged by its value instead.
AMBIGUOUS_FLAGS: Final = frozenset({"--algo", "--worker", "--kernel"})
# Mining algorithm names as miners spell them (XMRig docs/algorithms, cpuminer -a,
# T-Rex/lolMiner/GMiner --algo).  Generic hash names (sha256, blake2b, keccak) are
# left out on purpose: hashing tools take those too.
MINER_ALGOS: Final = frozenset(
    {
        "randomx", "randomxmonero", "randomwow", "randomarq", "randomsfx", "randomkeva",
        "cryptonight", "cryptonight-lite", "cryptonight-heavy", "cryptonight_heavy",
        "cryptonightr", "cn-pico", "kawpow", "progpow", "ethash", "etchash", "ubqhash",
        "autolykos", "autolykos2", "ghostrider", "mike", "sha256d", "scrypt", "scryptn2",
        "yescrypt", "yescryptr16", "yescryptr32", "yespower", "yespowerr16", "x11", "x13",
        "x15", "x16r", "x16rv2", "x16rt", "x16s", "x17", "x21s", "x22i", "x25x",
        "lyra2rev2", "lyra2rev3", "lyra2z", "lyra2v2", "neoscrypt", "equihash", "zhash",
        "beamhash", "beamhashiii", "kheavyhash", "heavyhash", "octopus", "firopow",
        "evrprogpow", "meowpow", "verushash", "karlsenhash", "pyrinhash", "nexapow",
        "fishhash", "dynexsolve", "xelishash", "sha512256d", "sha3d", "minotaurx",
        "verthash", "allium", "phi2", "tribus", "hmq1725", "argon2d", "chukwa",
        "cuckatoo31", "cuckatoo32", "cuckaroo29", "cuckaroom", "astrobwt", "panthera",
        "flex", "curvehash", "power2b", "rx", "cn", "cn-lite", "cn-heavy", "argon2", "gr",
    }
)  # fmt: skip
_ALGO_PREFIXES: Final = (
    "rx/", "cn/", "cn-lite/", "cn-heavy/", "cn-pico/", "argon2/", "astrobwt/", "equihash",
    "cuckatoo", "cuckaroo", "yescrypt", "yespower", "lyra2", "x16r", "autolykos",
)  # fmt: skip
# Programs that take patterns or text as option values (grep -o, sed -e): a pool
# URL there is searched for, not connected to.  Trusted only from a system path, so
# a miner renamed to "grep" in /tmp gets no pass.
TEXT_TOOLS: Final = frozenset(
    {
        "grep", "egrep", "fgrep", "rg", "ag", "ack", "sed", "awk", "gawk", "mawk", "echo",
        "printf", "cat", "less", "more", "head", "tail", "vi", "vim", "nvim", "nano",
        "emacs", "git", "man", "jq",
    }
)  # fmt: skip
_SYSTEM_DIRS: Final = ("/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/local/bin/",
                       "/usr/lib/", "/usr/libexec/")  # fmt: skip
# Programs whose -c is code or something other than a config file.
_DASH_C_NOT_CONFIG: Final = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "tcsh",
        "csh", "rbash", "python", "python2", "python3", "pypy", "pypy3", "perl", "ruby",
        "node", "su", "sudo", "gcc", "cc", "g++", "c++", "clang", "clang++", "tar", "nc",
        "ncat", "bc", "ipython", "uv", "uvx", "nix",
    }
)  # fmt: skip
_CONFIG_SUFFIXES: Final = (".json", ".conf", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".txt")
# Keys in a miner config (XMRig src/config.json) besides pools[].url/user.
_XMRIG_POOL_KEYS: Final = frozenset(
    {"algo", "coin", "rig-id", "nicehash", "keepalive", "tls-fingerprint", "daemon",
     "self-select"}
)  # fmt: skip
_XMRIG_DOC_KEYS: Final = frozenset({"donate-level", "donate-over-proxy", "randomx", "cpu"})
# key = value / "key": "value" pairs in a config that is not valid JSON (comments,
# INI, TOML): url/pool/user/wallet/algo/coin keys only.
_CONFIG_KV_RE: Final = re.compile(
    r"""(?<![\w-])["']?(url|pool\d*|user|wallet|algo|algorithm|coin|donate-level)["']?\s*[:=]\s*"""
    r"""["']?([^"'\s,}\]]{1,512})""",
    re.IGNORECASE,
)


# --- Small helpers ------------------------------------------------------------------


def _signal(kind: str, name: str, detail: str, confidence: Confidence) -> Signal:
    return Signal(kind, name, bounded(detail, DETAIL_LIMIT), confidence)


def _dedupe(signals: Iterable[Signal]) -> list[Signal]:
    """First signal per name (a pipelined subscribe+authorize is one fact each)."""
    seen: dict[str, Signal] = {}
    for sig in signals:
        seen.setdefault(sig.name, sig)
    return list(seen.values())


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def find_wallet(text: str) -> str | None:
    """The first wallet-shaped substring of ``text`` (Monero, Ethereum, bech32), if any.

    Boundaries are enforced, so ``<wallet>.<worker>``, ``<wallet>+<diff>``,
    ``COIN:<wallet>`` and a URL's ``<wallet>@host`` all yield the wallet.
    """
    text = text[:MAX_ARG_LEN]
    for pattern in _WALLET_RES:
        match = pattern.search(text)
        if match:
            return match.group()
    return None


# --- Payloads -----------------------------------------------------------------------


def stratum_payload_signals(data: bytes) -> list[Signal]:
    """Signals from the first bytes a process sent on a new outbound TCP connection.

    Tolerant of key order, whitespace and truncation: each newline-delimited message
    is parsed as JSON when it parses, else searched with bounded patterns for a
    mining method name.  Only data that starts like a JSON object (after optional
    whitespace) or an HTTP request is looked at; anything else returns ``[]`` at the
    cost of a byte comparison.
    """
    head = bytes(data[:SCAN_LIMIT])
    framing = _framing(head)
    if framing is None:
        return []
    if framing == "http":
        return _http_signals(head)
    return _json_signals(head)


def stratum_stream_signals(data: bytes) -> list[Signal]:
    """Signals from a stream's reassembled opening: the payload rules, and JSON lines that
    follow a greeting (a client that says hello, reads the answer, then logs in)."""
    out = stratum_payload_signals(data)
    if out or b"{" not in data:
        return out  # no JSON anywhere: nothing after a greeting either
    head = bytes(data[:SCAN_LIMIT])
    if _framing(head) is not None:
        return out
    # text lines (or NUL-separated messages) before the JSON: keep the lines that are JSON
    lines = [x.strip() for x in head.replace(b"\0", b"\n").split(b"\n", MAX_GREETING_LINES)]
    json_lines = [x for x in lines[:MAX_GREETING_LINES] if x[:1] == b"{"]
    if not json_lines:
        return out
    return _json_signals(b"\n".join(json_lines[:MAX_LINES]))


def _framing(head: bytes) -> str | None:
    if not head:
        return None
    first = head[0]
    if first == 0x7B:  # "{"
        return "json"
    if first in _WS_BYTES:
        return "json" if head.lstrip(_WS)[:1] == b"{" else None
    if first in _HTTP_FIRST and head.startswith(_HTTP_METHODS):
        return "http"
    return None


def _json_signals(buf: bytes) -> list[Signal]:
    lines = [line.strip() for line in buf.split(b"\n", MAX_LINES)[:MAX_LINES]]
    if all(not line or line[:1] == b"{" for line in lines):
        chunks = [line for line in lines if line]  # newline-delimited, as stratum frames
    else:
        chunks = [buf.strip()]  # pretty-printed: one document across lines
    out: list[Signal] = []
    for chunk in chunks:
        message = _load_object(chunk)
        if message is not None:
            out.extend(_message_signals(message))
        else:
            out.extend(_fallback_signals(chunk))
    return _dedupe(out)


def _load_object(chunk: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(chunk)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _message_signals(message: dict[str, Any]) -> list[Signal]:
    """Signals from one whole JSON-RPC message."""
    method = message.get("method")
    if not isinstance(method, str):
        return []
    params = message.get("params")
    key = method.lower()
    if key in STRATUM_METHODS:
        return [_stratum_signal(key, _param_hint(params), partial=False)]
    if key == "login" and isinstance(params, dict) and _is_login_shape(params):
        return [_login_signal(params.get("agent"), params.get("login"), partial=False)]
    if key in ETHPROXY_LOGIN:
        return [_ethproxy_signal(ETHPROXY_LOGIN[key], _param_hint(params), partial=False)]
    if key in WORK_RPC_METHODS:
        return [_work_signal(WORK_RPC_METHODS[key], partial=False)]
    if key == "submit" and isinstance(params, dict) and {"job_id", "nonce"} <= params.keys():
        # CryptoNote share submission (XMRig Client::submit): never a first message,
        # but the same connection's later sends may reach us too.
        return [_signal("payload", "stratum.submit", "submit job_id+nonce", "high")]
    return []


def _param_hint(params: Any) -> str | None:
    """The agent (subscribe, hello) or user (authorize, eth_submitLogin) in params."""
    if isinstance(params, list) and params and isinstance(params[0], str):
        return params[0]
    if isinstance(params, dict) and isinstance(params.get("agent"), str):
        return str(params["agent"])
    return None


def _is_login_shape(params: dict[str, Any]) -> bool:
    if not isinstance(params.get("login"), str):
        return False
    return any(k in params for k in LOGIN_SHAPE_KEYS) or find_wallet(params["login"]) is not None


def _detail(head: str, extra: str | None, partial: bool) -> str:
    detail = f"{head} {extra}" if extra else head
    return f"{detail} (partial)" if partial else detail


def _stratum_signal(method: str, hint: str | None, partial: bool) -> Signal:
    return _signal("payload", f"stratum.{method}", _detail(method, hint, partial), "high")


def _login_signal(agent: Any, login: Any, partial: bool) -> Signal:
    parts = []
    if isinstance(agent, str):
        parts.append(f"agent={agent}")
    wallet = find_wallet(login) if isinstance(login, str) else None
    if wallet:
        parts.append(f"wallet={wallet}")
    return _signal("payload", "stratum.login", _detail("login", " ".join(parts), partial), "high")


def _ethproxy_signal(method: str, user: str | None, partial: bool) -> Signal:
    return _signal("payload", f"stratum.{method}", _detail(method, user, partial), "high")


def _work_signal(method: str, partial: bool) -> Signal:
    # A node work request is mining, but a pool server or a block explorer on the
    # host could send one too: medium, for the engine to weigh with the rest.
    return _signal("payload", f"mining_rpc.{method}", _detail(method, None, partial), "medium")


def _fallback_signals(chunk: bytes) -> list[Signal]:
    """Bounded pattern search in a message that did not parse (cut off, or sloppy)."""
    if chunk[:1] != b"{":
        return []
    match = _METHOD_RE.search(chunk)
    if match is None:
        return []
    key = _text(match.group(1)).lower()
    if key in STRATUM_METHODS:
        return [_stratum_signal(key, _fallback_first_param(chunk), partial=True)]
    if key == "login":
        return _fallback_login(chunk)
    if key in ETHPROXY_LOGIN:
        hint = _fallback_first_param(chunk)
        return [_ethproxy_signal(ETHPROXY_LOGIN[key], hint, partial=True)]
    if key in WORK_RPC_METHODS:
        return [_work_signal(WORK_RPC_METHODS[key], partial=True)]
    return []


def _fallback_first_param(chunk: bytes) -> str | None:
    match = _FIRST_PARAM_RE.search(chunk) or _AGENT_RE.search(chunk)
    return _text(match.group(1)) if match else None


def _fallback_login(chunk: bytes) -> list[Signal]:
    """A cut-off login counts only with the CryptoNote params shape still visible."""
    params = _PARAMS_OBJ_RE.search(chunk)
    login = _LOGIN_RE.search(chunk, params.end()) if params else None
    if params is None or login is None:
        return []
    value, closed = _text(login.group(1)), bool(login.group(2))
    # A wallet, or a Monero address cut off by the end of the capture.
    walletish = find_wallet(value) is not None or (
        not closed and _MONERO_PREFIX_RE.search(value) is not None
    )
    if not (walletish or _SHAPE_KEY_RE.search(chunk, params.end())):
        return []
    agent = _AGENT_RE.search(chunk)
    return [_login_signal(_text(agent.group(1)) if agent else None, value, partial=True)]


def _http_signals(buf: bytes) -> list[Signal]:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = buf.partition(b"\n\n")
    lines = head.split(b"\n", MAX_HEADERS)
    request_line = _text(lines[0].strip())
    out: list[Signal] = []
    for line in lines[1:MAX_HEADERS]:
        name, colon, value = line.partition(b":")
        header = name.strip().lower()
        if not colon:
            continue
        value = value.strip()
        if header in MINING_HEADERS:
            detail = f"{request_line} {_text(header)}: {_text(value)}"
            out.append(_signal("payload", f"http.{_text(header)}", detail, "high"))
        elif header == b"user-agent" and value.lower().startswith(MINER_AGENT_PREFIXES):
            detail = f"{request_line} user-agent: {_text(value)}"
            out.append(_signal("payload", "http.miner_user_agent", detail, "high"))
    body = body.lstrip(_WS)
    if body[:1] == b"{":
        out.extend(_json_signals(body))
    return _dedupe(out)


# --- Stratum V2, Noise, pool replies ---------------------------------------------------
# Stratum V2 (stratum-mining/sv2-spec, 03-Protocol-Overview.md "Framing" and "Common
# Protocol Messages"; SRI protocols/v2/subprotocols/common-messages setup_connection.rs):
# every frame is extension_type U16, msg_type U8, msg_length U24 (little-endian) and the
# payload.  The first message on a connection is SetupConnection (msg_type 0x00):
# protocol U8 (0 mining, 1 job declaration, 2 template distribution), min_version U16,
# max_version U16, flags U32, endpoint_host STR0_255, endpoint_port U16, vendor,
# hardware_version, firmware, device_id (STR0_255 each: a length byte and the bytes).
SV2_PROTOCOLS: Final = {0: "mining", 1: "job_declaration", 2: "template_distribution"}
SV2_SETUP_CONNECTION: Final = 0x00
SV2_MAX_VERSION: Final = 16  # version 2 today; anything near it is still the protocol
# Mining-protocol messages a client opens channels with (sv2-spec 05-Mining-Protocol.md):
# OpenStandardMiningChannel 0x10, OpenExtendedMiningChannel 0x13.
SV2_OPEN_CHANNEL: Final = {0x10: "OpenStandardMiningChannel", 0x13: "OpenExtendedMiningChannel"}
# The Noise NX handshake an encrypted Stratum V2 connection starts with (sv2-spec
# 04-Protocol-Security.md): the initiator's first message is its ElligatorSwift-encoded
# ephemeral key, 64 bytes indistinguishable from random.
NOISE_FIRST_LEN: Final = 64
# Server messages only a pool sends (the answer a client cannot disguise).
POOL_NOTIFICATIONS: Final = frozenset(
    {"mining.notify", "mining.set_difficulty", "mining.set_target", "mining.set_extranonce"}
)


def _str0_255(buf: bytes, pos: int) -> tuple[str, int] | None:
    if pos >= len(buf):
        return None
    n = buf[pos]
    raw = buf[pos + 1 : pos + 1 + n]
    if len(raw) < n:
        return None
    return raw.decode("utf-8", "replace"), pos + 1 + n


def stratum_v2_signals(data: bytes) -> list[Signal]:
    """A plaintext Stratum V2 SetupConnection (or channel opening) at the start of data."""
    if len(data) < 6:
        return []
    ext = int.from_bytes(data[0:2], "little")
    msg_type = data[2]
    length = int.from_bytes(data[3:6], "little")
    payload = data[6 : 6 + length]
    if ext & 0x7FFF or length > 65535:
        return []
    if msg_type in SV2_OPEN_CHANNEL and len(payload) >= 4:
        name = SV2_OPEN_CHANNEL[msg_type]
        return [_signal("payload", "stratum.v2.open_channel", f"sv2 {name}", "high")]
    if msg_type != SV2_SETUP_CONNECTION or len(payload) < 10:
        return []
    protocol = payload[0]
    lo = int.from_bytes(payload[1:3], "little")
    hi = int.from_bytes(payload[3:5], "little")
    if protocol not in SV2_PROTOCOLS or not 1 <= lo <= hi <= SV2_MAX_VERSION:
        return []
    fields: list[str] = []
    pos = 9
    for i in range(5):  # endpoint_host, (port), vendor, hardware_version, firmware, device_id
        got = _str0_255(payload, pos)
        if got is None:
            break
        value, pos = got
        fields.append(value)
        if i == 0:
            pos += 2  # endpoint_port
    complete = len(fields) == 5 and pos == length
    if len(payload) == length and not complete:
        return []  # the whole frame is here and it is not a SetupConnection
    host = fields[0] if fields else "?"
    vendor = fields[1] if len(fields) > 1 else "?"
    detail = (
        f"sv2 SetupConnection protocol={SV2_PROTOCOLS[protocol]} versions={lo}-{hi} "
        f"endpoint={host} vendor={vendor}"
    )
    confidence: Confidence = "high" if protocol == 0 else "medium"
    return [_signal("payload", "stratum.v2.setup_connection", detail, confidence)]


def noise_handshake_start(first: bytes) -> bool:
    """A first message that looks like Noise's ephemeral key: 64 random-looking bytes."""
    if len(first) != NOISE_FIRST_LEN:
        return False
    printable = sum(1 for b in first if 0x20 <= b < 0x7F)
    return len(set(first)) >= 40 and printable < 48


def stratum_reply_signals(reply: bytes) -> list[Signal]:
    """What a pool answers: job notifications, difficulty, a login result with a job."""
    out: list[Signal] = []
    lines = [x.strip() for x in bytes(reply[:SCAN_LIMIT]).split(b"\n", MAX_LINES)[:MAX_LINES]]
    for line in lines:
        if line[:1] != b"{":
            continue
        message = _load_object(line)
        if message is None:
            continue
        method = message.get("method")
        if isinstance(method, str) and method.lower() in POOL_NOTIFICATIONS:
            out.append(_signal("payload", "stratum.pool_reply", f"pool sent {method}", "high"))
        elif isinstance(method, str) and method == "job" and _is_job(message.get("params")):
            out.append(_signal("payload", "stratum.pool_reply", "pool sent a job", "high"))
        result = message.get("result")
        if isinstance(result, dict) and _is_job(result.get("job")):
            out.append(_signal("payload", "stratum.pool_reply", "login result with a job", "high"))
        elif isinstance(result, list) and _subscription(result):
            detail = "subscribe result with mining.notify"
            out.append(_signal("payload", "stratum.pool_reply", detail, "high"))
    return _dedupe(out)


def _is_job(job: Any) -> bool:
    """The CryptoNote job shape (XMRig Job::parse): blob, job_id and target."""
    return isinstance(job, dict) and {"blob", "job_id", "target"} <= job.keys()


def _subscription(result: list[Any]) -> bool:
    """[[["mining.set_difficulty", id], ["mining.notify", id]], extranonce1, size]."""
    subs = result[0] if result else None
    if not isinstance(subs, list):
        return False
    return any(isinstance(x, list) and x and x[0] == "mining.notify" for x in subs[:8])


# --- Command lines ------------------------------------------------------------------


def _basename(path: str | None) -> str:
    if not path:
        return ""
    base = posixpath.basename(path)
    # /proc/PID/exe of an unlinked binary reads "name (deleted)".
    return base.removesuffix(" (deleted)").lower()


def _is_trusted_text_tool(argv: Sequence[str], exe: str | None) -> bool:
    if not argv or _basename(argv[0]) not in TEXT_TOOLS:
        return False
    # An unknown exe (the engine normally has it from the kernel) gets the benefit
    # of the doubt: argv alone cannot tell a renamed miner from the real tool.
    return exe is None or exe.startswith(_SYSTEM_DIRS)


def _split_token(token: str) -> tuple[str, str | None]:
    """``--name=value`` / ``-oVALUE`` into (name, attached value); else (token, None)."""
    if token.startswith("--"):
        name, eq, value = token.partition("=")
        return (name, value) if eq else (token, None)
    if token in _SINGLE_DASH_LONG:
        return token, None
    if len(token) > 2 and token[:2] in _ATTACHED_SHORT:
        return token[:2], token[2:].removeprefix("=")
    return token, None


def parse_command_line(args: Sequence[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Options as (name, value) pairs and the positional arguments of ``args``.

    Without a program's option table, a value is known only for options we
    interpret (pool, user, algo, config) or when attached (``--x=v``, ``-oV``); the
    token after any other option is left a positional.  ``--`` ends options.
    """
    options: list[tuple[str, str | None]] = []
    positionals: list[str] = []
    i, n = 0, len(args)
    while i < n:
        token = args[i]
        i += 1
        if token == "--":
            positionals.extend(args[i:])
            break
        if len(token) < 2 or not token.startswith("-"):
            positionals.append(token)
            continue
        name, value = _split_token(token)
        if value is None and name in _VALUE_OPTIONS and i < n and not args[i].startswith("-"):
            value = args[i]
            i += 1
        options.append((name, value))
    return options, positionals


def miner_argv_signals(
    argv: list[str], exe: str | None, iocs: Iocs, config_text: str | None = None
) -> list[Signal]:
    """Signals from an exec's argv, its executable path, and (optionally) its config.

    ``config_text`` is the content of the file :func:`miner_config_path` named; the
    engine reads it, this function only parses it.  A pool URL counts only where a
    program would connect to it: as the value of a pool option, or as a bare
    argument of a process that otherwise looks like a miner.
    """
    args = [str(a)[:MAX_ARG_LEN] for a in argv[:MAX_ARGS]]
    out = _name_signals(args, exe, iocs)
    if not _is_trusted_text_tool(args, exe):
        options, positionals = parse_command_line(args[1:])
        out.extend(_option_signals(options, positionals, iocs, bool(out)))
    if config_text:
        out.extend(config_signals(config_text, iocs))
    return _dedupe(out)


def _name_signals(args: Sequence[str], exe: str | None, iocs: Iocs) -> list[Signal]:
    names = {_basename(exe), _basename(args[0]) if args else ""} - {""}
    hits = sorted(names & iocs.miner_names)
    if not hits:
        return []
    # A name is the weakest evidence: renaming a binary costs nothing, and
    # "miner" is also an ordinary word.
    return [_signal("name", "name.miner_binary", ", ".join(hits), "low")]


def _option_signals(
    options: list[tuple[str, str | None]], positionals: list[str], iocs: Iocs, named: bool
) -> list[Signal]:
    out: list[Signal] = []
    flags = _miner_flags(options, iocs)
    if flags:
        confidence: Confidence = "high" if len(flags) >= 2 else "medium"
        out.append(_signal("argv", "argv.miner_flags", " ".join(flags), confidence))
    for name, value in options:
        if value is not None:
            out.extend(_value_signals(name, value, iocs))
    if flags or named or out:
        out.extend(_bare_url_signals(positionals, iocs))
    return out


def _miner_flags(options: list[tuple[str, str | None]], iocs: Iocs) -> list[str]:
    seen = sorted({name for name, _ in options if name in iocs.miner_flags})
    clear = [f for f in seen if f not in AMBIGUOUS_FLAGS]
    # Ambiguous names count only next to an unambiguous one; --algo never here.
    return clear + [f for f in seen if f in AMBIGUOUS_FLAGS and f != "--algo"] if clear else []


def _value_signals(name: str, value: str, iocs: Iocs) -> list[Signal]:
    if name in POOL_OPTIONS:
        return _pool_value_signals(name, value, iocs)
    if name in USER_OPTIONS:
        wallet = find_wallet(value)
        return [_signal("argv", "argv.wallet", f"{name} {wallet}", "medium")] if wallet else []
    if name in ALGO_OPTIONS and is_miner_algo(value):
        return [_signal("argv", "argv.algo", f"{name} {value}", "medium")]
    return []


def _pool_value_signals(name: str, value: str, iocs: Iocs) -> list[Signal]:
    out: list[Signal] = []
    if value.lower().startswith(iocs.pool_url_schemes):
        out.append(_signal("argv", "argv.pool_url", f"{name} {value}", "high"))
    else:
        suffix = domain_match(url_host(value), iocs.pool_domains)
        if suffix:
            detail = f"{name} {value} (pool domain {suffix})"
            out.append(_signal("argv", "argv.pool_domain", detail, "medium"))
    wallet = find_wallet(value)  # ethminer: scheme://WALLET.worker@host:port
    if wallet:
        out.append(_signal("argv", "argv.wallet", f"{name} {wallet}", "medium"))
    return out


def _bare_url_signals(positionals: list[str], iocs: Iocs) -> list[Signal]:
    for arg in positionals:
        if arg.lower().startswith(iocs.pool_url_schemes):
            return [_signal("argv", "argv.pool_url", arg, "high")]
    return []


def is_miner_algo(value: str) -> bool:
    """True for a mining algorithm name as miners spell it (``rx/0``, ``kawpow``)."""
    algo = value.strip().lower()[:64]
    return algo in MINER_ALGOS or algo.startswith(_ALGO_PREFIXES)


def url_host(value: str) -> str:
    """The host of ``scheme://user@host:port/path`` or ``host:port``, lower-cased."""
    rest = value.partition("://")[2] or value
    rest = rest.split("/", 1)[0].rpartition("@")[2]
    if rest.startswith("["):  # [v6]:port
        return rest[1:].partition("]")[0].lower()
    return rest.partition(":")[0].lower()


def miner_config_path(argv: list[str]) -> str | None:
    """The config file named by ``-c PATH``, ``-cPATH.json``, ``--config[=]PATH``.

    Relative paths come back as given (the engine resolves them against the
    process's cwd).  ``None`` where ``-c`` means something else: a shell's or
    interpreter's code (``sh -c``, ``python -c``), a compiler's compile-only flag.
    """
    args = [str(a)[:MAX_ARG_LEN] for a in argv[:MAX_ARGS]]
    skip_short = bool(args) and _interpreter_name(args[0]) in _DASH_C_NOT_CONFIG
    for i, token in enumerate(args[1:], start=1):
        if token == "--":
            break
        nxt = args[i + 1] if i + 1 < len(args) else None
        path = _config_value(token, nxt, skip_short)
        if path is not None:
            return path
    return None


def _interpreter_name(argv0: str) -> str:
    base = _basename(argv0)
    # python3.11, pypy3.10 -> python3, pypy3
    return re.sub(r"(\d)\.\d+$", r"\1", base)


def _config_value(token: str, nxt: str | None, skip_short: bool) -> str | None:
    if token.startswith("--config="):
        return _plausible_path(token.partition("=")[2])
    if token == "--config":
        return _plausible_path(nxt)
    if skip_short:
        return None
    if token == "-c":
        return _plausible_path(nxt)
    if token.startswith("-c") and not token.startswith("--") and len(token) > 2:
        path = token[2:].removeprefix("=")
        # "-cf" (tar), "-cv": only an attached value that looks like a config file.
        return path if path.lower().endswith(_CONFIG_SUFFIXES) else None
    return None


def _plausible_path(value: str | None) -> str | None:
    if not value or value.startswith("-") or len(value) > MAX_ARG_LEN:
        return None
    # Code, not a path: "print(1); x", "import os".
    if any(c in value for c in "\n\r\t ;()"):
        return None
    return value


# --- Config files ---------------------------------------------------------------------


def config_signals(text: str, iocs: Iocs) -> list[Signal]:
    """Signals from a miner config: XMRig-style JSON, or key=value text as a fallback."""
    text = text[:CONFIG_LIMIT]
    try:
        doc = orjson.loads(text.encode("utf-8", "surrogatepass"))
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        doc = None
    if isinstance(doc, dict):
        return _dedupe(_json_config_signals(doc, iocs))
    return _dedupe(_text_config_signals(text, iocs))


def _json_config_signals(doc: dict[str, Any], iocs: Iocs) -> list[Signal]:
    out: list[Signal] = []
    pools = doc.get("pools")
    entries = [p for p in pools[:64] if isinstance(p, dict)] if isinstance(pools, list) else []
    entries.append(doc)  # cpuminer-opt / single-pool configs keep url/user at top level
    xmrig_doc = bool(_XMRIG_DOC_KEYS & doc.keys())
    for entry in entries:
        out.extend(_pool_entry_signals(entry, iocs, in_pools=entry is not doc, xmrig=xmrig_doc))
    if "donate-level" in doc:
        out.append(_signal("config", "config.donate_level", "donate-level", "medium"))
    return out


def _pool_entry_signals(
    entry: dict[str, Any], iocs: Iocs, *, in_pools: bool, xmrig: bool
) -> list[Signal]:
    out: list[Signal] = []
    url = _first_str(entry, ("url", "pool"))
    user = _first_str(entry, ("user", "wallet", "login"))
    if url:
        out.extend(_config_url_signals(url, iocs))
        # The XMRig shape pools:[{url, user}] with url "host:port" (a DB pool's
        # "postgres://..." is not it): strong with XMRig's own keys around it.
        if in_pools and user and not out and "://" not in url:
            strong = xmrig or bool(_XMRIG_POOL_KEYS & entry.keys())
            out.append(_signal("config", "config.pools", f"url={url} user={user}",
                               "high" if strong else "medium"))  # fmt: skip
    wallet = find_wallet(user) if user else None
    if wallet:
        out.append(_signal("config", "config.wallet", wallet, "medium"))
    algo = _first_str(entry, ("algo", "algorithm"))
    if algo and is_miner_algo(algo):
        out.append(_signal("config", "config.algo", algo, "medium"))
    return out


def _first_str(entry: dict[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_ARG_LEN]
    return None


def _config_url_signals(url: str, iocs: Iocs) -> list[Signal]:
    if url.lower().startswith(iocs.pool_url_schemes):
        return [_signal("config", "config.pool_url", url, "high")]
    suffix = domain_match(url_host(url), iocs.pool_domains)
    if suffix:
        return [_signal("config", "config.pool_url", f"{url} (pool domain {suffix})", "high")]
    return []


def _text_config_signals(text: str, iocs: Iocs) -> list[Signal]:
    out: list[Signal] = []
    for match in _CONFIG_KV_RE.finditer(text):
        key, value = match.group(1).lower(), match.group(2)
        if key == "url" or key.startswith("pool"):
            out.extend(_config_url_signals(value, iocs))
        elif key in ("user", "wallet"):
            wallet = find_wallet(value)
            if wallet:
                out.append(_signal("config", "config.wallet", wallet, "medium"))
        elif key in ("algo", "algorithm") and is_miner_algo(value):
            out.append(_signal("config", "config.algo", value, "medium"))
        elif key == "donate-level":
            out.append(_signal("config", "config.donate_level", "donate-level", "medium"))
    return out


# --- DNS and ports --------------------------------------------------------------------


def pool_dns_signal(name: str, iocs: Iocs) -> Signal | None:
    """A DNS name that is, or is under, a known mining-pool domain."""
    suffix = domain_match(name[:MAX_ARG_LEN], iocs.pool_domains)
    if suffix is None:
        return None
    return _signal("dns", "dns.pool_domain", f"{name} (pool domain {suffix})", "medium")


def pool_port_signal(port: int, iocs: Iocs) -> Signal | None:
    """A connect to a port pools commonly listen on: context, an alert alone only if configured.

    ``None`` when the port is not listed or the user turned these off
    (``pool_port_connects = "off"``).
    """
    if iocs.pool_port_connects == "off" or port not in iocs.pool_ports:
        return None
    return _signal("behaviour", "behaviour.pool_port", f"tcp port {port}", "low")
