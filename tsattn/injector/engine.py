"""Inject, revert, status: recover first, plan in memory, check the target, one journaled transaction, the patch.

Every command on a target (``inject``, ``revert``, ``status``; ``dry_run`` included) holds the clone's lock
(``record.locked``) and first runs ``recover``: an interrupted transaction (a record "in progress", left by a
killed run) is rolled back to the bytes it recorded before it, stale ``*.tsattn-tmp`` files are removed, and
what was repaired is said (``Result.repaired``; logged). A torn or foreign record is refused (exit 3).

``inject(target, feature, ...)``:
  1. the target must be the root of a git work tree with a commit; its kind is detected (or forced);
  2. plan: every file the recipe edits is parsed and every codemod run, every template rendered, in memory
     (a file that does not parse, or a missing anchor, stops here: nothing written); options not given keep the
     record's values, or without a record (a colleague's ``git apply``) the values found in the code
     (``options_in_code``);
  3. nothing differs: "already applied" (exit 0; the patch is written again);
  4. refuse (exit 3) a changed file with uncommitted changes that are not our own recorded output (unless
     ``allow_dirty``), an existing file the recipe adds that is not our own output (in the record, or
     carrying ``MARKER``, or already identical), a symbolic link or directory where the recipe writes a file;
  5. the patch is written (outside the work tree by default: ``default_patch_path``), then one journaled
     transaction (``transaction.apply``) writes the target's files and the record.
``revert(target, feature)`` restores the recorded originals byte for byte, removes the added files and the
directories the injection created, and removes the record, through the same journal.

The record (``record.py``: ``<git dir>/tsattn/<kind>-<feature>.json``) stays out of ``git status`` and out of the
patch, and keeps per clone what ``--revert`` needs (the original bytes of every touched file), the options (so a
re-run keeps them unless given anew), the tool version and the upstream commit; while a transaction runs it is
also the journal that undoes it. A colleague who only ``git apply``-ed the patch has no record: re-running the
same injection there is "already applied" with the option values read back from the code, recipe-specific files
carry ``MARKER`` so that they count as ours, and the patch's header names the tool version, feature, options and
upstream commit.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import logging
import os
import stat
import tempfile
import tokenize
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import libcst as cst
from libcst.codemod import CodemodContext

from tsattn import __version__
from tsattn.injector.codemods import QUOTE_KEY, FilePass, file_quote
from tsattn.injector import transaction
from tsattn.injector.errors import AnchorNotFound, InjectError, RefusedError, SourceSyntaxError, UsageError, WriteFailed
from tsattn.injector.gitrepo import GitRepo
from tsattn.injector.recipe import Edit, Recipe, get_recipe
from tsattn.injector.record import (IN_PROGRESS, Busy, FileEntry, InjectionRecord, RecordError, UndoEntry, locked,
                                    record_dir, record_path, sha256)
from tsattn.injector.record import Transaction as RecordTransaction
from tsattn.injector.targets import KINDS, detect
from tsattn.injector.templates import render_templates
from tsattn.injector.transaction import matches

log = logging.getLogger("tsattn.inject")

MARKER = b"# tsattn-inject "
"""First bytes of a recipe-specific generated file: such a file counts as our own output."""

Files = Dict[str, Tuple[Optional[bytes], Optional[bytes]]]  # path -> (current bytes, planned bytes); None: absent


@dataclass
class Result:
    """What ``inject``/``revert`` did. ``status``: applied, updated, already applied, dry run, reverted, not applied."""

    status: str
    kind: str
    feature: str
    options: Dict[str, Any] = field(default_factory=dict)
    changed: List[str] = field(default_factory=list)
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    patch: Optional[bytes] = None
    patch_path: Optional[str] = None
    upstream_commit: Optional[str] = None
    repaired: List[str] = field(default_factory=list)  # what recovery repaired first (one sentence each)
    options_from: str = "given"  # given (or defaults), record (kept from it), code (found in the files)

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "patch"}


# --- target --------------------------------------------------------------------------------------------------


def open_target(target: os.PathLike) -> Tuple[Path, GitRepo]:
    """(root, GitRepo) of the work tree at ``target``; ``RefusedError`` if it is not the root of one."""
    repo = GitRepo.open(target)
    return repo.root, repo


def _read(path: Path) -> Optional[bytes]:
    return path.read_bytes() if path.is_file() else None


# --- plan ----------------------------------------------------------------------------------------------------


def apply_edits(path: str, source: bytes, edits: Sequence[Edit]) -> bytes:
    """Run the codemods of ``edits`` on ``source`` (the bytes of ``path``), in one ``FilePass``, and return the
    new bytes."""
    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise SourceSyntaxError(path, exc.raw_line, exc.message) from None
    module = path[:-3].replace("/", ".") if path.endswith(".py") else path.replace("/", ".")
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    package = module.rpartition(".")[0] if not path.endswith("__init__.py") else module
    # one context and one pass per file: the imports the codemods queue are applied once, at the end
    context = CodemodContext(filename=path, full_module_name=module, full_package_name=package,
                             scratch={QUOTE_KEY: file_quote(source)})
    return FilePass(context, [(edit.codemod, edit.args) for edit in edits]).transform_module(tree).bytes


def plan(root: Path, recipe: Recipe, options: Mapping[str, Any]) -> Files:
    """``{path: (current, planned)}`` for every file the recipe touches (edited files first, then added ones),
    all computed in memory."""
    by_file: "OrderedDict[str, List[Edit]]" = OrderedDict()
    for edit in recipe.edits(options):
        by_file.setdefault(edit.path, []).append(edit)
    files: Files = {}
    for path, edits in by_file.items():
        current = _read(root / path)
        if current is None:
            raise AnchorNotFound(path, "the file itself (the recipe edits it)")
        files[path] = (current, apply_edits(path, current, edits))
    for dest, data in render_templates(recipe.templates).items():
        if dest in files:
            raise ValueError(f"recipe {recipe.name}: {dest} is both edited and added")
        files[dest] = (_read(root / dest), data)
    return files


# --- record and recovery -------------------------------------------------------------------------------------


def state_path(repo: Any, recipe: Recipe) -> Path:
    """Where the record of ``recipe`` lives in the clone (``<git dir>/tsattn/<kind>-<feature>.json``)."""
    return record_path(repo.git_dir, recipe.kind, recipe.feature)


def load_record(repo: Any, recipe: Recipe) -> Optional[InjectionRecord]:
    """The record of ``recipe`` (None: none); a torn or foreign one is ``RefusedError`` with advice."""
    try:
        return InjectionRecord.read(repo.git_dir, recipe.kind, recipe.feature)
    except RecordError as exc:
        raise RefusedError(str(exc)) from None


@contextlib.contextmanager
def _locked(repo: GitRepo) -> Iterator[None]:
    try:
        with locked(repo.git_dir):
            yield
    except Busy as exc:
        raise RefusedError(str(exc)) from None


def _recipe_paths(recipe: Optional[Recipe]) -> List[str]:
    if recipe is None:
        return []
    return [e.path for e in recipe.edits(recipe.resolve())] + [t.dest for t in recipe.templates]


def recover(root: Path, repo: GitRepo, recipe: Optional[Recipe] = None, allow_dirty: bool = False) -> List[str]:
    """Roll back every interrupted transaction in the clone (a record "in progress": a killed run) to the bytes it
    recorded before it, and remove stale temporary files (``*.tsattn-tmp``) of the journaled paths, of the record
    directory and of ``recipe``'s paths (a run of an older version); returns one sentence per repair. Needs no
    recipe for the journals, so it runs before the target's kind is detected (a half-written tree may not be). Refuses (``RefusedError``) a torn or foreign record, and a file
    that changed since the interrupted run (neither its bytes before nor after it) unless ``allow_dirty``."""
    try:
        records = InjectionRecord.read_all(repo.git_dir)
    except RecordError as exc:
        raise RefusedError(str(exc)) from None
    said = []
    for rec in records:
        tx = rec.transaction
        if tx is None:
            continue
        record_file = rec.path(repo.git_dir)
        changed = [p for p, u in tx.undo.items()
                   if not (matches(root, p, sha256(u.before)) or matches(root, p, u.after_sha256))]
        if changed and not allow_dirty:
            raise RefusedError(
                f"{record_file}: an interrupted {tx.op} of {rec.name} is to be rolled back, but "
                f"{', '.join(changed)} changed since (neither the bytes before that run nor after it); rolling "
                "back would lose those changes: save them, then run again with --allow-dirty to roll back anyway")
        _refuse_links(root, list(tx.undo))
        try:
            repair = transaction.rollback(root, record_file, rec)
        except OSError as exc:
            raise InjectError(f"{record_file}: rolling back the interrupted {tx.op} of {rec.name} failed: {exc}; "
                              "the journal is kept: fix the cause and run any tsattn-inject command again") from None
        parts = [f"restored {', '.join(sorted(repair.restored))}" if repair.restored else "",
                 f"removed {', '.join(sorted(repair.removed))}" if repair.removed else "",
                 f"removed {len(repair.temporaries)} temporary file(s)" if repair.temporaries else "",
                 f"removed directory {', '.join(repair.dirs)}" if repair.dirs else ""]
        now = ("not applied" if tx.previous is None else
               f"applied with {_opts(tx.previous.options)} as before it")
        said.append(f"repaired an interrupted {tx.op} of {rec.name}: "
                    f"{'; '.join(p for p in parts if p) or 'nothing had changed yet'}; {rec.name} is {now}")
    stale = transaction.remove_temporaries(root, _recipe_paths(recipe))
    folder = record_dir(repo.git_dir)
    for where in (folder, folder / "patches"):
        if where.is_dir():
            stale += _remove_record_temporaries(where)
    if stale:
        said.append(f"removed stale temporary files of an interrupted run: {', '.join(stale)}")
    for line in said:
        log.warning("%s", line)
    return said


def _remove_record_temporaries(folder: Path) -> List[str]:
    """Our temporary files in the record directory (a record write killed before its rename)."""
    out = []
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(transaction.TMP_SUFFIX) and (folder / name).is_file():
            (folder / name).unlink()
            out.append(str(folder / name))
    return out


def _opts(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "no options"


def _refuse_links(root: Path, paths: Sequence[str]) -> None:
    """Refuse (exit 3) a path the recipe writes that is, or lies under, a symbolic link, or is not a regular file."""
    for path in paths:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts) + 1):
            here = root.joinpath(*parts[:i])
            if here.is_symlink():
                what = "is" if i == len(parts) else f"lies under {'/'.join(parts[:i])}, which is"
                raise RefusedError(
                    f"{path}: {what} a symbolic link (to {os.readlink(here)}); tsattn-inject writes only regular "
                    "files inside the work tree (writing would replace the link by a file, or write outside): "
                    "replace the link by a copy of what it points to, or remove it, and run again")
        full = root / path
        if full.is_dir():
            raise RefusedError(f"{path}: is a directory, where the recipe writes a file: move it away and run again")
        if full.exists() and not full.is_file():
            raise RefusedError(f"{path}: is not a regular file, where the recipe writes one: move it away")


def _new_record(recipe: Recipe, options: Mapping[str, Any], commit: str, files: Files, dirs: List[str],
                previous: Optional[InjectionRecord]) -> InjectionRecord:
    before = {} if previous is None else previous.files
    entries = {path: FileEntry(before[path].before if path in before else current, sha256(planned))
               for path, (current, planned) in files.items()}  # keep the originals of the first injection
    kept = [d for d in (previous.dirs if previous else []) if d not in dirs]
    return InjectionRecord(recipe.kind, recipe.feature, dict(options), commit, entries, __version__, kept + dirs)


def _journal(done: Optional[InjectionRecord], op: str, undo: Dict[str, UndoEntry], dirs: List[str],
             previous: Optional[InjectionRecord]) -> InjectionRecord:
    """The in-progress record of a transaction that ends with ``done`` (None: with no record)."""
    base = done if done is not None else previous
    assert base is not None
    return InjectionRecord(base.kind, base.feature, dict(base.options), base.upstream_commit, dict(base.files),
                           base.version, list(base.dirs), IN_PROGRESS,
                           RecordTransaction(op, undo, dirs, previous))


def _undo_entry(root: Path, path: str, after: Optional[bytes]) -> UndoEntry:
    full = root / path
    if full.is_file():
        return UndoEntry(full.read_bytes(), stat.S_IMODE(full.stat().st_mode), sha256(after))
    return UndoEntry(None, None, sha256(after))


def _new_dirs(root: Path, paths: Sequence[str]) -> List[str]:
    """The directories (relative, parents first) that writing ``paths`` creates."""
    out: List[str] = []
    for path in paths:
        parents = list(PurePosixPath(path).parents)[:-1]
        for parent in reversed(parents):
            if not (root / parent).exists() and str(parent) not in out:
                out.append(str(parent))
    return out

# --- patch ---------------------------------------------------------------------------------------------------


def _preamble(recipe: Recipe, options: Mapping[str, Any], commit: str, name: str) -> bytes:
    opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return (
        f"tsattn-inject {__version__}: {recipe.name} ({opts})\n"
        f"upstream commit: {commit}\n"
        f"apply to a clone of that commit with: git apply {name}\n\n"
    ).encode()


def make_patch(repo: GitRepo, files: Mapping[str, Optional[bytes]]) -> bytes:
    """``git diff`` of HEAD against HEAD with ``files`` (path -> bytes, None: deleted) put in, a/ b/ prefixes.

    Computed with a temporary index and object directory (the repository's objects as an alternate), so that it
    works before anything is written and writes nothing into the repository.
    """
    modes = repo.modes([p for p, data in files.items() if data is not None])
    with tempfile.TemporaryDirectory(prefix="tsattn-diff-") as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index"), "GIT_OBJECT_DIRECTORY": os.path.join(tmp, "objects"),
               "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo.objects_dir)}
        os.mkdir(env["GIT_OBJECT_DIRECTORY"])
        repo.run("read-tree", "HEAD", env=env)
        entries = []
        for path, data in files.items():
            if data is None:
                entries.append(f"0 {'0' * 40}\t{path}")
                continue
            sha = repo.run("hash-object", "-w", "--stdin", f"--path={path}", env=env, stdin=data).decode().strip()
            entries.append(f"{modes.get(path, 0o100644):o} {sha}\t{path}")
        repo.run("update-index", "--index-info", env=env, stdin=("\n".join(entries) + "\n").encode())
        return repo.run("diff", "--cached", "HEAD", "--no-color", "--no-ext-diff", "--no-renames", "--src-prefix=a/",
                        "--dst-prefix=b/", "--", *files, env=env)


# --- safety --------------------------------------------------------------------------------------------------


def _dirty(repo: GitRepo, paths: Sequence[str]) -> Dict[str, str]:
    """Git status (XY) of the paths with uncommitted changes, untracked files included."""
    if not paths:
        return {}
    out = repo.run("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
    status = {}
    for entry in out.decode("utf-8", "surrogateescape").split("\0"):
        if len(entry) > 3:
            status[entry[3:]] = entry[:2]
    return status


def _check(root: Path, repo: Any, recipe: Recipe, files: Files, state: Optional[InjectionRecord],
           allow_dirty: bool) -> None:
    recorded = {} if state is None else {p: e.after_sha256 for p, e in state.files.items()}
    templates = set(files) - {e.path for e in recipe.edits(recipe.resolve())}
    changed = [p for p, (current, planned) in files.items() if current != planned]
    _refuse_links(root, changed)
    for path in changed:
        current = files[path][0]
        ours = current is not None and recorded.get(path) == sha256(current)
        if path in templates and current is not None and not ours and not current.startswith(MARKER):
            raise RefusedError(f"{path}: exists and is not tsattn-inject output; the recipe adds this file: "
                               "move it away (or remove it) and run again")
    status = _dirty(repo, changed)
    for path in changed:
        current = files[path][0]
        if path in status and not (recorded.get(path) == sha256(current)) and not allow_dirty:
            raise RefusedError(f"{path}: uncommitted changes (git status {status[path].strip() or '??'}); commit "
                               "or stash them, or pass --allow-dirty")


# --- options found in the code (a clone patched with `git apply`: no record) ---------------------------------

_PROBE_FLOAT, _PROBE_INT = 918273.5, 918273001


def _probe_values(recipe: Recipe) -> Optional[Dict[str, Any]]:
    """A distinct value per option that cannot occur in real code (None: an option of a type we cannot probe)."""
    out: Dict[str, Any] = {}
    for i, opt in enumerate(recipe.options):
        if opt.type is float:
            out[opt.name] = _PROBE_FLOAT + i
        elif opt.type is int:
            out[opt.name] = _PROBE_INT + i
        elif opt.type is str:
            out[opt.name] = f"tsattn_probe_{i}_{opt.name}"
        else:
            return None
    return out


def _tokens(source: bytes) -> Optional[List[str]]:
    try:
        return [t.string for t in tokenize.tokenize(io.BytesIO(source).readline)
                if t.type not in (tokenize.ENCODING, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        return None


def options_in_code(root: Path, recipe: Recipe, files: Files) -> Optional[Tuple[Dict[str, Any], Files]]:
    """The option values the injected code in the work tree carries, when the injection is present without a
    record (e.g. its patch applied with ``git apply``), and the plan for them; None when the files do not hold
    a complete injection of ``recipe`` with some option values.

    How: every file the recipe adds is present and identical to the plan (they do not depend on the options);
    the edited files are planned once with a probe value per option; where the probe's literal stands in that
    plan, the file holds the literal to read (token by token). The values found are accepted only when planning
    with them reproduces every file byte for byte.
    """
    edited = {e.path for e in recipe.edits(recipe.resolve())}
    if not recipe.options or any(current != planned for p, (current, planned) in files.items() if p not in edited):
        return None
    probes = _probe_values(recipe)
    if probes is None:
        return None
    by_value = {v: k for k, v in probes.items()}
    try:
        probed = plan(root, recipe, probes)
    except Exception:  # a recipe whose codemods do not take a probe value: nothing found
        return None
    found: Dict[str, Any] = {}
    for path in edited:
        ours, theirs = _tokens(probed[path][1] or b""), _tokens(files[path][0] or b"")
        if ours is None or theirs is None:
            return None
        matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op != "replace" or i2 - i1 != 1:
                continue
            try:
                probe, value = ast.literal_eval(ours[i1]), ast.literal_eval(" ".join(theirs[j1:j2]))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            name = by_value.get(probe) if isinstance(probe, (int, float, str)) else None
            if name is None:
                continue
            if name in found and found[name] != value:
                return None
            found[name] = value
    try:
        options = recipe.resolve(found)
        again = plan(root, recipe, options)
    except Exception:
        return None
    if any(current != planned for current, planned in again.values()):
        return None
    return options, again


# --- inject / revert / status --------------------------------------------------------------------------------


def _recipe_for(root: Path, feature: str, kind: Optional[str]) -> Recipe:
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind {kind}: unknown kind (known: {', '.join(KINDS)})")
    return get_recipe(kind or detect(root), feature)


def default_patch_path(root: Path, repo: GitRepo, recipe: Recipe) -> Path:
    """``patches/<kind>-<feature>.patch`` under the current directory, unless that is inside the target's work
    tree (e.g. ``--target .``): then ``<git dir>/tsattn/patches/`` (outside the work tree, kept by --revert)."""
    name = f"{recipe.kind}-{recipe.feature}.patch"
    cwd = Path.cwd().resolve()
    if cwd == root or cwd.is_relative_to(root):
        return record_dir(repo.git_dir) / "patches" / name
    return Path("patches") / name


def _write_patch(path: Path, data: bytes) -> Tuple[Optional[bytes], List[Path]]:
    """Write the patch (outside the target's work tree) before the target changes; returns how to undo it."""
    full = path.resolve()
    made = []
    parent = full.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    old = full.read_bytes() if full.is_file() else None
    try:
        for d in reversed(made):
            d.mkdir()
        transaction.atomic_write(full, data)
    except OSError as exc:
        _unwrite_patch(full, old, made)
        raise WriteFailed(str(path), exc.strerror or str(exc), detail="") from None
    return old, made


def _unwrite_patch(full: Path, old: Optional[bytes], made: List[Path]) -> None:
    with contextlib.suppress(OSError):
        if old is None:
            full.unlink()
        else:
            transaction.atomic_write(full, old)
    for d in made:
        with contextlib.suppress(OSError):
            d.rmdir()


def inject(
    target: os.PathLike,
    feature: str,
    options: Optional[Mapping[str, Any]] = None,
    kind: Optional[str] = None,
    patch_out: Optional[os.PathLike] = None,
    dry_run: bool = False,
    allow_dirty: bool = False,
) -> Result:
    """Apply ``feature`` to the clone at ``target``; see the module docstring. Raises ``InjectError``s."""
    transaction.reset_operations()
    root, repo = open_target(target)
    with _locked(repo):
        repaired = recover(root, repo, None, allow_dirty)
        recipe = _recipe_for(root, feature, kind)
        repaired += recover(root, repo, recipe, allow_dirty)
        state = load_record(repo, recipe)
        given = {k: v for k, v in (options or {}).items() if v is not None}
        opts = recipe.resolve(state.options if state else {}, given)
        files = plan(root, recipe, opts)
        options_from = "record" if state else "given"
        if state is None and any(current != planned for current, planned in files.values()):
            found = options_in_code(root, recipe, files)
            if found is not None:  # the injection is there (a colleague's `git apply`): keep what the code says
                opts = recipe.resolve(found[0], given)
                files = found[1] if opts == found[0] else plan(root, recipe, opts)
                options_from = "code"
        commit = repo.head()
        patch_file = Path(patch_out) if patch_out is not None else default_patch_path(root, repo, recipe)
        diff = make_patch(repo, {p: planned for p, (_, planned) in files.items()})
        patch = _preamble(recipe, opts, commit, patch_file.name) + diff if diff else b""
        changed = [p for p, (current, planned) in files.items() if current != planned]
        result = Result("dry run" if dry_run else "applied", recipe.kind, recipe.feature, opts, patch=patch,
                        upstream_commit=commit, repaired=repaired, options_from=options_from,
                        changed=[p for p in changed if files[p][0] is not None],
                        added=[p for p in changed if files[p][0] is None])
        if dry_run:
            return result
        if not changed:
            result.status = "already applied"
        else:
            _check(root, repo, recipe, files, state, allow_dirty)
            if state is not None or options_from == "code":
                result.status = "updated"
        undo_patch = _write_patch(patch_file, patch) if patch else None
        if patch:
            result.patch_path = str(patch_file)
        if not changed:
            return result
        dirs = _new_dirs(root, [p for p in changed if files[p][0] is None])
        done = _new_record(recipe, opts, commit, files, dirs, state)
        undo = {p: _undo_entry(root, p, files[p][1]) for p in changed}
        journal = _journal(done, "inject" if state is None else "update", undo, dirs, state)
        try:
            transaction.apply(root, state_path(repo, recipe), journal, {p: files[p][1] for p in changed},
                              done.to_bytes())
        except BaseException:
            if undo_patch is not None:
                _unwrite_patch(patch_file.resolve(), *undo_patch)
            raise
    return result


def revert(target: os.PathLike, feature: str, kind: Optional[str] = None, allow_dirty: bool = False,
           dry_run: bool = False) -> Result:
    """Restore every file the recorded injection touched to its bytes before it; remove the added ones."""
    transaction.reset_operations()
    root, repo = open_target(target)
    with _locked(repo):
        repaired = recover(root, repo, None, allow_dirty)
        recipe = _recipe_for(root, feature, kind)
        repaired += recover(root, repo, recipe, allow_dirty)
        state = load_record(repo, recipe)
        result = Result("reverted", recipe.kind, recipe.feature, repaired=repaired)
        if state is None:
            others = {p for rec in InjectionRecord.read_all(repo.git_dir) for p in rec.files}
            if any((root / dest).exists() and dest not in others for dest in render_templates(recipe.templates)):
                raise RefusedError(f"{root}: {recipe.name} seems applied but there is no record of it "
                                   f"({state_path(repo, recipe)}), e.g. it came from a patch: undo it with "
                                   "`git apply -R PATCH` or `git checkout`/`git clean` of its files")
            result.status = "not applied"
            return result
        restore: Dict[str, Optional[bytes]] = {}
        for path, entry in state.files.items():
            current = _read(root / path)
            if sha256(current) != entry.after_sha256 and not allow_dirty:
                raise RefusedError(f"{path}: changed since {recipe.name} was applied; --revert would lose those "
                                   "changes (pass --allow-dirty to revert anyway)")
            if entry.before != current:
                restore[path] = entry.before
        _refuse_links(root, list(restore))
        result.changed = [p for p, b in restore.items() if b is not None]
        result.removed = [p for p, b in restore.items() if b is None]
        result.options = dict(state.options)
        result.upstream_commit = state.upstream_commit
        if dry_run:
            result.status = "dry run"
            return result
        undo = {p: _undo_entry(root, p, b) for p, b in restore.items()}
        journal = _journal(None, "revert", undo, [], state)
        transaction.apply(root, state_path(repo, recipe), journal, restore, None, rmdirs=state.dirs)
        with contextlib.suppress(OSError):
            record_dir(repo.git_dir).rmdir()  # only when no other record (or patch) is left
    return result


@dataclass
class Status:
    """What ``status`` found: the records (applied injections), what recovery repaired, and for a given feature
    without a record, whether its files are present (``unrecorded``)."""

    root: str
    applied: List[Dict[str, Any]] = field(default_factory=list)
    repaired: List[str] = field(default_factory=list)
    unrecorded: Optional[Dict[str, Any]] = None

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def status(target: os.PathLike, feature: Optional[str] = None, kind: Optional[str] = None,
           allow_dirty: bool = False) -> Status:
    """What is applied to the clone at ``target`` (with which options, on which commit, files changed since),
    after rolling back an interrupted transaction (said in ``repaired``)."""
    transaction.reset_operations()
    root, repo = open_target(target)
    with _locked(repo):
        out = Status(str(root), repaired=recover(root, repo, None, allow_dirty))
        recipe = _recipe_for(root, feature, kind) if feature is not None else None
        if recipe is not None:
            out.repaired += recover(root, repo, recipe, allow_dirty)
        try:
            records = InjectionRecord.read_all(repo.git_dir)
        except RecordError as exc:
            raise RefusedError(str(exc)) from None
        for rec in records:
            if recipe is not None and (rec.kind, rec.feature) != (recipe.kind, recipe.feature):
                continue
            out.applied.append({
                "kind": rec.kind, "feature": rec.feature, "options": rec.options, "version": rec.version,
                "upstream_commit": rec.upstream_commit, "changed": rec.changed, "added": rec.added,
                "modified_since": [p for p, e in rec.files.items() if not matches(root, p, e.after_sha256)],
                "record": str(rec.path(repo.git_dir))})
        if recipe is not None and not out.applied:
            present = [t.dest for t in recipe.templates if (root / t.dest).exists()]
            info: Dict[str, Any] = {"kind": recipe.kind, "feature": recipe.feature, "present": bool(present)}
            if present:
                found = options_in_code(root, recipe, plan(root, recipe, recipe.resolve()))
                info["options_in_code"] = None if found is None else found[0]
            out.unrecorded = info
    return out
