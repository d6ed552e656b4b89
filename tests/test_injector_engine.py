"""tsattn-inject on the bundled CALF look-alike: inject, idempotency, revert, safety, rollback, patch, CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import git
import pytest

from tsattn.examples import lookalike_repo
from tsattn.injector import cli, engine, transaction
from tsattn.injector.errors import AnchorNotFound, RefusedError, SourceSyntaxError, UsageError, WriteFailed
from tsattn.injector.templates import MODULES

from repo_checks import commit_all, snapshot

TOUCHED = ["models/GPT2_arch.py", "models/CALF.py", "run.py"]
ADDED = ["models/PowerformerAttention.py", "models/PowerformerGPT2.py"]
TEMPLATE = Path(engine.__file__).parent / "recipes" / "calf_templates" / "PowerformerGPT2.py"


@pytest.fixture
def calf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default patch path is under the current directory
    return lookalike_repo("calf_lookalike", tmp_path / "CALF")


def run_cli(*args: str) -> int:
    return cli.main(list(args))


def test_inject_edits_adds_and_writes_the_patch(calf, tmp_path, capsys):
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 0
    out, err = capsys.readouterr()
    assert out.strip() == os.path.join("patches", "calf-wcmha.patch")
    assert "applied" in err and "models/CALF.py" in err
    patch = (tmp_path / "patches" / "calf-wcmha.patch").read_text()
    assert patch.startswith("tsattn-inject 0.1.0: calf/wcmha (alpha=1.0, decay='powerlaw')\nupstream commit: ")
    for path in TOUCHED:
        assert f"diff --git a/{path} b/{path}\n" in patch
    for path in ADDED:
        assert f"diff --git a/{path} b/{path}\nnew file mode 100644\n" in patch

    # the WCMHA template verbatim; the recipe template with its import of it rewritten, nothing else changed
    assert (calf / ADDED[0]).read_bytes() == (MODULES / "wcmha.py").read_bytes()
    assert (calf / ADDED[1]).read_bytes() == TEMPLATE.read_bytes().replace(
        b"from tsattn.modules.wcmha import", b"from .PowerformerAttention import")

    calf_py = (calf / "models/CALF.py").read_text()
    assert "from peft import get_peft_model, LoraConfig, TaskType\n" in calf_py
    assert "from models.GPT2_arch import PowerformerAccustumGPT2Model, AccustumGPT2Model\n" in calf_py
    assert ("self.gpt2 = PowerformerAccustumGPT2Model.from_gpt2(AccustumGPT2Model.from_pretrained('gpt2', "
            "output_attentions=True, output_hidden_states=True), alpha=getattr(configs, 'powerformer_alpha', 1.0), "
            "decay=getattr(configs, 'powerformer_decay', 'powerlaw'))\n") in calf_py
    assert "        self.gpt2_text = AccustumGPT2Model.from_pretrained('gpt2', output_attentions=True" in calf_py
    lines = (calf / "run.py").read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if "'--gpt_layers'" in line)
    assert lines[i + 1].startswith("    parser.add_argument('--powerformer_alpha', type=float, default=1.0, help=")
    assert lines[i + 2].startswith("    parser.add_argument('--powerformer_decay', type=str, default='powerlaw', "
                                   "choices=['powerlaw', 'simpowerlaw', 'butterworth', 'step', 'none'], help=")
    arch = (calf / "models/GPT2_arch.py").read_text()
    assert "from models.PowerformerGPT2 import PowerformerGPT2Model\n" in arch
    assert arch.index("class AccustumGPT2Model") < arch.index("class PowerformerAccustumGPT2Model(PowerformerGPT2Model, AccustumGPT2Model):")

    record = json.loads((calf / ".git/tsattn/calf-wcmha.json").read_text())
    assert record["version"] == "0.1.0" and record["options"] == {"alpha": 1.0, "decay": "powerlaw"}
    assert record["upstream_commit"] == git.Repo(calf).head.commit.hexsha
    assert set(record["files"]) == set(TOUCHED + ADDED)
    assert git.Repo(calf).git.status("--porcelain", "--", ".git") == ""  # the record is not in the work tree


def test_same_injection_again_is_already_applied_and_new_alpha_updates_in_place(calf, capsys):
    engine.inject(calf, "wcmha")
    first = snapshot(calf)
    result = engine.inject(calf, "wcmha")
    assert result.status == "already applied" and snapshot(calf) == first
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 0
    assert "already applied" in capsys.readouterr().err

    result = engine.inject(calf, "wcmha", {"alpha": 2.0})
    assert result.status == "updated" and set(result.changed) == {"models/CALF.py", "run.py"}
    calf_py, run_py = (calf / "models/CALF.py").read_text(), (calf / "run.py").read_text()
    assert "getattr(configs, 'powerformer_alpha', 2.0)" in calf_py and calf_py.count("from_gpt2") == 1
    assert run_py.count("'--powerformer_alpha'") == 1 and "default=2.0" in run_py
    assert (calf / "models/GPT2_arch.py").read_text().count("class PowerformerAccustumGPT2Model") == 1
    # without --alpha, the recorded options are kept
    assert engine.inject(calf, "wcmha").status == "already applied"
    assert engine.inject(calf, "wcmha", {"decay": "step"}).options == {"alpha": 2.0, "decay": "step"}


def test_revert_leaves_the_repo_byte_identical(calf, capsys):
    before = snapshot(calf)
    engine.inject(calf, "wcmha")
    engine.inject(calf, "wcmha", {"alpha": 0.5, "decay": "simpowerlaw"})
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--revert") == 0
    assert snapshot(calf) == before
    assert git.Repo(calf).git.status("--porcelain") == ""
    assert not (calf / ".git/tsattn").exists()
    assert engine.revert(calf, "wcmha").status == "not applied"


def test_revert_refuses_files_edited_after_the_injection(calf):
    engine.inject(calf, "wcmha")
    with open(calf / "models/CALF.py", "a") as f:
        f.write("# my edit\n")
    with pytest.raises(RefusedError, match="models/CALF.py: changed since calf/wcmha was applied"):
        engine.revert(calf, "wcmha")
    assert engine.revert(calf, "wcmha", allow_dirty=True).status == "reverted"
    assert git.Repo(calf).git.status("--porcelain") == ""


def test_uncommitted_changes_are_refused_unless_allowed(calf, capsys):
    with open(calf / "run.py", "a") as f:
        f.write("# local change\n")
    before = snapshot(calf)
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
    assert "run.py: uncommitted changes" in capsys.readouterr().err
    assert snapshot(calf) == before
    assert engine.inject(calf, "wcmha", allow_dirty=True).status == "applied"
    assert (calf / "run.py").read_text().endswith("# local change\n")
    engine.revert(calf, "wcmha")
    assert snapshot(calf) == before  # the user's uncommitted change is restored too


def test_an_existing_file_the_recipe_adds_is_refused_unless_ours(calf):
    (calf / ADDED[1]).write_text("# someone else's file\n")
    before = snapshot(calf)
    for allow in (False, True):
        with pytest.raises(RefusedError, match="models/PowerformerGPT2.py: exists and is not tsattn-inject output"):
            engine.inject(calf, "wcmha", allow_dirty=allow)
        assert snapshot(calf) == before
    (calf / ADDED[1]).write_text("# tsattn-inject calf/wcmha: an older version of our own output\n")
    commit_all(calf, "a colleague committed an older injection")
    assert engine.inject(calf, "wcmha").status == "applied"


class Boom(Exception):
    pass


# renames: 1 the patch, 2 the journal, 3-7 the five files, 8 the complete record (the commit point)
@pytest.mark.parametrize("fault, at", [(OSError("disk full"), 5), (KeyboardInterrupt(), 4), (OSError("late"), 8)])
def test_a_fault_mid_write_restores_every_file_byte_for_byte(calf, tmp_path, monkeypatch, fault, at):
    before = snapshot(calf)
    real, calls = transaction._replace, []

    def faulty(src, dst):
        calls.append(dst)
        if len(calls) == at:
            raise fault
        real(src, dst)

    monkeypatch.setattr(transaction, "_replace", faulty)
    with pytest.raises(WriteFailed if isinstance(fault, OSError) else type(fault)):
        engine.inject(calf, "wcmha")
    assert len(calls) > at  # the fault hit write number `at`; the rollback wrote the rest back
    assert snapshot(calf) == before
    assert not (calf / ".git/tsattn").exists() and not (tmp_path / "patches").exists()
    assert not list(calf.rglob("*.tsattn-tmp"))


def test_interrupt_and_internal_error_exit_codes(calf, monkeypatch, capsys):
    before = snapshot(calf)

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(transaction, "_replace", interrupted)
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 130
    assert "every file was restored" in capsys.readouterr().err
    monkeypatch.setattr(transaction, "_replace", lambda src, dst: (_ for _ in ()).throw(OSError("no space")))
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 1
    assert snapshot(calf) == before


def test_a_file_that_does_not_parse_is_named_and_nothing_is_written(calf, capsys):
    path = calf / "models/CALF.py"
    path.write_text(path.read_text().replace("def forecast(self, x):", "def forecast(self, x)"))
    commit_all(calf, "broken")
    before = snapshot(calf)
    with pytest.raises(SourceSyntaxError) as err:
        engine.inject(calf, "wcmha")
    assert err.value.path == "models/CALF.py"
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
    assert "models/CALF.py:" in capsys.readouterr().err
    assert snapshot(calf) == before


@pytest.mark.parametrize("path, old, new, symbol", [
    ("run.py", "parser.add_argument('--gpt_layers'", "parser.add_argument('--layers'", "add_argument('--gpt_layers')"),
    ("models/CALF.py", "self.gpt2 = AccustumGPT2Model.from_pretrained", "self.gpt2 = AccustumGPT2Model",
     "self.gpt2 = AccustumGPT2Model.from_pretrained(...) in Model.__init__"),
])
def test_a_missing_anchor_names_file_and_symbol(calf, capsys, path, old, new, symbol):
    file = calf / path
    file.write_text(file.read_text().replace(old, new))
    commit_all(calf, "moved the anchor")
    before = snapshot(calf)
    with pytest.raises(AnchorNotFound) as err:
        engine.inject(calf, "wcmha")
    assert (err.value.path, err.value.symbol) == (path, symbol)
    assert run_cli("--target", str(calf), "--feature", "wcmha") == 3
    assert f"{path}: anchor not found: {symbol}" in capsys.readouterr().err
    assert snapshot(calf) == before


def test_forced_kind_reports_a_missing_class_anchor(calf):
    arch = calf / "models/GPT2_arch.py"
    arch.write_text(arch.read_text().replace("class AccustumGPT2Model", "class OtherGPT2Model"))
    commit_all(calf, "renamed")
    with pytest.raises(UsageError, match="unknown target"):
        engine.inject(calf, "wcmha")
    with pytest.raises(AnchorNotFound, match="models/GPT2_arch.py: anchor not found: top-level class or def 'AccustumGPT2Model'"):
        engine.inject(calf, "wcmha", kind="calf")


def test_patch_applies_to_a_fresh_clone_and_gives_the_same_files(calf, tmp_path):
    result = engine.inject(calf, "wcmha", {"alpha": 0.25}, patch_out=tmp_path / "out" / "x.patch")
    assert result.patch_path == str(tmp_path / "out" / "x.patch")
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(calf, fresh)
    patch = str(tmp_path / "out" / "x.patch")
    subprocess.run(["git", "apply", "--check", patch], cwd=fresh, check=True)
    subprocess.run(["git", "apply", patch], cwd=fresh, check=True)
    assert snapshot(fresh) == snapshot(calf)
    # a colleague's clone with the applied patch: the same injection there plans no change
    assert engine.inject(fresh, "wcmha", {"alpha": 0.25}).status == "already applied"
    with pytest.raises(RefusedError, match="no record"):
        engine.revert(fresh, "wcmha")


def test_dry_run_prints_the_diff_and_writes_nothing(calf, tmp_path, capsys):
    before = snapshot(calf)
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--dry-run", "--alpha", "3") == 0
    out = capsys.readouterr().out
    assert out.startswith("tsattn-inject 0.1.0: calf/wcmha (alpha=3.0") and "+++ b/models/PowerformerGPT2.py" in out
    assert snapshot(calf) == before and not (tmp_path / "patches").exists() and not (calf / ".git/tsattn").exists()


def test_json_output(calf, capsys):
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "applied" and result["added"] == ADDED and result["patch_path"].endswith("calf-wcmha.patch")


def test_targets_that_are_refused_or_unknown(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run_cli("--target", str(plain), "--feature", "wcmha") == 3
    assert "not a git work tree" in capsys.readouterr().err
    other = tmp_path / "other"
    (other / "src").mkdir(parents=True)
    (other / "src" / "x.py").write_text("x = 1\n")
    git.Repo.init(other)
    commit_all(other, "init")
    assert run_cli("--target", str(other), "--feature", "wcmha") == 2
    err = capsys.readouterr().err
    assert "unknown target" in err and "models/CALF.py defining class Model" in err
    assert "hephaestus/timeseries_models/models.py defining class TransformerBlock, TimeSeriesTransformer" in err
    assert "src/wave_transformer/core/wave_transformer.py defining class WaveTransformer" in err
    assert run_cli("--target", str(other / "src"), "--feature", "wcmha") == 3
    assert "pass its root" in capsys.readouterr().err
    empty = tmp_path / "empty"
    git.Repo.init(empty)
    assert run_cli("--target", str(empty), "--feature", "wcmha") == 3
    assert "no commit to diff against" in capsys.readouterr().err
    git.Repo.init(tmp_path / "bare.git", bare=True)
    assert run_cli("--target", str(tmp_path / "bare.git"), "--feature", "wcmha") == 3
    assert "a bare repository has no work tree" in capsys.readouterr().err


def test_linked_worktree_keeps_its_own_record(calf, tmp_path):
    subprocess.run(["git", "worktree", "add", "-q", str(tmp_path / "wt")], cwd=calf, check=True)
    result = engine.inject(tmp_path / "wt", "wcmha", patch_out=tmp_path / "wt.patch")
    assert result.status == "applied" and result.upstream_commit == git.Repo(calf).head.commit.hexsha
    assert list((calf / ".git" / "worktrees" / "wt" / "tsattn").iterdir())  # the worktree's git dir, not the clone's
    assert not (calf / ".git" / "tsattn").exists() and (calf / "models" / "PowerformerGPT2.py").exists() is False
    assert engine.revert(tmp_path / "wt", "wcmha").status == "reverted"


def test_usage_errors(calf, capsys):
    assert run_cli("--target", str(calf), "--feature", "nope") == 2
    assert "no feature 'nope' for target kind 'calf' (available: wcmha)" in capsys.readouterr().err
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--kind", "nope") == 2
    assert run_cli("--target", str(calf), "--feature", "ahs", "--kind", "hephaestus") == 2
    assert "no feature 'ahs' for target kind 'hephaestus'" in capsys.readouterr().err
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--kind", "hephaestus") == 3  # a forced kind's anchors
    assert "hephaestus/timeseries_models/models.py" in capsys.readouterr().err
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--revert", "--alpha", "2") == 2
    assert run_cli("--feature", "wcmha") == 2
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--alpha", "-1") == 2
    assert run_cli("--target", str(calf), "--feature", "wcmha", "--decay", "step", "--alpha", "0.5") == 2
    assert "--alpha 0.5: decay 'step' needs a step width >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_cli("--target", str(calf), "--feature", "wcmha", "--decay", "wrong")
    assert exit_.value.code == 2


def test_list_and_help(capsys):
    assert run_cli("--list") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["feature", "calf", "hephaestus", "wave_transformer"]  # then later kinds
    assert lines[0].index("calf") == next(line for line in lines if line.startswith("wcmha ")).index("yes")
    assert "calf/wcmha" in out and "--decay {powerlaw,simpowerlaw,butterworth,step,none}" in out
    with pytest.raises(SystemExit):
        run_cli("--help")
    help_text = capsys.readouterr().out
    for code in ("0    applied", "1    internal error", "2    usage error", "3    target refused", "130  interrupted"):
        assert code in help_text


def test_the_command_runs_as_a_module(calf, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(engine.__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-m", "tsattn.injector.cli", "--target", str(calf), "--feature", "wcmha"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join("patches", "calf-wcmha.patch")
    assert (tmp_path / "patches" / "calf-wcmha.patch").is_file()


def test_mode_and_crlf_line_endings_are_kept_and_the_patch_still_applies(calf, tmp_path):
    run_py = calf / "run.py"
    run_py.write_bytes(run_py.read_bytes().replace(b"\n", b"\r\n"))
    run_py.chmod(0o755)
    commit_all(calf, "CRLF, executable")
    engine.inject(calf, "wcmha", patch_out=tmp_path / "crlf.patch")
    data = run_py.read_bytes()
    assert stat.S_IMODE(run_py.stat().st_mode) == 0o755
    assert b"--powerformer_alpha" in data and data.count(b"\n") == data.count(b"\r\n")
    fresh = tmp_path / "fresh"
    git.Repo.clone_from(calf, fresh)
    subprocess.run(["git", "apply", str(tmp_path / "crlf.patch")], cwd=fresh, check=True)
    assert (fresh / "run.py").read_bytes() == data
