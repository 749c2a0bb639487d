"""MySQL's (and MariaDB's) dialect for the shared schema-checked statement builder."""

from __future__ import annotations

from wf78_sql import Dialect

__all__ = ["MYSQL"]

_TRANSACTION = "every write already runs in the writer's transaction"
_SESSION = "it would change a pooled connection that other operations use next"

MYSQL = Dialect(
    name="mysql",
    quote_char="`",
    placeholder="%s",
    column_types={
        # LONGTEXT: a text that fits max_allowed_packet fits the column (TEXT holds 64 KiB).
        "text": "LONGTEXT",
        "int": "BIGINT",
        "float": "DOUBLE",
        "bool": "TINYINT(1)",
        "json": "JSON",
        "datetime": "DATETIME(6)",
    },
    # TEXT cannot be a key without a prefix length; ids are snowflakes or short caller keys.
    key_type="VARCHAR(64)",
    key_limit=(64, 256),
    # VALUES(col) rather than MySQL 8's `AS new` alias: MariaDB knows only the former.
    upsert="ON DUPLICATE KEY UPDATE {assignments}",
    upsert_value="VALUES({column})",
    upsert_nothing="ON DUPLICATE KEY UPDATE {id} = {id}",
    empty_insert="INSERT INTO {table} () VALUES ()",
    no_limit=18446744073709551615,  # MySQL's own advice for "OFFSET without LIMIT"
    # IGNORE also turns errors into warnings, strict mode or not (a too-long text is cut):
    # the builder has bound every value by its column's type and refused what does not fit.
    insert_ignore="INSERT IGNORE INTO",
    list_tables=(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name LIKE %s ESCAPE '!'"
    ),
    list_columns=(
        "SELECT column_name, character_maximum_length, character_octet_length "
        "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s "
        "ORDER BY ordinal_position"
    ),
    owner_index="inline",  # MySQL has no CREATE INDEX IF NOT EXISTS
    # Binary collation: ids and filters compare like SQLite's (case- and accent-sensitive).
    table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    read_keywords=frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE"}),
    # Only DML joins a batch: DDL and the like commit implicitly, ending the batch's transaction.
    batch_keywords=frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "DO", "WITH"}),
    refused_keywords={
        **dict.fromkeys(
            ("BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "XA"), _TRANSACTION
        ),
        **dict.fromkeys(("SET", "USE", "LOCK", "UNLOCK"), _SESSION),
    },
    utc_datetimes=True,
    outbox_table=(
        "CREATE TABLE IF NOT EXISTS {table} (`id` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
        "`created` DOUBLE NOT NULL, `mirror` VARCHAR(191) NOT NULL, `payload` JSON NOT NULL, "
        "INDEX {index} (`mirror`, `id`)) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    ),
    idempotency_table=(
        "CREATE TABLE IF NOT EXISTS {table} (`key` VARCHAR(200) NOT NULL PRIMARY KEY, "
        "`result` JSON NOT NULL, `created` DOUBLE NOT NULL, INDEX {index} (`created`)) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    ),
)
