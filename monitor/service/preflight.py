"""Can the monitor run here?  Each check says what it found and how to fix it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from monitor.sensor import bpf_link
from monitor.sensor.probes import TRACEPOINTS, find_cgroup2, find_tracefs

FALLBACK_MARKER = Path("/var/lib/rlguard/headers-fallback")

# capability bits (linux/capability.h)
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    note: bool = False  # informational: absent is fine (optional extras)

    def line(self) -> str:
        tag = "ok" if self.ok else ("FAIL" if self.required else "note" if self.note else "warn")
        text = f"[{tag:>4}] {self.name}: {self.detail}"
        if not self.ok and self.fix:
            text += f"\n       fix: {self.fix}"
        return text


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    caps = _effective_caps()
    has = {
        n: bool(caps & (1 << b))
        for n, b in (
            ("CAP_BPF", CAP_BPF),
            ("CAP_PERFMON", CAP_PERFMON),
            ("CAP_NET_ADMIN", CAP_NET_ADMIN),
            ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
        )
    }
    # cgroup sock_addr/skb programs need CAP_NET_ADMIN besides CAP_BPF (measured)
    ok = has["CAP_SYS_ADMIN"] or (has["CAP_BPF"] and has["CAP_PERFMON"] and has["CAP_NET_ADMIN"])
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    held = ", ".join(n for n, v in has.items() if v) or "none"
    return Check(
        "privileges",
        ok,
        f"{who}; capabilities: {held}",
        "run as root (sudo rlguard ...) or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN "
        "(the cgroup connect/egress programs need it)",
    )


def check_btf() -> Check:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Check(
        "BTF",
        ok,
        "/sys/kernel/btf/vmlinux present" if ok else "no /sys/kernel/btf/vmlinux",
        "a kernel built with CONFIG_DEBUG_INFO_BTF=y (the exec probe reads the new "
        "program's stack through bpf_task_pt_regs(bpf_get_current_task_btf()))",
    )


def check_tracefs() -> Check:
    path = find_tracefs()
    return Check(
        "tracefs",
        path is not None,
        f"mounted at {path}" if path else "not mounted",
        "mount -t tracefs none /sys/kernel/tracing",
    )


def check_tracepoints() -> list[Check]:
    path = find_tracefs()
    out = []
    for tp in TRACEPOINTS:
        present = path is not None and Path(path, "events", tp, "format").exists()
        out.append(
            Check(
                f"tracepoint {tp.replace('/', ':')}",
                present,
                "available" if present else "missing",
                "a kernel with CONFIG_FTRACE_SYSCALLS and tracepoints (CONFIG_TRACEPOINTS)"
                if path
                else "mount tracefs first",
            )
        )
    return out


def check_cgroup2() -> Check:
    path = find_cgroup2()
    return Check(
        "cgroup v2",
        path is not None,
        f"mounted at {path}" if path else "no cgroup2 mount",
        "mount -t cgroup2 none /sys/fs/cgroup/unified (connect and egress hooks attach there)",
    )


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Check(
            "bcc",
            False,
            "the bcc Python binding is not importable",
            "apt-get install python3-bpfcc, and use a venv made with "
            "--system-site-packages (sudo make setup does both)",
        )
    version = getattr(bcc, "__version__", "unknown version")
    return Check("bcc", True, f"python binding {version}")


def header_source() -> tuple[str, str]:
    """('matching'|'fallback'|'missing', description) for the bcc header tree."""
    release = platform.release()
    build = Path("/lib/modules", release, "build")
    if not build.exists():
        return "missing", f"no {build}"
    target = os.path.realpath(build)
    if FALLBACK_MARKER.exists() or release not in target:
        return "fallback", f"{build} -> {target} (headers of another kernel)"
    return "matching", f"{build} -> {target}"


def check_headers() -> Check:
    kind, detail = header_source()
    if kind == "missing":
        return Check(
            "kernel headers",
            False,
            detail,
            "sudo make setup (installs linux-headers-$(uname -r), or links the distro's "
            "headers when this kernel has none)",
        )
    if kind == "fallback":
        return Check(
            "kernel headers",
            False,
            f"FALLBACK {detail}; rlguard's probes read only tracepoint fields, helpers, "
            "UAPI contexts and user memory, so they stay correct; other bcc tools may not",
            "install linux-headers-$(uname -r) when your distribution ships them",
            required=False,
        )
    return Check("kernel headers", True, f"matching: {detail}")


def check_ringbuf() -> Check:
    try:
        ok = bpf_link.ringbuf_supported()
    except OSError as exc:
        return Check("ring buffer", False, f"bpf() failed: {exc}", "Linux >= 5.8 and root")
    return Check(
        "ring buffer",
        ok,
        "BPF_MAP_TYPE_RINGBUF can be created" if ok else "cannot create a BPF ring buffer",
        "Linux >= 5.8 with CONFIG_BPF_SYSCALL; run as root",
    )


def check_cgroup_paths() -> Check:
    """cgroup id -> path, for cgroup/container identity and registry cgroup bindings."""
    from monitor.state.cgroups import CgroupResolver, proc_cgroup_path

    r = CgroupResolver()
    try:
        if r.mount is None:
            return Check("cgroup paths", False, "no cgroup2 mount", "mount cgroup2", False)
        rel = proc_cgroup_path() or "/"
        if rel == "/":  # the root resolves without asking the kernel: try a child
            subdirs = [e.name for e in os.scandir(r.mount) if e.is_dir()]
            rel = "/" + subdirs[0] if subdirs else "/"
        own = r.id_of(rel)
        path = r._resolve(own) if own else None
        ok = path is not None
        how = "open_by_handle_at" if ok and r.walks == 0 else "directory walk"
        return Check(
            "cgroup paths",
            ok,
            f"cgroup ids resolve to paths ({how})" if ok else "cannot resolve cgroup ids",
            "run as root (CAP_DAC_READ_SEARCH) so events can name their cgroup and container",
            required=False,
        )
    finally:
        r.close()


def check_nvml() -> Check:
    """NVML (nvidia-ml-py) for per-process GPU memory; absent is a note, not a failure."""
    from monitor.state.gpu import nvml_status

    present, detail = nvml_status("auto")
    if not present:
        detail = (
            f"absent ({detail}); GPU holders are still tracked, "
            "without per-process GPU memory and utilisation"
        )
    return Check(
        "NVML",
        present,
        detail,
        "pip install 'rlguard[gpu]' (nvidia-ml-py) on a host with the NVIDIA driver",
        required=False,
        note=True,
    )


def run_checks() -> list[Check]:
    checks = [check_privileges(), check_btf(), check_tracefs()]
    checks += check_tracepoints()
    checks += [check_cgroup2(), check_cgroup_paths(), check_bcc(), check_headers()]
    checks += [check_ringbuf()]
    checks.append(check_nvml())
    return checks


def try_mount_tracefs() -> None:
    """Mount tracefs when absent (root only); failures are left to the checks."""
    if find_tracefs() is None and os.geteuid() == 0:
        os.system("mount -t tracefs none /sys/kernel/tracing 2>/dev/null")
