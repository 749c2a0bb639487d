"""The write actions of the Elasticsearch source, each one or more ``_bulk`` items.

Documents are named by :mod:`.keys` (the id, or on an owned table's index the owner and id)
and JSON-encoded here, before they are queued, so a value JSON cannot carry fails its caller
only. Writes by id with filters the ``_id`` does not already hold go through :mod:`.guards`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from elastic_transport import SerializationError
from elasticsearch.serializer import JsonSerializer

from wf78_core.plugin import (
    DataSourceError,
    InvalidOperation,
    Operation,
    generated_ids,
    snowflake_id,
)

from .bulk import BulkWriter, Item, Response, Write
from .errors import PartialWrite, error_type, item_error
from .guards import Versioned, guarded, versions
from .keys import Keys
from .reads import Reader

__all__ = ["Writer"]

# Error types of a 404 meaning "no such document" to an action by id ("" is no error).
_MISSING = frozenset({"", "document_missing_exception", "index_not_found_exception"})


class Writer:
    """The writes of one source (``source`` is its name): items go out through ``bulk``;
    ``reader`` reads the documents a guarded write checks, and knows how each index names
    its documents."""

    def __init__(self, bulk: BulkWriter, reader: Reader, source: str) -> None:
        self.bulk = bulk
        self.reader = reader
        self.source = source
        self._serializer = JsonSerializer()

    async def add(self, index: str, op: Operation) -> str:
        """``add`` (create) or ``index`` (create or replace) one document -> its id."""
        values = self._values(op)
        what = f"{op.action} to index {index!r}"
        row_id, item = self._document_item(op, self.reader.keys(op, index), values, what)
        (response,) = await self._submit([item])
        # A conflict on an id generated for this operation: an earlier run of it created it.
        if not (_refused_as_existing(response) and row_id in generated_ids(op)):
            self._answer(response, what)
        return row_id

    async def add_many(self, index: str, op: Operation) -> list[str] | int:
        if op.rows is None:
            raise self._invalid(f"add_many needs rows (index {index!r})")
        ignore = op.conflict == "ignore"  # existing ids are skipped; returns how many were new
        keys = self.reader.keys(op, index)
        ids: list[str] = []
        items: list[Item] = []
        for number, row in enumerate(op.rows):
            if not isinstance(row, Mapping):
                raise self._invalid(f"add_many rows[{number}] must be an object, got {row!r}")
            row_id, item = self._document_item(op, keys, row, f"add_many rows[{number}]")
            ids.append(row_id)
            items.append(item)
        if not items:
            return 0 if ignore else []
        responses = await self._submit(items)
        failed: dict[int, DataSourceError] = {}
        generated: set[str] | None = None
        skipped: set[int] = set()
        for number, response in enumerate(responses):
            if _refused_as_existing(response):
                if ignore:
                    skipped.add(number)
                    continue
                if generated is None:
                    generated = set(generated_ids(op))
                if ids[number] in generated:
                    continue  # created by an earlier run of this very operation
            try:
                self._answer(response, f"add_many rows[{number}] (id {ids[number]!r})")
            except DataSourceError as error:
                failed[number] = error
        if not failed:
            return len(ids) - len(skipped) if ignore else ids
        written = [
            row_id for number, row_id in enumerate(ids) if number not in failed.keys() | skipped
        ]
        first, first_error = next(iter(failed.items()))
        raise PartialWrite(
            f"add_many to index {index!r}: {len(failed)} of {len(ids)} documents failed, "
            f"{len(written)} written; rows[{first}]: {first_error}",
            data_source=self.source,
            written=written,
            failed=failed,
            # Nothing stored (or existing ids skipped): sending all the rows again cannot
            # duplicate any of them.
            retryable=(ignore or not written) and all(e.retryable for e in failed.values()),
        )

    async def update(self, index: str, op: Operation) -> int:
        keys = self.reader.keys(op, index)
        targets = keys.targets(op.where, op.action)
        ((doc_id, row_id),) = targets.ids.items()
        values = self._values(op)
        if "id" in values and str(values["id"]) != row_id:
            raise self._invalid(f"update cannot change the id of document {row_id!r}")
        _keep_owner(keys, values, op.where, f"update of document {row_id!r}")
        changes = {name: value for name, value in values.items() if name != "id"}
        changes["@timestamp"] = _now()
        bodies = {doc_id: {"doc": changes}}
        return await self._by_id(index, "update", bodies, targets.ids, targets.filters, op.action)

    async def update_many(self, index: str, op: Operation) -> int:
        """Each of ``op.rows`` updates the document of its ``id`` with its own values;
        ``where`` holds the filters every document must pass (the owner), never the ids."""
        if op.rows is None:
            raise self._invalid(f"update_many needs rows (index {index!r})")
        filters = dict(op.where or {})
        if "id" in filters:
            raise self._invalid(
                f"update_many takes the ids from its rows, not from where (index {index!r})"
            )
        keys = self.reader.keys(op, index)
        try:
            by_row = _update_bodies(op.rows)
        except ValueError as error:
            raise self._invalid(f"update_many {error} (index {index!r})") from None
        if not by_row:
            return 0
        names = {row_id: row_id for row_id in by_row}
        bodies = by_row
        if keys.owner is not None:
            owner = keys.write_owner(filters, op.action)
            for row_id, body in by_row.items():
                _keep_owner(keys, body["doc"], filters, f"update_many of {row_id!r}")
            doc_ids = keys.compose(owner, list(by_row), op.action)
            names = dict(zip(doc_ids, by_row, strict=True))
            bodies = dict(zip(doc_ids, by_row.values(), strict=True))
            # The owner is in every _id: only other filters need reading the documents.
            if set(filters) == {keys.owner}:
                filters = {}
        return await self._by_id(index, "update", bodies, names, filters, op.action)

    async def upsert(self, index: str, op: Operation) -> str:
        keys = self.reader.keys(op, index)
        fields = dict(self._values(op))
        where = op.where or {}
        owner = keys.owner
        # A where of only the id (and the owner) names the document the values do not.
        if where and set(where) <= {"id", owner or "id"}:
            wanted = where.get("id")
            if fields.get("id") is None and wanted is not None:
                if isinstance(wanted, list | tuple | dict):
                    raise self._invalid(f"upsert needs one id in where, got {wanted!r}")
                fields["id"] = str(wanted)
            if owner is not None and owner in where:
                _keep_owner(keys, fields, where, "upsert")
                fields[owner] = where[owner]
        if fields.get("id") is None:
            raise self._invalid(f"upsert needs values.id or where.id (index {index!r})")
        row_id = str(fields["id"])
        fields |= {"id": row_id, "@timestamp": _now()}
        what = f"upsert of {row_id!r} in index {index!r}"
        doc_id = keys.document_id(fields, row_id, what)
        body = {"doc": fields, "doc_as_upsert": True}
        (response,) = await self._submit([self._item("update", index, doc_id, body, what)])
        self._answer(response, what)
        return row_id

    async def delete(self, index: str, op: Operation, *, many: bool = False) -> int:
        """``delete`` (``where.id`` one id) or ``delete_many`` (a list) -> how many."""
        targets = self.reader.keys(op, index).targets(op.where, op.action, many=many)
        if not targets.ids:
            return 0
        bodies = dict.fromkeys(targets.ids)
        return await self._by_id(index, "delete", bodies, targets.ids, targets.filters, op.action)

    async def _by_id(
        self,
        index: str,
        action: Literal["update", "delete"],
        bodies: dict[str, Any],
        names: Mapping[str, str],
        filters: dict[str, Any],
        name: str,
    ) -> int:
        """``action`` of each document of ``bodies`` (``_id`` -> body; ``names`` gives each
        one's row id) -> how many it applied to. With ``filters`` only the documents passing
        them are written, each guarded by the version it was read at (:mod:`.guards`); a
        missing document counts 0."""

        def what(doc_id: str) -> str:
            return f"{action} of {names.get(doc_id, doc_id)!r} in index {index!r}"

        async def read(ids: list[str]) -> dict[str, Versioned]:
            return versions(await self.reader.mget(index, ids), self.source, index)

        async def write(targets: list[tuple[str, Versioned]]) -> list[Response]:
            return await self._submit(
                [self._item(action, index, i, bodies[i], what(i), guard=v) for i, v in targets]
            )

        if filters:
            answers = await guarded(list(bodies), filters, read, write, source=self.source)
        else:
            items = [self._item(action, index, i, body, what(i)) for i, body in bodies.items()]
            answers = dict(zip(bodies, await self._submit(items), strict=True))
        done = 0
        errors: list[DataSourceError] = []
        for doc_id, response in answers.items():
            try:
                done += self._answer(response, what(doc_id), missing_ok=True) is not None
            except DataSourceError as error:
                errors.append(error)
        if not errors:
            return done
        if len(bodies) == 1:
            raise errors[0]
        # Writing by id again is harmless, so the errors' retryability stands.
        raise DataSourceError(
            f"{name} in index {index!r}: {len(errors)} of {len(bodies)} documents failed "
            f"({done} done); first: {errors[0]}",
            data_source=self.source,
            retryable=all(error.retryable for error in errors),
        )

    def _document_item(
        self, op: Operation, keys: Keys, values: Mapping[str, Any], what: str
    ) -> tuple[str, Item]:
        """The ``create`` (``index`` for the index action) item of a document and its id."""
        raw_id = values.get("id")
        row_id = snowflake_id() if raw_id is None else str(raw_id)
        doc_id = keys.document_id(values, row_id, what)
        bulk_action = "index" if op.action == "index" else "create"
        item = self._item(bulk_action, keys.index, doc_id, {**values, "id": row_id}, what)
        return row_id, item

    def _item(
        self,
        action: str,
        index: str,
        doc_id: str,
        body: Mapping[str, Any] | None,
        what: str,
        *,
        guard: Versioned | None = None,
    ) -> Item:
        """A bulk item; with ``guard``, refused if the document changed since it was read."""
        meta: dict[str, Any] = {"_index": index, "_id": doc_id}
        if guard is not None:
            meta |= {"if_seq_no": guard.seq_no, "if_primary_term": guard.primary_term}
        header = self._encode({action: meta}, what)
        return (header,) if body is None else (header, self._encode(body, what))

    def _encode(self, value: Any, what: str) -> bytes:
        try:
            return self._serializer.dumps(value)
        except SerializationError as error:
            raise self._invalid(
                f"{what}: the document cannot be encoded as JSON: {error}"
            ) from None

    async def _submit(self, items: list[Item]) -> list[Response]:
        return await self.bulk.submit(Write(items))

    def _answer(
        self, response: Response, what: str, *, missing_ok: bool = False
    ) -> Mapping[str, Any] | None:
        """A bulk item's answer when it succeeded, ``None`` when the document was missing
        and ``missing_ok``; otherwise its error is raised."""
        if isinstance(response, DataSourceError):
            raise response
        status = int(response.get("status", 0))
        if 200 <= status < 300 and "error" not in response:
            return response
        if missing_ok and status == 404:
            # No error at all is a delete's "not_found".
            if error_type(response) in _MISSING:
                return None
        raise item_error(response, self.source, what)

    def _values(self, op: Operation) -> dict[str, Any]:
        if not op.values:
            raise self._invalid(f"{op.action} needs non-empty values (index {op.table!r})")
        return op.values

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.source)


def _keep_owner(
    keys: Keys, values: Mapping[str, Any], where: Mapping[str, Any] | None, what: str
) -> None:
    """Refuse values that would move a document of an owned table's index to another owner:
    its ``_id`` holds the owner it was written with."""
    owner = keys.owner
    if owner is None or owner not in values:
        return
    if values[owner] != (where or {}).get(owner):
        raise InvalidOperation(
            f"{what} cannot change its owner {owner!r} (index {keys.index!r})",
            data_source=keys.source,
        )


def _refused_as_existing(response: Response) -> bool:
    """Whether a bulk ``create`` was refused because a document with its id exists."""
    return not isinstance(response, DataSourceError) and int(response.get("status", 0)) == 409


def _update_bodies(rows: Sequence[Any]) -> dict[str, Any]:
    """The partial update of each row by its ``id`` (id -> bulk body), all stamped alike;
    ValueError naming a row that is not an object, has no id, repeats one or sets nothing."""
    stamp = _now()
    bodies: dict[str, Any] = {}
    for number, row in enumerate(rows):
        field = f"rows[{number}]"
        if not isinstance(row, Mapping):
            raise ValueError(f"{field} must be an object, got {row!r}")
        if row.get("id") is None:
            raise ValueError(f"{field} needs an id")
        doc_id = str(row["id"])
        if doc_id in bodies:
            raise ValueError(f"{field}: id {doc_id!r} appears twice")
        changes = {name: value for name, value in row.items() if name != "id"}
        if not changes:
            raise ValueError(f"{field} sets no field besides id")
        bodies[doc_id] = {"doc": {**changes, "@timestamp": stamp}}
    return bodies


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
