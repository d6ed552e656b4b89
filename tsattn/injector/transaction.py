"""The file-operation layer of tsattn-inject: journaled, atomic, crash-safe changes to a work tree.

    journal = InjectionRecord(..., state="in progress", transaction=record.Transaction(op, undo, dirs, previous))
    apply(root, record_file, journal, writes, final)   # writes: {path: bytes, or None to delete}; final: the
                                                      # record's bytes when done (None: remove the record)
    rollback(root, record_file, journal)              # undo it: also what recovery runs after a kill

``apply`` works in this order (each step is one or two *file operations*, see ``KILL_ENV``):
  1. the journal (the in-progress record: the bytes and mode of every file before, the files added, the
     directories created, the hashes of what will be written) is written and fsynced -- before the first byte of
     the work tree changes;
  2. the directories to create, then every file: a temporary file ``.<name>.<random>.tsattn-tmp`` beside it,
     fsync, rename over the file (or unlink, to delete), fsync of the directory;
  3. ``final`` replaces the journal (or the record is removed): the commit point.
An exception at any step (``Interrupted`` from a signal included) runs ``rollback`` with SIGINT, SIGTERM and
SIGHUP held back, and propagates (an ``OSError`` as ``WriteFailed`` naming the file). When the process is killed
(SIGKILL, power loss) the journal stays, and the next tsattn-inject command runs the same ``rollback`` first.

``rollback``: every file of the journal back to its bytes and mode (written the same atomic way), the files it
added removed, the stale temporary files of those paths removed, the directories it created removed when empty,
then the previous record put back (or the record removed). It only writes toward the recorded state, so a rollback
cut short is finished by the next one.

Data are written as given (bytes): line endings are whatever the renderer produced, which for a file edited by
libcst are the file's own. Test hook: ``TSATTN_INJECT_KILL_AFTER=N`` (or ``N:TERM`` ...) makes the process send
itself SIGKILL (or that signal) right after its N-th file operation of the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

from tsattn.injector.errors import Interrupted, WriteFailed
from tsattn.injector.record import InjectionRecord, sha256

log = logging.getLogger("tsattn.inject")

KILL_ENV = "TSATTN_INJECT_KILL_AFTER"
TMP_SUFFIX = ".tsattn-tmp"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_replace = os.replace  # the commit point of every file write (tests inject faults here)


def _write(f, data: bytes, tmp: str) -> None:
    """Write ``data`` to the open temporary file ``f`` (named ``tmp``; tests inject faults here, e.g. ENOSPC)."""
    f.write(data)


# --- file operations -----------------------------------------------------------------------------------------

_ops = 0


def reset_operations() -> None:
    """Start counting file operations afresh (each engine command does, for ``KILL_ENV``)."""
    global _ops
    _ops = 0


def _did(what: str, path: Path) -> None:
    """One file operation is done; the test hook may kill the process here."""
    global _ops
    _ops += 1
    log.debug("file operation %d: %s %s", _ops, what, path)
    spec = os.environ.get(KILL_ENV)
    if spec:
        n, _, name = spec.partition(":")
        if int(n) == _ops:
            os.kill(os.getpid(), getattr(signal, "SIG" + (name or "KILL")))


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_of(path: Path, name: str) -> bool:
    """Whether ``name`` (in ``path``'s directory) is one of our temporary files for ``path``."""
    return name.startswith(f".{path.name}.") and name.endswith(TMP_SUFFIX)


def atomic_write(path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync and a rename (two file
    operations); ``mode``: permission bits (default: the umask's)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, data, tmp)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        _did("write", Path(tmp))
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _did("rename", path)


def _unlink(path: Path) -> None:
    path.unlink()
    _fsync_dir(path.parent)
    _did("unlink", path)


def _mkdir(path: Path) -> None:
    path.mkdir()
    _did("mkdir", path)


def _rmdir(path: Path) -> None:
    path.rmdir()
    _did("rmdir", path)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back (main thread only) while the block runs, then raise ``Interrupted``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            raise Interrupted(pending[0])


# --- apply / rollback ----------------------------------------------------------------------------------------


@dataclass
class Repair:
    """What a rollback did (paths relative to the root)."""

    restored: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    temporaries: List[str] = field(default_factory=list)
    dirs: List[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.restored or self.removed or self.temporaries or self.dirs)


def remove_temporaries(root: Path, paths: List[str], repair: Optional[Repair] = None) -> List[str]:
    """Remove our stale temporary files of ``paths`` (a killed run's); returns them (relative to ``root``)."""
    found = []
    for parent, names in _by_parent(root, paths).items():
        try:
            entries = os.listdir(parent)
        except OSError:
            continue
        for entry in entries:
            if any(temp_name_of(parent / n, entry) for n in names) and (parent / entry).is_file():
                _unlink(parent / entry)
                found.append(str((parent / entry).relative_to(root)))
    if repair is not None:
        repair.temporaries += found
    return found


def _by_parent(root: Path, paths: List[str]) -> Dict[Path, List[str]]:
    out: Dict[Path, List[str]] = {}
    for p in paths:
        full = root / p
        out.setdefault(full.parent, []).append(full.name)
    return out


def apply(root: Path, record_file: Path, journal: InjectionRecord, writes: Mapping[str, Optional[bytes]],
          final: Optional[bytes], rmdirs: Sequence[str] = ()) -> None:
    """Make the change ``writes`` (paths relative to ``root``) under the journal, then remove the directories
    ``rmdirs`` that are left empty (a rollback recreates them); see the module docstring."""
    tx = journal.transaction
    assert tx is not None and set(writes) <= set(tx.undo)
    record_file.parent.mkdir(parents=True, exist_ok=True)
    current = str(record_file)
    try:
        atomic_write(record_file, journal.to_bytes())  # nothing of the work tree has changed before this
        for d in tx.dirs:
            current = d
            if not (root / d).is_dir():
                _mkdir(root / d)
        for path, data in writes.items():
            current = path
            entry = tx.undo[path]
            if data is None:
                if (root / path).exists():
                    _unlink(root / path)
            else:
                atomic_write(root / path, data, entry.mode)
        for d in reversed(rmdirs):
            current = d
            if (root / d).is_dir() and not any((root / d).iterdir()):
                _rmdir(root / d)
        current = str(record_file)
        if final is None:
            _unlink(record_file)
        else:
            atomic_write(record_file, final)
    except BaseException as exc:
        try:
            rollback(root, record_file, journal)
        except OSError as again:
            if isinstance(exc, OSError):
                raise WriteFailed(current, exc.strerror or str(exc), restored=False, detail=str(again)) from None
            raise
        if isinstance(exc, OSError):
            raise WriteFailed(current, exc.strerror or str(exc)) from None
        raise


def rollback(root: Path, record_file: Path, journal: InjectionRecord) -> Repair:
    """Put every file of ``journal``'s transaction back as it was before it, then its previous record (or none).
    Signals are held back meanwhile. ``OSError`` if a file cannot be restored (the journal is then kept)."""
    tx = journal.transaction
    assert tx is not None
    repair = Repair()
    errors = []
    with signals_deferred():
        for path, entry in reversed(list(tx.undo.items())):
            full = root / path
            try:
                if entry.before is None:
                    if full.is_file() or full.is_symlink():
                        _unlink(full)
                        repair.removed.append(path)
                else:
                    exists = full.is_file() and not full.is_symlink()
                    if not exists or full.read_bytes() != entry.before:
                        full.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write(full, entry.before, entry.mode)
                        repair.restored.append(path)
                    elif entry.mode is not None and stat.S_IMODE(full.stat().st_mode) != entry.mode:
                        os.chmod(full, entry.mode)
                        repair.restored.append(path)
            except OSError as exc:  # keep restoring the others; report at the end
                errors.append(f"{path}: {exc.strerror or exc}")
        remove_temporaries(root, list(tx.undo), repair)
        for d in reversed(tx.dirs):
            full = root / d
            if full.is_dir() and not any(full.iterdir()):
                _rmdir(full)
                repair.dirs.append(d)
        if errors:
            raise OSError("rollback could not restore: " + "; ".join(errors))
        if tx.previous is not None:
            atomic_write(record_file, tx.previous.to_bytes())
        elif record_file.exists():
            _unlink(record_file)
        remove_temporaries(record_file.parent, [record_file.name])
        if tx.previous is None:
            with contextlib.suppress(OSError):
                record_file.parent.rmdir()  # only when no other record (or patch) is there
    return repair


def matches(root: Path, path: str, digest: Optional[str]) -> bool:
    """Whether the file at ``path`` has the sha256 ``digest`` (None: is absent)."""
    full = root / path
    if digest is None:
        return not full.exists() and not full.is_symlink()
    return full.is_file() and not full.is_symlink() and sha256(full.read_bytes()) == digest
