"""The episode ledger: per RL episode, what happened, how well we saw it, and a verdict.

    model.py     Episode and the verdict rules (pure)
    observer.py  EpisodeLedger: watches the stream, decides and issues verdicts
    store.py     the store interface (EpisodeStore) and the SQLite store
    report.py    reading: read_episodes, format_table, json_line (``rlguard episodes``)

docs/ledger.md describes the verdicts, the tables and the failure modes.
"""

from monitor.sinks.ledger.model import (
    DEFAULT_INTERNAL,
    EPISODE_DATASET,
    SEVERITIES,
    VERDICT_DATASET,
    Episode,
    iso,
    parse_iso,
)
from monitor.sinks.ledger.observer import DROP_LOOKBACK_NS, EpisodeLedger, ledger_for, ledger_path
from monitor.sinks.ledger.report import (
    LedgerError,
    episode_row,
    format_table,
    json_line,
    parse_since,
    read_episodes,
)
from monitor.sinks.ledger.store import (
    SCHEMA_VERSION,
    EpisodeStore,
    SqliteStore,
    StoreError,
    VerdictRow,
)

__all__ = [
    "DEFAULT_INTERNAL",
    "DROP_LOOKBACK_NS",
    "EPISODE_DATASET",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "VERDICT_DATASET",
    "Episode",
    "EpisodeLedger",
    "EpisodeStore",
    "LedgerError",
    "SqliteStore",
    "StoreError",
    "VerdictRow",
    "episode_row",
    "format_table",
    "iso",
    "json_line",
    "ledger_for",
    "ledger_path",
    "parse_iso",
    "parse_since",
    "read_episodes",
]
