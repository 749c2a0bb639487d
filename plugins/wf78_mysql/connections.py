"""What every pooled aiomysql connection needs before wf78 uses it."""

from __future__ import annotations

import struct
import weakref
from typing import Any

import aiomysql
from pymysql.constants import COMMAND  # type: ignore[import-untyped]

__all__ = ["QuietCursor", "prepare"]

_MULTI_STATEMENTS_OFF = struct.pack("<H", 1)  # MYSQL_OPTION_MULTI_STATEMENTS_OFF
_prepared: weakref.WeakSet[Any] = weakref.WeakSet()


class QuietCursor(aiomysql.Cursor):  # type: ignore[misc]
    """A cursor that does not turn server notes into Python warnings.

    aiomysql fetches SHOW WARNINGS after every statement with warnings and re-raises each
    as a ``Warning``: an extra round trip, and an exception where warnings are errors.
    """

    async def _show_warnings(self, conn: Any) -> None:
        return None


async def prepare(connection: Any) -> Any:
    """``connection``, switched to one statement per query the first time it is seen.

    aiomysql always asks for multi-statement mode, so ``SELECT 1; DELETE ...`` sent to a
    reader would delete, and ``INSERT ...; COMMIT`` would commit a batch halfway. The
    protocol's COM_SET_OPTION turns it off; aiomysql has no public call for it.
    """
    if connection not in _prepared:
        # aiomysql's own: no public call sends COM_SET_OPTION or reads its answer.
        await connection._execute_command(COMMAND.COM_SET_OPTION, _MULTI_STATEMENTS_OFF)  # noqa: SLF001
        await connection._read_packet()  # noqa: SLF001
        _prepared.add(connection)
    return connection
