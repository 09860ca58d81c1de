"""Drop trajectories whose RL episode rlguard judged unsafe, before the policy update.

A generic example for a trainer: copy it and adapt. It needs ``monitor.client`` (stdlib
only: with rlguard not installed, copy monitor/client.py beside it as rlguard_client.py)
and, for the fleet's PostgreSQL, psycopg 3.

rlguard writes one verdict per episode (``keep`` / ``review`` / ``drop``), a short time
after the episode ends, to its ledger database (one host's SQLite file, or the fleet's
PostgreSQL: docs/fleet.md) and to its NDJSON stream as an ``rlguard.verdict`` line (see
docs/ledger.md). A later finding can revise it (``revision`` + 1): the reader keeps the
highest revision.

    from trainer_filter import VerdictSource, filter_trajectories

    verdicts = VerdictSource.from_url("postgresql://trainer@db/rlguard?sslmode=verify-full")
    # or: VerdictSource.from_db("/var/lib/rlguard/episodes.db")   (one host)
    # or: VerdictSource.from_ndjson("/var/log/rlguard/events.ndjson")
    kept, dropped = filter_trajectories(
        batch, verdicts, episode_of=lambda t: t["episode_id"], timeout_s=30.0
    )
    for traj, why in dropped:
        log.warning("dropped trajectory of episode %s: %s", traj["episode_id"], why)
    trainer.update(kept)

For a group filter (all samples of one prompt kept or dropped together, as
group-relative advantages need), see ``group_keep``.

Run as a script to print the decisions for some episode ids:

    python trainer_filter.py --db /var/lib/rlguard/episodes.db ep-1 ep-2
    python trainer_filter.py --url postgresql://trainer@db/rlguard --timeout 30 ep-1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

try:
    from monitor.client import VerdictReader
except ImportError:  # rlguard not installed: monitor/client.py copied beside this file
    from rlguard_client import VerdictReader  # type: ignore[import-not-found,no-redef]

T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    episode_id: str
    verdict: str  # keep, review, drop
    reasons: tuple[str, ...]
    revision: int


@dataclass(frozen=True)
class NoVerdict:
    """Why an episode has no verdict yet (monitor.client.Missing), when the source knows."""

    reason: str  # open, pending, host_never_seen, coverage_gap, not_seen
    detail: str


class VerdictSource:
    """Where verdicts come from: ``fetch(ids)`` returns what is known now."""

    def fetch(self, episode_ids: Sequence[str]) -> dict[str, Verdict]:
        raise NotImplementedError

    def wait(
        self, episode_ids: Iterable[str], timeout_s: float = 30.0, poll_s: float = 0.5
    ) -> dict[str, Verdict | NoVerdict | None]:
        """Every id's verdict, waiting up to ``timeout_s`` for the missing ones (None)."""
        wanted = list(dict.fromkeys(episode_ids))
        deadline = time.monotonic() + timeout_s
        got: dict[str, Verdict] = {}
        while True:
            missing = [e for e in wanted if e not in got]
            if missing:
                got.update(self.fetch(missing))
            if all(e in got for e in wanted) or time.monotonic() >= deadline:
                return {e: got.get(e) for e in wanted}
            time.sleep(poll_s)

    @staticmethod
    def from_db(path: str) -> LedgerVerdicts:
        return LedgerVerdicts(path)

    @staticmethod
    def from_url(url: str) -> LedgerVerdicts:
        return LedgerVerdicts(url)

    @staticmethod
    def from_ndjson(path: str) -> StreamVerdicts:
        return StreamVerdicts(path)


class LedgerVerdicts(VerdictSource):
    """The ledger through ``monitor.client``: a host's SQLite file (read-only, safe while
    rlguard writes it) or the fleet's PostgreSQL (waits with LISTEN/NOTIFY)."""

    def __init__(self, url: str) -> None:
        self.reader = VerdictReader(url)

    def fetch(self, episode_ids: Sequence[str]) -> dict[str, Verdict]:
        got = self.reader.verdicts(episode_ids).verdicts
        return {e: Verdict(e, v.verdict, v.reasons, v.revision) for e, v in got.items()}

    def wait(
        self, episode_ids: Iterable[str], timeout_s: float = 30.0, poll_s: float = 0.5
    ) -> dict[str, Verdict | NoVerdict | None]:
        res = self.reader.verdicts(list(episode_ids), timeout_s)
        out: dict[str, Verdict | NoVerdict | None] = {
            e: Verdict(e, v.verdict, v.reasons, v.revision) for e, v in res.verdicts.items()
        }
        out.update({e: NoVerdict(m.reason, m.detail) for e, m in res.missing.items()})
        return out


class StreamVerdicts(VerdictSource):
    """Follows rlguard's NDJSON output and keeps the latest revision per episode."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None
        self.known: dict[str, Verdict] = {}

    def _read(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:  # rotated or truncated
            self.inode, self.offset = st.st_ino, 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        for line in data[:end].splitlines():
            if b"rlguard.verdict" not in line:
                continue  # cheap pre-filter: most lines are events
            try:
                doc = json.loads(line)
                body = doc["rlguard"]["verdict"]
                eid = doc["rl"]["episode_id"]
            except (ValueError, KeyError, TypeError):
                continue
            v = Verdict(eid, body["verdict"], tuple(body["reasons"]), body["revision"])
            old = self.known.get(eid)
            if old is None or v.revision >= old.revision:
                self.known[eid] = v

    def fetch(self, episode_ids: Sequence[str]) -> dict[str, Verdict]:
        self._read()
        return {e: self.known[e] for e in episode_ids if e in self.known}


def decide(v: Verdict | NoVerdict | None, drop_review: bool, missing: str) -> str | None:
    """Why a trajectory must go, or None to keep it."""
    if v is None or isinstance(v, NoVerdict):
        if missing == "keep":
            return None
        return "no verdict in time" + (f" ({v.reason}: {v.detail})" if v else "")
    if v.verdict == "drop":
        return "drop: " + ", ".join(v.reasons)
    if v.verdict == "review" and drop_review:
        return "review: " + ", ".join(v.reasons)
    return None


def filter_trajectories(
    trajectories: Sequence[T],
    source: VerdictSource,
    episode_of: Callable[[T], str | None],
    drop_review: bool = False,
    timeout_s: float = 30.0,
    missing: str = "keep",
) -> tuple[list[T], list[tuple[T, str]]]:
    """(kept, dropped with the reason) for a batch, before the update.

    ``missing`` says what to do with a trajectory whose episode has no verdict
    within ``timeout_s``: "keep" or "drop". Trajectories without an episode id are kept.
    """
    ids = [e for t in trajectories if (e := episode_of(t))]
    verdicts = source.wait(ids, timeout_s) if ids else {}
    kept: list[T] = []
    dropped: list[tuple[T, str]] = []
    for t in trajectories:
        eid = episode_of(t)
        why = decide(verdicts.get(eid), drop_review, missing) if eid else None
        if why is None:
            kept.append(t)
        else:
            dropped.append((t, why))
    return kept, dropped


def group_keep(
    samples: Sequence[T],
    source: VerdictSource,
    episode_of: Callable[[T], str | None],
    drop_review: bool = False,
    timeout_s: float = 30.0,
    missing: str = "keep",
) -> bool:
    """For a group filter: keep the group only if none of its samples must go.

    Dropping whole groups keeps group-relative baselines (GRPO-style advantages)
    unbiased. Wire it into your framework's group/reward filter hook; in ROLL, the
    group filter of the rollout pipeline (names differ between versions: adapt).
    """
    _, dropped = filter_trajectories(samples, source, episode_of, drop_review, timeout_s, missing)
    return not dropped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", help="rlguard ledger database (one host)")
    src.add_argument("--url", help="the fleet's PostgreSQL (postgresql://...)")
    src.add_argument("--ndjson", help="rlguard NDJSON output file")
    p.add_argument("--drop-review", action="store_true")
    p.add_argument("--timeout", type=float, default=0.0)
    p.add_argument("episode", nargs="+")
    args = p.parse_args(argv)
    source: VerdictSource = (
        VerdictSource.from_db(args.db)
        if args.db
        else VerdictSource.from_url(args.url)
        if args.url
        else VerdictSource.from_ndjson(args.ndjson)
    )
    items: list[dict[str, Any]] = [{"episode_id": e} for e in args.episode]
    kept, dropped = filter_trajectories(
        items, source, lambda t: t["episode_id"], args.drop_review, args.timeout, "drop"
    )
    rows = [{"episode_id": t["episode_id"], "keep": True} for t in kept]
    rows += [{"episode_id": t["episode_id"], "keep": False, "why": why} for t, why in dropped]
    for row in rows:
        print(json.dumps(row, ensure_ascii=True))  # ASCII: ids come from the monitored host
    return 0


if __name__ == "__main__":
    sys.exit(main())
