"""Shared conventions of the tsattn command-line tools.

Logs go to stderr, results to stdout. Exit codes shared by every command:
    0  success
    1  internal error (a traceback is printed)
    2  usage error: bad arguments, unknown target or feature
Commands add their own codes above 2 and document them in ``--help``.
"""

from __future__ import annotations

import logging
import sys

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def not_implemented(prog: str, what: str) -> int:
    """Refuse to run a command whose implementation has not landed: say so and exit non-zero (usage code)."""
    print(f"{prog}: not implemented yet: {what}", file=sys.stderr)
    return EXIT_USAGE
