"""tsattn-export in a target's own environment: no libcst, no gitpython; einops < 0.7 named with its fix.

The export runs in a subprocess whose ``sys.modules`` maps ``libcst`` and ``git`` to None, so that importing either
fails there, as it does in an environment without them (CALF's pinned one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tsattn.examples import lookalike_repo
from tsattn.export import exporter
from tsattn.injector import engine
from tsattn.injector.record import git_dir_of, record_path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("libcst", "git")
SMALL = ["--set", "seq_len=12", "--set", "pred_len=5", "--set", "gpt_layers=1", "--set", "r=2",
         "--set", "lora_alpha=4", "--set", "enc_in=3", "--format", "torchscript"]


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    repo = lookalike_repo("calf_lookalike", tmp_path_factory.mktemp("env") / "CALF")
    engine.inject(repo, "wcmha", options={"alpha": 0.5})
    return repo


def export_without(blocked, *argv):
    """Run tsattn-export's main in a fresh interpreter where ``blocked`` modules cannot be imported; returns
    (exit code, stderr, the modules of ``BLOCKED`` that ended up imported)."""
    script = textwrap.dedent(f"""
        import json, sys
        for name in {list(blocked)!r}:
            sys.modules[name] = None
        from tsattn.export.cli import main
        rc = main({[str(a) for a in argv]!r})
        loaded = [n for n in {list(BLOCKED)!r} if sys.modules.get(n) is not None]
        print(json.dumps({{"rc": rc, "loaded": loaded}}))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["rc"], done.stderr, result["loaded"]


def test_export_reads_the_record_without_libcst_or_gitpython(patched, tmp_path):
    out = tmp_path / "out"
    rc, err, loaded = export_without(BLOCKED, "--target", patched, "--feature", "wcmha", "--out", out, *SMALL)
    assert rc == 0, err[-3000:]
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert source["options"] == {"alpha": 0.5, "decay": "powerlaw"}  # from the record, not "no injection record"
    assert source["options_from"].startswith("injection record ") and source["upstream_commit"]
    assert loaded == []


def test_the_export_path_imports_neither_when_both_are_installed(patched, tmp_path):
    rc, err, loaded = export_without((), "--target", patched, "--feature", "wcmha", "--out", tmp_path / "o", *SMALL)
    assert rc == 0, err[-3000:]
    assert loaded == []  # libcst and gitpython are installed here: the export path still leaves them alone


def test_without_record_and_libcst_the_error_says_what_to_install(patched, tmp_path):
    record = record_path(git_dir_of(patched), "calf", "wcmha")
    saved = record.read_bytes()
    record.unlink()  # as after a bare `git apply` of the patch
    try:
        rc, err, _ = export_without(BLOCKED, "--target", patched, "--feature", "wcmha", "--out", tmp_path / "o",
                                    *SMALL)
    finally:
        record.write_bytes(saved)
    assert rc == 2 and "Traceback" not in err
    assert "no injection record of 'wcmha'" in err and "pip install 'libcst>=1.1'" in err


@pytest.mark.parametrize("version, broken", [("0.4.1", True), ("0.6.1", True), ("0.7.0", False), ("0.8.2", False),
                                             ("0.7.0rc1", False), (None, False)])
def test_known_breakage_names_einops_below_0_7_and_the_fix(monkeypatch, version, broken):
    import importlib.metadata as metadata

    def fake(name):
        if version is None:
            raise metadata.PackageNotFoundError(name)
        assert name == "einops"
        return version

    monkeypatch.setattr(metadata, "version", fake)
    hint = exporter.known_breakage()
    if not broken:
        assert hint is None
        return
    assert f"einops {version} is installed" in hint and "unhashable type: non-nested SymInt" in hint
    assert "pip install 'einops>=0.7'" in hint and "--exporter legacy" in hint


def test_help_names_what_a_target_environment_needs_and_keeps_line_continuations():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    text = subprocess.run([sys.executable, "-m", "tsattn.export.cli", "--help"], capture_output=True, text=True,
                          env=env, check=True).stdout
    assert "In a target's own environment" in text and "einops>=0.7" in text
    assert "not libcst or gitpython" in text
    continued = [i for i, line in enumerate(text.splitlines()) if line.endswith(" \\")]
    assert len(continued) >= 4
    lines = text.splitlines()
    assert all(lines[i + 1].startswith("      --") for i in continued)
    assert not re.search(r"\S {4,}--set", text)  # no continuation swallowed into one line
