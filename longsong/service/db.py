"""The service database: API keys, per-user quota overrides and song reservations, through SQLAlchemy.

An SQLite file in the data dir by default, PostgreSQL by URL in production; the schema is Alembic's
(`longsong.service:migrations`), upgraded to head by `Database.open`. The engine is synchronous: the API
calls in from worker threads. SQLite runs in WAL mode with SQLAlchemy (not the sqlite3 module) emitting
BEGIN, so a session can ask for BEGIN IMMEDIATE (`session(lock=True)`) and serialise writers up front.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, create_engine,
                        event, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError,
                            SQLAlchemyError)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from longsong.request import ID_PATTERN, InvalidRequest

SETTING = "LONGSONG_DATABASE_URL"
DIALECTS = ("sqlite", "postgresql")
SCRIPT_LOCATION = "longsong.service:migrations"
SQLITE_BUSY_S = 30.0  # how long a writer waits for SQLite's write lock before "database is locked"
POOL_SIZE, POOL_OVERFLOW = 8, 32  # asyncio.to_thread's default executor has at most 32 threads


class DatabaseError(RuntimeError):
    """The database URL or schema is unusable; one line naming LONGSONG_DATABASE_URL (never the password)."""


class DatabaseUnavailable(DatabaseError):
    """The database does not answer (down, unreachable, refusing connections)."""


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out: SQLite keeps no zone (stored naive UTC), PostgreSQL uses timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware one (UTC)")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# The tables as the code sees them; migrations/versions/ holds the DDL history (kept equal by a test).
metadata = MetaData()
api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(32), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
    Column("last_used_at", UTCDateTime()),
)
quotas = Table(
    "quotas", metadata,
    Column("user_id", String(64), primary_key=True),
    Column("concurrent", Integer),  # NULL: the default quota
    Column("daily_minutes", Float),
    Column("monthly_minutes", Float),
    Column("rate_per_s", Float),
    Column("burst", Integer),
    Column("updated_at", UTCDateTime(), nullable=False),
)
songs = Table(
    "songs", metadata,
    Column("song_id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("settled_at", UTCDateTime()),
    Index("ix_songs_user_created", "user_id", "created_at", "song_id"),
    Index("ix_songs_user_status", "user_id", "status"),
)
# One row per user that ever submitted: PostgreSQL admissions lock it (SELECT ... FOR UPDATE).
user_locks = Table("user_locks", metadata, Column("user_id", String(64), primary_key=True))


def check_id(name: str, value: object) -> str:
    """The ids the tables key on (user_id, song_id) follow the request's id rule (longsong.request.ID_PATTERN)."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidRequest(name, f"must match [A-Za-z0-9_-]{{1,64}}, got {value!r}")
    return value


def masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    return re.sub(r"(://[^/:@]*:).*@", r"\1***@", url)  # to the last @: over-masking is safe


def one_line(exc: BaseException) -> str:
    """The driver's first line (SQLAlchemy appends SQL, parameters and a help link on following lines)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return first.strip()


class Database:
    """An engine plus sessions; `open` migrates the schema to head."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url  # masked
        self._immediate = engine.execution_options(longsong_immediate=True)

    @classmethod
    def open(cls, url: str) -> "Database":
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise DatabaseError(f"{SETTING}: cannot read {masked(url)!r} as an SQLAlchemy URL (examples: sqlite:"
                                f"////var/lib/longsong/longsong.db, postgresql+psycopg://user@host/db)") from None
        shown = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() not in DIALECTS:
            raise DatabaseError(f"{SETTING}: unsupported database {parsed.get_backend_name()!r} in {shown} "
                                f"(allowed: {', '.join(DIALECTS)})")
        try:
            engine = _sqlite_engine(parsed, shown) if parsed.get_backend_name() == "sqlite" else create_engine(
                parsed, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_pre_ping=True)
        except (NoSuchModuleError, ImportError) as exc:
            raise DatabaseError(f"{SETTING}: no driver for {shown} ({one_line(exc)}); PostgreSQL needs "
                                f"pip install 'longsong[postgres]' and a postgresql+psycopg:// URL") from None
        db = cls(engine, shown)
        try:
            db.upgrade()
        except BaseException:
            engine.dispose()
            raise
        return db

    def upgrade(self, revision: str = "head") -> None:
        """`alembic upgrade`, in one transaction that other openers of the same database wait for."""
        self._alembic("upgrade", revision)

    def downgrade(self, revision: str) -> None:
        self._alembic("downgrade", revision)

    def _alembic(self, action: str, revision: str) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.util.exc import CommandError

        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        try:
            with self._immediate.begin() as conn:
                if conn.dialect.name == "postgresql":  # two API processes starting together migrate one by one
                    conn.execute(text("SELECT pg_advisory_xact_lock(7318005)"))
                config.attributes["connection"] = conn
                getattr(command, action)(config, revision)
        except CommandError as exc:
            raise DatabaseError(f"{SETTING}: cannot migrate {self.url} to {revision}: {one_line(exc)} (a database "
                                f"written by a newer longsong?)") from None
        except SQLAlchemyError as exc:
            raise self.error(exc, f"{self.url}: {action} to {revision} failed") from None

    @contextmanager
    def session(self, *, lock: bool = False) -> Iterator[Session]:
        """A Session committed on success, rolled back on error; a failed statement or commit becomes a
        one-line DatabaseError (DatabaseUnavailable when the database could not be reached or was locked).
        `lock`: on SQLite, take the write lock at BEGIN (BEGIN IMMEDIATE), so a read-then-write transaction
        cannot interleave with another writer."""
        with Session(self._immediate if lock else self.engine) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise self.error(exc, f"a statement on {self.url} failed") from exc
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """SELECT 1; DatabaseUnavailable when it fails (the API's /readyz)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"{SETTING}: {self.url} does not answer: {one_line(exc)}") from None

    @staticmethod
    def error(exc: SQLAlchemyError, doing: str) -> DatabaseError:
        """Unavailable (worth a retry: 503) when the connection failed, timed out or met a lock; else an error."""
        transient = isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated)
        return (DatabaseUnavailable if transient else DatabaseError)(f"{SETTING}: {doing}: {one_line(exc)}")

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_engine(parsed: Any, shown: str) -> Engine:
    """A file database (parent dir created) in WAL mode, with a busy timeout and SQLAlchemy-emitted BEGIN."""
    if parsed.database in (None, "", ":memory:"):
        raise DatabaseError(f"{SETTING}: {shown} is an in-memory SQLite database, gone when the process ends "
                            f"and not shared between threads; name a file (sqlite:////path/longsong.db)")
    try:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"{SETTING}: cannot create the directory of {shown}: {exc.strerror}") from None
    engine = create_engine(parsed, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW,
                           connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the sqlite3 module emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("longsong_immediate")
                             else "BEGIN")

    return engine
