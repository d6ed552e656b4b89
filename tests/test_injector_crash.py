"""A killed tsattn-inject never leaves a clone that the next command cannot repair (issue 17).

The CLI runs in a forked child (the parent has libcst and the recipes imported already, so a child costs
milliseconds) with ``TSATTN_INJECT_KILL_AFTER=N``: the child sends itself SIGKILL right after its N-th file
operation (``transaction._did``). N runs from 1 until the command completes without being killed, so every
operation the command makes is a kill point. After each kill, on two copies of the killed clone:
  A. ``--status`` (recovery) gives the tree as before the killed command, and ``--revert`` the original tree;
  B. the same command again gives the tree (and the record) of a clean run, and ``--revert`` the original tree.
Trees are compared strictly: every file's bytes and mode, every directory, link and stray temporary file.
The codemods' output and the patch are memoised across the matrix (both pure) so that it stays fast; the
file-operation layer under test is not.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from tsattn.examples import lookalike_repo
from tsattn.injector import cli, engine, transaction
from tsattn.injector.record import InjectionRecord

ROOT = Path(__file__).resolve().parents[1]

# look-alike, feature, options of a clean injection, options of an update (None: another feature on top instead)
CASES = {
    "calf": ("calf_lookalike", "wcmha", ["--alpha", "2"]),
    "hephaestus": ("hephaestus_lookalike", "efficient", None),
    "wave_transformer": ("wave_transformer_lookalike", "enhancements", ["--k_ratio", "0.25", "--pyramid_interval", "2"]),
}


def tree(root: Path) -> Dict[str, tuple]:
    """Everything in the work tree (not .git): files (bytes, mode), directories (mode), links (target)."""
    out: Dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


def records(root: Path) -> Dict[str, bytes]:
    """The clone's record directory (every file, the patches excepted)."""
    folder = root / ".git" / "tsattn"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "patches" not in p.relative_to(folder).parts} if folder.exists() else {}


def state(root: Path) -> tuple:
    return tree(root), records(root)


@pytest.fixture(scope="module")
def memo():
    """Memoise ``engine.apply_edits`` (a pure function of path, bytes and edits) and ``engine.make_patch`` (of
    HEAD and the planned files) for the whole module."""
    real, cache = engine.apply_edits, {}

    def cached(path, source, edits):
        key = (path, source, tuple((e.codemod, repr(sorted(e.args.items()))) for e in edits))
        if key not in cache:
            cache[key] = real(path, source, edits)
        return cache[key]

    real_patch, patches = engine.make_patch, {}

    def cached_patch(repo, files):  # the diff of HEAD and the files: the same in every copy of a look-alike
        key = (repo.head(), tuple(sorted(files.items())))
        if key not in patches:
            patches[key] = real_patch(repo, files)
        return patches[key]

    engine.apply_edits, engine.make_patch = cached, cached_patch
    yield
    engine.apply_edits, engine.make_patch = real, real_patch


def fork_cli(args: Sequence[str], kill: Optional[str] = None) -> int:
    """Run ``tsattn-inject ARGS`` in a forked child (``kill``: ``TSATTN_INJECT_KILL_AFTER``); its exit code, or
    minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            if kill is not None:
                os.environ[transaction.KILL_ENV] = kill
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = cli.main(list(args))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(*args: str) -> int:
    return cli.main(list(args))


class Lab:
    """A look-alike and the states of its clean runs, for one case."""

    def __init__(self, case: str, tmp: Path) -> None:
        self.look, self.feature, self.update = CASES[case]
        self.tmp = tmp
        self.base = lookalike_repo(self.look, tmp / "base")
        self.patch = str(tmp / "out.patch")
        self.original = state(self.base)
        self.n = 0

    def copy(self, src: Path) -> Path:
        self.n += 1
        dest = self.tmp / f"c{self.n}"
        shutil.copytree(src, dest, symlinks=True)
        return dest

    def inject_args(self, root: Path, feature: Optional[str] = None, extra: Sequence[str] = ()) -> List[str]:
        return ["--target", str(root), "--feature", feature or self.feature, "--patch-out", self.patch, *extra]

    def revert_args(self, root: Path, feature: Optional[str] = None) -> List[str]:
        return ["--target", str(root), "--feature", feature or self.feature, "--revert"]

    def made(self, start: Path, *commands: List[str]) -> Path:
        """A copy of ``start`` after the commands (each must succeed)."""
        root = self.copy(start)
        for args in commands:
            assert run(*[str(root) if a == "{root}" else a for a in args]) == 0
        return root


def kill_matrix(lab: Lab, start: Path, command: List[str], before: tuple, clean: tuple, redo: List[str],
                undo_to_original: List[List[str]], undo_clean: Optional[List[List[str]]] = None) -> int:
    """Kill ``command`` (run on copies of ``start``, ``{root}`` standing for the copy) after each of its file
    operations; check recovery, a re-run and revert as the module docstring says. Returns the number of
    operations the command makes."""
    def on(root: Path, args: Sequence[str]) -> List[str]:
        return [str(root) if a == "{root}" else a for a in args]

    committed = []
    for n in itertools.count(1):
        assert n < 200
        work = lab.copy(start)
        code = fork_cli(on(work, command), kill=str(n))
        if code == 0:
            assert state(work) == clean  # not killed: the command completed
            assert committed == [n - 1]  # a kill after the last operation (the commit point) only: it was done
            return n - 1
        assert code == -signal.SIGKILL, (n, code)
        a, b = lab.copy(work), lab.copy(work)
        # A: recovery alone gives the tree before the killed command (or after it, once committed); --revert
        # then the original
        assert run("--target", str(a), "--status") == 0
        done = state(a) == clean
        if done:
            committed.append(n)
        else:
            assert state(a) == before, f"kill after operation {n}: --status did not restore the tree before it"
        for args in (undo_clean or undo_to_original) if done else undo_to_original:
            assert run(*on(a, args)) == 0
        assert state(a) == lab.original, f"kill after operation {n}: --revert did not give the original"
        # B: the command again gives a clean run's tree and record; --revert the original
        assert run(*on(b, redo)) == 0
        assert state(b) == clean, f"kill after operation {n}: the re-run differs from a clean run"
        for args in undo_clean or undo_to_original:
            assert run(*on(b, args)) == 0
        assert state(b) == lab.original
    raise AssertionError("unreachable")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_inject_update_and_revert_are_repaired_by_the_next_command(case, tmp_path, memo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab(case, tmp_path)
    inject = lab.inject_args(Path("{root}"))
    revert = lab.revert_args(Path("{root}"))
    injected_root = lab.made(lab.base, lab.inject_args(Path("{root}")))
    injected = state(injected_root)
    assert injected != lab.original and records(injected_root)

    # a killed injection
    ops = kill_matrix(lab, lab.base, inject, lab.original, injected, inject, [revert])
    record = InjectionRecord.read_all(injected_root / ".git")[0]
    files = len(record.files)
    assert ops >= 2 * files + 4  # journal, every file (temp + rename), the complete record

    # a killed --revert
    ops_revert = kill_matrix(lab, injected_root, revert, injected, lab.original, revert, [revert])
    assert ops_revert >= files + 3

    # a killed update (new options), or for a recipe without options another feature on top
    if lab.update is not None:
        upd = lab.inject_args(Path("{root}"), extra=lab.update)
        updated = state(lab.made(lab.base, lab.inject_args(Path("{root}"), extra=lab.update)))
        kill_matrix(lab, injected_root, upd, injected, updated, upd, [revert])
    else:  # hephaestus: sparse attention injected on top of local attention (two records)
        first, second = "local", "sparse"
        local_root = lab.made(lab.base, lab.inject_args(Path("{root}"), feature=first))
        upd = lab.inject_args(Path("{root}"), feature=second, extra=["--allow-dirty"])
        both = state(lab.made(local_root, upd))
        assert len(records(lab.made(local_root, upd))) == 2
        first_revert = lab.revert_args(Path("{root}"), first)
        kill_matrix(lab, local_root, upd, state(local_root), both, upd, [first_revert],
                    [lab.revert_args(Path("{root}"), second), first_revert])


@pytest.mark.parametrize("sig, code", [("TERM", 143), ("HUP", 129), ("INT", 130)])
def test_sigterm_and_sighup_restore_like_sigint(sig, code, tmp_path, memo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab("calf", tmp_path)
    inject = lab.inject_args(Path("{root}"))
    points = range(1, 17) if sig == "TERM" else (7,)
    for n in points:
        work = lab.copy(lab.base)
        got = fork_cli([str(work) if a == "{root}" else a for a in inject], kill=f"{n}:{sig}")
        if got == 0:
            assert sig == "TERM" and n > 8  # the whole command fits in fewer operations
            break
        assert got == code, (n, got)
        assert state(work) == lab.original, f"{sig} after operation {n}: not restored in-process"


def test_a_kill_during_recovery_is_finished_by_the_next_command(tmp_path, memo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab("calf", tmp_path)
    killed = lab.copy(lab.base)
    assert fork_cli(lab.inject_args(killed), kill="9") == -signal.SIGKILL
    assert state(killed) != lab.original
    for m in itertools.count(1):
        assert m < 50
        work = lab.copy(killed)
        if fork_cli(["--target", str(work), "--status"], kill=str(m)) == 0:
            break
        assert run("--target", str(work), "--status") == 0  # the second recovery finishes the first
        assert state(work) == lab.original, m
    assert m > 2


def test_a_real_cli_process_killed_mid_write_and_the_repair_it_reports(tmp_path):
    base = lookalike_repo("calf_lookalike", tmp_path / "CALF")
    before = state(base)
    env = {**os.environ, "PYTHONPATH": str(ROOT), transaction.KILL_ENV: "8"}
    cmd = [sys.executable, "-m", "tsattn.injector.cli", "--target", str(base), "--feature", "wcmha"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert tree(base) != before[0] and list(base.rglob("*.tsattn-tmp")) == []  # op 8: a file renamed in place
    rec = InjectionRecord.read_all(base / ".git")[0]
    assert not rec.complete and rec.transaction.op == "inject"
    env.pop(transaction.KILL_ENV)
    proc = subprocess.run([*cmd[:-2], "--status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "repaired an interrupted inject of calf/wcmha: restored models/CALF.py, models/GPT2_arch.py" in proc.stderr
    assert proc.stdout.splitlines() == [
        "no injection recorded", "interrupted run found and rolled back first: repaired an interrupted inject of "
        "calf/wcmha: restored models/CALF.py, models/GPT2_arch.py; calf/wcmha is not applied"]
    assert state(base) == before


def test_a_kill_leaving_a_temporary_file_is_cleaned_up(tmp_path, memo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab("calf", tmp_path)
    work = lab.copy(lab.base)
    assert fork_cli(lab.inject_args(work), kill="7") == -signal.SIGKILL  # op 7: the 2nd file's temp, not renamed
    temps = list(work.rglob("*.tsattn-tmp"))
    assert len(temps) == 1
    result = engine.revert(work, "wcmha")
    assert result.status == "not applied"
    assert any("temporary" in line for line in result.repaired) and any("restored" in line for line in result.repaired)
    assert state(work) == lab.original
