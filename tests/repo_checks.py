"""Checks shared by the recipe and export tests: committing a look-alike's work tree, work-tree snapshots, the third-party packages a repository
imports, and a manifest's file entries recomputed independently of tsattn."""

from __future__ import annotations

import ast
import hashlib
import json
import stat
import sys
from pathlib import Path
from typing import Any, Dict, Iterable

import git


def commit_all(root: Path, message: str = "commit") -> None:
    """Commit everything in the work tree of the git repository at ``root`` (a test's look-alike clone)."""
    repo = git.Repo(root)
    repo.git.add("-A")
    actor = git.Actor("t", "t@example.invalid")
    repo.index.commit(message, author=actor, committer=actor)


def snapshot(root: Path) -> dict:
    """Every file of the work tree (not .git): path -> (bytes, mode)."""
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file() and ".git" not in p.relative_to(root).parts}


def third_party_imports(root: Path, own: Iterable[str], module_level_only: bool = False) -> set:
    """Top-level names of the non-stdlib packages the ``.py`` files under ``root`` import (absolute imports),
    minus the repository's own packages ``own``; ``module_level_only``: imports in a module's body only, not
    inside functions or classes."""
    names = set()
    for path in root.rglob("*.py"):
        if ".git" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_bytes())
        for node in (tree.body if module_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in {*own, "__future__"}}


def checked_manifest(out: Path) -> Dict[str, Any]:
    """The raw ``manifest.json`` of the export at ``out``, after asserting that every file entry's sha256 and size
    match the file (recomputed here) and that the directory holds exactly the manifest and those files."""
    raw = json.loads((out / "manifest.json").read_text())
    for f in raw["files"]:
        data = (out / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data), f["path"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *(f["path"] for f in raw["files"])])
    return raw
