"""Errors of the injector, each with the exit code ``tsattn-inject`` returns for it.

    UsageError      2  bad arguments, unknown target kind, feature or option
    RefusedError    3  the target is refused: not a git work tree, uncommitted changes, a conflicting file,
                       a symbolic link or directory where the recipe writes a file, a file that does not parse,
                       a missing anchor (``AnchorNotFound``), a torn or foreign record, another run on the clone
    WriteFailed     1  a file could not be written (e.g. a full disk): the message names it; every file restored
    Interrupted     128 + signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP): every file restored
Anything else is an internal error (exit 1, with a traceback).
"""

from __future__ import annotations

import signal

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


class WriteFailed(InjectError, OSError):
    """A file of the transaction could not be written or removed (``path``, ``reason``, e.g. a full disk); an
    ``OSError`` too, for callers that catch those."""

    def __init__(self, path: str, reason: str, restored: bool = True, detail: str = "") -> None:
        tail = ("every file was restored" if restored else
                f"restoring failed too ({detail}); the journal is kept: run any tsattn-inject command on the clone "
                "again, once the cause is fixed, to finish the repair")
        super().__init__(f"{path}: could not write: {reason}; {tail}")
        self.path, self.reason, self.restored = path, reason, restored


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived (the CLI turns the latter two into this); exit 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name
