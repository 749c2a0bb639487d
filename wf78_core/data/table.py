"""``Table``: koa78's Base78 controller methods, owner-scoped, every one through the engine.

Each method builds :class:`~wf78_core.definitions.Operation` values and hands them to
``engine.submit``, so priority, agents, selection, retry and statistics apply to table work
like to any other. The koa78 columns are filled on every write: a snowflake ``id`` (on a
table with ``id = "text"``, the caller's id, required on insert), ``upby`` (the identity's
user name), ``uptime`` (now, UTC) and the owner column (``cid`` or ``uid``, from the
identity). Every id a method takes has the table's shape (:func:`wf78_core.ids.id_problem`).
The owner is also a filter of every read and write, bulk ones included, so one tenant never
reads, changes or deletes another's rows; and part of each row's key, so each tenant has its
own ids: an id another tenant holds answers exactly as an id nobody has (inserting it too).

Every write method takes ``idempotency_key=``: a replay with the same key returns the first
call's result and writes nothing again (:mod:`wf78_core.idempotency`). On an owned table keys
are the owner's: two tenants' equal keys are two keys. An insert with a key
gets ids derived from it; one without gets snowflakes and a generated key naming them, so the
engine's retries of it never double a row either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from wf78_core.data import sharding
from wf78_core.data.arguments import DEFAULT_NUMBER, MAX_NUMBER, owner_problem
from wf78_core.data.reads import TableReads
from wf78_core.data.tenancy import as_caller
from wf78_core.errors import RowNotFound
from wf78_core.idempotency import AUTO_PREFIX, derive_key, key_id
from wf78_core.ids import snowflake_id

# DEFAULT_NUMBER, MAX_NUMBER and owner_problem live with the argument checks
# (wf78_core.data.arguments); they are re-exported from here, where callers know them.
__all__ = ["DEFAULT_NUMBER", "MAX_NUMBER", "Table", "owner_problem"]


class Table(TableReads):
    """One configured table as seen by one caller (``identity``) at one ``priority``.

    ``Table(engine, name, identity=..., priority=...)`` or ``engine.table(name, ...)``.
    ``priority`` defaults to the engine's ``submit_priority`` and is never more urgent
    than ``identity.max_priority`` allows. ``clock`` (returning an aware datetime) stands
    in for :func:`wf78_core.data.sharding.now`, the time that fills ``uptime`` and picks shards.
    ``idempotency_key`` is the key of the one request this view serves (the data routes pass
    the ``Idempotency-Key`` header, scoped by the caller): each write method called without
    its own key uses ``{key}:{table}:{method}``, so a replayed request writes nothing twice.

    With an ``identity``, each method call runs as that caller (:mod:`wf78_core.data.tenancy`):
    it passes the ``[limits.<name>]`` of its table and koa78 method first (else
    :class:`~wf78_core.errors.RateLimited`), and its operations, log records and spans are
    the identity's tenant's (``[engine] fair_by``).

    Reads are :class:`~wf78_core.data.reads.TableReads`' and the argument checks
    :class:`~wf78_core.data.arguments.TableView`'s; this class adds the writes.
    """

    # -- writes ---------------------------------------------------------------------------

    @as_caller
    async def add(self, values: Mapping[str, Any], *, idempotency_key: str | None = None) -> str:
        """Insert one row (koa78 ``mAdd``); returns its new id. On a table with text ids
        (``id = "text"``) ``values["id"]`` is that id, and required."""
        return await self._add(values, self._key(idempotency_key, "add", values))

    async def _add(self, values: Mapping[str, Any], key: str | None) -> str:
        given, values = self._given_id(values, "values", required=True)
        row = self._stamp(self._values(values, "values"), owner=True)
        row["id"] = _new_id(given, key)
        result: str = await self._write(
            "add",
            "index",
            [row],
            values=row,
            shard=self._write_shard(),
            idempotency_key=_insert_key(given is not None, key, row["id"]),
        )
        return result

    @as_caller
    async def add_many(
        self,
        rows: Sequence[Mapping[str, Any] | Sequence[Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[str]:
        """Insert many rows at once, all or none (koa78 ``mAddMany``); returns their ids.

        A row is a mapping of column to value, or a sequence of values in declared order;
        on a table with text ids each row is a mapping with its ``id``.
        """
        key = self._key(idempotency_key, "add_many", rows)
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            field = f"rows[{index}]"
            given, row = self._given_id(row, field, required=True)
            values = self._stamp(self._values(row, field), owner=True)
            values["id"] = _new_id(given, key, index)
            prepared.append(values)
        if not prepared:
            return []
        ids: list[str] = await self._write(
            "add_many",
            "index",
            prepared,
            rows=prepared,
            shard=self._write_shard(),
            idempotency_key=_insert_key(self.config.id == "text", key, prepared[0]["id"]),
        )
        return ids

    @as_caller
    async def add_many_by_id(
        self, rows: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> int:
        """Insert rows that carry their own ``id``, skipping ids that exist (koa78
        ``mAddManyByid``); returns how many were inserted. A row this owner has is left as
        it is; on an owned table each owner has its own ids, so another owner's row with the
        same id is another row, neither seen nor touched."""
        key = self._key(idempotency_key, "add_many_by_id", rows)
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            field = f"rows[{index}]"
            row_id, values = self._split_id(row, field)
            stamped = self._stamp(self._values(values, field), owner=True)
            stamped["id"] = row_id
            prepared.append(stamped)
        if not prepared:
            return 0
        # Which rows were skipped is not known: the relay reads back what each id holds.
        inserted: int = await self._write(
            "add_many",
            "sync",
            prepared,
            rows=prepared,
            conflict="ignore",
            shard=self._write_shard(),
            idempotency_key=key,
        )
        return inserted

    @as_caller
    async def update(
        self, id: str | int, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Update the row ``id`` of this owner (koa78 ``mUpdate``); returns rows changed."""
        key = self._key(idempotency_key, "update", id, values)
        changes = self._values(values, "values")
        if not changes:
            raise self._invalid("values: update needs at least one column to set")
        return await self._update(self._row_id(id, "id"), changes, key)

    @as_caller
    async def update_by_id(
        self, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Update the row named by ``values["id"]`` (koa78 ``mUpdateByid``)."""
        key = self._key(idempotency_key, "update_by_id", values)
        row_id, rest = self._split_id(values, "values")
        return await self.update(row_id, rest, idempotency_key=key)

    @as_caller
    async def update_many(
        self, rows: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> int:
        """Update many rows of this owner in one statement, each by its ``id`` (koa78
        ``mUpdateMany``); returns rows changed. Rows of other owners are not touched."""
        key = self._key(idempotency_key, "update_many", rows)
        prepared = []
        for index, row in enumerate(self._rows(rows)):
            field = f"rows[{index}]"
            row_id, values = self._split_id(row, field)
            changes = self._values(values, field)
            if not changes:
                raise self._invalid(f"{field}: update_many needs a column to set besides id")
            stamped = self._stamp(changes, owner=False)
            stamped["id"] = row_id
            prepared.append(stamped)
        if not prepared:
            return 0
        scope = self._scope()

        async def write(shard: str | None, ids: list[str], step: str | None) -> int:
            mine = set(ids)
            rows = [row for row in prepared if row["id"] in mine]
            changed: int = await self._write(
                "update_many",
                "sync",
                rows,
                rows=rows,
                where=scope,
                shard=shard,
                idempotency_key=step,
            )
            return changed

        return await self._by_id([row["id"] for row in prepared], key, write)

    @as_caller
    async def upsert(self, values: Mapping[str, Any], *, idempotency_key: str | None = None) -> str:
        """Update the row ``values["id"]`` when this owner has it, else insert it with that
        id (koa78 ``mByid``); returns the id. On an owned table each owner has its own ids:
        another owner's row with that id is another row, never seen nor overwritten."""
        key = self._key(idempotency_key, "upsert", values)
        row_id, rest = self._split_id(values, "values")
        changes = self._values(rest, "values")
        shard = self._write_shard()
        if self.owner is None:
            # A sharded table's row may live in an earlier shard: updated there if it does.
            if shard is not None and await self._update(row_id, changes, _step(key, "update")):
                return row_id
            row = self._stamp(changes, owner=False)
            row["id"] = row_id
            result: str = await self._write(
                "upsert", "sync", [row], values=row, shard=shard, idempotency_key=key
            )
            return result
        # Each step has its own key: a replay takes the path the first call took.
        if await self._update(row_id, changes, _step(key, "update")):
            return row_id
        row = self._stamp(changes, owner=True)
        row["id"] = row_id
        if await self._write(
            "add_many",
            "index",
            [row],
            rows=[row],
            conflict="ignore",
            shard=shard,
            idempotency_key=_step(key, "insert"),
        ):
            return row_id
        # Our row exists after all: another caller of this owner inserted it just now.
        if await self._update(row_id, changes, _step(key, "update again")):
            return row_id
        # ... and was deleted again at once, or the table predates per-owner keys (an id of
        # another owner): answered as an id nobody has, telling nothing of other owners.
        raise RowNotFound(self.name, row_id)

    @as_caller
    async def upsert_by_first_field(
        self, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """Update this owner's row whose first declared column equals ``values``' one, else
        insert (koa78 ``mByFirstField``); returns the row's id. On a table with text ids
        ``values["id"]`` is the id of the row if inserted (required then)."""
        key = self._key(idempotency_key, "upsert_by_first_field", values)
        if not self.columns:
            raise self._invalid("upsert_by_first_field needs a declared column")
        given, values = self._given_id(values, "values", required=False)
        changes = self._values(values, "values")
        first = self.columns[0]
        if first not in changes:
            raise self._invalid(f"values: upsert_by_first_field needs the first column {first!r}")
        # One key for either write: a replay taking the other path (its first call added
        # the row it now finds) still meets the first call's record, and its request.
        step = _step(key, "write")
        found = await self.get(where={first: changes[first]}, cols=["id"], number=1)
        if found:
            row_id = str(found[0]["id"])
            await self._update(row_id, changes, step)
            return row_id
        new = changes if given is None else {**changes, "id": given}
        added = await self._add(new, step)
        if not isinstance(added, str):  # the count of an update this key made first
            raise self._invalid(
                "upsert_by_first_field: this idempotency key first updated a row that is "
                "gone now; send a new key"
            )
        return added

    @as_caller
    async def delete(self, id: str | int, *, idempotency_key: str | None = None) -> int:
        """Delete the row ``id`` of this owner (koa78 ``mdel``); returns rows deleted."""
        key = self._key(idempotency_key, "delete", id)
        row_id = self._row_id(id, "id")
        where = {"id": row_id, **self._scope()}

        async def write(shard: str | None, ids: list[str], step: str | None) -> int:
            deleted: int = await self._write(
                "delete", "delete", [where], where=where, shard=shard, idempotency_key=step
            )
            return deleted

        return await self._by_id([row_id], key, write)

    @as_caller
    async def delete_many(
        self, ids: Sequence[str | int], *, idempotency_key: str | None = None
    ) -> int:
        """Delete this owner's rows among ``ids`` (koa78 ``mdelmany``); returns rows deleted."""
        key = self._key(idempotency_key, "delete_many", ids)
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise self._invalid(f"ids must be a list of ids, got {type(ids).__name__}")
        wanted = list(dict.fromkeys(self._row_id(v, f"ids[{i}]") for i, v in enumerate(ids)))
        scope = self._scope()
        if not wanted:
            return 0

        # Some ids may be another owner's and stay: the relay reads back what each id holds.
        async def write(shard: str | None, ids: list[str], step: str | None) -> int:
            deleted: int = await self._write(
                "delete_many",
                "sync",
                [{"id": row_id} for row_id in ids],
                where={"id": ids, **scope},
                shard=shard,
                idempotency_key=step,
            )
            return deleted

        return await self._by_id(wanted, key, write)

    @as_caller
    async def update_search_doc(
        self, id: str | int, values: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> int:
        """Partially update the search document ``id`` (koa78 ``mUpdateElkByid``); the
        source adds ``@timestamp``. Returns 1, or 0 when this owner has no such document.

        Targets the table's ``search_mirror``, else its ``data_source`` when that is of type
        ``elasticsearch``. A later write of the row replaces a mirror's document again.
        """
        key = self._key(idempotency_key, "update_search_doc", id, values)
        source = self._search_source()
        row_id = self._row_id(id, "id")
        changes = self._values(values, "values")
        if not changes:
            raise self._invalid("values: update_search_doc needs at least one field to set")
        # The owner names the document with its id: another owner's is another document.
        where = {"id": row_id, **self._scope()}
        stamped = self._stamp(changes, owner=False)
        stamped["uptime"] = stamped["uptime"].isoformat()
        changed: int = await self._submit_to(
            source, "update", where=where, values=stamped, idempotency_key=key
        )
        return changed

    # -- operations -----------------------------------------------------------------------

    async def _update(self, row_id: str, changes: dict[str, Any], key: str | None = None) -> int:
        where = {"id": row_id, **self._scope()}
        values = self._stamp(changes, owner=False)

        async def write(shard: str | None, ids: list[str], step: str | None) -> int:
            changed: int = await self._write(
                "update",
                "update",
                [{"id": row_id, **values}],
                values=values,
                where=where,
                shard=shard,
                idempotency_key=step,
            )
            return changed

        return await self._by_id([row_id], key, write)

    async def _by_id(
        self,
        ids: list[str],
        key: str | None,
        write: Callable[[str | None, list[str], str | None], Awaitable[int]],
    ) -> int:
        """``write(shard, ids, key)`` of an update or delete by id, on the shards holding
        the rows of a sharded table (:func:`wf78_core.data.sharding.write_by_id`)."""
        spec = self.config.sharding
        if spec is None:
            return await write(None, ids, key)
        return await sharding.write_by_id(
            spec,
            ids,
            key,
            today=sharding.to_date(self._now()),
            text_ids=self.config.id == "text",
            write=write,
            list_shards=lambda: self._submit("list_shards"),
            locate=self._locate,
        )

    async def _locate(self, wanted: dict[str, list[str]]) -> dict[str, set[str]]:
        """Which of this owner's rows each shard holds, of the ids asked of it."""
        scope = self._scope()
        calls = {
            shard: ("get", {"where": {"id": ids, **scope}, "columns": ["id"], "shard": shard})
            for shard, ids in wanted.items()
        }
        found = await self._gather(calls)
        return {shard: {str(row["id"]) for row in rows} for shard, rows in found.items()}

    async def _write(
        self,
        action: str,
        mirror_action: Literal["index", "update", "delete", "sync"],
        touched: Sequence[Mapping[str, Any]],
        /,
        **fields: Any,
    ) -> Any:
        """Submit a write of the rows ``touched`` (each with its id); a mirrored table's
        carries their outbox entries."""
        mirrors, relay = self._mirrors, self.engine.mirrors
        if mirrors is None or relay is None:
            return await self._submit(action, **fields)
        owner = next(iter(self._scope().values()), "")
        entries = mirrors.entries(mirror_action, touched, owner=owner, shard=fields.get("shard"))
        return await relay.write(
            self.name, entries, lambda: self._submit(action, outbox=entries, **fields)
        )


def _new_id(given: str | None, key: str | None, index: int | None = None) -> str:
    """A new row's id: the caller's (text ids), else derived from the key, else minted."""
    if given is not None:
        return given
    return snowflake_id() if key is None else key_id(key, index)


def _insert_key(callers_ids: bool, key: str | None, first_id: str) -> str | None:
    """An insert's key: the caller's; without one, ``~`` + the first minted id (a replay
    finds its ids stored). Callers' ids are no replay: one stored already is a conflict."""
    if key is not None or callers_ids:
        return key
    return AUTO_PREFIX + first_id


def _step(key: str | None, step: str) -> str | None:
    """The key of one step of a method that writes several times."""
    return None if key is None else derive_key(key, step)
