"""Schema statements for declared tables: create one, add the columns it lacks."""

from __future__ import annotations

from collections.abc import Sequence

from wf78_core.plugin import InvalidOperation, TableSchema

from .dialect import Dialect

__all__ = ["add_columns_sql", "column_sql", "create_table_sql"]


def column_sql(table: TableSchema, name: str, dialect: Dialect) -> str:
    """The definition of the declared column ``name`` (without the id's PRIMARY KEY)."""
    kind = (
        dialect.key_type
        if name in ("id", table.owner)
        else dialect.column_types[table.columns[name]]
    )
    return f"{dialect.quote(name)} {kind}"


def create_table_sql(table: TableSchema, dialect: Dialect) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for a declared table, with an index on its owner column."""
    quote = dialect.quote
    columns = [
        column_sql(table, name, dialect) + (" PRIMARY KEY" if name == "id" else "")
        for name in table.columns
    ]
    # Owner-scoped reads (the koa78 cid/uid filter) hit this column on every request.
    owner = table.owner if table.owner and table.owner in table.columns else None
    if owner and dialect.owner_index == "inline":
        columns.append(f"INDEX {quote('owner_' + owner)} ({quote(owner)})")
    statements = [
        f"CREATE TABLE IF NOT EXISTS {quote(table.name)} ({', '.join(columns)})"
        + dialect.table_options
    ]
    if owner and dialect.owner_index == "statement":
        statements.append(_owner_index(table.name, owner, dialect))
    return statements


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
