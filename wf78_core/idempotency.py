"""Idempotent writes: what lets a write run again, after a crash or a retry, without doubling.

Every write that could double carries an idempotency key by its first attempt, and each source
turns a second run of the same key into the first one's result:

- **Generated keys** (``~...``, the engine's own). :func:`prepare` gives an insert without ids
  its row ids now, so every attempt of that operation writes the same ids, and a key naming
  them (``~`` + the first id). A source that then meets one of those ids already stored knows
  this very write ran before and reports success: SQL sources on a duplicate primary key
  (no extra statement on the normal path), Elasticsearch on a ``create`` conflict, Redis when
  its insert script finds the id. A counter (``incr``) gets a fresh ``~`` key, which Redis
  keeps as a marker beside the counter.
- **Callers' keys** (``Operation(idempotency_key=...)``, ``Table`` methods'
  ``idempotency_key=``, the ``Idempotency-Key`` HTTP header). SQL sources record the key and
  the write's result in ``wf78_idempotency`` in the write's own transaction; Redis keeps a
  marker (``SET NX`` semantics inside the write's Lua script); a replay returns the recorded
  result. An insert with a caller's key and no id gets ids derived from the key
  (:func:`key_id`), so a replay built from scratch writes the same rows, on Elasticsearch too.
- **Naturally idempotent writes** need no key: an update or delete by id with the same values,
  an upsert with an id, an insert that skips existing ids (``conflict = "ignore"``),
  ``cache_set``, ``cache_delete``. Run again they leave the same state; only the count they
  report may differ (a second delete finds nothing), unless a caller's key recorded it.

The engine calls :func:`prepare` once per operation before its first attempt, so retries
reuse the same ids and key; a workflow task's operation goes through :func:`prepare_task`,
whose key depends only on the run and the task, so a run resumed after a crash finds what
the task wrote before.

**The same key, another request.** A caller's key names one request. ``Table`` methods
give their writes a :func:`fingerprint` of the call (method and arguments, not the clock
or the shard), ``Operation.idempotency_fingerprint``; a source recording the key keeps it
with the result (:func:`record`, :func:`recall`) and :func:`check_replay` refuses a replay
asking for something else with :class:`~wf78_core.errors.IdempotencyConflict` (HTTP 422,
as Stripe answers), before anything of it is written. Runs and events take keys too
(:mod:`wf78_core.core.runkeys`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from wf78_core.definitions import MAX_IDEMPOTENCY_KEY, Operation
from wf78_core.errors import IdempotencyConflict
from wf78_core.ids import snowflake_id

__all__ = [
    "AUTO_PREFIX",
    "CONFLICT",
    "MAX_KEY",
    "PREPARED_ACTIONS",
    "WRITE_ACTIONS",
    "check_replay",
    "derive_key",
    "explicit_key",
    "fingerprint",
    "generated_ids",
    "is_auto",
    "is_write",
    "key_id",
    "prepare",
    "prepare_task",
    "recall",
    "record",
    "task_key",
]

MAX_KEY = MAX_IDEMPOTENCY_KEY
# Generated keys start with it; callers' keys should not.
AUTO_PREFIX = "~"
# The actions that may change data, on any built-in source.
WRITE_ACTIONS = frozenset(
    {
        "add",
        "add_many",
        "index",
        "update",
        "update_many",
        "upsert",
        "delete",
        "delete_many",
        "incr",
        "cache_set",
        "cache_delete",
        "execute",
    }
)
# Inserts of one row: prepare gives them an id.
_ONE_ROW = frozenset({"add", "index", "upsert"})
#: The actions :func:`prepare` may change (ids, a generated key); it returns any other as is.
PREPARED_ACTIONS = _ONE_ROW | {"add_many", "incr"}
_replace = msgspec.structs.replace


def is_write(op: Operation) -> bool:
    """Whether ``op`` may change data (raw SQL ``execute`` counts, whatever it says)."""
    return op.action in WRITE_ACTIONS


def is_auto(key: str) -> bool:
    """Whether ``key`` was generated (by :func:`prepare` or a ``Table``), not a caller's."""
    return key.startswith(AUTO_PREFIX)


def explicit_key(op: Operation) -> str | None:
    """The caller's own key of ``op``, None when it has none or only a generated one."""
    key = op.idempotency_key
    return None if key is None or key.startswith(AUTO_PREFIX) else key


def prepare(op: Operation) -> Operation:
    """``op`` made safe to run again: call once, before the first attempt, and reuse the result.

    An insert (``add``, ``index``, ``upsert``, ``add_many``) gets the ids it lacks (snowflakes,
    or ids derived from the caller's key) and, without a caller's key, a generated key naming
    them; an ``incr`` without a key gets a generated one. Anything else, and an operation
    already prepared, comes back as it is (the same object): no cost off the insert path.
    """
    action = op.action
    if action in _ONE_ROW:
        values = op.values
        # type() first: isinstance of an ABC costs more than the rest of a prepared add's check.
        if type(values) is not dict and not isinstance(values, Mapping):
            return op
        if values.get("id") is not None:
            return op
        if action == "upsert" and isinstance(op.where, Mapping) and op.where.get("id") is not None:
            return op  # Elasticsearch's upsert takes its id from where
        key = op.idempotency_key
        if key is None:
            row_id = snowflake_id()
            key = AUTO_PREFIX + row_id
        else:
            row_id = key_id(key)
        return _replace(op, values={**values, "id": row_id}, idempotency_key=key)
    if action == "add_many":
        return _prepare_rows(op)
    if action == "incr" and op.idempotency_key is None:
        return _replace(op, idempotency_key=AUTO_PREFIX + snowflake_id())
    return op


def _prepare_rows(op: Operation) -> Operation:
    rows = op.rows
    if not rows:
        return op
    missing = [isinstance(row, Mapping) and row.get("id") is None for row in rows]
    if not any(missing):
        return op
    key = op.idempotency_key
    filled: list[Any] = []
    for index, row in enumerate(rows):
        if missing[index]:
            row = {**row, "id": snowflake_id() if key is None else key_id(key, index)}
        filled.append(row)
    if key is None:
        # Named by its first id only when every id is ours (see generated_ids).
        key = AUTO_PREFIX + (str(filled[0]["id"]) if all(missing) else snowflake_id())
    return _replace(op, rows=filled, idempotency_key=key)


def generated_ids(op: Operation) -> list[str]:
    """The ids of an insert that were generated for this very operation (by :func:`prepare`
    or a ``Table``): finding one of them stored means the operation ran before. Empty when
    the caller chose the ids, or ``op`` is no insert."""
    key = op.idempotency_key
    if key is None:
        return []
    if op.action in _ONE_ROW:
        values = op.values
        raw = values.get("id") if isinstance(values, Mapping) else None
        if raw is None:
            return []
        row_id = str(raw)
        if key == AUTO_PREFIX + row_id or (not is_auto(key) and row_id == key_id(key)):
            return [row_id]
        return []
    if op.action != "add_many" or not op.rows:
        return []
    ids = [str(row.get("id")) if isinstance(row, Mapping) else "" for row in op.rows]
    if is_auto(key):
        return ids if key == AUTO_PREFIX + ids[0] else []
    return [row_id for index, row_id in enumerate(ids) if row_id == key_id(key, index)]


def key_id(key: str, index: int | None = None) -> str:
    """The row id an insert with the caller's ``key`` (row ``index`` of a bulk insert) gets:
    a decimal 63-bit number, like a snowflake, the same every time."""
    text = key if index is None else f"{key}\x1f{index}"
    digest = hashlib.sha256(text.encode()).digest()
    return str(int.from_bytes(digest[:8], "big") >> 1)


def prepare_task(op: Operation, run_id: str, task_id: str) -> Operation:
    """:func:`prepare` for the operation of a workflow task: a write that could double and
    has no key gets :func:`task_key`, the same in every run of the task, a resumed run's
    included, so its ids (derived from that key) and its recorded result survive a crash."""
    if op.idempotency_key is None and _could_double(op):
        op = _replace(op, idempotency_key=task_key(run_id, task_id))
    return prepare(op)


def _could_double(op: Operation) -> bool:
    """Whether running ``op`` twice could change more than running it once."""
    action = op.action
    if action in ("incr", "execute"):
        return True
    if action in _ONE_ROW:
        values = op.values
        return isinstance(values, Mapping) and values.get("id") is None
    if action == "add_many":
        rows = op.rows or []
        return any(isinstance(row, Mapping) and row.get("id") is None for row in rows)
    return False


def task_key(run_id: str, task_id: str) -> str:
    """The key of a workflow task's write: the same for every run of that task in that run,
    a run resumed after a crash included, so its re-execution finds the first one's result
    (and, for an insert, the same derived ids)."""
    return derive_key("run", run_id, task_id)


def derive_key(*parts: str) -> str:
    """A caller's key made of ``parts`` (their scope, their key, a step), joined with ``:``;
    hashed (``#`` + SHA-256) when it would be longer than :data:`MAX_KEY` or look generated."""
    key = ":".join(parts)
    if len(key) <= MAX_KEY and not key.startswith(AUTO_PREFIX):
        return key
    return "#" + hashlib.sha256(key.encode()).hexdigest()


# -- the same key, another request ------------------------------------------------------------

#: What a replay asking for another request is told (the key itself is never echoed).
CONFLICT = (
    "this key was first used for another request: repeat that request exactly to replay "
    "it, or send a new key for a new request"
)


def _canonical(value: Any) -> Any:
    # Other mappings and sequences as dicts and lists; anything else JSON has no word for
    # by its repr.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return repr(value)


# Sorted keys: two mappings with the same items are the same request in any order.
_CANONICAL = msgspec.json.Encoder(enc_hook=_canonical, order="sorted")
_RECORD = msgspec.json.Encoder()
_RECALL = msgspec.json.Decoder()


def fingerprint(*parts: Any) -> str:
    """What a request asks for, as 32 hex digits: equal ``parts`` (a method and its
    arguments) give equal fingerprints, whatever the order of their mappings' keys."""
    return hashlib.sha256(_CANONICAL.encode(parts)).hexdigest()[:32]


def check_replay(recorded: str | None, op: Operation, *, data_source: str | None = None) -> None:
    """Refuse ``op`` when its key was recorded for another request: raise
    :class:`~wf78_core.errors.IdempotencyConflict` when both fingerprints are known and
    differ (a key recorded without one, or an operation without one, is not checked)."""
    given = op.idempotency_fingerprint
    if recorded is not None and given is not None and recorded != given:
        raise IdempotencyConflict(CONFLICT, data_source=data_source)


def record(result: Any, fingerprint: str | None) -> bytes:
    """How a source keeps a write's ``result`` with its request's ``fingerprint``: JSON,
    ``{"f": fingerprint, "v": result}`` (the result alone without a fingerprint, as
    before). Raises TypeError or msgspec.EncodeError for a result JSON cannot carry."""
    return _RECORD.encode(result if fingerprint is None else {"f": fingerprint, "v": result})


def recall(stored: bytes | str) -> tuple[Any, str | None]:
    """A :func:`record` read back: the result and the fingerprint (None when it had none).
    No write result is an object, so an object with exactly ``f`` and ``v`` is a record."""
    value = _RECALL.decode(stored)
    if type(value) is dict and value.keys() == {"f", "v"} and isinstance(value["f"], str):
        return value["v"], value["f"]
    return value, None
