"""The Elasticsearch data source (the official async client): grouped bulk writes.

Every write (``add``, ``index``, ``add_many``, ``update``, ``update_many``, ``upsert``,
``delete``, ``delete_many``) becomes one or more ``_bulk`` items. While
:meth:`ElasticsearchSource.run` runs, the items of all callers waiting at once go out
together, up to ``max_bulk`` items per request (:mod:`wf78_elasticsearch.bulk`);
Elasticsearch answers every item on its own, so each caller gets its own result or error.
Without ``run`` every write is its own bulk request, which suits scripts and tests.
Documents are JSON-encoded by their caller before they are queued, so a value JSON cannot
carry fails its caller only.

Actions and results (``op.table`` is the index name, after ``index_prefix``):

- ``add``: ``op.values`` is the document; its ``_id`` is ``values["id"]`` or a new
  snowflake id, stored in the document as ``id`` too. Create semantics: an existing id is
  refused (non-retryable). Returns the id. ``index`` is the same but replaces an existing
  document with that id (Elasticsearch's ``index``).
- ``add_many``: ``op.rows`` -> their ids. Not atomic: see :class:`~.errors.PartialWrite`.
  With ``conflict = "ignore"`` rows whose id exists are skipped -> how many were inserted.
- Idempotency (:mod:`wf78_core.idempotency`): documents are written by id. An ``add`` or
  ``add_many`` row whose id was generated for that very operation (by the engine before its
  first attempt, or derived from the caller's key) and that meets an existing document ran
  before: it succeeds, and the document is left as that run wrote it. ``index``, ``update``,
  ``upsert`` and deletes by id are idempotent as they are.
- ``get``: ``where={"id": x}`` reads that document in real time -> ``[doc]`` or ``[]``;
  ``{"id": [..]}`` -> the documents found; equality filters beside the id (the owner) are
  checked on the documents read (:func:`~.queries.matches`), and ``order``, ``limit``,
  ``offset`` apply to them. Without an id, equality filters search (``bool`` of ``term``
  filters, :func:`~.queries.where_query`). ``columns`` picks the keys of each row. Every
  row carries ``id`` = the document ``_id``. ``count``: how many documents ``where`` matches.
- ``update``: partial update of ``where={"id": x}`` with ``op.values`` plus ``@timestamp``
  (now, UTC, ISO 8601), as koa78's ``mUpdateElkByid`` -> 1, or 0 when there is no such
  document. ``upsert``: the same with ``doc_as_upsert``, creating it if missing -> the id.
  ``update_many``: each of ``op.rows`` updates the document of its ``id`` -> how many did.
- ``delete``: ``where={"id": x}`` -> 1 or 0; ``delete_many``: ``where={"id": [..]}`` ->
  how many were deleted.
- Owner-scoped tables: ``update``, ``update_many``, ``delete`` and ``delete_many`` take
  equality filters beside the id (``{"id": x, "cid": "acme"}``; ``update_many``'s in
  ``where``) and write only documents that pass them, each guarded by the version it was
  read at (:mod:`.guards`). A document that fails them is treated exactly as a missing one.
- ``search``: ``op.params`` is a query DSL body (``{"query": ..., "sort": ...}``; ``where``
  stands in for a missing ``query``); ``offset``/``limit`` set ``from``/``size``; ``columns``
  filters ``_source`` -> ``{"total": n, "hits": [docs with id]}`` (and ``aggregations`` when
  asked for). ``total`` is exact unless the body sets ``track_total_hits``.
- ``noop`` -> ``None``.

Consistency: a write is durable once answered (Elasticsearch's translog), but searches see
it only after the next refresh (about a second by default): ``refresh = "wait_for"`` makes
every bulk wait for it, ``"true"`` forces one per bulk (costly). ``get`` by id is real time.
Indexes are created by the first write to them. Actions by id treat a missing index as
a missing document (``get`` -> ``[]``, ``update``/``delete`` -> 0), and so do ``get`` and
``count`` the index of a declared table (``[tables.<name>]``: nothing was written to it yet);
a search of another missing index is a non-retryable error, as a misspelt index name most
likely is. The text columns of a declared table filter and sort on their ``.keyword``
sub-field (what dynamic mapping adds), so ``"acme"`` never matches ``"Acme Corp"``.
Grouped writes complete in no particular order relative to each other; two writes to the
same document from one caller apply in the order they were issued.

The client's default node (aiohttp) runs on asyncio only.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus
from elastic_transport import BaseNode, SerializationError
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import JsonSerializer

from wf78_core.plugin import (
    ConfigError,
    DataSourceError,
    InvalidOperation,
    Operation,
    SourceSpec,
    convert_options,
    generated_ids,
    snowflake_id,
)

from .bulk import BulkWriter, Item, Response, Write
from .errors import PartialWrite, closed_error, error_type, item_error, map_error
from .guards import Versioned, guarded, versions
from .queries import as_ids
from .reads import Reader

__all__ = ["ElasticsearchOptions", "ElasticsearchSource", "hosts_of", "load_node_class"]

# Error types of a 404 meaning "no such document" to an action by id ("" is no error).
_MISSING = frozenset({"", "document_missing_exception", "index_not_found_exception"})
_WRITES = frozenset(
    {"add", "index", "add_many", "update", "update_many", "upsert", "delete", "delete_many"}
)


class ElasticsearchOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The ``[datasources.<name>]`` keys of type ``elasticsearch`` besides ``type`` and ``url``."""

    request_timeout: float = 10.0
    # wf78 retries operations itself; client retries would multiply with them.
    max_retries: int = 0
    index_prefix: str = ""
    refresh: Literal["false", "true", "wait_for"] = "false"
    # Bulk items per request at most.
    max_bulk: int = 1000
    # Writes waiting for the bulk loop at most; further writers wait for room.
    queue_size: int = 10_000
    # Dotted path of an elastic_transport node class (default: the client's aiohttp node).
    node_class: str | None = None
    verify_certs: bool = True
    basic_auth: list[str] | None = None

    def __post_init__(self) -> None:
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        for name in ("max_bulk", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.basic_auth is not None and len(self.basic_auth) != 2:
            raise ValueError("basic_auth must be [user, password]")


class ElasticsearchSource:
    """A :class:`~wf78_core.plugin.DataSource` on one Elasticsearch cluster.

    Call :meth:`open`, then start :meth:`run` in a task group (``await tg.start(source.run)``)
    to group writes into bulk requests. ``bulks`` and ``documents`` count the bulk requests
    sent and the items they carried; ``client`` is the open ``AsyncElasticsearch``.
    """

    Options = ElasticsearchOptions
    actions: frozenset[str] = _WRITES | {"get", "count", "search", "noop"}

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.options = convert_options(spec, ElasticsearchOptions)
        self.hosts = hosts_of(spec)
        self.node_class = (
            load_node_class(self.options.node_class, f"datasources.{spec.name}.node_class")
            if self.options.node_class
            else None
        )
        self.concurrency = min(self.options.queue_size, 2048)
        self._serializer = JsonSerializer()
        self._client: AsyncElasticsearch | None = None
        self._writer: BulkWriter | None = None
        self._reader: Reader | None = None
        self._bulks = 0
        self._documents = 0

    @property
    def client(self) -> AsyncElasticsearch:
        if self._client is None:
            raise closed_error(self.name, "not open")
        return self._client

    @property
    def bulks(self) -> int:
        """Bulk requests sent since the source was built."""
        return self._bulks + (self._writer.bulks if self._writer else 0)

    @property
    def documents(self) -> int:
        """Bulk items (documents written, updated or deleted) sent since the source was built."""
        return self._documents + (self._writer.documents if self._writer else 0)

    async def open(self) -> None:
        """Build the client; no request is made (the health check finds an absent cluster)."""
        if self._client is not None:
            return
        options = self.options
        settings: dict[str, Any] = {
            "request_timeout": options.request_timeout,
            "max_retries": options.max_retries,
            "retry_on_timeout": False,
            "verify_certs": options.verify_certs,
        }
        if self.node_class is not None:
            settings["node_class"] = self.node_class
        if options.basic_auth is not None:
            settings["basic_auth"] = (options.basic_auth[0], options.basic_auth[1])
        client = AsyncElasticsearch(self.hosts, **settings)
        self._client = client
        self._reader = Reader(client, self.name, self.spec.tables)
        self._writer = BulkWriter(
            client,
            source=self.name,
            max_bulk=options.max_bulk,
            queue_size=options.queue_size,
            refresh=options.refresh,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The bulk loop, until cancelled: the bulk in flight then completes, and writes
        still queued fail with a retryable DataSourceError."""
        if self._writer is None:
            raise closed_error(self.name, "not open")
        await self._writer.run(task_status=task_status)

    async def close(self) -> None:
        """Close the client's connections (idempotent)."""
        client, writer = self._client, self._writer
        self._client = self._writer = self._reader = None
        if writer is not None:
            self._bulks += writer.bulks
            self._documents += writer.documents
        if client is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await client.close()
            except Exception as error:
                raise map_error(error, self.name) from error

    async def health(self) -> None:
        """``GET /``; a retryable DataSourceError when the cluster does not answer it."""
        try:
            await self.client.info()
        except DataSourceError:
            raise
        except Exception as error:
            raise DataSourceError(
                f"elasticsearch source {self.name!r} is unhealthy: {map_error(error, self.name)}",
                data_source=self.name,
                retryable=True,
            ) from error

    async def execute(self, op: Operation) -> Any:
        """Perform one operation; see the module docs for what each action returns."""
        if op.action not in self.actions:
            raise InvalidOperation(
                f"action {op.action!r} is not supported by elasticsearch source {self.name!r} "
                f"(expected one of {sorted(self.actions)})",
                data_source=self.name,
            )
        if op.action == "noop":
            return None
        index = self._index(op)
        match op.action:
            case "get":
                return await self._reads().get(index, op)
            case "count":
                return await self._reads().count(index, op)
            case "search":
                return await self._reads().search(index, op)
            case "add" | "index":
                return await self._add(index, op)
            case "add_many":
                return await self._add_many(index, op)
            case "update":
                return await self._update(index, op)
            case "update_many":
                return await self._update_many(index, op)
            case "upsert":
                return await self._upsert(index, op)
            case "delete":
                return await self._delete(index, op)
            case _:
                return await self._delete_many(index, op)

    # -- writes ---------------------------------------------------------------------------

    async def _add(self, index: str, op: Operation) -> str:
        values = self._values(op)
        what = f"{op.action} to index {index!r}"
        doc_id, item = self._document_item(op.action, index, values, what)
        (response,) = await self._submit([item])
        # A conflict on an id generated for this operation: an earlier run of it created it.
        if not (_refused_as_existing(response) and doc_id in generated_ids(op)):
            self._answer(response, what)
        return doc_id

    async def _add_many(self, index: str, op: Operation) -> list[str] | int:
        if op.rows is None:
            raise self._invalid(f"add_many needs rows (index {index!r})")
        ignore = op.conflict == "ignore"  # existing ids are skipped; returns how many were new
        ids: list[str] = []
        items: list[Item] = []
        for number, row in enumerate(op.rows):
            if not isinstance(row, Mapping):
                raise self._invalid(f"add_many rows[{number}] must be an object, got {row!r}")
            doc_id, item = self._document_item("add", index, row, f"add_many rows[{number}]")
            ids.append(doc_id)
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
            doc_id for number, doc_id in enumerate(ids) if number not in failed.keys() | skipped
        ]
        first, first_error = next(iter(failed.items()))
        raise PartialWrite(
            f"add_many to index {index!r}: {len(failed)} of {len(ids)} documents failed, "
            f"{len(written)} written; rows[{first}]: {first_error}",
            data_source=self.name,
            written=written,
            failed=failed,
            # Nothing stored (or existing ids skipped): sending all the rows again cannot
            # duplicate any of them.
            retryable=(ignore or not written) and all(e.retryable for e in failed.values()),
        )

    async def _update(self, index: str, op: Operation) -> int:
        doc_id, filters = self._target(op)
        values = self._values(op)
        if "id" in values and str(values["id"]) != doc_id:
            raise self._invalid(f"update cannot change the id of document {doc_id!r}")
        changes = {name: value for name, value in values.items() if name != "id"}
        changes["@timestamp"] = _now()
        return await self._by_id(index, "update", {doc_id: {"doc": changes}}, filters, op.action)

    async def _update_many(self, index: str, op: Operation) -> int:
        """Each of ``op.rows`` updates the document of its ``id`` with its own values;
        ``where`` holds the filters every document must pass (the owner), never the ids."""
        if op.rows is None:
            raise self._invalid(f"update_many needs rows (index {index!r})")
        filters = dict(op.where or {})
        if "id" in filters:
            raise self._invalid(
                f"update_many takes the ids from its rows, not from where (index {index!r})"
            )
        try:
            bodies = _update_bodies(op.rows)
        except ValueError as error:
            raise self._invalid(f"update_many {error} (index {index!r})") from None
        if not bodies:
            return 0
        return await self._by_id(index, "update", bodies, filters, op.action)

    async def _upsert(self, index: str, op: Operation) -> str:
        values = self._values(op)
        raw_id = values.get("id")
        if raw_id is None and op.where and set(op.where) == {"id"}:
            raw_id = self._target(op)[0]
        if raw_id is None:
            raise self._invalid(f"upsert needs values.id or where.id (index {index!r})")
        doc_id = str(raw_id)
        fields = {**values, "id": doc_id, "@timestamp": _now()}
        what = f"upsert of {doc_id!r} in index {index!r}"
        body = {"doc": fields, "doc_as_upsert": True}
        (response,) = await self._submit([self._item("update", index, doc_id, body, what)])
        self._answer(response, what)
        return doc_id

    async def _delete(self, index: str, op: Operation) -> int:
        doc_id, filters = self._target(op)
        return await self._by_id(index, "delete", {doc_id: None}, filters, op.action)

    async def _delete_many(self, index: str, op: Operation) -> int:
        doc_ids, filters = self._target(op, many=True)
        if not doc_ids:
            return 0
        return await self._by_id(index, "delete", dict.fromkeys(doc_ids), filters, op.action)

    async def _by_id(
        self,
        index: str,
        action: Literal["update", "delete"],
        bodies: dict[str, Any],
        filters: dict[str, Any],
        name: str,
    ) -> int:
        """``action`` of each document of ``bodies`` (id -> body) -> how many it applied to.
        With ``filters`` only the documents passing them are written, each guarded by the
        version it was read at (:mod:`.guards`); a missing document counts 0."""

        def what(doc_id: str) -> str:
            return f"{action} of {doc_id!r} in index {index!r}"

        async def read(ids: list[str]) -> dict[str, Versioned]:
            return versions(await self._reads().mget(index, ids), self.name, index)

        async def write(targets: list[tuple[str, Versioned]]) -> list[Response]:
            return await self._submit(
                [self._item(action, index, i, bodies[i], what(i), guard=v) for i, v in targets]
            )

        if filters:
            answers = await guarded(list(bodies), filters, read, write, source=self.name)
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
            data_source=self.name,
            retryable=all(error.retryable for error in errors),
        )

    def _document_item(
        self, action: str, index: str, values: Mapping[str, Any], what: str
    ) -> tuple[str, Item]:
        """The ``create`` (``index`` for the index action) item of a document and its id."""
        raw_id = values.get("id")
        doc_id = snowflake_id() if raw_id is None else str(raw_id)
        bulk_action = "index" if action == "index" else "create"
        item = self._item(bulk_action, index, doc_id, {**values, "id": doc_id}, what)
        return doc_id, item

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
        writer = self._writer
        if writer is None:
            raise closed_error(self.name, "not open")
        return await writer.submit(Write(items))

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
        raise item_error(response, self.name, what)

    # -- reads ----------------------------------------------------------------------------

    def _reads(self) -> Reader:
        if self._reader is None:
            raise closed_error(self.name, "not open")
        return self._reader

    # -- helpers --------------------------------------------------------------------------

    def _index(self, op: Operation) -> str:
        if not op.table:
            raise self._invalid(f"{op.action} needs a table (the index name)")
        return self.options.index_prefix + op.table

    def _values(self, op: Operation) -> dict[str, Any]:
        if not op.values:
            raise self._invalid(f"{op.action} needs non-empty values (index {op.table!r})")
        return op.values

    def _target(self, op: Operation, *, many: bool = False) -> tuple[Any, dict[str, Any]]:
        """``where.id`` (one id as a string, or with ``many`` a list of them) and the
        equality filters beside it, such as the owner."""
        where = op.where or {}
        if "id" not in where:
            shape = "{'id': [ids], ...}" if many else "{'id': id, ...}"
            raise self._invalid(
                f"{op.action} on elasticsearch needs where = {shape} (the id, and any "
                f"filters beside it), got {where!r}"
            )
        filters = {name: value for name, value in where.items() if name != "id"}
        value = where["id"]
        if many:
            return as_ids(value), filters
        if value is None or isinstance(value, list | tuple | dict):
            raise self._invalid(f"{op.action} needs one id in where, got {value!r}")
        return str(value), filters

    def _invalid(self, message: str) -> InvalidOperation:
        return InvalidOperation(message, data_source=self.name)


def hosts_of(spec: SourceSpec) -> list[str]:
    """The node URLs of ``url`` (``http://host:9200``, several separated by commas)."""
    where = f"datasources.{spec.name}.url"
    hosts = [part.strip() for part in (spec.url or "").split(",") if part.strip()]
    if not hosts:
        raise ConfigError(f"expected 'http://host:9200', got {spec.url!r}", path=where)
    for host in hosts:
        if not host.startswith(("http://", "https://")):
            raise ConfigError(f"expected an http:// or https:// URL, got {host!r}", path=where)
    return hosts


def load_node_class(path: str, where: str) -> type[BaseNode]:
    """Import the elastic_transport node class named by a dotted path."""
    module_name, _, name = path.rpartition(".")
    try:
        if not module_name:
            raise ImportError("expected 'package.module.ClassName'")
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import node class {path!r}: {error}", path=where) from None
    if not (isinstance(found, type) and issubclass(found, BaseNode)):
        raise ConfigError(
            f"{path!r} is not an elastic_transport node class (a BaseNode subclass)",
            path=where,
        )
    return found


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
