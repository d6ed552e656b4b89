"""tsattn-inject's edge cases (issue 17): symbolic links and directories where the recipe writes, a full disk,
a colleague's clone patched with ``git apply`` (no record), the default patch path, ``--status``, torn and
foreign records, the clone's lock, and the record module's own imports."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import git
import pytest

from tsattn.examples import lookalike_repo
from tsattn.injector import engine, record, transaction
from tsattn.injector.errors import WriteFailed

from repo_checks import commit_all, snapshot
from test_injector_crash import fork_cli, state
from test_injector_engine import calf, run_cli  # noqa: F401 (calf: the fixture)

ROOT = Path(__file__).resolve().parents[1]
RECORD = ".git/tsattn/calf-wcmha.json"


# --- links, directories ----------------------------------------------------------------------------------------


def test_a_symlink_to_edit_is_refused_and_kept(calf, tmp_path, capsys):
    real = tmp_path / "elsewhere_run.py"
    real.write_bytes((calf / "run.py").read_bytes())
    (calf / "run.py").unlink()
    (calf / "run.py").symlink_to(real)
    commit_all(calf, "run.py is a link")
    before, outside = state(calf), real.read_bytes()
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
    err = capsys.readouterr().err
    assert f"run.py: is a symbolic link (to {real})" in err and "regular files" in err
    assert state(calf) == before and real.read_bytes() == outside and (calf / "run.py").is_symlink()


def test_a_symlink_at_a_path_to_add_is_refused_and_kept(calf, tmp_path, capsys):
    (calf / "models/PowerformerGPT2.py").symlink_to(tmp_path / "nowhere.py")  # dangling
    before = state(calf)
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--allow-dirty") == 3
    assert "models/PowerformerGPT2.py: is a symbolic link (to " in capsys.readouterr().err
    assert state(calf) == before and not (tmp_path / "nowhere.py").exists()


def test_a_symlinked_directory_on_the_way_is_refused(calf, tmp_path, capsys):
    os.rename(calf / "models", tmp_path / "models_real")
    (calf / "models").symlink_to(tmp_path / "models_real")
    commit_all(calf, "models is a link")
    before, outside = state(calf), snapshot(tmp_path / "models_real")
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
    assert "lies under models, which is a symbolic link" in capsys.readouterr().err
    assert state(calf) == before and snapshot(tmp_path / "models_real") == outside


def test_a_directory_at_a_path_to_add_is_refused_with_exit_3(calf, capsys):
    (calf / "models/PowerformerAttention.py").mkdir()
    (calf / "models/PowerformerAttention.py/keep.txt").write_text("x\n")
    before = state(calf)
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--allow-dirty") == 3
    assert "models/PowerformerAttention.py: is a directory, where the recipe writes a file" in capsys.readouterr().err
    assert state(calf) == before


# --- a full disk -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim, named", [
    (".CALF.py.", "models/CALF.py"),                   # a file of the target, after two others were written
    (".calf-wcmha.json.", RECORD),                     # the journal: nothing of the target changed yet
    (".calf-wcmha.patch.", "calf-wcmha.patch"),         # the patch, written before the target changes
])
def test_a_full_disk_names_the_file_and_restores_everything(calf, tmp_path, monkeypatch, capsys, victim, named):
    before = state(calf)
    real = transaction._write

    def full(f, data, tmp):
        if os.path.basename(tmp).startswith(victim):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, data, tmp)

    monkeypatch.setattr(transaction, "_write", full)
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 1
    err = capsys.readouterr().err
    assert named in err and "could not write: No space left on device" in err and "every file was restored" in err
    assert state(calf) == before and not list(calf.rglob("*.tsattn-tmp"))
    assert not (calf / ".git/tsattn").exists() and not (tmp_path / "patches").exists()
    with pytest.raises(WriteFailed) as exc:
        engine.inject(calf, "wcmha")
    assert named in exc.value.path


# --- a colleague's clone: the patch applied with git apply, no record -----------------------------------------


@pytest.mark.parametrize("look, feature, options, check, committed", [
    ("calf_lookalike", "wcmha", {"alpha": 2.0, "decay": "simpowerlaw"}, "getattr(configs, 'powerformer_alpha', 2.0)",
     False),
    ("calf_lookalike", "wcmha", {"alpha": 2.0, "decay": "simpowerlaw"}, "getattr(configs, 'powerformer_alpha', 2.0)",
     True),
    ("wave_transformer_lookalike", "enhancements", {"k_ratio": 0.25, "pyramid_interval": 2, "pcca_mode": "complex"},
     "ahs_k_ratio=0.25", True),
])
def test_a_colleagues_clone_keeps_the_option_values_found_in_the_code(tmp_path, monkeypatch, capsys, look, feature,
                                                                      options, check, committed):
    monkeypatch.chdir(tmp_path)
    mine = lookalike_repo(look, tmp_path / "mine")
    patch = tmp_path / "x.patch"
    engine.inject(mine, feature, options, patch_out=patch)
    theirs = tmp_path / "theirs"
    git.Repo.clone_from(mine, theirs)
    subprocess.run(["git", "apply", str(patch)], cwd=theirs, check=True)
    if committed:
        commit_all(theirs, "the colleague committed the patch")
    before = state(theirs)
    assert check in "".join(p.read_text() for p in theirs.rglob("*.py"))

    assert run_cli("--target", str(theirs), "--feature", feature) == 0
    err = capsys.readouterr().err
    assert "already applied (options found in the code: no record)" in err
    assert state(theirs) == before and not (theirs / ".git/tsattn").exists()  # nothing changed, nothing recorded
    result = engine.inject(theirs, feature, dry_run=True)
    assert result.options_from == "code" and result.changed == [] and result.added == []
    assert all(result.options[k] == v for k, v in options.items())

    assert run_cli("--target", str(theirs), "--feature", feature, "--status", "--json") == 0
    found = json.loads(capsys.readouterr().out)["unrecorded"]["options_in_code"]
    assert found == result.options and state(theirs) == before


def test_a_colleagues_clone_updates_only_the_option_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = lookalike_repo("calf_lookalike", tmp_path / "mine")
    engine.inject(mine, "wcmha", {"alpha": 2.0, "decay": "simpowerlaw"}, patch_out=tmp_path / "x.patch")
    theirs = tmp_path / "theirs"
    git.Repo.clone_from(mine, theirs)
    subprocess.run(["git", "apply", str(tmp_path / "x.patch")], cwd=theirs, check=True)
    commit_all(theirs, "patched")
    committed = state(theirs)

    assert run_cli("--target", str(theirs), "--status") == 0
    assert capsys.readouterr().out.strip() == "no injection recorded"
    assert run_cli("--target", str(theirs), "--feature", "wcmha", "--status") == 0
    assert ("calf/wcmha: applied without a record (e.g. with git apply) [alpha=2.0, decay=simpowerlaw, found in the "
            "code]") in capsys.readouterr().out

    result = engine.inject(theirs, "wcmha", {"alpha": 3.0})
    assert result.status == "updated" and result.options == {"alpha": 3.0, "decay": "simpowerlaw"}
    calf_py = (theirs / "models/CALF.py").read_text()
    assert "getattr(configs, 'powerformer_alpha', 3.0)" in calf_py and "'simpowerlaw'" in calf_py
    assert engine.revert(theirs, "wcmha").status == "reverted"
    assert state(theirs) == committed  # back to the colleague's committed injection


def test_an_edited_injection_without_a_record_is_not_taken_for_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = lookalike_repo("calf_lookalike", tmp_path / "mine")
    engine.inject(mine, "wcmha", {"alpha": 2.0}, patch_out=tmp_path / "x.patch")
    theirs = tmp_path / "theirs"
    git.Repo.clone_from(mine, theirs)
    subprocess.run(["git", "apply", str(tmp_path / "x.patch")], cwd=theirs, check=True)
    run_py = theirs / "run.py"
    run_py.write_text(run_py.read_text().replace("default=2.0", "default=5.0"))  # disagrees with CALF.py's 2.0
    commit_all(theirs, "patched, then edited by hand")
    assert engine.options_in_code(theirs, engine.get_recipe("calf", "wcmha"),
                                  engine.plan(theirs, engine.get_recipe("calf", "wcmha"), {"alpha": 1.0,
                                                                                           "decay": "powerlaw"})) is None
    result = engine.inject(theirs, "wcmha", dry_run=True)
    assert result.options_from == "given" and result.changed  # not "already applied": the defaults would be written


# --- the default patch path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", [".", "models"])
def test_run_from_inside_the_clone_the_patch_goes_to_its_git_dir(calf, monkeypatch, capsys, where):
    monkeypatch.chdir(calf / where)
    target = "." if where == "." else ".."
    assert run_cli("--target", target, "--feature", "wcmha") == 0
    out, err = capsys.readouterr()
    patch = calf / ".git/tsattn/patches/calf-wcmha.patch"
    assert out.strip() == str(patch) and f"patch written to {patch}" in err
    assert patch.read_text().startswith("tsattn-inject ")
    untracked = git.Repo(calf).git.status("--porcelain", "--untracked-files=all").splitlines()
    assert sorted(line[3:] for line in untracked) == sorted(
        ["models/CALF.py", "models/GPT2_arch.py", "run.py", "models/PowerformerAttention.py",
         "models/PowerformerGPT2.py"])  # the injection's files only: no patches/ folder
    assert run_cli("--target", target, "--feature", "wcmha", "--revert") == 0
    assert git.Repo(calf).git.status("--porcelain", "--untracked-files=all") == ""
    assert not (calf / RECORD).exists() and patch.exists()  # the patch stays, outside the work tree
    subprocess.run(["git", "apply", "--check", str(patch)], cwd=calf, check=True)


def test_run_from_outside_the_clone_the_patch_goes_to_the_current_directory(calf, tmp_path, capsys):
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 0
    assert capsys.readouterr().out.strip() == os.path.join("patches", "calf-wcmha.patch")
    assert (tmp_path / "patches/calf-wcmha.patch").is_file() and not (calf / ".git/tsattn/patches").exists()


# --- status, records, lock -------------------------------------------------------------------------------------


def test_status_says_what_is_applied_and_what_was_repaired(calf, capsys):
    assert run_cli("--target", str(calf), "--status") == 0
    assert capsys.readouterr().out.strip() == "no injection recorded"
    engine.inject(calf, "wcmha", {"alpha": 0.5})
    assert run_cli("--target", str(calf), "--status", "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["repaired"] == [] and len(st["applied"]) == 1
    applied = st["applied"][0]
    assert (applied["kind"], applied["feature"], applied["options"]) == ("calf", "wcmha", {"alpha": 0.5, "decay": "powerlaw"})
    assert applied["upstream_commit"] == git.Repo(calf).head.commit.hexsha and applied["modified_since"] == []
    with open(calf / "run.py", "a") as f:
        f.write("# mine\n")
    assert run_cli("--target", str(calf), "--status") == 0
    out = capsys.readouterr().out
    assert "calf/wcmha: applied [alpha=0.5, decay=powerlaw]" in out and "modified since: run.py" in out

    killed = calf.parent / "killed"
    subprocess.run(["git", "clone", "-q", str(calf), str(killed)], check=True)
    assert fork_cli(["--target", str(killed), "--feature", "wcmha", "--patch-out", str(calf.parent / "k.patch")],
                    kill="7") < 0
    assert run_cli("--target", str(killed), "--status", "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["applied"] == [] and st["repaired"] == [
        "repaired an interrupted inject of calf/wcmha: restored models/GPT2_arch.py; removed 1 temporary file(s); "
        "calf/wcmha is not applied"]
    assert git.Repo(killed).git.status("--porcelain", "--untracked-files=all") == ""


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[: len(b) // 2], "not JSON"),                                               # torn
    (lambda b: b.replace(b'"alpha": 1.0', b'"alpha": 9.0'), "checksum mismatch"),           # edited
    (lambda b: json.dumps({"tool": "other", "files": {}}).encode(), "not written by tsattn-inject"),  # foreign
    (lambda b: b.replace(b"tsattn-inject-record/2", b"tsattn-inject-record/9"), "format"),
])
def test_a_torn_or_foreign_record_is_refused_with_advice_by_every_command(calf, capsys, damage, why):
    engine.inject(calf, "wcmha")
    path = calf / RECORD
    path.write_bytes(damage(path.read_bytes()))
    before = state(calf)
    for extra in (["--feature", "wcmha"], ["--feature", "wcmha", "--revert"], ["--feature", "wcmha", "--dry-run"],
                  ["--status"], ["--feature", "wcmha", "--alpha", "2"]):
        assert run_cli("--target", str(calf), *extra) == 3, extra
        err = capsys.readouterr().err
        assert f"{path}: not a valid tsattn-inject record ({why}" in err and f"mv {path} {path}.bad" in err
        assert state(calf) == before


def test_a_record_of_another_recipe_under_this_name_is_foreign(calf, capsys):
    engine.inject(calf, "wcmha")
    os.rename(calf / RECORD, calf / ".git/tsattn/calf-other.json")
    assert run_cli("--target", str(calf), "--status") == 3
    assert "it is a record of calf/wcmha, not of calf/other" in capsys.readouterr().err


def test_a_file_changed_after_the_kill_is_not_rolled_back_over(calf, tmp_path, capsys):
    before = state(calf)
    assert fork_cli(["--target", str(calf), "--feature", "wcmha", "--patch-out", str(tmp_path / "p")], kill="8") < 0
    with open(calf / "models/CALF.py", "a") as f:
        f.write("# edited after the crash\n")
    assert run_cli("--target", str(calf), "--status") == 3
    assert "models/CALF.py changed since" in capsys.readouterr().err
    assert run_cli("--target", str(calf), "--status", "--allow-dirty") == 0
    assert state(calf) == before


def test_a_format_1_record_still_reverts(calf):
    before = state(calf)
    engine.inject(calf, "wcmha")
    raw = json.loads((calf / RECORD).read_text())
    old = {k: raw[k] for k in ("tool", "version", "kind", "feature", "options", "upstream_commit", "files")}
    (calf / RECORD).write_text(json.dumps(old))
    assert engine.inject(calf, "wcmha").status == "already applied"
    assert engine.revert(calf, "wcmha").status == "reverted" and state(calf) == before


def test_one_run_per_clone_at_a_time(calf, capsys):
    with record.locked(calf / ".git"):
        assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
        assert "another tsattn-inject is working on this clone" in capsys.readouterr().err
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 0


def test_the_record_module_and_exports_reading_it_need_neither_libcst_nor_gitpython(calf, tmp_path):
    engine.inject(calf, "wcmha", {"alpha": 2.0})
    code = (
        "import sys\n"
        "from tsattn.injector.record import InjectionRecord\n"
        "from tsattn.export.targets import open_patched\n"
        f"t = open_patched({str(calf)!r}, 'calf', 'wcmha')\n"
        "print(t.options, t.options_from.startswith('injection record'), t.dirty)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'libcst', 'git'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["{'alpha': 2.0, 'decay': 'powerlaw'} True ()", "[]"]
    stdlib = subprocess.run([sys.executable, "-c", "import sys, tsattn.injector.record as r; print(sorted(m for m in "
                             "sys.modules if m.startswith('tsattn')))"], env=env, capture_output=True, text=True)
    assert stdlib.stdout.strip() == "['tsattn', 'tsattn.injector', 'tsattn.injector.record']"


def test_export_refuses_an_interrupted_record(calf, tmp_path):
    from tsattn.export.targets import TargetError, open_patched

    engine.inject(calf, "wcmha")
    work = calf.parent / "again"
    subprocess.run(["git", "clone", "-q", str(calf), str(work)], check=True)
    assert fork_cli(["--target", str(work), "--feature", "wcmha", "--patch-out", str(tmp_path / "p")], kill="12") < 0
    with pytest.raises(TargetError, match="interrupted tsattn-inject run"):
        open_patched(work, "calf", "wcmha")
    assert run_cli("--target", str(work), "--status") == 0
    with pytest.raises(TargetError, match="is not patched with wcmha"):
        open_patched(work, "calf", "wcmha")
