"""A throwaway PostgreSQL cluster: initdb + pg_ctl as an unprivileged user, on loopback.

``Cluster.start()`` makes a cluster in a fresh temporary directory owned by ``nobody``
(PostgreSQL refuses to run as root), listening on 127.0.0.1 at a free port with
password (SCRAM) authentication over TCP; ``stop()`` stops it, ``destroy()`` stops it
and removes the directory. ``url(user, password, db)`` is what rlguard is given.
Used by the fleet tests and bench/fleet.py; needs Debian's ``postgresql`` (installed
by scripts/setup.sh --test) and, for the client side, psycopg (the dev extra).
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
RUN_AS = "nobody"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def why_not() -> str | None:
    """Why this host cannot run a throwaway cluster; None when it can."""
    if pg_bin() is None:
        return "PostgreSQL is not installed (Debian's postgresql: scripts/setup.sh --test)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"no {RUN_AS!r} user to run PostgreSQL as (it refuses to run as root)"
    return None


def _free_port() -> int:
    """A free loopback port below the ephemeral range.

    Port 0 would give an ephemeral port, which any outgoing connection on this busy
    machine may take as its source port while the server is stopped for a restart.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1025, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class Cluster:
    """One PostgreSQL cluster of its own; always ``destroy()`` it (a fixture's finally)."""

    def __init__(self, fsync: bool = False, extra_conf: str = "") -> None:
        self.bin = pg_bin()
        assert self.bin is not None, why_not()
        self.root = Path(tempfile.mkdtemp(prefix="rlguard-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = uuid.uuid4().hex
        self.port = 0
        self.fsync = fsync
        self.extra_conf = extra_conf
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)
        self._initdb()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, check=check, timeout=120, cwd=self.root
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            user = pwd.getpwnam(RUN_AS)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        assert self.bin is not None
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"fsync = {'on' if self.fsync else 'off'}\n"
                "max_connections = 200\n" + self.extra_conf
            )

    def start(self, attempts: int = 5) -> Cluster:
        """Start on a free loopback port (another may take it first: then try another)."""
        assert self.bin is not None
        port = self.port or _free_port()
        last = ""
        for _ in range(attempts):
            res = self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                f"-p {port}",
                "-w",
                "-t",
                "30",
                "start",
                check=False,
            )
            if res.returncode == 0:
                self.port = port
                return self
            last = res.stdout + res.stderr + self.log_tail()
            if self.port:  # a restart must keep its port: wait for it to be free
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", check=False)
                time.sleep(1.0)
            else:
                port = _free_port()
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def stop(self, mode: str = "fast") -> None:
        assert self.bin is not None
        if (self.data / "postmaster.pid").exists():
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "stop",
                check=False,
            )

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def url(self, user: str = SUPERUSER, password: str | None = None, db: str = "postgres") -> str:
        pw = self.password if password is None and user == SUPERUSER else password
        auth = user if pw is None else f"{user}:{pw}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def sql(self, statements: str | list[str], db: str = "postgres") -> list[Any]:
        """Run statements as the superuser (autocommit); the last one's rows."""
        import psycopg

        rows: list[Any] = []
        with psycopg.connect(self.url(db=db), autocommit=True) as conn:
            for stmt in [statements] if isinstance(statements, str) else statements:
                cur = conn.execute(stmt)  # type: ignore[arg-type]
                rows = cur.fetchall() if cur.description else []
        return rows

    def database(self, name: str | None = None) -> str:
        """A new empty database; its name."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        return name
