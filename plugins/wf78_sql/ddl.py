"""Schema statements for declared tables: create one, add the columns it lacks."""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.plugin import InvalidOperation, TableSchema

from .dialect import Dialect

__all__ = ["add_columns_sql", "column_sql", "create_table_sql", "key_columns"]


def column_sql(table: TableSchema, name: str, dialect: Dialect) -> str:
    """The definition of the declared column ``name`` (without the id's PRIMARY KEY)."""
    kind = (
        dialect.key_type
        if name in ("id", table.owner)
        else dialect.column_types[table.columns[name]]
    )
    return f"{dialect.quote(name)} {kind}"


def key_columns(table: TableSchema) -> tuple[str, ...]:
    """The columns that identify a row: ``(owner, id)`` on a table with an owner column (each
    owner has its own ids, so no owner can learn another's), else ``(id,)``; () without id."""
    if "id" not in table.columns:
        return ()
    if table.owner and table.owner in table.columns:
        return (table.owner, "id")
    return ("id",)


def create_table_sql(table: TableSchema, dialect: Dialect) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for a declared table, keyed by :func:`key_columns`; the
    owner column leads the key, so owner-scoped reads (the koa78 cid/uid filter, on every
    request) use the key's index."""
    quote = dialect.quote
    key = key_columns(table)
    # Key columns hold no NULL (SQLite's keys would take NULLs as all distinct): a row
    # written without an owner (an operation from outside Table) is the empty owner's.
    columns = [
        column_sql(table, name, dialect)
        + ((" NOT NULL DEFAULT ''" if name == table.owner else " NOT NULL") if name in key else "")
        for name in table.columns
    ]
    if key:
        columns.append(f"PRIMARY KEY ({', '.join(quote(name) for name in key)})")
    return [
        f"CREATE TABLE IF NOT EXISTS {quote(table.name)} ({', '.join(columns)})"
        + dialect.table_options
    ]


def add_columns_sql(table: TableSchema, missing: Sequence[str], dialect: Dialect) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each declared column of ``missing`` (the owner's
    index with it): additive only. The id column cannot be added: it is the primary key."""
    if "id" in missing:
        raise InvalidOperation(
            f"table {table.name!r} has no id column: it is the primary key and cannot be "
            "added to a table that exists; create the table anew"
        )
    quote = dialect.quote
    statements = []
    for name in missing:
        statement = f"ALTER TABLE {quote(table.name)} ADD COLUMN {column_sql(table, name, dialect)}"
        if name == table.owner and dialect.owner_index == "inline":
            statement += f", ADD INDEX {quote('owner_' + name)} ({quote(name)})"
        statements.append(statement)
        if name == table.owner and dialect.owner_index == "statement":
            statements.append(_owner_index(table.name, name, dialect))
    return statements


def _owner_index(table: str, owner: str, dialect: Dialect) -> str:
    quote = dialect.quote
    index = quote(f"{table}_{owner}")
    return f"CREATE INDEX IF NOT EXISTS {index} ON {quote(table)} ({quote(owner)})"
