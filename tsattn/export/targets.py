"""Export specs of patched target repositories (``tsattn-export --target REPO_DIR --feature F``).

Each target kind gets one ``TargetEntry`` in ``TARGETS``: how to recognise a clone (``detect``: the injector's
fingerprints, ``tsattn.injector.targets.KINDS[kind].matches``), the features it exports, and
``build(repo, feature, options, checkpoint, seed) -> Exportable``. A builder lives in its own module
(``tsattn/export/calf.py``) and is referenced here lazily (``_lazy``), so that ``--list`` and detection import
nothing of the target's stack. What every builder shares is here:

- ``open_patched(repo, kind, feature)`` checks that the clone carries the injection (every file it adds is
  there; else ``TargetError``: "run tsattn-inject first") and reads the injector's record
  ``.git/tsattn/<kind>-<feature>.json`` through ``tsattn.injector.record`` (standard library only: its options and
  upstream commit; an interrupted or torn record is a ``TargetError``; without a record, e.g. after a bare
  ``git apply``, no options, and ``options_from`` says so: the builder reports what the built model uses).
  ``PatchedTarget.source(...)`` is the manifest's ``source`` entry.
- ``PatchedTarget.import_module(name)`` imports a module of the clone as the target's own scripts do (the
  clone's root first on ``sys.path``) without leaving it in ``sys.modules`` (``tsattn.examples.import_from``).
- ``target_code(what, ...)``: run the target's own code (building its model, a first forward) and turn its
  failure into ``TargetError`` naming the target file and line, not an internal error.

Adding a target: write ``tsattn/export/<kind>.py`` with a spec function (``ExportSpec``:
inputs, outputs, ``CacheSpec`` for a causal model with ``FlatCache`` as the adapter, sizes, ``Task``) and a
``TargetExport`` subclass (``tsattn.export.target_base``: clone, seed, checkpoint, options and provenance are
shared) following ``calf.py`` (stateless) or ``hephaestus.py`` (a cached decode-step graph), then add its
``TargetEntry`` below; its features are the injector's recipes for the kind.
``TargetError`` and ``NoExportSpec`` exit 2 in ``tsattn-export``.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from tsattn.export.spec import Exportable

TargetBuilder = Callable[[Path, str, Mapping[str, Any], Optional[Path], Optional[int]], Exportable]


class NoExportSpec(LookupError):
    """No registered export spec fits the target repository or feature."""


class TargetError(ValueError):
    """The target cannot be exported as asked: it is not patched with the feature, its options do not fit, or its
    own code fails to build or run the model (the message names the target's file and line)."""


@dataclass(frozen=True)
class TargetEntry:
    """One target kind: ``detect(repo) -> bool`` recognises a clone; ``features`` lists what ``build`` exports:
    every feature the injector has a recipe for on the kind (``recipe_features``)."""

    kind: str
    detect: Callable[[Path], bool]
    build: TargetBuilder

    @property
    def features(self) -> Tuple[str, ...]:
        return recipe_features(self.kind)


def recipe_features(kind: str) -> Tuple[str, ...]:
    """The features the injector has recipes for on ``kind``: what a target's export accepts (no hand-kept list)."""
    from tsattn.injector.recipe import all_recipes

    return tuple(r.feature for r in all_recipes() if r.kind == kind)


# --------------------------------------------------------------------------------------- what builders share


@dataclass(frozen=True)
class PatchedTarget:
    """A clone that carries the injection of ``feature``; see ``open_patched``.

    ``options``: the injection's options from the injector's record; None without one (a patch applied with
    ``git apply`` leaves none: the builder reports what the built model uses instead); ``options_from`` says which.
    ``upstream_commit``: the commit the injection was made on (the record's), else HEAD; ``head``: HEAD now
    (differs when the patched files were committed); both None outside a git work tree. ``dirty``: files with
    uncommitted changes other than the injection's own.
    """

    root: Path
    kind: str
    feature: str
    options: Optional[Dict[str, Any]]
    options_from: str
    upstream_commit: Optional[str]
    head: Optional[str]
    dirty: Tuple[str, ...] = field(default_factory=tuple)

    def import_module(self, name: str):
        """Module ``name`` (e.g. ``"models.CALF"``) of the clone, imported as its scripts do; nothing of it stays
        in ``sys.modules``. A failure is a ``TargetError`` naming the target's file and line."""
        from tsattn.examples import import_from

        with target_code(f"importing {name} from {self.root}", self.root):
            return import_from(self.root, name)

    def source(self, **extra: Any) -> Dict[str, Any]:
        """The manifest's ``source``: kind, target, repo, upstream_commit, head, feature, options (+ ``extra``)."""
        return {"kind": "target", "target": self.kind, "repo": str(self.root), "upstream_commit": self.upstream_commit,
                "head": self.head, "dirty": list(self.dirty), "feature": self.feature,
                "options": None if self.options is None else dict(self.options),
                "options_from": self.options_from, **extra}


def open_patched(repo: Path, kind: str, feature: str) -> PatchedTarget:
    """Check that ``repo`` carries the injection of ``kind``/``feature`` and read what the injector recorded.

    Patched means: every file the injection added exists (the record's, else the recipe's templates). Raises
    ``TargetError`` otherwise, saying which file is missing and the ``tsattn-inject`` command to run, and for a
    torn, foreign or interrupted record. The record is read through ``tsattn.injector.record`` and git through
    the ``git`` command: with a record, neither libcst nor gitpython is imported. A target-specific check that
    the built model really uses the feature belongs to the builder.
    """
    from tsattn.injector.record import InjectionRecord, RecordError, git_dir_of

    root = Path(repo).resolve()
    git_dir = git_dir_of(root) if (root / ".git").exists() else None
    rec = None
    if git_dir is not None:
        try:
            rec = InjectionRecord.read(git_dir, kind, feature)
        except RecordError as exc:
            raise TargetError(str(exc)) from None
        if rec is not None and not rec.complete:
            raise TargetError(
                f"target {kind} ({root}): the injection record {rec.path(git_dir)} is of an interrupted "
                f"tsattn-inject run ({rec.transaction.op}); run `tsattn-inject --target {root} --status` to roll it "
                "back, then inject again")
    if rec is not None:
        added, ours = rec.added, set(rec.files)
    else:
        from tsattn.injector.recipe import get_recipe  # no record: the recipe says what the injection adds

        recipe = get_recipe(kind, feature)
        added = [t.dest for t in recipe.templates]
        ours = {e.path for e in recipe.edits(recipe.resolve())} | set(added)
    missing = [p for p in added if not (root / p).is_file()]
    if missing:
        raise TargetError(
            f"target {kind} ({root}) is not patched with {feature}: {', '.join(missing)} missing. Run "
            f"`tsattn-inject --target {root} --feature {feature}` first (or `git apply` its patch)")
    options: Optional[Dict[str, Any]] = None
    options_from = ("no injection record (a patch applied by hand?): the exported model's own values are in the "
                    "spec's entries (CALF: wcmha)")
    commit = head = None
    dirty: Tuple[str, ...] = ()
    if git_dir is not None:
        out = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        head = (out or "").strip() or None
        if rec is not None:
            options = dict(rec.options)
            options_from = f"injection record {rec.path(git_dir)}"
            commit = rec.upstream_commit
        changed = (_git(root, "status", "--porcelain=v1", "--untracked-files=all") or "").splitlines()
        dirty = tuple(sorted(line[3:] for line in changed if line[3:] not in ours))
    return PatchedTarget(root, kind, feature, options, options_from, commit or head, head, dirty)


def _git(root: Path, *args: str) -> Optional[str]:
    """stdout of ``git ARGS`` in ``root`` (None when git is missing or the command fails)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True)
    except OSError:
        return None
    return done.stdout.decode("utf-8", "surrogateescape") if done.returncode == 0 else None


@contextlib.contextmanager
def target_code(what: str, root: Path, hint: Callable[[BaseException, str], str] = lambda exc, where: ""
                ) -> Iterator[None]:
    """Run the target's own code: an exception becomes ``TargetError("<what> failed in <file>:<line>: ...")``,
    naming the innermost frame inside ``root`` (or the innermost one), plus ``hint(exc, where)``."""
    try:
        yield
    except TargetError:
        raise
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        inside = [f for f in frames if Path(f.filename).resolve().is_relative_to(Path(root).resolve())]
        frame = (inside or frames or [None])[-1]
        where = "" if frame is None else f"{_shorten(frame.filename, root)}:{frame.lineno}"
        detail = " ".join(str(exc).split())[:400]
        extra = hint(exc, where)
        raise TargetError(f"{what} failed{' in ' + where if where else ''}: {type(exc).__name__}: {detail}"
                          + (f". {extra}" if extra else "")) from exc


def _shorten(filename: str, root: Path) -> str:
    path = Path(filename).resolve()
    root = Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else filename


def _lazy(module: str, function: str) -> TargetBuilder:
    """``module.function``, imported at the first call (a builder imports torch and the target's stack)."""
    def build(*args: Any) -> Exportable:
        return getattr(importlib.import_module(module), function)(*args)
    build.__qualname__ = f"{module}.{function}"
    return build


def _detects(kind: str) -> Callable[[Path], bool]:
    def detect(repo: Path) -> bool:
        from tsattn.injector.targets import KINDS

        return KINDS[kind].matches(repo)
    return detect


# ------------------------------------------------------------------------------------------------ registry


TARGETS: Dict[str, TargetEntry] = {
    "calf": TargetEntry("calf", _detects("calf"), _lazy("tsattn.export.calf", "build_calf_export")),
    "hephaestus": TargetEntry("hephaestus", _detects("hephaestus"),
                              _lazy("tsattn.export.hephaestus", "build_hephaestus_export")),
    "wave_transformer": TargetEntry("wave_transformer", _detects("wave_transformer"),
                                    _lazy("tsattn.export.wave", "build_wave_export")),
    "patchtst": TargetEntry("patchtst", _detects("patchtst"), _lazy("tsattn.export.patchtst", "build_patchtst_export")),
    "time_series_library": TargetEntry("time_series_library", _detects("time_series_library"),
                                       _lazy("tsattn.export.tsl", "build_tsl_export")),
}

PLANNED = ("calf", "hephaestus", "wave_transformer", "patchtst", "time_series_library")  # every injector kind; --list names those without a spec


def find_target(repo: Path, feature: str) -> TargetEntry:
    """The entry that recognises ``repo`` and exports ``feature``; raises ``NoExportSpec`` saying what is missing."""
    for entry in TARGETS.values():
        if entry.detect(repo):
            if _recorded(repo, entry.kind, feature):  # the injector's record names it: no recipe (libcst) needed
                return entry
            try:
                features = entry.features
            except ImportError as exc:  # the recipes are libcst codemods; a target's own environment may lack it
                raise NoExportSpec(
                    f"target {entry.kind} ({repo}) has no injection record of {feature!r} (was its patch applied "
                    f"with `git apply`?), and without one tsattn-export reads what the injection adds from the "
                    f"injector's recipes, which need libcst ({exc}): `pip install 'libcst>=1.1'`, or inject with "
                    f"tsattn-inject, which writes the record") from None
            if feature not in features:
                raise NoExportSpec(f"target {entry.kind} ({repo}) has no export spec for feature {feature!r}; "
                                   f"it has {list(features)}")
            return entry
    known = sorted(TARGETS) or "none yet"
    kind = _injector_kind(repo)
    what = f"target {kind} ({repo})" if kind else f"target {repo} (not a kind tsattn-inject recognises)"
    pending = [k for k in PLANNED if k not in TARGETS]
    raise NoExportSpec(
        f"no export spec for {what}, feature {feature!r}, yet: registered target specs: {', '.join(known)}. "
        + (f"Export specs for {', '.join(pending)} land with their injection recipes; " if pending else "")
        + "`tsattn-export --model reference` works today"
    )


def _recorded(repo: Path, kind: str, feature: str) -> bool:
    """Whether the clone holds the injector's record of ``kind``/``feature`` (read, and checked, by
    ``open_patched``; standard library only)."""
    from tsattn.injector.record import git_dir_of, record_path

    git_dir = git_dir_of(repo) if (Path(repo) / ".git").exists() else None
    return git_dir is not None and record_path(git_dir, kind, feature).is_file()


def _injector_kind(repo: Path) -> Optional[str]:
    """The target kind the injector's fingerprints recognise in ``repo`` (None: none or several)."""
    try:
        from tsattn.injector.targets import KINDS
    except ImportError:  # the injector is absent: name the directory only
        return None
    found = [k.name for k in KINDS.values() if k.matches(repo)]
    return found[0] if len(found) == 1 else None
