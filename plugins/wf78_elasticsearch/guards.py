"""Writes by id that keep to documents matching filters besides the id.

An owned table's index names each document by its owner and id (:mod:`.keys`), so a write
by that ``_id`` needs no guard for the owner; this serves the filters an ``_id`` does not
hold (an owner filter on another index, any other equality filter).

Elasticsearch writes a document by id whatever it holds, and osmem, like a cluster with
scripting off, runs no script that could check a field first. So a filtered ``update`` or
``delete`` reads its documents in real time (``mget``, with each one's ``_seq_no`` and
``_primary_term``), checks the filters on what it read, and writes only the documents that
pass, each guarded by ``if_seq_no`` / ``if_primary_term``: if the document changed in
between (another owner's now, deleted, rewritten), the write is refused with a version
conflict and that document is read and checked again. A document that does not pass the
filters is treated exactly as a missing one: nothing is written and nothing is counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from wf78_core.plugin import DataSourceError

from .bulk import Response
from .errors import error_type, item_error
from .queries import document, matches

__all__ = ["ATTEMPTS", "Versioned", "guarded", "versions"]

# Rounds of read, check and write before a document that keeps changing is given up on
# (a retryable error: the engine may try the whole operation again).
ATTEMPTS = 5
# Error types of a document that is not there to read ("" is no error).
_MISSING = frozenset({"", "document_missing_exception", "index_not_found_exception"})
_CONFLICT = "version_conflict_engine_exception"


class Versioned(NamedTuple):
    """A document as read, and the version a guarded write of it requires."""

    row: dict[str, Any]
    seq_no: int
    primary_term: int


def versions(docs: Sequence[Mapping[str, Any]], source: str, index: str) -> dict[str, Versioned]:
    """The documents found in an ``mget`` answer, by id; an error other than a missing
    document or index is raised."""
    found: dict[str, Versioned] = {}
    for doc in docs:
        if "error" in doc and error_type(doc) not in _MISSING:
            raise item_error(doc, source, f"get of {doc.get('_id')!r} in {index!r}")
        if doc.get("found"):
            found[str(doc["_id"])] = Versioned(
                document(doc), int(doc["_seq_no"]), int(doc["_primary_term"])
            )
    return found


def version_conflict(response: Response) -> bool:
    """Whether a guarded write was refused because its document changed since it was read."""
    return (
        not isinstance(response, DataSourceError)
        and int(response.get("status", 0)) == 409
        and error_type(response) == _CONFLICT
    )


async def guarded(
    ids: Sequence[str],
    filters: Mapping[str, Any],
    read: Callable[[list[str]], Awaitable[dict[str, Versioned]]],
    write: Callable[[list[tuple[str, Versioned]]], Awaitable[list[Response]]],
    *,
    source: str,
) -> dict[str, Response]:
    """Read the documents ``ids``, write those that pass ``filters`` (``write`` sends one
    guarded item per document, in order), and go round again for those whose write met a
    version conflict, at most :data:`ATTEMPTS` times.

    Returns the answer of each document written (or that failed otherwise); a document still
    conflicting after the last round answers a retryable error. A document missing or
    failing the filters has no answer.
    """
    pending = list(dict.fromkeys(ids))
    answers: dict[str, Response] = {}
    for _ in range(ATTEMPTS):
        found = await read(pending)
        targets = [
            (doc_id, found[doc_id])
            for doc_id in pending
            if doc_id in found and matches(found[doc_id].row, filters)
        ]
        if not targets:
            return answers
        responses = await write(targets)
        pending = []
        for (doc_id, _), response in zip(targets, responses, strict=True):
            if version_conflict(response):
                pending.append(doc_id)
            else:
                answers[doc_id] = response
        if not pending:
            return answers
    for doc_id in pending:
        answers[doc_id] = DataSourceError(
            f"document {doc_id!r} kept changing while its filters were checked ({ATTEMPTS} "
            f"attempts; elasticsearch source {source!r})",
            data_source=source,
            retryable=True,
        )
    return answers
