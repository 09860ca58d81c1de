"""A listening Unix socket that one group may use: shared by the live stream and the registry."""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass


@dataclass
class GroupSocket:
    sock: socket.socket
    mode: int  # 0o660 when the group applied, else 0o600
    note: str | None  # why the group could not be applied
    ino: tuple[int, int]  # (st_dev, st_ino) of the socket file we created


def listen_group_socket(path: str, group: str, backlog: int = 16) -> GroupSocket:
    """Bind PATH (replacing a stale socket left by a dead process) for GROUP, mode 0660.

    Raises OSError with EEXIST when PATH is not a socket and EADDRINUSE when a live
    process serves it.  Without the group the socket is left 0600 (root only) and
    ``note`` says why.
    """
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        os.chmod(parent, 0o755)  # umask may have narrowed it; clients must reach the socket
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Permissions are set before listen(): until then a connect is refused,
        # so no one outside the group can slip in while the mode is still the umask's.
        mode, note = _set_permissions(path, group)
        st = os.stat(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return GroupSocket(sock, mode, note, (st.st_dev, st.st_ino))


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # left by a process that did not exit cleanly
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another monitor is serving it")


def _set_permissions(path: str, group: str) -> tuple[int, str | None]:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        os.chmod(path, 0o600)
        return 0o600, f"group {group!r} does not exist"
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        os.chmod(path, 0o600)
        return 0o600, f"cannot give it to group {group!r}: {exc.strerror}"
    os.chmod(path, 0o660)
    return 0o660, None
