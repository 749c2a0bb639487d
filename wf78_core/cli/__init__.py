"""The ``wf78`` command line: validate a configuration, run a workflow, serve the demo or
any ASGI app wrapped in the middleware, maintain tables and shards, run a redis worker.

One module per command (:mod:`.validate`, :mod:`.run`, :mod:`.demo`, :mod:`.serve`,
:mod:`.maintain`, :mod:`.worker`), the parser in :mod:`.parser`; this module only
dispatches to the chosen command and turns errors into exit statuses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from wf78_core.cli import serve
from wf78_core.cli.common import describe
from wf78_core.cli.parser import build_parser
from wf78_core.errors import Wf78Error

__all__ = ["main", "serve"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wf78`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version and argparse usage errors
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except Wf78Error as error:
        print(f"wf78: error: {describe(error)}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    except KeyboardInterrupt:
        print("wf78: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
