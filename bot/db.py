"""Database engine, schema and migrations (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.schema import CreateIndex

from bot import inline

log = logging.getLogger(__name__)
metadata = MetaData()

# Times are UNIX seconds (float): the same on SQLite and PostgreSQL, no timezone surprises.
requests = Table(
    "requests",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # evaluate | deploy | schedule
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("repo", String(200), nullable=False),
    Column("pr_number", Integer),
    Column("head_sha", String(64)),
    Column("run_ref", String(200)),  # /deploy run id (opaque)
    Column("environment", String(255)),
    Column("trigger", String(16), nullable=False),  # label | dispatch
    Column("event_type", String(100)),
    Column("channel_id", String(32), nullable=False),
    Column("user_id", String(32), nullable=False),
    Column("root_ts", String(32)),
    Column("response_url", Text),
    Column("status", String(32), nullable=False),
    Column("error", Text),
    Column("details", Text, nullable=False, default="{}"),  # JSON
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("action_started_at", Float),
    Column("finished_at", Float),
    Column("expires_at", Float),
    Column("decided_by", String(32)),
    Column("decided_at", Float),
    Column("reason", Text),
    # v3: who holds the lease (processes.id), failures that are not outages (bugs, refusals
    # that will not change), and since when / on whom (GitHub, Slack) it waits out an outage.
    Column("holder", String(64)),
    Column("failures", Integer, nullable=False, default=0),
    Column("waiting_since", Float),
    Column("waiting_on", String(16)),
    # v7: an answer to GitHub is due (a custom deployment protection rule waiting for this
    # decided request): a step for a worker whatever the status (handlers/deploy/gate.py).
    Column("answer_due", Integer, nullable=False, default=0),
    Index("ix_requests_user", "user_id", "created_at"),
    # v5 (see _v5): lookups that must not grow with the history of finished requests.
    Index("ix_requests_pr_created", "repo", "pr_number", "created_at"),
    Index("ix_requests_thread_created", "channel_id", "root_ts", "created_at"),  # mentions
    Index("ix_requests_repo_sha", "repo", "head_sha"),
    Index("ix_requests_status_created", "status", "created_at"),
    Index("ix_requests_channel", "channel_id", "created_at"),
    Index("ix_requests_repo_env", "repo", "environment", "created_at"),
    # v7: the sweep's "an answer to GitHub is due" term (an OR branch of its own).
    Index("ix_requests_answer_due", "answer_due"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("request_id", String(32), primary_key=True),
    Column("user_id", String(32), primary_key=True),
    Column("at", Float, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(100), primary_key=True),  # X-GitHub-Delivery (or poll:… for polled items)
    Column("event", String(64), nullable=False),
    Column("action", String(64)),
    Column("received_at", Float, nullable=False),
    Column("processed_at", Float),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("payload", Text),  # cleared once processed; the id stays for deduplication
    # v3: as on requests; a delivery given up is processed (failed_at set, error says why).
    Column("holder", String(64)),
    Column("failures", Integer, nullable=False, default=0),
    Column("waiting_since", Float),
    Column("waiting_on", String(16)),
    Column("failed_at", Float),
    Column("error", Text),
    # v5: received_at for /healthz and pruning; the partial index of the deliveries not
    # processed yet is created by _v5 in plain SQL (as a `sqlite_where`/`postgresql_where`
    # Index here it made every start import SQLAlchemy's PostgreSQL dialect, ~0.1 s).
    Index("ix_deliveries_received", "received_at"),
)

# v3: the processes that hold leases, and their heartbeats. A lease whose holder's heartbeat
# is older than CHATOPS_HOLDER_DEAD_SECONDS belongs to a dead process: any replica takes it.
processes = Table(
    "processes",
    metadata,
    Column("id", String(64), primary_key=True),
    # host identity: hostname, boot id and PID namespace (pids compare only within one)
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("request_id", String(32), nullable=False, index=True),
    Column("repo", String(200), nullable=False),
    Column("name", String(255)),
    Column("status", String(32), nullable=False),
    Column("conclusion", String(32)),
    Column("attempt", Integer, nullable=False, default=1),
    Column("html_url", Text),
    Column("head_sha", String(64)),
    Column("started_at", Float),
    Column("updated_at", Float, nullable=False),
)

# Idempotency keys of side effects already done (a thread reply, a dispatch, ...).
sent = Table(
    "sent",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("at", Float, nullable=False),
    Index("ix_sent_at", "at"),  # v5: pruning by age
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("request_id", String(32)),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Index("ix_audit_at", "at"),
)

poll_state = Table(
    "poll_state",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("etag", String(255)),
    Column("checked_at", Float, nullable=False),
)

schedule_state = Table(
    "schedule_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_fire_at", Float, nullable=False),
)

# v4: environment locks (`/deploy lock`). The primary key allows one lock per repository +
# environment (both lower-cased: GitHub compares them without case), so of concurrent lock
# attempts exactly one insert wins; lock_id tells one lock from the next on the same key.
env_locks = Table(
    "env_locks",
    metadata,
    Column("repo", String(200), primary_key=True),
    Column("environment", String(255), primary_key=True),
    Column("lock_id", String(32), nullable=False, unique=True),
    Column("user_id", String(32), nullable=False),  # who holds it (Slack user id)
    Column("channel_id", String(32), nullable=False),  # where it was taken (expiry notice)
    Column("reason", Text, nullable=False, default=""),  # typed by a person: never logged
    Column("locked_at", Float, nullable=False),
    Column("expires_at", Float),  # None: until unlocked
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

_V1_TABLES = [
    requests,
    approvals,
    deliveries,
    runs,
    sent,
    audit,
    poll_state,
    schedule_state,
]


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=_V1_TABLES)


def column_names(conn: Connection, table: str) -> set[str]:
    """The table's columns, read from the catalog in one light query (SQLAlchemy's inspector
    reads every column's type, default and comment: on PostgreSQL a heavy catalog query each)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attnum > 0 AND NOT attisdropped"
            ),
            {"t": table},
        )
    else:
        rows = conn.execute(text("SELECT name FROM pragma_table_info(:t)"), {"t": table})
    return {row[0] for row in rows}


def add_column_if_missing(conn: Connection, table: str, column: Column[object]) -> None:
    """For later migrations: add a column portably (SQLite and PostgreSQL both accept this)."""
    if column.name not in column_names(conn, table):
        ddl = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{column.name}" {ddl}'))


def create_index_if_missing(conn: Connection, index: Index) -> None:
    """CREATE INDEX IF NOT EXISTS (both databases): one statement, where `index.create(conn,
    checkfirst=True)` reads the table's indexes back first (five catalog queries per index on
    PostgreSQL, a third of a fresh database's migration)."""
    conn.execute(CreateIndex(index, if_not_exists=True))


# Append-only: each entry runs once, in order, inside one transaction.
# v1 creates the initial tables; later entries must use add_column_if_missing or explicit DDL
# so that a database created by any earlier version upgrades without losing rows.
def _v2(conn: Connection) -> None:
    # A mention in a thread looks its request up by (channel, thread root).
    conn.execute(
        text("CREATE INDEX IF NOT EXISTS ix_requests_thread ON requests (channel_id, root_ts)")
    )


def _v3(conn: Connection) -> None:
    # Leases that know their holder (processes + heartbeats), outage waits and give-ups.
    processes.create(conn, checkfirst=True)
    for table in ("requests", "deliveries"):
        names = column_names(conn, table)
        for name, ddl in (
            ("holder", "VARCHAR(64)"),
            ("failures", "INTEGER NOT NULL DEFAULT 0"),
            ("waiting_since", "FLOAT"),
            ("waiting_on", "VARCHAR(16)"),
        ):
            if name not in names:
                conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{name}" {ddl}'))
    add_column_if_missing(conn, "deliveries", Column("failed_at", Float))
    add_column_if_missing(conn, "deliveries", Column("error", Text))


def _v4(conn: Connection) -> None:
    # Environment locks (/deploy lock, unlock, locks).
    env_locks.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    # Issue 12: decided deploys whose GitHub protection-rule answer is still to be sent.
    if "answer_due" not in column_names(conn, "requests"):
        conn.execute(
            text('ALTER TABLE requests ADD COLUMN "answer_due" INTEGER NOT NULL DEFAULT 0')
        )
    for index in requests.indexes:
        if index.name == "ix_requests_answer_due":
            create_index_if_missing(conn, index)


def _v5(conn: Connection) -> None:
    # Every query on the ack, intake, reply and poll paths is served by an index, so its cost
    # does not grow with the history of finished requests (issue 14; tests/test_query_plans.py
    # reads the plans). Fork PRs' workflow runs are matched by repository + head SHA; status
    # lists and the poller filter by status and age; channel listings by channel and age;
    # deployment statuses by repository + environment. The status-only index is covered by
    # (status, created_at); the pending-deliveries index becomes a partial one (unprocessed
    # rows only: the sweep's and takeover's input), and received_at serves /healthz's newest
    # delivery and pruning; sent keys are pruned by age. The PR and thread indexes gain
    # created_at: with it they answer "newest first" themselves, and a planner no longer
    # prefers walking a whole channel's history in created_at order (ix_requests_channel).
    # Partial indexes only where the queries name the condition literally: SQLite uses a
    # partial index only when the WHERE clause repeats its condition as written, and the
    # status lists reach it as bound parameters; `processed_at IS NULL` is written as such.
    for table in (requests, deliveries, sent):
        for index in table.indexes:
            if index.name in _V5_INDEXES:
                create_index_if_missing(conn, index)
    conn.execute(text(DELIVERIES_OPEN_INDEX))
    for old in (
        "ix_requests_status",
        "ix_requests_repo_pr",
        "ix_requests_thread",
        "ix_deliveries_pending",
    ):
        conn.execute(text(f"DROP INDEX IF EXISTS {old}"))


# The same statement on SQLite and PostgreSQL.
DELIVERIES_OPEN_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_deliveries_open ON deliveries (received_at) "
    "WHERE processed_at IS NULL"
)

_V5_INDEXES = {
    "ix_requests_pr_created",
    "ix_requests_thread_created",
    "ix_requests_repo_sha",
    "ix_requests_status_created",
    "ix_requests_channel",
    "ix_requests_repo_env",
    "ix_deliveries_received",
    "ix_sent_at",
}

MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (7, _v7),
]

_MIGRATION_LOCK = 0x43484154  # "CHAT": PostgreSQL advisory lock key for migrations


class _WriterQueue:
    """One SQLite write transaction at a time in this process, queued on a lock.

    SQLite has a single writer. When writers collide, its busy handler sleeps 1, 2, 5, 10 ...
    up to 100 ms between retries, so under a burst of commands most of a write's latency was
    sleeping (p99 over 1 s at 64 concurrent commands, measured with bench/run.py). Waiting on a
    lock instead wakes the next writer the moment the previous one commits. The lock is taken at
    a transaction's first write statement (where pysqlite begins the SQLite transaction) and
    given back at commit, rollback or check-in. Other processes on the same file still meet
    busy_timeout.
    """

    KEY = "chatops_sqlite_writer"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        # Set while nobody holds the lock for a run (`hold`) nor waits for one: other writers
        # wait for it before queueing, so the commands' writer thread goes next.
        self._no_run = threading.Event()
        self._no_run.set()

    def enter(self, info: dict[str, object], statement: str) -> None:
        if info.get(self.KEY) or statement.lstrip()[:6].upper() in ("SELECT", "PRAGMA"):
            return
        inline.guard("database write")  # never wait for the writer lock on the event loop
        me = threading.get_ident()
        if self._owner == me:
            # Inside `hold` (each transaction of the run commits on its own), or a second
            # connection in the same thread: leave it to busy_timeout.
            return
        self._no_run.wait(timeout=30)
        if self._lock.acquire(timeout=30):
            self._owner = me
            info[self.KEY] = True

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """The lock for a run of transactions of this thread, ahead of the writers that have
        not queued yet (bot/inline.py's writer thread: the acks wait on it)."""
        self._no_run.clear()
        try:
            if not self._lock.acquire(timeout=30):
                raise TimeoutError("the SQLite writer lock was not given back in 30 s")
        finally:
            self._no_run.set()
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()

    def leave(self, info: dict[str, object]) -> None:
        if info.pop(self.KEY, False):
            self._owner = None
            self._lock.release()


def _info_of(connection: object) -> dict[str, object]:
    """The pooled connection's info (where the writer queue marks its holder), or {} for the
    objects without one that the pool rolls back when it first connects."""
    try:
        info = connection.info  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return {}
    return info if isinstance(info, dict) else {}


_QUEUES: weakref.WeakKeyDictionary[Engine, _WriterQueue] = weakref.WeakKeyDictionary()
# What runs before each statement an engine executes (the SQLite writer queue, PostgreSQL's
# inline-write guard): SQLAlchemy's before_cursor_execute event calls it, and so does the
# store's lean path (bot/store/base.py), which runs statements past that event.
_GATES: weakref.WeakKeyDictionary[Engine, Callable[[dict[str, object], str], None]] = (
    weakref.WeakKeyDictionary()
)


def before_statement(engine: Engine, info: dict[str, object], statement: str) -> None:
    """The engine's gate for a statement about to run on the pooled connection whose info is
    `info`: on SQLite a write queues for the process's writer lock (released at commit or
    rollback); on the event loop a write raises inline.NeedsThread."""
    gate = _GATES.get(engine)
    if gate is not None:
        gate(info, statement)


def writer_run(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """Hold the database's writer for a run of short transactions of this thread, each
    committed on its own (SQLite: the process's writer lock, ahead of other writers; PostgreSQL
    has row locks instead: nothing to hold)."""
    queue = _QUEUES.get(engine)
    return queue.hold() if queue is not None else contextlib.nullcontext()


def _queue_sqlite_writers(engine: Engine) -> None:
    queue = _WriterQueue()
    _QUEUES[engine] = queue
    _GATES[engine] = queue.enter

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        queue.enter(conn.info, statement)

    # Given back once SQLite has committed or rolled back: SQLAlchemy's "commit" and "rollback"
    # events fire *before* the DBAPI call, so a lock released there let the next writer start
    # while this one still held SQLite's write lock, into the busy handler's sleeps this queue
    # is here to avoid (and woke it only to wait again).
    dialect = engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def _commit(dbapi_connection):  # type: ignore[no-untyped-def]
        try:
            do_commit(dbapi_connection)
        finally:
            queue.leave(_info_of(dbapi_connection))

    def _rollback(dbapi_connection):  # type: ignore[no-untyped-def]
        try:
            do_rollback(dbapi_connection)
        finally:
            queue.leave(_info_of(dbapi_connection))

    dialect.do_commit = _commit  # type: ignore[method-assign]
    dialect.do_rollback = _rollback  # type: ignore[method-assign]

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_conn, record):  # type: ignore[no-untyped-def]
        queue.leave(record.info)


# A pooled PostgreSQL connection is pinged before use only after it has been idle this long.
# SQLAlchemy's pool_pre_ping pings at every checkout: a round trip and ~0.16 ms of CPU per
# transaction, and a relayed webhook runs several. A connection in steady use that died with
# the server fails its statement instead; SQLAlchemy then marks every pooled connection older
# than the failure for reconnection, and the caller's error path runs as during the outage
# itself (a job retries, a webhook gets 503, a command an apology).
IDLE_PING_SECONDS = 2.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a connection at checkout when it has been idle for `idle_seconds`; a dead one is
    replaced before anyone uses it (DisconnectionError: the pool reconnects and retries)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, proxy):  # type: ignore[no-untyped-def]
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # just connected, or in steady use
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("idle connection is gone") from exc


def make_engine(url: str, *, idle_ping_seconds: float = IDLE_PING_SECONDS) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            # Statement parameters carry user data (response URLs, payloads): keep them out of
            # logs and exception messages.
            hide_parameters=True,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; busy_timeout makes writers queue, not fail.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        _queue_sqlite_writers(engine)
        return engine
    engine = create_engine(
        url,
        hide_parameters=True,
        # Enough kept-open connections for every thread that may query at once (request
        # threads, job workers, scheduler): beyond pool_size each checkout opened and closed a
        # new connection, which cost more than the query under load (bench/run.py).
        pool_size=32,
        max_overflow=32,
        pool_timeout=10,
        # The pid names each serving process in pg_stat_activity (serve --workers N).
        connect_args={"connect_timeout": 5, "application_name": f"chatops-bridge {os.getpid()}"},
    )

    _ping_when_idle(engine, idle_ping_seconds)

    def _no_writes_inline(info: dict[str, object], statement: str) -> None:
        # On the event loop (bot/inline.py) only reads: a write may wait on row locks.
        if inline.active() and statement.lstrip()[:6].upper() != "SELECT":
            inline.guard("database write")

    _GATES[engine] = _no_writes_inline

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        _no_writes_inline(conn.info, statement)

    return engine


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; safe when several replicas start at once."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        schema_migrations.create(conn, checkfirst=True)
        done = {row[0] for row in conn.execute(schema_migrations.select())}
        for version, step in MIGRATIONS:
            if version in done:
                continue
            log.info("applying schema migration", extra={"version": version})
            step(conn)
            conn.execute(schema_migrations.insert().values(version=version, applied_at=time.time()))
        return max(v for v, _ in MIGRATIONS)
