"""Attach cgroup programs through BPF links.

bcc's ``attach_func`` uses the legacy ``BPF_PROG_ATTACH``: such an attachment
outlives the process, so a crashed monitor would leave programs on the root
cgroup.  A link (``BPF_LINK_CREATE``) is detached by the kernel when its last
file descriptor closes, i.e. when rlguard exits for any reason.  libbcc does not
export libbpf's link API, so this calls the ``bpf()`` syscall directly.
"""

from __future__ import annotations

import ctypes
import os
import platform

BPF_LINK_CREATE = 28
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27

# enum bpf_attach_type (UAPI)
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "ppc64le": 361, "s390x": 351}

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: bytes) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(f"bpf(): unknown syscall number on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach ``prog_fd`` to ``target_fd`` (a cgroup directory fd); returns the link fd."""
    attr = bytearray(64)
    attr[0:4] = prog_fd.to_bytes(4, "little")
    attr[4:8] = target_fd.to_bytes(4, "little")
    attr[8:12] = attach_type.to_bytes(4, "little")
    return _bpf(BPF_LINK_CREATE, bytes(attr))


def ringbuf_supported() -> bool:
    """True when the kernel can create a BPF ring buffer map (Linux >= 5.8)."""
    attr = bytearray(72)
    attr[0:4] = BPF_MAP_TYPE_RINGBUF.to_bytes(4, "little")
    attr[12:16] = (4096 * 4).to_bytes(4, "little")  # max_entries: ring size in bytes
    try:
        fd = _bpf(BPF_MAP_CREATE, bytes(attr))
    except OSError:
        return False
    os.close(fd)
    return True
