"""The command lines' help and manners: what each command does, what it imports, defaults, progress only on a
terminal, the reference export's random-weights warning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run(*argv, **kw):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, timeout=600, **kw)


def test_umbrella_help_says_what_each_command_does():
    from tsattn.cli import COMMANDS

    done = run("-m", "tsattn", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # the descriptions are wrapped
    for name, (_, what) in COMMANDS.items():
        assert f" {name} {' '.join(what.split())}" in text, name
    assert "tsattn demo --out demo-out" in done.stdout


def test_umbrella_imports_only_the_command_it_runs():
    script = textwrap.dedent("""
        import sys
        from tsattn.cli import main
        rc = main(["inject", "--list"])
        heavy = [m for m in ("torch", "onnx", "onnxruntime", "transformers", "matplotlib", "starlette")
                 if m in sys.modules]
        print("HEAVY", heavy, rc)
    """)
    done = run("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY [] 0"


def test_serve_help_shows_the_defaults_of_max_streams_and_max_batch():
    text = " ".join(run("-m", "tsattn.runtime.cli", "--help").stdout.split())
    assert "the LRU idle one is evicted (default 1024)" in text
    assert "appends stepped in one call (default 64; 1: no batching)" in text


def test_reference_export_without_checkpoint_warns_random_weights_and_no_bar_in_a_log(tmp_path):
    done = run("-m", "tsattn.export.cli", "--model", "reference", "--out", str(tmp_path / "ref"), "--set",
               "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2", "--format", "torchscript")
    assert done.returncode == 0, done.stderr
    assert "WARNING tsattn.export: weights are random (seed 0): not a trained model" in done.stderr
    assert "\r" not in done.stderr and "building" not in done.stderr  # stderr is a pipe: no progress


def test_analyze_writes_no_carriage_returns_into_a_redirected_log(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "tsattn.analysis.cli", "--generators", "HeavyTailedAR1",
                               "--attention", "wcmha", "--epochs", "1", "--length", "300", "--samples", "0",
                               "--jobs", "1", "--out", str(tmp_path / "a")], stdout=subprocess.DEVNULL, stderr=f,
                              env=ENV, timeout=600)
    assert done.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "HeavyTailedAR1" in text  # the per-run line is still there
