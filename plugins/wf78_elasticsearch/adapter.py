"""The Elasticsearch data source (the official async client): grouped bulk writes.

Every write (``add``, ``index``, ``add_many``, ``update``, ``update_many``, ``upsert``,
``delete``, ``delete_many``; :mod:`wf78_elasticsearch.writes`) becomes one or more ``_bulk``
items. While :meth:`ElasticsearchSource.run` runs, the items of all callers waiting at once
go out together, up to ``max_bulk`` items per request (:mod:`wf78_elasticsearch.bulk`);
Elasticsearch answers every item on its own, so each caller gets its own result or error.
Without ``run`` every write is its own bulk request, which suits scripts and tests.
Documents are JSON-encoded by their caller before they are queued, so a value JSON cannot
carry fails its caller only.

Actions and results (``op.table`` is the index name, after ``index_prefix``):

- ``add``: ``op.values`` is the document; its id is ``values["id"]`` or a new snowflake
  id, stored in the document as ``id`` too, and its ``_id`` is that id (on an owned
  table's index, the owner and id: see below). Create semantics: an existing ``_id`` is
  refused (non-retryable). Returns the id. ``index`` is the same but replaces an existing
  document with that ``_id`` (Elasticsearch's ``index``).
- ``add_many``: ``op.rows`` -> their ids. Not atomic: see :class:`~.errors.PartialWrite`.
  With ``conflict = "ignore"`` rows whose id exists are skipped -> how many were inserted.
- Idempotency (:mod:`wf78_core.idempotency`): documents are written by id. An ``add`` or
  ``add_many`` row whose id was generated for that very operation (by the engine before its
  first attempt, or derived from the caller's key) and that meets an existing document ran
  before: it succeeds, and the document is left as that run wrote it. ``index``, ``update``,
  ``upsert`` and deletes by id are idempotent as they are.
- ``get``: ``where={"id": x}`` reads that document in real time -> ``[doc]`` or ``[]``;
  ``{"id": [..]}`` -> the documents found; equality filters beside the id are checked on
  the documents read (:func:`~.queries.matches`), and ``order``, ``limit``, ``offset``
  apply to them. Without an id, equality filters search (``bool`` of ``term`` filters,
  :func:`~.queries.where_query`). ``columns`` picks the keys of each row. Every row carries
  its plain ``id`` (the ``_id``, never an owned table's composite one). ``count``: how many
  documents ``where`` matches.
- ``update``: partial update of ``where={"id": x}`` with ``op.values`` plus ``@timestamp``
  (now, UTC, ISO 8601), as koa78's ``mUpdateElkByid`` -> 1, or 0 when there is no such
  document. ``upsert``: the same with ``doc_as_upsert``, creating it if missing -> the id.
  ``update_many``: each of ``op.rows`` updates the document of its ``id`` -> how many did.
- ``delete``: ``where={"id": x}`` -> 1 or 0; ``delete_many``: ``where={"id": [..]}`` ->
  how many were deleted.
- Filters beside the id: ``update``, ``update_many``, ``delete`` and ``delete_many`` take
  equality filters beside the id (``{"id": x, "tag": "a"}``; ``update_many``'s in
  ``where``) and write only documents that pass them, each guarded by the version it was
  read at (:mod:`.guards`). A document that fails them is treated exactly as a missing one.
- Owned tables (a declared table with an ``owner`` column; its own index or its search
  mirror): each owner has its own ids, and a document's ``_id`` is
  ``{len(owner)}:{owner}:{id}`` (``4:acme:7``, :mod:`.keys`), so two owners' rows with one
  id are two documents. Writes need the owner, in the document (``add``, ``index``,
  ``add_many``, ``upsert``) or in ``where`` beside the id (``{"id": x, "cid": "acme"}``;
  ``update_many``'s ``where``), else they are refused (InvalidOperation); they then write
  by ``_id`` with no read first (other filters still go through the guards), and cannot
  change a document's owner. ``get`` with the owner reads by ``_id`` in real time;
  ``get``, ``count`` and ``search`` without it filter the ``id`` field, matching every
  owner's document of the id (after a refresh).
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
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus
from elastic_transport import BaseNode
from elasticsearch import AsyncElasticsearch

from wf78_core.plugin import (
    ConfigError,
    DataSourceError,
    InvalidOperation,
    Operation,
    SourceSpec,
    convert_options,
)

from .bulk import BulkWriter
from .errors import PartialWrite, closed_error, map_error
from .reads import Reader
from .writes import Writer

__all__ = [
    "ElasticsearchOptions",
    "ElasticsearchSource",
    "PartialWrite",
    "hosts_of",
    "load_node_class",
]

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
        self._client: AsyncElasticsearch | None = None
        self._writer: BulkWriter | None = None
        self._reader: Reader | None = None
        self._writes: Writer | None = None
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
        self._writes = Writer(self._writer, self._reader, self.name)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The bulk loop, until cancelled: the bulk in flight then completes, and writes
        still queued fail with a retryable DataSourceError."""
        if self._writer is None:
            raise closed_error(self.name, "not open")
        await self._writer.run(task_status=task_status)

    async def close(self) -> None:
        """Close the client's connections (idempotent)."""
        client, writer = self._client, self._writer
        self._client = self._writer = self._reader = self._writes = None
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
                return await self._writing().add(index, op)
            case "add_many":
                return await self._writing().add_many(index, op)
            case "update":
                return await self._writing().update(index, op)
            case "update_many":
                return await self._writing().update_many(index, op)
            case "upsert":
                return await self._writing().upsert(index, op)
            case "delete":
                return await self._writing().delete(index, op)
            case _:
                return await self._writing().delete(index, op, many=True)

    # -- parts ----------------------------------------------------------------------------

    def _reads(self) -> Reader:
        if self._reader is None:
            raise closed_error(self.name, "not open")
        return self._reader

    def _writing(self) -> Writer:
        if self._writes is None:
            raise closed_error(self.name, "not open")
        return self._writes

    # -- helpers --------------------------------------------------------------------------

    def _index(self, op: Operation) -> str:
        if not op.table:
            raise self._invalid(f"{op.action} needs a table (the index name)")
        return self.options.index_prefix + op.table

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
