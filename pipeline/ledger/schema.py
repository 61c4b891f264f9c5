"""The ledger's schema: numbered migrations (version N to N+1), each applied in one transaction.

The schema is versioned (``schema_version``); opening an older ledger migrates it step by step
(:data:`MIGRATIONS`). A new step goes at the end; an existing step is never edited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.ledger.db import Db
from pipeline.ledger.errors import LedgerError

log = logging.getLogger(__name__)

# the sale a return names, inside its stored checkout (indexed by migration 6; a query that should
# use the index repeats it word for word)
ORIGINAL_SQL = "json_extract(checkout, '$.original_transaction_id')"


def _script(db: Db, sql: str) -> None:
    """Run several statements inside the caller's transaction (``executescript`` would commit)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_0_to_1(db: Db) -> None:
    """The first schema: runs, files, transactions, rejects, run membership."""
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('run', 'rerun')),
            dry_run INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            exit_code INTEGER,
            selection TEXT,
            counts TEXT,
            host TEXT,
            pid INTEGER
        );
        CREATE INDEX runs_feed ON runs (feed, started_at);
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            feed TEXT NOT NULL,
            name TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            first_run_id TEXT NOT NULL REFERENCES runs (id),
            supersedes_file_id INTEGER REFERENCES files (id),
            superseded_by_file_id INTEGER REFERENCES files (id),
            rows_in INTEGER,
            amount_in TEXT,
            finished_action TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX files_sha ON files (scope, sha256);
        CREATE INDEX files_name ON files (scope, name);
        CREATE TABLE transactions (
            id INTEGER PRIMARY KEY,
            scope TEXT NOT NULL,
            feed TEXT NOT NULL,
            transaction_id TEXT,
            content_hash TEXT,
            state TEXT NOT NULL,
            primary_id INTEGER REFERENCES transactions (id),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            event_ids TEXT,
            points TEXT,
            file_id INTEGER NOT NULL REFERENCES files (id),
            source_file TEXT NOT NULL,
            source_lines TEXT NOT NULL,
            rows INTEGER NOT NULL,
            store_id TEXT,
            business_date TEXT,
            transaction_type TEXT,
            currency TEXT,
            amount TEXT NOT NULL,
            reject_code TEXT,
            checkout TEXT,
            first_run_id TEXT NOT NULL REFERENCES runs (id),
            last_run_id TEXT NOT NULL REFERENCES runs (id),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX transactions_primary ON transactions (scope, transaction_id)
            WHERE state IN ('queued', 'sending', 'accepted', 'failed_retryable',
                            'failed_permanent', 'not_sent', 'void');
        CREATE INDEX transactions_file ON transactions (file_id);
        CREATE TABLE rejects (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            file_id INTEGER NOT NULL REFERENCES files (id),
            txn_row_id INTEGER REFERENCES transactions (id),
            source_file TEXT NOT NULL,
            source_line INTEGER,
            transaction_id TEXT,
            store_id TEXT,
            business_date TEXT,
            code TEXT NOT NULL,
            field TEXT,
            reason TEXT,
            amount TEXT NOT NULL,
            original TEXT NOT NULL
        );
        CREATE INDEX rejects_run ON rejects (run_id);
        CREATE TABLE run_transactions (
            run_id TEXT NOT NULL REFERENCES runs (id),
            txn_row_id INTEGER NOT NULL REFERENCES transactions (id),
            origin TEXT NOT NULL,
            PRIMARY KEY (run_id, txn_row_id)
        );
        """
    )


def _migrate_1_to_2(db: Db) -> None:
    """Per-file input totals (for balancing) and each run's end state of its transactions."""
    _script(
        db,
        """
        CREATE TABLE file_totals (
            file_id INTEGER NOT NULL REFERENCES files (id),
            store_id TEXT NOT NULL,
            business_date TEXT NOT NULL,
            rows INTEGER NOT NULL,
            transactions INTEGER NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (file_id, store_id, business_date)
        );
        ALTER TABLE run_transactions ADD COLUMN state_at_end TEXT;
        CREATE INDEX transactions_scope_state ON transactions (scope, state);
        CREATE INDEX transactions_day ON transactions (feed, business_date);
        """
    )


def _migrate_2_to_3(db: Db) -> None:
    """A plain index on (scope, transaction_id): lookups by id whatever the state (SQLite cannot
    use the partial unique index unless a query repeats its WHERE clause word for word)."""
    _script(db, "CREATE INDEX transactions_tid ON transactions (scope, transaction_id)")


def _migrate_3_to_4(db: Db) -> None:
    """Input totals per currency: ``file_totals`` gains ``currency`` (in its key), so a file whose
    rows are in several currencies has one total per currency. Existing totals take the currency
    of their transactions when those have exactly one (else '')."""
    _script(
        db,
        """
        CREATE TABLE file_totals_by_currency (
            file_id INTEGER NOT NULL REFERENCES files (id),
            store_id TEXT NOT NULL,
            business_date TEXT NOT NULL,
            currency TEXT NOT NULL DEFAULT '',
            rows INTEGER NOT NULL,
            transactions INTEGER NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (file_id, store_id, business_date, currency)
        );
        INSERT INTO file_totals_by_currency
            (file_id, store_id, business_date, currency, rows, transactions, amount)
        SELECT ft.file_id, ft.store_id, ft.business_date, COALESCE((
                SELECT MIN(COALESCE(t.currency, '')) FROM transactions t WHERE t.file_id = ft.file_id
                AND COALESCE(t.store_id, '') = ft.store_id
                AND COALESCE(t.business_date, '') = ft.business_date
                HAVING COUNT(DISTINCT COALESCE(t.currency, '')) = 1), ''),
            ft.rows, ft.transactions, ft.amount
        FROM file_totals ft;
        DROP TABLE file_totals;
        ALTER TABLE file_totals_by_currency RENAME TO file_totals
        """,
    )


def _migrate_4_to_5(db: Db) -> None:
    """Each run's own outcome of its transactions (attempts, error, event ids, points, last run)
    as that run left them, next to ``state_at_end``: a run's report is reproduced from them
    whatever later runs did. Runs finished before this step have none (their report shows the
    current values)."""
    _script(
        db,
        """
        ALTER TABLE run_transactions ADD COLUMN attempts_at_end INTEGER;
        ALTER TABLE run_transactions ADD COLUMN error_code_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN error_message_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN event_ids_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN points_at_end TEXT;
        ALTER TABLE run_transactions ADD COLUMN last_run_id_at_end TEXT
        """,
    )


def _migrate_5_to_6(db: Db) -> None:
    """An index of returns by the sale they name: deciding a return reads its sale's earlier
    returns (the expression and the WHERE term are repeated word for word by
    :meth:`Ledger.returns_of`, so SQLite uses the index)."""
    _script(
        db,
        f"CREATE INDEX transactions_returns_of ON transactions (scope, {ORIGINAL_SQL}) "
        "WHERE transaction_type = 'return'",
    )


def _migrate_6_to_7(db: Db) -> None:
    """Why a failed-retryable transaction was not delivered (``transient``, ``stopped``,
    ``credentials``, ``deferred``): a plain run resends all but ``deferred`` by itself."""
    _script(db, "ALTER TABLE transactions ADD COLUMN retry_class TEXT")


def _migrate_7_to_8(db: Db) -> None:
    """Problems with a life cycle, the alerts they owe (an outbox), and quarantined files."""
    _script(
        db,
        """
        CREATE TABLE problems (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
            stage INTEGER NOT NULL DEFAULT 0,
            summary TEXT NOT NULL,
            action TEXT NOT NULL,
            store_id TEXT,
            business_date TEXT,
            subject TEXT,
            counts TEXT,
            opened_at TEXT NOT NULL,
            escalated_at TEXT,
            resolved_at TEXT,
            opened_run_id TEXT,
            last_run_id TEXT
        );
        CREATE UNIQUE INDEX problems_open ON problems (key) WHERE status = 'open';
        CREATE INDEX problems_feed ON problems (feed, status);
        CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY,
            problem_id INTEGER NOT NULL REFERENCES problems (id),
            feed TEXT NOT NULL,
            scope TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            delivered_at TEXT,
            last_error TEXT
        );
        CREATE INDEX alert_outbox_pending ON alert_outbox (scope, delivered_at);
        ALTER TABLE files ADD COLUMN quarantined_to TEXT;
        ALTER TABLE files ADD COLUMN quarantined_at TEXT
        """
    )


MIGRATIONS: tuple[Callable[[Db], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
    _migrate_4_to_5,
    _migrate_5_to_6,
    _migrate_6_to_7,
    _migrate_7_to_8,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Db, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema of ``db`` up to version ``target``, one step per transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.one("SELECT version FROM schema_version")
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger schema version {version} is newer than this posfeed understands ({SCHEMA_VERSION})"
        )
    while version < target:
        with db.transaction():
            MIGRATIONS[version](db)
            if version == 0:
                db.execute("INSERT INTO schema_version (version) VALUES (1)")
            else:
                db.execute("UPDATE schema_version SET version = ?", (version + 1,))
        log.info("ledger migrated to schema version %d", version + 1)
        version += 1
    return version
