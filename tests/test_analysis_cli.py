"""Seed 004's model (map extraction, fair initialisation), windows, and ``tsattn-analyze`` end to end (tiny)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsattn.analysis import cli, metrics
from tsattn.analysis.experiment import make_windows
from tsattn.analysis.model import Forecaster, ModelConfig
from tsattn.modules import WCMHA, GroupedQueryAttention

SMALL = ModelConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, input_len=24, horizon=4)


def test_seed_004_configuration_and_attention_classes():
    c = ModelConfig()
    got = (c.d_model, c.n_heads, c.n_layers, c.d_ff, c.dropout, c.input_len, c.horizon)
    assert got == (64, 4, 2, 256, 0.1, 100, 20)
    std, wc = Forecaster("standard"), Forecaster("wcmha")
    for layer in std.layers:
        assert type(layer.attn) is GroupedQueryAttention and layer.attn.decay.decay == "none"
        assert layer.attn.decay.causal
    for layer in wc.layers:
        assert isinstance(layer.attn, WCMHA) and layer.attn.decay.decay == "powerlaw" and layer.attn.decay.causal
    assert std(torch.randn(3, 100)).shape == (3, 20)
    with pytest.raises(ValueError, match="attention"):
        Forecaster("linear")
    with pytest.raises(ValueError, match="shape"):
        std(torch.randn(3, 99))


def test_same_seed_same_initial_weights_for_both_attentions():
    torch.manual_seed(3)
    a = Forecaster("standard", SMALL).state_dict()
    torch.manual_seed(3)
    b = Forecaster("wcmha", SMALL).state_dict()
    shared = [k for k in a if not k.endswith("decay.alpha")]
    assert shared == [k for k in b if not k.endswith("decay.alpha")]
    assert all(torch.equal(a[k], b[k]) for k in shared)


@pytest.mark.parametrize("attention", ["standard", "wcmha"])
def test_attention_maps_are_the_weights_the_forward_uses(attention):
    torch.manual_seed(0)
    model = Forecaster(attention, SMALL).double().eval()
    x = torch.randn(3, SMALL.input_len, dtype=torch.float64).cumsum(1)
    maps = model.attention_maps(x)
    assert len(maps) == SMALL.n_layers
    h = model._embed(model._normalise(x)[0])
    for layer, w in zip(model.layers, maps):
        assert w.shape == (3, SMALL.n_heads, SMALL.input_len, SMALL.input_len)
        assert torch.allclose(w.sum(-1), torch.ones((), dtype=w.dtype))
        assert torch.all(w.triu(1) == 0)  # causal
        attn = layer.attn
        v = attn.v_proj(h).view(3, -1, attn.n_heads, attn.head_dim).transpose(1, 2)
        y = attn.out_proj((w @ v).transpose(1, 2).reshape(3, -1, SMALL.d_model))
        assert torch.allclose(y, attn(h)[0], atol=1e-10)  # maps @ V reproduces the attention output
        h = layer(h)
    assert model.training is False
    model.train()
    model.attention_maps(x)
    assert model.training is True  # restored


def test_wcmha_maps_decay_with_lag_before_training():
    torch.manual_seed(0)
    x = torch.randn(8, 100).cumsum(1)
    std = metrics.model_metrics([m.numpy() for m in Forecaster("standard").attention_maps(x)], causal=True)
    wc = metrics.model_metrics([m.numpy() for m in Forecaster("wcmha").attention_maps(x)], causal=True)
    assert abs(std["mean"]["lag_exponent"]) < 0.2  # near-uniform at initialisation: flat profile
    assert wc["mean"]["lag_exponent"] < -0.7 and wc["mean"]["lag_exponent_r2"] > 0.95  # the bias -log(dt + 1)
    assert wc["mean"]["entropy"] < std["mean"]["entropy"]


def test_windows_split_in_time_without_target_leakage():
    series = np.arange(300, dtype=float)
    w = make_windows(series, 100, 20, 0.8)  # split at 240
    z = lambda v: (v - w.mean) / w.std  # noqa: E731
    assert w.mean == pytest.approx(series[:240].mean())
    assert w.train_x.shape == (121, 100) and w.train_y.shape == (121, 20)
    assert float(w.train_y[-1, -1]) == pytest.approx(z(239), abs=1e-5)  # last training target inside the split
    assert w.val_x.shape == (41, 100)
    assert float(w.val_y[0, 0]) == pytest.approx(z(240), abs=1e-5)  # first validation target right after it
    assert float(w.val_y[-1, -1]) == pytest.approx(z(299), abs=1e-5)
    with pytest.raises(ValueError, match="too short"):
        make_windows(np.arange(130.0), 100, 20, 0.8)


def _expected_files(series: str, layers: int = 2, heads: int = 4, samples: int = 1):
    names = ["training_curves.png", f"attention_summary_{series}.png", "entropy_analysis.png",
             "attention_metrics.json", "summary.json"]
    names += [f"attention_L{l}_H{h}_S{s}.png" for l in range(layers) for h in range(heads) for s in range(samples)]
    return sorted(names)


TINY = ["--generators", "HeavyTailedAR1", "--epochs", "1", "--length", "260", "--samples", "1"]


def test_tiny_end_to_end_run_writes_every_file(tmp_path, capsys):
    out = tmp_path / "a"
    assert cli.main(TINY + ["--jobs", "1", "--out", str(out), "--json"]) == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout)
    assert sorted(p.name for p in out.iterdir()) == ["HeavyTailedAR1", "comparison.json", "comparison.md"]
    for attention in ("standard", "wcmha"):
        folder = out / "HeavyTailedAR1" / attention
        assert sorted(p.name for p in folder.iterdir()) == _expected_files("HeavyTailedAR1")
        for png in folder.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        m = json.loads((folder / "attention_metrics.json").read_text())
        assert len(m["per_head"]) == 8 and {(h["layer"], h["head"]) for h in m["per_head"]} == {
            (l, h) for l in range(2) for h in range(4)}
        for name in metrics.METRIC_NAMES:
            assert all(math.isfinite(h[name]) for h in m["per_head"]), name
        s = json.loads((folder / "summary.json").read_text())
        assert s["attention"] == attention and s["series"]["name"] == "HeavyTailedAR1"
        assert s["config"]["model"]["d_model"] == 64 and len(s["history"]["val_loss"]) == 1
        assert sorted(s["files"]) == _expected_files("HeavyTailedAR1")
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison == printed
    rows = {r["attention"]: r for r in comparison["runs"]}
    assert set(rows) == {"standard", "wcmha"}
    assert rows["wcmha"]["lag_exponent"] < 0
    md = (out / "comparison.md").read_text()
    for r in comparison["runs"]:  # the table shows the JSON's numbers
        line = next(l for l in md.splitlines() if l.startswith(f"| {r['series']} | {r['attention']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(r["val_mse"], abs=6e-4)
        assert float(cells[6]) == pytest.approx(r["lag_exponent"], abs=6e-4)
    assert "WCMHA lag exponent negative on 1 of 1 series." in md
    assert not [p for p in out.iterdir() if p.name.startswith(".tsattn-analyze-")]  # staging removed


def test_usage_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["--generators", "Nope", "--out", str(out)]) == 2
    assert "--generators" in capsys.readouterr().err
    assert cli.main(["--attention", "standard,linear", "--out", str(out)]) == 2
    assert "--attention" in capsys.readouterr().err
    assert cli.main(TINY + ["--jobs", "0", "--out", str(out)]) == 2
    assert cli.main(["--generators", "RandomWalk", "--length", "130", "--out", str(out)]) == 2
    assert "too short" in capsys.readouterr().err
    assert not out.exists()
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["--out", str(f)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_help_and_umbrella_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes" in text and "--quick" in text and "--generators" in text
    from tsattn.cli import main as umbrella

    with pytest.raises(SystemExit) as exc:
        umbrella(["analyze", "--help"])
    assert exc.value.code == 0 and "tsattn-analyze" in capsys.readouterr().out


def test_module_entry_point_with_a_pool_of_two_processes(tmp_path):
    out = tmp_path / "c"
    args = ["--generators", "sunspots", "--epochs", "1", "--samples", "0", "--jobs", "2", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "tsattn.analysis.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr
    for attention in ("standard", "wcmha"):  # the table goes to stdout, in task order
        assert re.search(rf"\| sunspots \| {attention} \| [0-9.]+ \|", proc.stdout)
        assert sorted(p.name for p in (out / "sunspots" / attention).iterdir()) == _expected_files(
            "sunspots", samples=0)
    assert proc.stdout.index("| standard |") < proc.stdout.index("| wcmha |")
    # stderr is a pipe: no progress bar (carriage returns), but each worker's run line
    assert "\r" not in proc.stderr and proc.stderr.count("sunspots/") == 2
    # the same numbers as a run in one process: the pool changes nothing but the wall time
    single = tmp_path / "d"
    assert cli.main(args[:-4] + ["--jobs", "1", "--out", str(single)]) == 0
    pooled = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["val_mse"] for r in json.loads((single / "comparison.json").read_text())["runs"]] == [
        r["val_mse"] for r in pooled]


# forked workers (Linux) inherit the monkeypatch below; spawned ones would not
@pytest.mark.parametrize("jobs", ["1", "2"] if sys.platform == "linux" else ["1"])
def test_internal_error_leaves_nothing_behind(tmp_path, monkeypatch, capsys, jobs):
    from tsattn.analysis import experiment

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(experiment, "run", broken)
    out = tmp_path / "e"
    assert cli.main(TINY + ["--jobs", jobs, "--out", str(out)]) == 1
    assert "boom" in capsys.readouterr().err
    assert not out.exists()
