"""tsattn-export --target PatchTST --feature wcmha: the PatchTST (Powerformer) export spec on the patched look-alike.

The exported graphs are checked against a model the test builds itself, as the look-alike's run_longExp.py does
(``models.PatchTST.Model(args).float()``, a state dict saved and handed over as the checkpoint), not only against
the exporter's own eager reference.
"""

from __future__ import annotations

import hashlib
import json
import types

import numpy as np
import pytest
import torch

from tsattn.examples import imports_from, lookalike_repo
from tsattn.export import cli
from tsattn.export.manifest import load_manifest
from tsattn.injector import engine

from repo_checks import checked_manifest

SEQ, PRED, CH = 40, 8, 3
RUN = {"seq_len": SEQ, "pred_len": PRED, "enc_in": CH, "e_layers": 2, "n_heads": 2, "d_model": 8, "d_ff": 16,
       "patch_len": 8, "stride": 4}
SMALL = [a for k, v in RUN.items() for a in ("--set", f"{k}={v}")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("patchtst")
    base = lookalike_repo("patchtst_lookalike", root / "base")
    patched = lookalike_repo("patchtst_lookalike", root / "patched")
    engine.inject(patched, "wcmha", options={"attn_decay_type": "powerlaw", "attn_decay_scale": 0.5},
                  patch_out=root / "p.patch")
    return types.SimpleNamespace(base=base, patched=patched)


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def users_model(repo, **args):
    """The model as the look-alike's run_longExp.py builds it from its arguments."""
    with imports_from(repo / "PatchTST_supervised") as load:
        load("layers.PatchTST_backbone")
        module = load("models.PatchTST")
    cfg = dict(RUN, dropout=0.1, head_dropout=0.0, padding_patch="end", revin=1, decomposition=0, kernel_size=25,
               individual=0, fc_dropout=0.1)
    cfg.update(args)
    torch.manual_seed(11)
    return module.Model(types.SimpleNamespace(**cfg)).float().eval()


@pytest.fixture(scope="module")
def random_export(repos, tmp_path_factory):
    out = tmp_path_factory.mktemp("e") / "patchtst"
    rc = cli.main(["--target", str(repos.patched), "--feature", "wcmha", "--out", str(out), *SMALL])
    return rc, out


def test_patched_lookalike_exports_end_to_end(random_export, repos):
    rc, out = random_export
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.pt"]
    raw = checked_manifest(out)
    graph = raw["graphs"]["model"]
    assert graph["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", SEQ, CH]}]
    assert graph["outputs"] == [{"name": "forecast", "dtype": "float32", "shape": ["batch", PRED, CH]}]
    assert raw["cache"] is None
    task = raw["task"]
    assert task["kind"] == "forecast" and (task["client"]["context"], task["horizon"]) == (SEQ, PRED)
    rows = raw["parity"]
    assert {r["backend"] for r in rows} == {"onnxruntime", "torchscript"} and all(r["ok"] for r in rows)
    traced = raw["graphs"]["model"].get("example_sizes", {}).get("batch")
    batches = {r["sizes"]["batch"] for r in rows}
    assert len(batches) == 3 and {1, 2} <= batches and traced not in batches
    src = raw["source"]
    assert src["target"] == "patchtst" and src["weights"].startswith("random (seed 0)")
    # the injected defaults (powerlaw 0.5) are what the built model uses: -|0.5| per layer
    assert src["decay"]["type"] == ["powerlaw"] and src["decay"]["scale"] == [-0.5, -0.5]
    assert src["options"] == {"attn_decay_type": "powerlaw", "attn_decay_scale": 0.5}


def test_exported_graph_runs_at_another_batch(random_export):
    import onnxruntime as ort

    _, out = random_export
    m = load_manifest(out)
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((7, SEQ, CH)).astype(np.float32) * 3 + 10
    got = session.run(None, {"x": x})[0]
    assert got.shape == (7, PRED, CH)
    with torch.no_grad():
        want = torch.jit.load(str(m.graph_file("model", "torchscript")))(torch.from_numpy(x)).numpy()
    assert np.abs(want - got).max() <= 1e-4
    # RevIN: a shifted and scaled input gives the same shift and scale
    assert np.abs(session.run(None, {"x": x * 2 - 1})[0] - (got * 2 - 1)).max() <= 1e-3


@pytest.mark.parametrize("decay", [dict(attn_decay_type="butter2", attn_decay_scale=6.0),
                                   dict(attn_decay_type="simpowerlaw", attn_decay_scale=0.5, train_attn_decay=True)])
def test_checkpoint_export_matches_the_users_model(repos, tmp_path, capsys, decay):
    import onnxruntime as ort

    model = users_model(repos.patched, **decay)
    if decay.get("train_attn_decay"):  # trained scales, one per layer
        with torch.no_grad():
            for i, layer in enumerate(model.model.backbone.encoder.layers):
                layer.self_attn.sdp_attn.attn_decay.scale.fill_(0.3 + 0.2 * i)
    path = tmp_path / "checkpoint.pth"
    torch.save(model.state_dict(), path)  # what exp_main.py saves
    out = tmp_path / "o"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(dict(RUN, **decay)))
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--checkpoint", path,
                       "--config", config], capsys)
    assert rc == 0, err
    m = load_manifest(out)
    assert m.source["weights"] == "checkpoint" and m.source["seed"] is None
    assert m.source["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.source["decay"]["type"] == [decay["attn_decay_type"]]
    if decay.get("train_attn_decay"):
        assert m.source["decay"]["scale"] == pytest.approx([0.3, 0.5]) and m.source["decay"]["trained_scale"]
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(m.graph_file("model", "torchscript")))
    for batch in (1, 4, 9):
        x = torch.randn(batch, SEQ, CH) * 2 + 1
        with torch.no_grad():
            want = model(x).numpy()
            assert np.abs(ts(x).numpy() - want).max() <= 1e-4
        assert np.abs(session.run(None, {"x": x.numpy()})[0] - want).max() <= 1e-4


def test_an_unpatched_checkpoint_exports_with_a_decay(repos, tmp_path, capsys):
    model = users_model(repos.base)
    path = tmp_path / "checkpoint.pth"
    torch.save(model.state_dict(), path)
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", "--checkpoint", path,
                       "--config", json.dumps(dict(RUN, attn_decay_type="causal")),
                       "--format", "onnx"], capsys)
    assert rc == 0, err
    assert load_manifest(tmp_path / "o").source["decay"]["type"] == ["causal"]


def test_the_onnx_graph_keeps_batch_symbolic_and_legacy_is_refused(random_export, repos, tmp_path, capsys):
    import onnx

    _, out = random_export
    graph = onnx.load(str(out / "model.onnx")).graph
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (*graph.input, *graph.output)]
    assert dims == [["batch", SEQ, CH], ["batch", PRED, CH]]
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", *SMALL,
                       "--exporter", "legacy"], capsys)
    assert rc == 2 and "legacy" in err and "Tensor.unfold" in err
    assert not (tmp_path / "o").exists()


def test_unpatched_patchtst_is_refused(repos, tmp_path, capsys):
    rc, _, err = _run(["--target", repos.base, "--feature", "wcmha", "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert "target patchtst" in err and "is not patched with wcmha" in err and "powerformer_decay.py" in err
    assert not (tmp_path / "o").exists()


def test_half_patched_patchtst_is_refused_naming_the_cause(repos, tmp_path, capsys):
    import shutil

    repo = tmp_path / "p"
    shutil.copytree(repos.patched, repo)
    backbone = "PatchTST_supervised/layers/PatchTST_backbone.py"
    (repo / backbone).write_text((repos.base / backbone).read_text())  # the template is there, the backbone upstream's
    rc, _, err = _run(["--target", repo, "--feature", "wcmha", "--out", tmp_path / "o", *SMALL], capsys)
    # upstream's backbone swallows the new keywords (**kwargs): the model builds, without any decay
    assert rc == 2 and "has no Powerformer decay in its attention" in err and "tsattn-inject --target" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_refusals(repos, tmp_path, capsys):
    path = tmp_path / "checkpoint.pth"
    torch.save(users_model(repos.patched).state_dict(), path)
    target = ["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o"]
    rc, _, err = _run(target + ["--checkpoint", path, "--set", "seq_len=40"], capsys)
    assert rc == 2 and "PatchTST checkpoints hold no config" in err and "pred_len, n_heads" in err
    rc, _, err = _run(target + ["--checkpoint", path, "--config", json.dumps(dict(RUN, d_model=16, d_ff=16))], capsys)
    assert rc == 4 and "does not fit the model" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,match", [
    (["--set", "colour=red"], "unknown PatchTST export option(s) ['colour']"),
    (["--set", "seq_len=0"], "seq_len must be a positive integer"),
    (["--set", "n_heads=3"], "must be divisible by n_heads"),
    (["--set", "padding_patch=start"], "padding_patch must be"),
    (["--set", "attn_decay_type=gauss"], "attn_decay_type must be one of"),
    (["--set", "attn_decay_type=step", "--set", "attn_decay_scale=0.5"], "step width"),
    (["--set", "attn_decay_type=causal", "--set", "train_attn_decay=true"], "train_attn_decay needs"),
])
def test_bad_options_exit_2_naming_them(repos, tmp_path, capsys, argv, match):
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", *SMALL, *argv], capsys)
    assert rc == 2 and match in err, err
    assert not (tmp_path / "o").exists()
