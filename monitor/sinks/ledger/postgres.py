"""The fleet's PostgreSQL: schema and migrations, connections with clear errors, reading.

Every host writes its own rows (the key starts with ``host``) into one schema,
``rlguard``; trainers and ``rlguard episodes --url`` read them. The writer is
fleet.py's shipper; this module holds what the writer and the readers share. psycopg
(the ``fleet`` extra) is imported here only, so the SQLite default never needs it.

A verdict row fires ``NOTIFY rlguard_verdict, '<episode_id>'`` (a trigger), which
``monitor.client.verdicts`` waits on instead of polling.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from monitor.sinks.ledger.store import COLUMNS, EPISODE_TABLE, StoreError

if TYPE_CHECKING:
    import psycopg

SCHEMA = "rlguard"
SCHEMA_VERSION = 1
CHANNEL = "rlguard_verdict"
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 15000  # a stuck server fails the batch; the spool keeps it

_PG_TYPES = {"TEXT": "text", "INTEGER": "bigint"}


def _pg_column(name: str, sql: str) -> str:
    words = sql.replace("PRIMARY KEY", "NOT NULL").split()
    return " ".join([name, _PG_TYPES[words[0]], *words[1:]])


# version -> statements that take the schema from version - 1 to it. Run by a writer,
# in one transaction under an advisory lock, so hosts starting together do not race.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"CREATE TABLE {SCHEMA}.schema_version (version integer NOT NULL)",
        f"""CREATE TABLE {SCHEMA}.hosts (
            host text PRIMARY KEY,
            spool_id text NOT NULL,        -- the host's SQLite spool these rows came from
            shipped_seq bigint NOT NULL,   -- the spool's rows up to here are in this database
            last_alive_ns bigint,          -- the host's ledger last said it was alive
            first_seen_ns bigint NOT NULL,
            updated_ns bigint NOT NULL,
            version text NOT NULL)""",
        f"CREATE TABLE {SCHEMA}.episodes (host text NOT NULL, "
        + ", ".join(_pg_column(n, t) for n, t in EPISODE_TABLE)
        + ", seq bigint NOT NULL, PRIMARY KEY (host, episode_id))",
        f"CREATE INDEX episodes_id ON {SCHEMA}.episodes (episode_id)",
        f"CREATE INDEX episodes_run ON {SCHEMA}.episodes (run_id)",
        f"CREATE INDEX episodes_end ON {SCHEMA}.episodes (end_ns)",
        f"""CREATE TABLE {SCHEMA}.verdicts (
            host text NOT NULL, episode_id text NOT NULL, revision bigint NOT NULL,
            at_ns bigint NOT NULL, verdict text NOT NULL, reasons text NOT NULL,
            record text NOT NULL, seq bigint NOT NULL,
            PRIMARY KEY (host, episode_id, revision))""",
        f"CREATE INDEX verdicts_id ON {SCHEMA}.verdicts (episode_id)",
        f"CREATE INDEX verdicts_at ON {SCHEMA}.verdicts (at_ns)",
        f"""CREATE FUNCTION {SCHEMA}.notify_verdict() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{CHANNEL}', NEW.episode_id); RETURN NULL; END $$""",
        f"""CREATE TRIGGER verdicts_notify AFTER INSERT ON {SCHEMA}.verdicts
            FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.notify_verdict()""",
    ),
}

EPISODE_UPSERT = (
    f"INSERT INTO {SCHEMA}.episodes (host, {', '.join(COLUMNS)}, seq) "
    f"VALUES ({', '.join(['%s'] * (len(COLUMNS) + 2))}) "
    "ON CONFLICT (host, episode_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*COLUMNS[1:], "seq"))
)
VERDICT_INSERT = (
    f"INSERT INTO {SCHEMA}.verdicts "
    "(episode_id, revision, at_ns, verdict, reasons, record, host, seq) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_url(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than an SQLite file."""
    return target.startswith(("postgresql://", "postgres://"))


def psycopg_module() -> Any:
    """psycopg, or a StoreError that says how to install it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "psycopg 3 is not installed",
            ": install the fleet extra (pip install 'rlguard[fleet]')",
        ) from None
    return psycopg


def explain(exc: BaseException, url: str) -> StoreError:
    """A psycopg/OS error as a StoreError that says what to check (never the password)."""
    if isinstance(exc, StoreError):
        return exc
    text = " ".join(str(exc).split()) or type(exc).__name__
    secret = urllib.parse.urlsplit(url).password if is_url(url) else None
    if secret:
        text = text.replace(secret, "***")
    name = type(exc).__name__
    low = text.lower()
    hint = ""
    if name == "InvalidPassword" or "password authentication failed" in low:
        hint = " (authentication failed: check the user in the URL and its password in ~/.pgpass)"
    elif "no password supplied" in low:
        hint = " (the server wants a password: put it in ~/.pgpass or PGPASSFILE)"
    elif name == "InsufficientPrivilege" or "permission denied" in low:
        hint = " (this role lacks a right it needs: docs/fleet.md lists the grants)"
    elif "does not exist" in low and "database" in low:
        hint = " (create the database, or fix its name in the URL)"
    elif "connection refused" in low or "timeout" in low or "could not translate" in low:
        hint = " (the server cannot be reached: is it up, and is the address right?)"
    elif "certificate" in low or "ssl" in low:
        hint = " (TLS: check sslrootcert and the server's name for sslmode=verify-full)"
    return StoreError(f"{redact(url)}: {text}", hint)


def connect(url: str, application: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    """One connection with a connect and a statement timeout and TCP keepalives."""
    pg = psycopg_module()
    try:
        params = pg.conninfo.conninfo_to_dict(url)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        params.setdefault("application_name", application)
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", 30)
        conn = pg.connect(autocommit=True, **params)
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.autocommit = autocommit
    except (pg.Error, OSError) as exc:
        raise explain(exc, url) from None
    return conn  # type: ignore[no-any-return]


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The fleet schema's version; 0 when it does not exist yet."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_version",)).fetchone()
    if row is None or row[0] is None:
        return 0
    got = conn.execute(f"SELECT version FROM {SCHEMA}.schema_version").fetchone()
    return 0 if got is None else int(got[0])


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to ``SCHEMA_VERSION`` (one transaction); returns the old version.

    Refuses a newer schema: an older rlguard must not write a layout it does not know.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rlguard.schema'))")
        old = schema_version(conn)
        if old > SCHEMA_VERSION:
            raise StoreError(
                f"fleet schema version {old} is newer than this rlguard's {SCHEMA_VERSION}",
                " (upgrade rlguard on this host)",
            )
        if old < SCHEMA_VERSION:
            # the schema may be made by an administrator (docs/fleet.md); create it only if not
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
            ).fetchone()
            if exists is None:
                conn.execute(f"CREATE SCHEMA {SCHEMA}")
            for version in range(old + 1, SCHEMA_VERSION + 1):
                for ddl in MIGRATIONS[version]:
                    conn.execute(ddl)  # type: ignore[arg-type]
            if old == 0:
                conn.execute(f"INSERT INTO {SCHEMA}.schema_version VALUES (%s)", (SCHEMA_VERSION,))
            else:
                conn.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s", (SCHEMA_VERSION,))
    return old


def read_fleet_episodes(
    url: str,
    flagged: bool = False,
    run: str | None = None,
    since_ns: int | None = None,
    host: str | None = None,
) -> list[dict[str, Any]]:
    """Episodes of every host (or one), as ``episode_row`` dicts with ``host``; StoreError."""
    from psycopg.rows import dict_row

    from monitor.sinks.ledger.report import episode_query, episode_row

    pg = psycopg_module()
    conn = connect(url, "rlguard-episodes", autocommit=True)
    try:
        version = schema_version(conn)
        if version == 0:
            raise StoreError(f"{redact(url)}: no rlguard ledger here yet", " (no host has written)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{redact(url)}: fleet schema version {version} is not one this rlguard "
                f"reads ({SCHEMA_VERSION})"
            )
        sql, args = episode_query(f"{SCHEMA}.episodes", "%s", flagged, run, since_ns, host)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, args)  # type: ignore[arg-type]
            return [episode_row(r) for r in cur.fetchall()]
    except pg.Error as exc:
        raise explain(exc, url) from None
    finally:
        conn.close()


def check_connection(url: str) -> str:
    """``rlguard check``: connect, read the schema version, and check that this role can
    write the ledger; a StoreError says what is wrong."""
    conn = connect(url, "rlguard-check", autocommit=True)
    try:
        version = schema_version(conn)
        row = conn.execute("SELECT current_user, version()").fetchone()
        if version:
            sql = f"SELECT has_table_privilege('{SCHEMA}.episodes', 'INSERT, UPDATE')"
        else:  # the first writer makes the tables: in the schema, or the schema itself
            sql = (
                f"SELECT CASE WHEN to_regnamespace('{SCHEMA}') IS NULL "
                "THEN has_database_privilege(current_database(), 'CREATE') "
                f"ELSE has_schema_privilege('{SCHEMA}', 'CREATE') END"
            )
        writable = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    except Exception as exc:
        raise explain(exc, url) from None
    finally:
        conn.close()
    user, server = (row or ("?", "?"))[:2]
    if not (writable and writable[0]):
        raise StoreError(
            f"{redact(url)}: connected as {user}, which cannot write the ledger",
            " (a monitor needs the writer role: docs/examples/fleet_roles.sql)",
        )
    state = (
        f"schema version {version}" if version else "no rlguard schema yet (made on first write)"
    )
    return f"{redact(url)}: connected as {user}; {state}; {str(server).split(' on ')[0]}"
