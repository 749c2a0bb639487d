"""Document ids: the row's id, or on the index of an owned table its owner and id together.

A declared table with an owner column (``TableSchema.owner``, one of its columns: ``cid`` or
``uid``) gives each owner its own ids: a row is the pair (owner, id), and two owners may
each hold a row with the same id. Its index (the table's own ``data_source`` or its
``search_mirror``) names that row's document ``{len(owner)}:{owner}:{id}`` (``4:acme:7``):
the length says where the owner ends, so two pairs never share an ``_id`` whatever
characters their owners and ids hold. The document's ``id`` field keeps the plain id, and
every row read back carries it, never the ``_id``. Other indexes (tables without an owner,
undeclared indexes) keep ``_id`` = id.

On such an index a write needs the owner beside the id (``where={"id": x, "cid": "acme"}``,
or the owner in the document's values): without it, it could not name one document, and
writing every owner's document of an id is what owner scoping exists to prevent. A read by
id without the owner searches the ``id`` field (every owner's document of that id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeGuard

from wf78_core.plugin import InvalidOperation, TableSchema

from .queries import as_ids, document

__all__ = ["MAX_DOCUMENT_ID", "Keys", "Targets", "owner_column", "split_document_id"]

# The most bytes (UTF-8) Elasticsearch takes in an ``_id``.
MAX_DOCUMENT_ID = 512


def owner_column(tables: Mapping[str, TableSchema], table: str | None) -> str | None:
    """The owner column of the declared table ``table`` when its documents are keyed by
    (owner, id), else None."""
    schema = tables.get(table or "")
    if schema is None or schema.owner is None or schema.owner not in schema.columns:
        return None
    return schema.owner


def split_document_id(doc_id: str) -> tuple[str, str] | None:
    """``(owner, id)`` of an ``_id`` of an owned table's document, or None if it is none."""
    length, colon, rest = doc_id.partition(":")
    if not (colon and length.isascii() and length.isdigit()):
        return None
    size = int(length)
    if len(rest) <= size or rest[size] != ":":
        return None
    return rest[:size], rest[size + 1 :]


class Targets(NamedTuple):
    """The documents a write by id names: ``ids`` maps each ``_id`` to its row id, in the
    order given; ``filters`` are what each document must also pass (:mod:`.guards`), none
    when the ``_id`` already holds all that ``where`` asked for."""

    ids: dict[str, str]
    filters: dict[str, Any]


class Keys:
    """How the index ``index`` names its documents: ``owner`` is the owner column when they
    are keyed by (owner, id), else None (``_id`` = id). Errors name ``source``."""

    def __init__(self, owner: str | None, *, source: str, index: str) -> None:
        self.owner = owner
        self.source = source
        self.index = index

    @property
    def keyed(self) -> bool:
        return self.owner is not None

    def document_id(self, row: Mapping[str, Any], row_id: str, what: str) -> str:
        """The ``_id`` of the document ``row`` whose id is ``row_id``; on an owned table's
        index the row must hold its owner."""
        if self.owner is None:
            return row_id
        owner = row.get(self.owner)
        if not _is_owner(owner):
            raise self._invalid(
                f"{what} needs {self.owner!r} (the owner, a string) in the document: "
                f"{self._keyed_by()}, got {owner!r}"
            )
        return self.compose(owner, [row_id], what)[0]

    def targets(
        self, where: Mapping[str, Any] | None, action: str, *, many: bool = False
    ) -> Targets:
        """``where.id`` (one id, or with ``many`` a list of them) as the documents a write
        names, and the filters beside them (:class:`Targets`)."""
        where = where or {}
        if "id" not in where:
            shape = "{'id': [ids], ...}" if many else "{'id': id, ...}"
            raise self._invalid(
                f"{action} on elasticsearch needs where = {shape} (the id, and any filters "
                f"beside it), got {where!r}"
            )
        value = where["id"]
        if not many and (value is None or isinstance(value, list | tuple | dict)):
            raise self._invalid(f"{action} needs one id in where, got {value!r}")
        row_ids = list(dict.fromkeys(as_ids(value)))
        filters = {name: wanted for name, wanted in where.items() if name != "id"}
        if self.owner is None:
            return Targets({row_id: row_id for row_id in row_ids}, filters)
        owner = self.write_owner(where, action)
        ids = dict(zip(self.compose(owner, row_ids, action), row_ids, strict=True))
        # The owner is in every _id: only other filters need reading the documents.
        others = {name: wanted for name, wanted in filters.items() if name != self.owner}
        return Targets(ids, {**others, self.owner: owner} if others else {})

    def write_owner(self, where: Mapping[str, Any] | None, action: str) -> str:
        """The one owner a write on an owned table's index names in ``where``."""
        assert self.owner is not None
        owner = (where or {}).get(self.owner)
        if not _is_owner(owner):
            raise self._invalid(
                f"{action} needs where[{self.owner!r}] (one owner, a string) beside "
                f"the ids: {self._keyed_by()}, got {owner!r}"
            )
        return owner

    def read_ids(self, where: Mapping[str, Any]) -> list[str] | None:
        """The ``_id`` of each document a read by id (``where.id``) reads in real time, or
        None when it must search instead: an owned table's index without the owner (or with
        an owner that is not text) in ``where``."""
        wanted = where["id"]
        if wanted is None:
            return []  # every document has an id
        row_ids = list(dict.fromkeys(as_ids(wanted)))
        if self.owner is None:
            return row_ids
        owner = where.get(self.owner)
        given = list(owner) if isinstance(owner, list | tuple) else [owner]
        owners = [value for value in given if isinstance(value, str)]
        if len(owners) != len(given):
            return None
        return self.compose(owners, row_ids, "get")

    def compose(self, owners: str | list[str], row_ids: list[str], what: str) -> list[str]:
        """The ``_id`` of each (owner, id) pair, ids first; InvalidOperation when one is
        longer than Elasticsearch takes."""
        found = []
        for row_id in row_ids:
            for owner in [owners] if isinstance(owners, str) else owners:
                doc_id = f"{len(owner)}:{owner}:{row_id}"
                if len(doc_id.encode()) > MAX_DOCUMENT_ID:
                    raise self._invalid(
                        f"{what}: owner and id of {row_id!r} together exceed the "
                        f"{MAX_DOCUMENT_ID} bytes of an elasticsearch _id"
                    )
                found.append(doc_id)
        return found

    def row(self, hit: Mapping[str, Any]) -> dict[str, Any]:
        """A hit or a fetched document as a row, with its row id (:func:`~.queries.document`)."""
        row = document(hit)
        if self.owner is not None:
            row["id"] = _row_id(hit)
        return row

    def _keyed_by(self) -> str:
        return (
            f"index {self.index!r} keys its documents by owner and id (each {self.owner!r} "
            "has its own ids)"
        )

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)


def _row_id(hit: Mapping[str, Any]) -> str:
    """The row id of an owned table's document: its ``id`` field, else (``_source`` left
    out) the id part of its ``_id``."""
    source = hit.get("_source")
    stored = source.get("id") if isinstance(source, Mapping) else None
    if isinstance(stored, str):
        return stored
    doc_id = str(hit["_id"])
    split = split_document_id(doc_id)
    return doc_id if split is None else split[1]


def _is_owner(value: Any) -> TypeGuard[str]:
    # Any text, the empty owner of rows written without one (SQL's default) included.
    return isinstance(value, str)
