"""Errors of the injector, each with the exit code ``tsattn-inject`` returns for it.

    UsageError      2  bad arguments, unknown target kind, feature or option
    RefusedError    3  the target is refused: not a git work tree, uncommitted changes, a conflicting file,
                       a file that does not parse, a missing anchor (``AnchorNotFound``)
Anything else is an internal error (exit 1, with a traceback).
"""

from __future__ import annotations

from tsattn.cliutil import EXIT_USAGE

EXIT_REFUSED = 3


class InjectError(Exception):
    """An expected failure: its message is shown without a traceback."""

    exit_code = 1


class UsageError(InjectError):
    exit_code = EXIT_USAGE


class RefusedError(InjectError):
    exit_code = EXIT_REFUSED


class SourceSyntaxError(RefusedError):
    """A file of the target does not parse; nothing was written."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: does not parse: {message}; nothing was written")
        self.path, self.line = path, line


class AnchorNotFound(RefusedError):
    """A codemod did not find the symbol it edits or inserts next to."""

    def __init__(self, path: str, symbol: str) -> None:
        super().__init__(f"{path}: anchor not found: {symbol}; nothing was written")
        self.path, self.symbol = path, symbol
