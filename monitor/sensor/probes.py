"""Load, attach and drain the kernel programs (kernel -> raw records).

One :class:`Sensor` owns the bcc module: it compiles ``probes/rlguard.bpf.c``
with the sizes from the config, fills the tag-key table, links the cgroup
programs, drains the ring buffer in batches and reads the kernel counters.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.config import MAX_TAGS, GpuConfig, ProbesConfig, StreamsConfig, fnv1a_64
from monitor.sensor import bpf_link
from monitor.sensor.events import EVENT_TYPES

PROBES_DIR = Path(
    os.environ.get("RLGUARD_PROBES_DIR", Path(__file__).resolve().parents[2] / "probes")
)
PROGRAM = "rlguard.bpf.c"
# a quoted include: one of the program's own files, spliced by program_text()
LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CGROUP2_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")

# Every tracepoint the programs use (checked by `rlguard check`).
TRACEPOINTS = (
    "sched/sched_process_exec",
    "syscalls/sys_enter_clone",
    "syscalls/sys_enter_clone3",
    "sched/sched_process_fork",
    "syscalls/sys_enter_exit_group",
    "signal/signal_generate",
    "signal/signal_deliver",
    "sched/sched_process_exit",
    "syscalls/sys_enter_connect",
    "syscalls/sys_exit_connect",
    "syscalls/sys_enter_bind",
    "syscalls/sys_exit_bind",
    "syscalls/sys_enter_listen",
    "syscalls/sys_exit_listen",
    "sock/inet_sock_set_state",
    "syscalls/sys_enter_dup3",
    "syscalls/sys_enter_openat",
    "syscalls/sys_exit_openat",
    "syscalls/sys_enter_close",
)
# used when the kernel has them (dup2 and open do not exist on arm64; openat2 is
# Linux 5.6+, close_range 5.9+)
OPTIONAL_TRACEPOINTS = (
    "sock/sock_send_length",  # Linux 6.3+: ties TLS writes to their socket (tls.bpf.h)
    "syscalls/sys_enter_dup2",
    "syscalls/sys_enter_open",
    "syscalls/sys_enter_openat2",
    "syscalls/sys_enter_close_range",
    "sock/sock_send_length",  # Linux 6.3+: who sent a connection's first bytes
)
GPU_OPTIONAL = {
    "RLG_HAVE_OPEN": ("sys_enter_open", "sys_exit_open"),
    "RLG_HAVE_OPENAT2": ("sys_enter_openat2", "sys_exit_openat2"),
    "RLG_HAVE_CLOSE_RANGE": ("sys_enter_close_range",),
}

# cgroup programs: (function, bcc program type name, attach type)
CGROUP_PROGRAMS = (
    ("rlg_connect4", "CGROUP_SOCK_ADDR", bpf_link.BPF_CGROUP_INET4_CONNECT),
    ("rlg_connect6", "CGROUP_SOCK_ADDR", bpf_link.BPF_CGROUP_INET6_CONNECT),
    ("rlg_egress", "CGROUP_SKB", bpf_link.BPF_CGROUP_INET_EGRESS),
)
# the reply of each stream (streams.reply_bytes > 0)
INGRESS_PROGRAM = ("rlg_ingress", "CGROUP_SKB", bpf_link.BPF_CGROUP_INET_INGRESS)

# uprobes on TLS libraries (probes/tls.bpf.h): library kind -> (symbol, program); a symbol
# the file does not export is skipped (SSL_write_ex is OpenSSL 1.1.1+)
TLS_UPROBES: dict[str, tuple[tuple[str, str], ...]] = {
    "openssl": (
        ("SSL_write", "rlg_ssl_write"),
        ("SSL_write_ex", "rlg_ssl_write_ex"),
        ("SSL_set_fd", "rlg_ssl_set_fd"),
        ("SSL_set_accept_state", "rlg_ssl_server"),
        ("SSL_accept", "rlg_ssl_server"),
        ("SSL_free", "rlg_ssl_free"),
    ),
    "gnutls": (
        ("gnutls_record_send", "rlg_gnutls_send"),
        ("gnutls_transport_set_int2", "rlg_gnutls_set_int2"),
        ("gnutls_deinit", "rlg_ssl_free"),
    ),
}

MISS_NAMES = ("proc_state_full", "tagset_full", "exec_without_stack", "connect_fold_full")
# enum rlg_quiet: records the kernel chose not to send, by reason
QUIET_NAMES = (
    "tcp_state_duplicate",
    "tcp_state_minor",
    "connect_folded",
    "tcp_state_folded",
    "accept_folded",
    "unix_connect_folded",
)
# extra compiler flags for the probes, for benchmarks only: -DRLG_NO_TCP_FILTER,
# -DRLG_NO_CONNECT_FOLD and -DRLG_NO_TCP_FOLD build the "before" variants that
# bench/run.py compares
EXTRA_CFLAGS_ENV = "RLGUARD_BPF_CFLAGS"

TAG_VALUE_LEN = 64
# records per drain(): a full 16 MiB ring is ~200k records, ~22 MiB as Python bytes
# all alive at once; a bounded batch keeps that peak (and the heap it fragments) small
DRAIN_MAX = 8192


def program_text(path: Path | None = None) -> str:
    """The kernel program as one text, its own files spliced in where it includes them.

    bcc rewrites only the main file it compiles (map method calls, tracepoint
    contexts, the section of each program): code in an #include'd file would
    compile unrewritten.  So a quoted include that names a file (relative to
    the including file, then to the probes folder) is replaced by that file's
    text, each file once, between #line markers that keep compile errors
    pointing at the file and line they come from.  Angle includes are left to
    the compiler; a quoted one that names no file is too, and it reports it.
    """
    seen: set[Path] = set()

    def spliced(src: Path) -> list[str]:
        seen.add(src)
        name = str(src).replace("\\", "\\\\").replace('"', '\\"')  # a C string literal
        out = [f'#line 1 "{name}"']
        for lineno, line in enumerate(src.read_text().splitlines(), start=1):
            m = LOCAL_INCLUDE.match(line)
            candidates = (src.parent / m.group(1), PROBES_DIR / m.group(1)) if m else ()
            inc = next((c.resolve() for c in candidates if c.is_file()), None)
            if inc is None:
                out.append(line)
                continue
            if inc not in seen:
                out += spliced(inc)
            out.append(f'#line {lineno + 1} "{name}"')
        return out

    return "\n".join(spliced((path or PROBES_DIR / PROGRAM).resolve())) + "\n"


def device_numbers(patterns: tuple[str, ...]) -> dict[int, str]:
    """st_rdev -> path of every character device node the configured patterns name."""
    out: dict[int, str] = {}
    for pat in patterns:
        paths = sorted(glob.glob(pat)) if pat.endswith("*") else [pat]
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                out.setdefault(st.st_rdev, path)
    return out


def gpu_probe_patterns(cfg: GpuConfig) -> tuple[str, ...]:
    """The patterns the kernel's open()/close() programs match; () leaves them out.

    "auto" loads them only when a watched device exists: on a host without a
    GPU they would only add cost to every open() and close() (and to the
    compile), and the reconcile scan still finds holders of a node made later.
    """
    if cfg.probes == "off" or (cfg.probes == "auto" and not device_numbers(cfg.devices)):
        return ()
    return cfg.devices


class SensorError(RuntimeError):
    """The probes could not be compiled, loaded or attached."""


@dataclass
class Counters:
    sent: dict[str, int]
    drops: dict[str, int]
    misses: dict[str, int]
    quiet: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Fold:
    """One entry of the kernel's connect_folds map."""

    key: Any
    id: int
    count: int
    last_seen_ns: int


def find_tracefs() -> str | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def find_cgroup2() -> str | None:
    """The cgroup v2 mount point, from /proc/self/mounts."""
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return None
    v2 = [m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2"]
    for cand in CGROUP2_CANDIDATES:
        if cand in v2:
            return cand
    return v2[0] if v2 else None


def has_group_dead(tracefs: str) -> bool:
    fmt = Path(tracefs, "events/sched/sched_process_exit/format")
    try:
        return "group_dead" in fmt.read_text()
    except OSError:
        return False


# the compiler bcc links: needed only while the programs are built
COMPILER_LIBS = ("libLLVM", "libclang")
MADV_DONTNEED = 4


def release_compiler_memory() -> int:
    """Give back what compiling the probes left mapped; returns bytes unmapped.

    bcc compiles in-process: LLVM and clang leave ~70 MiB of their code
    paged in and ~25 MiB of freed heap that glibc keeps.  Neither runs again
    once the programs are loaded, so drop the code pages from this process
    (read-only executable file mappings only: dropping them is what reclaim
    does anyway, and a later call would fault them back in from the page
    cache) and return the free heap to the kernel.  Best effort: a failure
    only leaves memory mapped.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        dropped = 0
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 6 or parts[1] != "r-xp":
                    continue
                if not any(lib in parts[5] for lib in COMPILER_LIBS):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
                    dropped += hi - lo
        return dropped
    except (OSError, AttributeError, ValueError):
        return 0


class Sensor:
    """The loaded kernel programs and their ring buffer."""

    def __init__(
        self,
        probes: ProbesConfig,
        tag_keys: list[str],
        gpu_devices: tuple[str, ...] = (),
        streams: StreamsConfig | None = None,
    ) -> None:
        if len(tag_keys) > MAX_TAGS:
            raise SensorError(
                f"{len(tag_keys)} tag keys configured; the kernel side holds {MAX_TAGS}"
            )
        self.probes = probes
        self.tag_keys = list(tag_keys)
        self.gpu_devices = tuple(gpu_devices)
        if streams is None:
            from monitor.config import load_config

            streams = load_config(None).streams
        self.streams = streams
        self.tls_attached: dict[str, list[str]] = {}  # library path -> symbols attached
        self.bpf: Any = None
        self._links: list[int] = []
        self._cgroup_fd: int | None = None
        self._batch: list[bytes] = []
        self.load_seconds = 0.0
        self._compile_thread: threading.Thread | None = None
        self._compile_started = 0.0
        self._cgroup2 = ""
        self._compiled: Any = None
        self._compile_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------

    def cflags(self, tracefs: str) -> list[str]:
        p = self.probes
        flags = [
            f"-DRLG_RING_PAGES={p.ring_pages}",
            f"-DRLG_FIRST_BYTES={p.first_bytes}",
            f"-DRLG_MAX_ARGS={p.max_args}",
            f"-DRLG_ARG_SIZE={p.arg_size}",
            f"-DRLG_ENV_SCAN={p.env_scan}",
            f"-DRLG_MAX_TAGS={MAX_TAGS}",
            f"-DRLG_TAG_VALUE_LEN={TAG_VALUE_LEN}",
            f"-DRLG_STREAM_BYTES={self.streams.bytes}",
            f"-DRLG_REPLY_BYTES={self.streams.reply_bytes}",
            f"-DRLG_STREAM_WINDOW_NS={int(self.streams.window_s * 1e9)}ULL",
            f"-DRLG_STREAM_TICK_NS={int(self.streams.activity_interval_s * 1e9)}ULL",
            f"-DRLG_SELF_TGID={os.getpid()}",
            "-Wno-macro-redefined",
            "-Wno-unused-function",
        ]
        if has_group_dead(tracefs):
            flags.append("-DRLG_HAVE_GROUP_DEAD")
        if Path(tracefs, "events/syscalls/sys_enter_dup2").is_dir():
            flags.append("-DRLG_HAVE_DUP2")
        # one program for the TLS binding and the first sender (send_length.bpf.h)
        if Path(tracefs, "events/sock/sock_send_length").is_dir():
            flags.append("-DRLG_HAVE_SOCK_SEND_LENGTH")
        if not self.gpu_devices:
            flags.append("-DRLG_NO_GPU")  # no open/close programs at all
        for define, tps in GPU_OPTIONAL.items():
            if all(Path(tracefs, "events/syscalls", tp).is_dir() for tp in tps):
                flags.append(f"-D{define}")
        flags += os.environ.get(EXTRA_CFLAGS_ENV, "").split()
        return flags

    def start_compile(self) -> None:
        """Start compiling in a thread; load() takes the result.

        clang/LLVM run in C with the GIL released, so on a second core the
        compile overlaps whatever the caller imports and builds meanwhile.
        """
        if self._compile_thread is not None or self.bpf is not None:
            return
        self._compile_started = time.monotonic()
        self._compile_thread = threading.Thread(
            target=self._compile_in_thread, name="rlguard-compile", daemon=True
        )
        self._compile_thread.start()

    def _compile_in_thread(self) -> None:
        try:
            self._compiled = self._compile()
        except BaseException as exc:  # handed to load(), raised there
            self._compile_error = exc

    def _compile(self) -> Any:
        """Compile and load the programs; tracepoint programs are attached on return."""
        try:
            from bcc import BPF
        except ImportError as exc:
            raise SensorError(
                "the bcc Python binding is missing: install python3-bpfcc (run `sudo make setup`)"
            ) from exc
        tracefs = find_tracefs()
        if tracefs is None:
            raise SensorError("tracefs is not mounted: mount -t tracefs none /sys/kernel/tracing")
        cgroup2 = find_cgroup2()
        if cgroup2 is None:
            raise SensorError("no cgroup v2 mount found (needed for connect and egress hooks)")
        self._cgroup2 = cgroup2
        src = PROBES_DIR / PROGRAM
        try:
            text = program_text(src)
            # TRACEPOINT_PROBE functions are attached by bcc during construction
            return BPF(text=text.encode(), cflags=self.cflags(tracefs))
        except Exception as exc:  # bcc raises bare Exception
            raise SensorError(f"compiling/loading {src} failed: {exc}") from exc

    def load(self) -> None:
        """Compile (or finish start_compile), load and attach everything."""
        if self._compile_thread is None:
            started = time.monotonic()
            self.bpf = self._compile()
        else:
            started = self._compile_started
            self._compile_thread.join()
            self._compile_thread = None
            if self._compile_error is not None:
                err, self._compile_error = self._compile_error, None
                raise err
            self.bpf, self._compiled = self._compiled, None
        from bcc import BPF  # importable: it compiled

        cgroup2 = self._cgroup2
        self._set_tag_keys()
        self._set_gpu_patterns()
        try:
            self._cgroup_fd = os.open(cgroup2, os.O_RDONLY | os.O_DIRECTORY)
            programs = list(CGROUP_PROGRAMS)
            if self.streams.reply_bytes:
                programs.append(INGRESS_PROGRAM)
            for name, ptype, attach in programs:
                kwargs: dict[str, Any] = {}
                if ptype == "CGROUP_SOCK_ADDR":
                    kwargs["attach_type"] = attach  # checked at load time
                fn = self.bpf.load_func(name.encode(), getattr(BPF, ptype), **kwargs)
                self._links.append(bpf_link.link_create(fn.fd, self._cgroup_fd, attach))
        except Exception as exc:
            self.close()
            raise SensorError(f"attaching cgroup programs at {cgroup2} failed: {exc}") from exc
        self.bpf[b"events"].open_ring_buffer(self._on_record)
        release_compiler_memory()
        self.load_seconds = time.monotonic() - started

    def attach_tls(self, path: str, kind: str) -> list[str]:
        """Attach the TLS uprobes of ``kind`` ("openssl", "gnutls") to the library file.

        Uprobes sit on the file (its inode): every process that maps it is covered, from
        the next call on.  Returns the symbols attached; a symbol the file lacks is
        skipped, and a file none of whose symbols attach raises SensorError.
        """
        done: list[str] = []
        errors: list[str] = []
        for sym, fn in TLS_UPROBES[kind]:
            try:
                self.bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=fn.encode())
            except Exception as exc:  # bcc raises bare Exception
                errors.append(f"{sym}: {exc}")
                continue
            done.append(sym)
        if not done:
            raise SensorError(f"no TLS uprobe attached to {path}: {'; '.join(errors)[:300]}")
        self.tls_attached[path] = done
        return done

    def close(self) -> None:
        """Detach everything (links close with their fds, tracepoints with bcc)."""
        for fd in self._links:
            try:
                os.close(fd)
            except OSError:
                pass
        self._links.clear()
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            except Exception:
                pass
            self.bpf = None

    # -- configuration ---------------------------------------------------------

    def _set_tag_keys(self) -> None:
        table = self.bpf[b"tag_keys"]
        for idx, key in enumerate(self.tag_keys):
            table[table.Key(fnv1a_64(key))] = table.Leaf(idx)

    def _set_gpu_patterns(self) -> None:
        if not self.gpu_devices:
            return
        table = self.bpf[b"gpu_patterns"]
        for idx, pattern in enumerate(self.gpu_devices):
            leaf = table.Leaf()
            prefix = pattern.endswith("*")
            raw = pattern.rstrip("*").encode()
            leaf.len = len(raw)
            leaf.prefix = int(prefix)
            head = raw[:8]
            leaf.head = int.from_bytes(head.ljust(8, b"\0"), "little")
            leaf.head_mask = int.from_bytes(b"\xff" * len(head) + b"\0" * (8 - len(head)), "little")
            ctypes.memmove(ctypes.addressof(leaf) + type(leaf).s.offset, raw, len(raw))
            table[table.Key(idx)] = leaf

    # -- GPU fd bookkeeping (user space keeps the kernel's fd set in step) -------

    def gpu_fd_add(self, pid: int, fds: list[int]) -> None:
        """Mark fds of pid as GPU holdings (a fork copied them) so close() is seen."""
        if self.bpf is None or not self.gpu_devices or not fds:
            return
        table = self.bpf[b"gpu_fds"]
        for fd in fds:
            table[table.Key((pid << 32) | (fd & 0xFFFFFFFF))] = table.Leaf(1)
        procs = self.bpf[b"gpu_procs"]
        procs[procs.Key(pid)] = procs.Leaf(1)

    def gpu_fd_remove(self, pid: int, fds: list[int], whole_process: bool = False) -> None:
        """Forget fds of pid (ended by exec, exit or close_range)."""
        if self.bpf is None or not self.gpu_devices:
            return
        table = self.bpf[b"gpu_fds"]
        for fd in fds:
            try:
                del table[table.Key((pid << 32) | (fd & 0xFFFFFFFF))]
            except KeyError:
                pass
        if whole_process:
            procs = self.bpf[b"gpu_procs"]
            try:
                del procs[procs.Key(pid)]
            except KeyError:
                pass

    def layouts(self) -> dict[str, type]:
        """ctypes classes of every record, as bcc derived them from rlguard.h."""
        return {name: self.bpf[f"layout_{name}".encode()].Leaf for name in EVENT_TYPES.values()}

    # -- seeding ---------------------------------------------------------------

    def seed_process(self, pid: int, ppid: int, tagset_id: int, origin: int) -> None:
        """Record a process that existed before the probes (no overwrite of live state)."""
        table = self.bpf[b"proc_state"]
        key = table.Key(pid)
        try:
            cur = table[key]
            if cur.tagset_id:
                return  # the kernel saw this process exec with tags: it knows better
        except KeyError:
            pass
        leaf = table.Leaf()
        leaf.ppid = ppid
        leaf.tagset_id = tagset_id
        leaf.tag_origin = origin
        table[key] = leaf

    def seed_tagset(self, tagset_id: int, values: dict[int, str]) -> None:
        """Store a user-space tagset so kernel-side inheritance copies real values."""
        table = self.bpf[b"tagsets"]
        leaf = table.Leaf()
        blob = bytearray(MAX_TAGS * TAG_VALUE_LEN)
        for idx, value in values.items():
            raw = value.encode("utf-8", "surrogateescape")[: TAG_VALUE_LEN - 1]
            blob[idx * TAG_VALUE_LEN : idx * TAG_VALUE_LEN + len(raw)] = raw
            leaf.present_mask |= 1 << idx
            leaf.own_mask |= 1 << idx
        ctypes.memmove(ctypes.addressof(leaf) + type(leaf).values.offset, bytes(blob), len(blob))
        table[table.Key(tagset_id)] = leaf

    def kernel_state(self, pid: int) -> tuple[int, int, int] | None:
        """(ppid, tagset_id, tag_origin) the kernel holds for pid, if any."""
        table = self.bpf[b"proc_state"]
        try:
            v = table[table.Key(pid)]
        except KeyError:
            return None
        return int(v.ppid), int(v.tagset_id), int(v.tag_origin)

    def kernel_tagset(self, tagset_id: int) -> tuple[int, bytes] | None:
        """(present_mask, values blob) of a tagset still in the kernel map."""
        table = self.bpf[b"tagsets"]
        try:
            v = table[table.Key(tagset_id)]
        except KeyError:
            return None
        return int(v.present_mask), bytes(v.values)

    # -- draining --------------------------------------------------------------

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        # copy out now: the ring slot is released when the callback returns
        self._batch.append(ctypes.string_at(data, size))
        # a negative return makes libbpf stop after this (consumed) record
        return -1 if len(self._batch) >= DRAIN_MAX else 0

    def drain(self) -> list[bytes]:
        """Records committed so far, in ring order, at most DRAIN_MAX (no wake-ups needed).

        A full batch means more may be waiting: call again.  The rest stays in
        the ring, which is the buffer that ``probes.ring_pages`` sizes.
        """
        self.bpf.ring_buffer_consume()
        batch, self._batch = self._batch, []
        return batch

    def counters(self) -> Counters:
        def read(name: str, labels: dict[int, str]) -> dict[str, int]:
            table = self.bpf[name.encode()]
            return {label: int(sum(table[table.Key(i)])) for i, label in labels.items()}

        return Counters(
            sent=read("sent", EVENT_TYPES),  # by record type number (not contiguous)
            drops=read("drops", EVENT_TYPES),
            misses=read("misses", dict(enumerate(MISS_NAMES))),
            quiet=read("quiet", dict(enumerate(QUIET_NAMES))),
        )

    # -- connect folds -----------------------------------------------------------

    def folds(self) -> list[Fold]:
        """Every live connect fold (a snapshot; the kernel keeps counting)."""
        return [
            Fold(k, int(v.id), int(v.count), int(v.last_seen_ns))
            for k, v in self.bpf[b"connect_folds"].items()
        ]

    def retire_fold(self, key: Any) -> int | None:
        """Remove an idle fold; returns its final count (None if already gone).

        lookup-and-delete is one map operation, so a count read here is final
        unless a connect with this very key races the removal itself.
        """
        from bcc.libbcc import lib

        table = self.bpf[b"connect_folds"]
        leaf = table.Leaf()
        if lib.bpf_lookup_and_delete(table.map_fd, ctypes.byref(key), ctypes.byref(leaf)) < 0:
            return None
        return int(leaf.count)
