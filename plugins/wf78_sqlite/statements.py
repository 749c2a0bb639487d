"""SQLite's dialect for the shared schema-checked statement builder (:mod:`wf78_sql`)."""

from __future__ import annotations

from wf78_sql import Dialect

__all__ = ["SQLITE"]

_TRANSACTION = "every write already runs in the writer's transaction"

SQLITE = Dialect(
    name="sqlite",
    quote_char='"',
    placeholder="?",
    column_types={
        "text": "TEXT",
        "int": "INTEGER",
        "float": "REAL",
        "bool": "INTEGER",
        "json": "TEXT",
        "datetime": "TEXT",
    },
    key_type="TEXT",
    upsert="ON CONFLICT({key}) DO UPDATE SET {assignments}",
    upsert_value="excluded.{column}",
    upsert_nothing="ON CONFLICT({key}) DO NOTHING",
    empty_insert="INSERT INTO {table} DEFAULT VALUES",
    no_limit=-1,
    insert_ignore="INSERT OR IGNORE INTO",
    list_tables="SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '!'",
    # SQLite's TEXT holds any length: no limits to report.
    list_columns="SELECT name, NULL, NULL FROM pragma_table_info(?) ORDER BY cid",
    read_keywords=frozenset({"SELECT", "VALUES", "EXPLAIN", "PRAGMA"}),
    # AUTOINCREMENT: an acknowledged entry's id is never handed out again.
    outbox_table=(
        'CREATE TABLE IF NOT EXISTS {table} ("id" INTEGER PRIMARY KEY AUTOINCREMENT, '
        '"created" REAL NOT NULL, "mirror" TEXT NOT NULL, "payload" TEXT NOT NULL)',
        'CREATE INDEX IF NOT EXISTS {index} ON {table} ("mirror", "id")',
    ),
    idempotency_table=(
        'CREATE TABLE IF NOT EXISTS {table} ("key" TEXT PRIMARY KEY, "result" TEXT NOT NULL, '
        '"created" REAL NOT NULL) WITHOUT ROWID',
        'CREATE INDEX IF NOT EXISTS {index} ON {table} ("created")',
    ),
    # Raw SQL must not end or nest the writer's own transaction and savepoints.
    refused_keywords=dict.fromkeys(
        ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"), _TRANSACTION
    ),
)
