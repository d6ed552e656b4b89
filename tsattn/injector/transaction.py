"""All-or-nothing file writes: each file is written atomically, and a failure undoes every write.

    with Transaction() as tx:
        tx.write(path, data)      # temp file beside it + rename; keeps the file's mode
        tx.write(other, None)     # delete
    # an exception inside the block (KeyboardInterrupt included) restores every touched file byte for byte,
    # removes the files and directories it added, and propagates

Data are written as given (bytes): line endings are whatever the renderer produced, which for a file edited by
libcst are the file's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

_replace = os.replace  # the commit point of every write (tests inject faults here)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tsattn-tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back (main thread only) while a rollback runs, then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


class Transaction:
    """Files written (or deleted) so far, and how to undo them. See the module docstring."""

    def __init__(self) -> None:
        self._undo: List[Tuple[Path, Optional[bytes], Optional[int]]] = []
        self._dirs: List[Path] = []
        self.rolled_back = False

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.rollback()
        return False

    def _make_parents(self, path: Path) -> None:
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            d.mkdir()
            self._dirs.append(d)

    def write(self, path: Path, data: Optional[bytes]) -> None:
        """Write ``data`` to ``path`` atomically (``None``: delete it), remembering how to undo it."""
        path = Path(path)
        if path.exists():
            before, mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
        else:
            before, mode = None, None
        self._undo.append((path, before, mode))  # before touching anything: a write cut short is undone too
        if data is None:
            if before is not None:
                path.unlink()
            return
        self._make_parents(path)
        atomic_write(path, data, mode)

    def rollback(self) -> None:
        """Restore every touched file (in reverse order) and remove the directories that were created."""
        errors = []
        with _interrupts_deferred():
            for path, before, mode in reversed(self._undo):
                try:
                    if before is None:
                        if path.exists():
                            path.unlink()
                    elif not path.exists() or path.read_bytes() != before:
                        atomic_write(path, before, mode)
                    elif mode is not None and stat.S_IMODE(path.stat().st_mode) != mode:
                        os.chmod(path, mode)
                except OSError as exc:  # keep restoring the others; report at the end
                    errors.append(f"{path}: {exc}")
            for d in reversed(self._dirs):
                with contextlib.suppress(OSError):
                    d.rmdir()
            self._undo.clear()
            self._dirs.clear()
            self.rolled_back = True
        if errors:
            raise OSError("rollback could not restore: " + "; ".join(errors))
