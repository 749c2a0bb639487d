"""PostgreSQL's dialect for the shared schema-checked statement builder (:mod:`wf78_sql`).

The shared builder repeats one placeholder; PostgreSQL numbers them (``$1``, ``$2``...). The
dialect's placeholder is a NUL character, which no identifier, literal or raw SQL can hold
(PostgreSQL refuses NUL in text), and :func:`native` numbers them once per statement text.
Raw SQL keeps PostgreSQL's own ``$n`` placeholders: it holds no NUL, so it passes unchanged.
"""

from __future__ import annotations

from wf78_sql import Dialect

__all__ = ["IGNORE_TAIL", "POSTGRES", "native"]

_TRANSACTION = "every write already runs in the writer's transaction"
_SESSION = "it would change a pooled connection that other operations use next"
_MARK = "\x00"
# The tail of add_many's INSERT with conflict = "ignore": each row returns 1 when inserted.
IGNORE_TAIL = " ON CONFLICT DO NOTHING RETURNING 1"
# Statement texts numbered at most (a few per table and shape in practice).
_NATIVE_CACHE = 4096
_native: dict[str, str] = {}

POSTGRES = Dialect(
    name="postgres",
    quote_char='"',
    placeholder=_MARK,
    column_types={
        "text": "TEXT",
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        # The shared builder binds bools as 0/1 (as MySQL's TINYINT(1) and SQLite hold them).
        "bool": "SMALLINT",
        "json": "JSONB",
        "datetime": "TIMESTAMP(6)",
    },
    # Ids and owners are compared and indexed: bounded, so a key always fits a B-tree entry.
    key_type="VARCHAR(255)",
    key_limit=(255, 1020),
    upsert="ON CONFLICT ({key}) DO UPDATE SET {assignments}",
    upsert_value="EXCLUDED.{column}",
    upsert_nothing="ON CONFLICT ({key}) DO NOTHING",
    empty_insert="INSERT INTO {table} DEFAULT VALUES",
    no_limit=9223372036854775807,
    # The source appends IGNORE_TAIL to these INSERTs (PostgreSQL's ignore is a tail).
    insert_ignore="INSERT INTO",
    list_tables=(
        "SELECT c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
        "AND c.relname LIKE $1 ESCAPE '!'"
    ),
    list_columns=(
        "SELECT column_name, character_maximum_length, character_octet_length "
        "FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = $1 ORDER BY ordinal_position"
    ),
    owner_index="statement",
    read_keywords=frozenset({"SELECT", "VALUES", "EXPLAIN", "SHOW", "TABLE"}),
    # Only DML joins a batch: DDL runs alone, so its locks are not held by a batch.
    batch_keywords=frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "WITH"}),
    refused_keywords={
        **dict.fromkeys(
            (
                "BEGIN",
                "START",
                "COMMIT",
                "END",
                "ROLLBACK",
                "ABORT",
                "SAVEPOINT",
                "RELEASE",
                "PREPARE",
            ),
            _TRANSACTION,
        ),
        **dict.fromkeys(("SET", "RESET", "DISCARD", "LISTEN", "UNLISTEN", "LOCK"), _SESSION),
    },
    utc_datetimes=True,
    outbox_table=(
        'CREATE TABLE IF NOT EXISTS {table} ("id" BIGSERIAL PRIMARY KEY, '
        '"created" DOUBLE PRECISION NOT NULL, "mirror" TEXT NOT NULL, "payload" JSONB NOT NULL)',
        'CREATE INDEX IF NOT EXISTS {index} ON {table} ("mirror", "id")',
    ),
    idempotency_table=(
        'CREATE TABLE IF NOT EXISTS {table} ("key" TEXT PRIMARY KEY, "result" JSONB NOT NULL, '
        '"created" DOUBLE PRECISION NOT NULL)',
        'CREATE INDEX IF NOT EXISTS {index} ON {table} ("created")',
    ),
)


def native(sql: str) -> str:
    """``sql`` with the builder's placeholders numbered ``$1``, ``$2``... (raw SQL as is)."""
    found = _native.get(sql)
    if found is not None:
        return found
    if _MARK not in sql:
        return sql
    parts = sql.split(_MARK)
    numbered = parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], 1))
    if len(_native) >= _NATIVE_CACHE:
        _native.clear()
    _native[sql] = numbered
    return numbered
