"""The injection record: what ``tsattn-inject`` applied to a clone, and the write-ahead journal of a change.

Standard library only (``tsattn-export`` reads records in a target's own environment, without libcst or gitpython).

One file per injection, ``<git dir>/tsattn/<kind>-<feature>.json`` (outside the work tree: not in ``git status``,
not in the patch), one JSON object::

    format           "tsattn-inject-record/2"
    tool, version    "tsattn-inject", the tool's version
    kind, feature    the recipe (they also name the file)
    state            "complete": the injection is in place
                     "in progress": a transaction is under way (or was killed): ``transaction`` says how to undo it
    options          the recipe's option values
    upstream_commit  HEAD when the injection was made
    files            {path: {"before": base64 of the original bytes (null: the injection added the file),
                             "after_sha256": sha256 of the bytes the injection wrote}}
    dirs             directories the injection created (removed again by --revert when empty)
    transaction      null, or while in progress:
                     {"op": "inject" | "update" | "revert",
                      "undo": {path: {"before": base64 of the bytes right before this transaction (null: absent),
                                      "mode": permission bits (null: absent), "after_sha256": what it writes
                                      (null: it deletes the file)}},
                      "dirs": directories it creates (rolled back: removed when empty),
                      "previous": the complete record before it (its fields, without ``sha256``), or null}
    sha256           sha256 of the canonical JSON (sorted keys, no spaces) of every other field

Paths are POSIX and relative to the work tree's root. A record whose checksum, format, tool, kind/feature or paths
do not hold is *torn or foreign*: ``RecordError``, never trusted. ``InjectionRecord.write`` writes through a
temporary file, fsync and rename (and fsyncs the directory), so a record is never half-written by us.
A record of format 1 (written before the journal existed: no ``format``, ``state``, ``sha256``) reads as complete.

    rec = InjectionRecord.read(git_dir, "calf", "wcmha")      # None: no record; RecordError: torn or foreign
    rec.options, rec.upstream_commit, rec.added, rec.complete
    for rec in InjectionRecord.read_all(git_dir): ...
    with locked(git_dir): ...                                  # one tsattn-inject per clone at a time
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional

FORMAT = "tsattn-inject-record/2"
TOOL = "tsattn-inject"
DIRNAME = "tsattn"
COMPLETE, IN_PROGRESS = "complete", "in progress"
OPS = ("inject", "update", "revert")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RecordError(ValueError):
    """A record that is torn (damaged, cut short) or foreign (not written by tsattn-inject, or for another recipe).
    ``tsattn-inject`` refuses it with this message (exit 3); ``path`` is the record file."""

    exit_code = 3

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"{path}: not a valid tsattn-inject record ({why}); it is not trusted. Check the files it would "
            f"concern with `git status` / `git diff` (restore them with `git checkout -- FILE` or `git stash`), "
            f"then move the record away (`mv {path} {path}.bad`) and run again")
        self.path = path


def sha256(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _b64(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Optional[str]) -> Optional[bytes]:
    return None if text is None else base64.b64decode(text.encode("ascii"), validate=True)


def record_dir(git_dir: os.PathLike) -> Path:
    return Path(git_dir) / DIRNAME


def record_path(git_dir: os.PathLike, kind: str, feature: str) -> Path:
    return record_dir(git_dir) / f"{kind}-{feature}.json"


@dataclass
class FileEntry:
    """One file of an injection: its original bytes (None: added by the injection) and the written bytes' hash."""

    before: Optional[bytes]
    after_sha256: Optional[str]


@dataclass
class UndoEntry:
    """One file of a transaction: its bytes and mode right before it (None: absent) and what it writes
    (``after_sha256`` None: it deletes the file)."""

    before: Optional[bytes]
    mode: Optional[int]
    after_sha256: Optional[str]


@dataclass
class Transaction:
    """The journal of one change: how to undo it. ``previous``: the complete record to put back (None: none)."""

    op: str
    undo: Dict[str, UndoEntry]
    dirs: List[str] = field(default_factory=list)
    previous: Optional["InjectionRecord"] = None


@dataclass
class InjectionRecord:
    """The record of ``kind``/``feature`` in one clone; see the module docstring."""

    kind: str
    feature: str
    options: Dict[str, Any]
    upstream_commit: Optional[str]
    files: Dict[str, FileEntry]
    version: str = ""
    dirs: List[str] = field(default_factory=list)
    state: str = COMPLETE
    transaction: Optional[Transaction] = None

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.feature}"

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def added(self) -> List[str]:
        """The files the injection added (no original)."""
        return [p for p, e in self.files.items() if e.before is None]

    @property
    def changed(self) -> List[str]:
        """The files the injection edited."""
        return [p for p, e in self.files.items() if e.before is not None]

    # --- format ------------------------------------------------------------------------------------------------

    def _fields(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "format": FORMAT, "tool": TOOL, "version": self.version, "kind": self.kind, "feature": self.feature,
            "state": self.state, "options": dict(self.options), "upstream_commit": self.upstream_commit,
            "files": {p: {"before": _b64(e.before), "after_sha256": e.after_sha256} for p, e in self.files.items()},
            "dirs": list(self.dirs), "transaction": None,
        }
        tx = self.transaction
        if tx is not None:
            out["transaction"] = {
                "op": tx.op, "dirs": list(tx.dirs),
                "undo": {p: {"before": _b64(u.before), "mode": u.mode, "after_sha256": u.after_sha256}
                         for p, u in tx.undo.items()},
                "previous": None if tx.previous is None else tx.previous._fields(),
            }
        return out

    def to_bytes(self) -> bytes:
        fields = self._fields()
        fields["sha256"] = _checksum(fields)
        return (json.dumps(fields, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path, kind: Optional[str] = None,
                   feature: Optional[str] = None) -> "InjectionRecord":
        """Parse and check a record (``path`` names it in errors); ``RecordError`` if it is torn or foreign."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(path, f"not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("tool") != TOOL:
            raise RecordError(path, "not written by tsattn-inject")
        if "format" not in raw:  # format 1: the record before the journal existed, complete by construction
            raw = {**raw, "format": FORMAT, "state": COMPLETE, "dirs": [], "transaction": None}
        else:
            if raw.get("format") != FORMAT:
                raise RecordError(path, f"format {raw.get('format')!r}, this tsattn-inject reads {FORMAT!r}")
            stored = raw.pop("sha256", None)
            if stored != _checksum(raw):
                raise RecordError(path, "checksum mismatch: the record was changed or cut short")
        try:
            rec = cls._parse(raw, path)
        except RecordError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordError(path, f"malformed: {type(exc).__name__}: {exc}") from None
        if (kind, feature) != (None, None) and (rec.kind, rec.feature) != (kind, feature):
            raise RecordError(path, f"it is a record of {rec.name}, not of {kind}/{feature}")
        return rec

    @classmethod
    def _parse(cls, raw: Dict[str, Any], path: Path, nested: bool = False) -> "InjectionRecord":
        kind, feature = raw["kind"], raw["feature"]
        if not (isinstance(kind, str) and _NAME.match(kind) and isinstance(feature, str) and _NAME.match(feature)):
            raise RecordError(path, "bad kind or feature")
        state = raw.get("state", COMPLETE)
        if state not in (COMPLETE, IN_PROGRESS) or (nested and state != COMPLETE):
            raise RecordError(path, f"bad state {state!r}")
        options = raw["options"]
        if not isinstance(options, dict):
            raise RecordError(path, "options is not an object")
        files = {_check_path(p, path): FileEntry(_unb64(e["before"]), _check_hex(e["after_sha256"], path))
                 for p, e in raw["files"].items()}
        dirs = [_check_path(d, path) for d in raw.get("dirs") or []]
        tx = None
        if raw.get("transaction") is not None:
            t = raw["transaction"]
            if t["op"] not in OPS:
                raise RecordError(path, f"bad transaction op {t['op']!r}")
            undo = {}
            for p, u in t["undo"].items():
                mode = u["mode"]
                if mode is not None and not (isinstance(mode, int) and 0 <= mode <= 0o7777):
                    raise RecordError(path, f"bad mode for {p}")
                undo[_check_path(p, path)] = UndoEntry(_unb64(u["before"]), mode, _check_hex(u["after_sha256"], path,
                                                                                            allow_none=True))
            previous = None if t.get("previous") is None else cls._parse(t["previous"], path, nested=True)
            tx = Transaction(t["op"], undo, [_check_path(d, path) for d in t.get("dirs") or []], previous)
        if (state == IN_PROGRESS) != (tx is not None):
            raise RecordError(path, "state and transaction disagree")
        commit = raw.get("upstream_commit")
        return cls(kind, feature, options, None if commit is None else str(commit), files,
                   str(raw.get("version", "")), dirs, state, tx)

    # --- files ---------------------------------------------------------------------------------------------------

    @classmethod
    def read(cls, git_dir: os.PathLike, kind: str, feature: str) -> Optional["InjectionRecord"]:
        """The record of ``kind``/``feature`` (None: there is none); ``RecordError`` if torn or foreign."""
        path = record_path(git_dir, kind, feature)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(path, f"unreadable: {exc.strerror or exc}") from None
        return cls.from_bytes(data, path, kind, feature)

    @classmethod
    def read_all(cls, git_dir: os.PathLike) -> List["InjectionRecord"]:
        """Every record of the clone, by file name; ``RecordError`` for the first torn or foreign one."""
        folder = record_dir(git_dir)
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            kind, _, feature = path.stem.partition("-")
            out.append(cls.from_bytes(path.read_bytes(), path, kind, feature))
        return out

    def path(self, git_dir: os.PathLike) -> Path:
        return record_path(git_dir, self.kind, self.feature)


def _checksum(fields: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_path(p: Any, where: Path) -> str:
    pure = PurePosixPath(p) if isinstance(p, str) else None
    if pure is None or not p or pure.is_absolute() or ".." in pure.parts or str(pure) != p or pure.parts[0] == ".git":
        raise RecordError(where, f"bad path {p!r}")
    return p


def _check_hex(h: Any, where: Path, allow_none: bool = False) -> Optional[str]:
    if h is None and allow_none:
        return None
    if not (isinstance(h, str) and _HEX64.match(h)):
        raise RecordError(where, f"bad sha256 {h!r}")
    return h


# --- locating and locking ------------------------------------------------------------------------------------


def git_dir_of(root: os.PathLike) -> Optional[Path]:
    """The git directory of the work tree at ``root`` (``git rev-parse --absolute-git-dir``); None if none."""
    try:
        done = subprocess.run(["git", "rev-parse", "--absolute-git-dir"], cwd=root, capture_output=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    text = done.stdout.decode("utf-8", "surrogateescape").strip()
    return Path(text) if done.returncode == 0 and text else None


class Busy(RuntimeError):
    """Another process holds the clone's lock."""


@contextlib.contextmanager
def locked(git_dir: os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the clone (``flock`` on its git directory) for the block; ``Busy`` if another
    ``tsattn-inject`` holds it. The kernel drops the lock when the process dies, however it dies."""
    fd = os.open(git_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Busy(f"{git_dir}: another tsattn-inject is working on this clone; wait for it to end") from None
            raise
        yield
    finally:
        os.close(fd)
