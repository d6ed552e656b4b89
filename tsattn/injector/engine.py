"""Inject and revert: plan in memory, check the target, write in one transaction, record, make the patch.

``inject(target, feature, ...)``:
  1. the target must be the root of a git work tree with a commit; its kind is detected (or forced);
  2. plan: every file the recipe edits is parsed and every codemod run, every template rendered, in memory
     (a file that does not parse, or a missing anchor, stops here: nothing written);
  3. nothing differs: "already applied" (exit 0; the patch is written again);
  4. refuse (exit 3) a changed file with uncommitted changes that are not our own recorded output (unless
     ``allow_dirty``), or an existing file the recipe adds that is not our own output (in the record, or
     carrying ``MARKER``, or already identical);
  5. one ``Transaction``: the target's files, the record ``.git/tsattn/<kind>-<feature>.json`` and the patch.
``revert(target, feature)`` restores the recorded originals byte for byte and removes the record.

The record lives under the target's git directory: it stays out of ``git status`` and out of the patch, and
keeps per clone what ``--revert`` needs (the original bytes of every touched file), the options (so a re-run
keeps them unless given anew), the tool version and the upstream commit. A colleague who only ``git apply``-ed
the patch has no record: re-running the same injection there is still "already applied" (the codemods are
idempotent, so the plan changes nothing), recipe-specific files carry ``MARKER`` so that they count as ours, and
the patch's header names the tool version, feature, options and upstream commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import libcst as cst
from libcst.codemod import CodemodContext

from tsattn import __version__
from tsattn.injector.codemods import QUOTE_KEY, file_quote
from tsattn.injector.errors import AnchorNotFound, RefusedError, SourceSyntaxError, UsageError
from tsattn.injector.gitrepo import GitRepo
from tsattn.injector.recipe import Edit, Recipe, get_recipe
from tsattn.injector.targets import KINDS, detect
from tsattn.injector.templates import render_templates
from tsattn.injector.transaction import Transaction

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

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "patch"}


# --- target --------------------------------------------------------------------------------------------------


def open_target(target: os.PathLike) -> Tuple[Path, GitRepo]:
    """(root, GitRepo) of the work tree at ``target``; ``RefusedError`` if it is not the root of one."""
    repo = GitRepo.open(target)
    return repo.root, repo


def _sha(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read(path: Path) -> Optional[bytes]:
    return path.read_bytes() if path.is_file() else None


# --- plan ----------------------------------------------------------------------------------------------------


def apply_edits(path: str, source: bytes, edits: Sequence[Edit]) -> bytes:
    """Run the codemods of ``edits`` on ``source`` (the bytes of ``path``) and return the new bytes."""
    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise SourceSyntaxError(path, exc.raw_line, exc.message) from None
    module = path[:-3].replace("/", ".") if path.endswith(".py") else path.replace("/", ".")
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    package = module.rpartition(".")[0] if not path.endswith("__init__.py") else module
    quote = file_quote(source)
    for edit in edits:
        context = CodemodContext(filename=path, full_module_name=module, full_package_name=package,
                                 scratch={QUOTE_KEY: quote})
        tree = edit.codemod(context, **edit.args).transform_module(tree)
    return tree.bytes


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


# --- record --------------------------------------------------------------------------------------------------


def state_path(repo: Any, recipe: Recipe) -> Path:
    return Path(repo.git_dir) / "tsattn" / f"{recipe.kind}-{recipe.feature}.json"


def load_state(repo: Any, recipe: Recipe) -> Optional[Dict[str, Any]]:
    path = state_path(repo, recipe)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if state.get("kind") != recipe.kind or state.get("feature") != recipe.feature or "files" not in state:
            raise ValueError("not a record of this recipe")
        return state
    except (ValueError, OSError) as exc:
        raise RefusedError(f"{path}: unreadable injection record ({exc}); move it away to start afresh")


def _state_bytes(recipe: Recipe, options: Mapping[str, Any], commit: str, files: Files,
                 previous: Optional[Dict[str, Any]]) -> bytes:
    before = {} if previous is None else previous["files"]
    record = {}
    for path, (current, planned) in files.items():
        if path in before:  # keep the originals of the first injection
            original = before[path]["before"]
        else:
            original = None if current is None else base64.b64encode(current).decode("ascii")
        record[path] = {"before": original, "after_sha256": _sha(planned)}
    state = {
        "tool": "tsattn-inject", "version": __version__, "kind": recipe.kind, "feature": recipe.feature,
        "options": dict(options), "upstream_commit": commit, "files": record,
    }
    return (json.dumps(state, indent=1, sort_keys=True) + "\n").encode()


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


def _check(repo: Any, recipe: Recipe, files: Files, state: Optional[Dict[str, Any]], allow_dirty: bool) -> None:
    recorded = {} if state is None else {p: r["after_sha256"] for p, r in state["files"].items()}
    templates = set(files) - {e.path for e in recipe.edits(recipe.resolve())}
    changed = [p for p, (current, planned) in files.items() if current != planned]
    for path in changed:
        current = files[path][0]
        ours = current is not None and recorded.get(path) == _sha(current)
        if path in templates and current is not None and not ours and not current.startswith(MARKER):
            raise RefusedError(f"{path}: exists and is not tsattn-inject output; the recipe adds this file: "
                               "move it away (or remove it) and run again")
    status = _dirty(repo, changed)
    for path in changed:
        current = files[path][0]
        if path in status and not (recorded.get(path) == _sha(current)) and not allow_dirty:
            raise RefusedError(f"{path}: uncommitted changes (git status {status[path].strip() or '??'}); commit "
                               "or stash them, or pass --allow-dirty")


# --- inject / revert -----------------------------------------------------------------------------------------


def _recipe_for(root: Path, feature: str, kind: Optional[str]) -> Recipe:
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind {kind}: unknown kind (known: {', '.join(KINDS)})")
    return get_recipe(kind or detect(root), feature)


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
    root, repo = open_target(target)
    recipe = _recipe_for(root, feature, kind)
    state = load_state(repo, recipe)
    opts = recipe.resolve(state["options"] if state else {}, options or {})
    files = plan(root, recipe, opts)
    commit = repo.head()
    patch_file = Path(patch_out if patch_out is not None else Path("patches") / f"{recipe.kind}-{recipe.feature}.patch")
    diff = make_patch(repo, {p: planned for p, (_, planned) in files.items()})
    patch = _preamble(recipe, opts, commit, patch_file.name) + diff if diff else b""
    changed = [p for p, (current, planned) in files.items() if current != planned]
    result = Result("dry run" if dry_run else "applied", recipe.kind, recipe.feature, opts, patch=patch,
                    upstream_commit=commit,
                    changed=[p for p in changed if files[p][0] is not None],
                    added=[p for p in changed if files[p][0] is None])
    if dry_run:
        return result
    if not changed:
        result.status = "already applied"
    else:
        _check(repo, recipe, files, state, allow_dirty)
        if state is not None:
            result.status = "updated"
    with Transaction() as tx:
        if changed:
            for path in changed:
                tx.write(root / path, files[path][1])
            tx.write(state_path(repo, recipe), _state_bytes(recipe, opts, commit, files, state))
        if patch:
            tx.write(patch_file.resolve(), patch)
            result.patch_path = str(patch_file)
    return result


def revert(target: os.PathLike, feature: str, kind: Optional[str] = None, allow_dirty: bool = False,
           dry_run: bool = False) -> Result:
    """Restore every file the recorded injection touched to its bytes before it; remove the added ones."""
    root, repo = open_target(target)
    recipe = _recipe_for(root, feature, kind)
    state = load_state(repo, recipe)
    result = Result("reverted", recipe.kind, recipe.feature)
    if state is None:
        if any((root / dest).exists() for dest in render_templates(recipe.templates)):
            raise RefusedError(f"{root}: {recipe.name} seems applied but there is no record of it "
                               f"({state_path(repo, recipe)}), e.g. it came from a patch: undo it with "
                               "`git apply -R PATCH` or `git checkout`/`git clean` of its files")
        result.status = "not applied"
        return result
    restore: Dict[str, Optional[bytes]] = {}
    for path, rec in state["files"].items():
        current = _read(root / path)
        if _sha(current) != rec["after_sha256"] and not allow_dirty:
            raise RefusedError(f"{path}: changed since {recipe.name} was applied; --revert would lose those "
                               "changes (pass --allow-dirty to revert anyway)")
        before = None if rec["before"] is None else base64.b64decode(rec["before"])
        if before != current:
            restore[path] = before
    result.changed = [p for p, b in restore.items() if b is not None]
    result.removed = [p for p, b in restore.items() if b is None]
    result.options = state.get("options", {})
    result.upstream_commit = state.get("upstream_commit")
    if dry_run:
        result.status = "dry run"
        return result
    with Transaction() as tx:
        for path, before in restore.items():
            tx.write(root / path, before)
        tx.write(state_path(repo, recipe), None)
    try:
        state_path(repo, recipe).parent.rmdir()  # only when no other record is left
    except OSError:
        pass
    return result
