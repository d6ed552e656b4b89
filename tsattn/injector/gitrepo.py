"""The target clone, through the ``git`` command.

``tsattn-inject`` needs five facts (one ``git rev-parse`` in the usual case) and three plumbing commands from git; running ``git`` directly keeps gitpython
(about 0.07 s of import, a tenth of the command's budget) off its start-up path.

    repo = GitRepo.open("./CALF")      # RefusedError: not the root of a work tree, bare, or no commit yet
    repo.root, repo.git_dir, repo.objects_dir, repo.head()
    repo.run("status", "--porcelain=v1", env={...})   -> bytes (stdout); GitError names the command and stderr
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from tsattn.injector.errors import RefusedError, UsageError


class GitError(RefusedError):
    """A git command failed (its stderr is in the message)."""


def _git(cwd: Path, args: Sequence[str], env: Optional[Mapping[str, str]] = None,
         stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True,
                              env=None if env is None else {**os.environ, **env})
    except FileNotFoundError:
        raise RefusedError("git: command not found (tsattn-inject diffs and restores through git)") from None


class GitRepo:
    """A non-bare git work tree with at least one commit. ``root`` is its top directory."""

    def __init__(self, root: Path, git_dir: Path, common_dir: Path) -> None:
        self.root = root
        self.git_dir = git_dir           # .git, or .git/worktrees/NAME in a linked worktree
        self.common_dir = common_dir     # where objects and refs live
        self._head: Optional[str] = None

    @property
    def objects_dir(self) -> Path:
        return self.common_dir / "objects"

    @classmethod
    def open(cls, target: os.PathLike) -> "GitRepo":
        """The work tree whose root is ``target``; ``UsageError``/``RefusedError`` saying why it is not one."""
        root = Path(target).resolve()
        if not root.is_dir():
            raise UsageError(f"--target {target}: not a directory")
        # the usual case in one git command; anything else is diagnosed step by step below
        fast = _git(root, ["rev-parse", "--is-bare-repository", "--absolute-git-dir", "--git-common-dir",
                           "--show-toplevel", "HEAD^{commit}"])
        facts = fast.stdout.decode("utf-8", "surrogateescape").splitlines()
        if fast.returncode == 0 and len(facts) == 5 and facts[0] == "false" and Path(facts[3]).resolve() == root:
            repo = cls(root, Path(facts[1]), (root / facts[2]).resolve())
            repo._head = facts[4].strip()
            return repo
        probe = _git(root, ["rev-parse", "--is-bare-repository", "--absolute-git-dir", "--git-common-dir"])
        lines = probe.stdout.decode("utf-8", "surrogateescape").splitlines()
        if probe.returncode != 0 or len(lines) != 3:
            raise RefusedError(f"{root}: not a git work tree (tsattn-inject edits only clones it can diff and restore)")
        if lines[0] == "true":
            raise RefusedError(f"{root}: a bare repository has no work tree")
        git_dir = Path(lines[1])
        common_dir = (root / lines[2]).resolve()
        top = _git(root, ["rev-parse", "--show-toplevel"])
        if top.returncode != 0:
            raise RefusedError(f"{root}: not inside a git work tree ({top.stderr.decode(errors='replace').strip()})")
        top_dir = Path(top.stdout.decode("utf-8", "surrogateescape").strip()).resolve()
        if top_dir != root:
            raise RefusedError(f"{root}: inside the git work tree {top_dir}; pass its root as --target")
        repo = cls(root, git_dir, common_dir)
        if _git(root, ["rev-parse", "--verify", "-q", "HEAD^{commit}"]).returncode != 0:
            raise RefusedError(f"{root}: the repository has no commit to diff against")
        return repo

    def run(self, *args: str, env: Optional[Mapping[str, str]] = None, stdin: Optional[bytes] = None) -> bytes:
        """stdout of ``git ARGS`` in the work tree; ``GitError`` with its stderr when it fails."""
        done = _git(self.root, args, env=env, stdin=stdin)
        if done.returncode != 0:
            raise GitError(f"git {' '.join(args[:2])} failed in {self.root}: "
                           f"{done.stderr.decode('utf-8', 'replace').strip()}")
        return done.stdout

    def head(self) -> str:
        """The commit HEAD named when the repository was opened (40 hex digits)."""
        if self._head is None:
            self._head = self.run("rev-parse", "--verify", "HEAD^{commit}").decode().strip()
        return self._head

    def modes(self, paths: Sequence[str]) -> Dict[str, int]:
        """File modes at HEAD of those of ``paths`` that HEAD has (e.g. 0o100644, 0o100755)."""
        if not paths:
            return {}
        out = self.run("ls-tree", "-z", "HEAD", "--", *paths)
        modes = {}
        for entry in out.split(b"\0"):
            if entry:
                meta, _, path = entry.partition(b"\t")
                modes[path.decode("utf-8", "surrogateescape")] = int(meta.split()[0], 8)
        return modes
