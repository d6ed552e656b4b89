"""tsattn-export --target Time-Series-Library --feature wcmha --set model=...: the export spec on the patched
look-alike. Each graph is checked against a model the test builds itself from the patched clone (the user's
checkpoint path), with the decay, and shown to differ from the same weights without it."""

from __future__ import annotations

import hashlib
import json
import types

import numpy as np
import pytest
import torch

from repo_checks import checked_manifest
from tsattn.examples import imports_from, lookalike_repo
from tsattn.export import cli
from tsattn.export.manifest import load_manifest
from tsattn.injector import engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RUN = dict(seq_len=24, label_len=12, pred_len=8, enc_in=3, d_model=16, n_heads=2, e_layers=2, d_layers=1, d_ff=32,
           freq="h")
INPUTS = {"PatchTST": ["x"], "iTransformer": ["x", "x_mark"], "Transformer": ["x", "x_mark", "y_mark"]}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("tsl")
    base = lookalike_repo("tsl_lookalike", root / "base")
    patched = lookalike_repo("tsl_lookalike", root / "patched")
    engine.inject(patched, "wcmha", patch_out=root / "p.patch")
    return types.SimpleNamespace(base=base, patched=patched)


def configs(model, **kw):
    return types.SimpleNamespace(**{**RUN, "model": model, "task_name": "long_term_forecast", "dec_in": 3, "c_out": 3,
                                    "factor": 1, "dropout": 0.1, "activation": "gelu", "embed": "timeF", **kw})


def forecast(model, name, x, x_mark=None, y_mark=None):
    """The experiment's call (exp_long_term_forecasting), written here: the decoder input is the last label_len
    steps of x then zeros."""
    dec = None
    if name == "Transformer":
        dec = torch.cat([x[:, -RUN["label_len"]:], torch.zeros(x.shape[0], RUN["pred_len"], x.shape[2])], 1)
    with torch.no_grad():
        return model(x, x_mark, dec, y_mark)[:, -RUN["pred_len"]:, :]


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", ["PatchTST", "iTransformer", "Transformer"])
def test_checkpoint_export_matches_the_users_model_and_the_decay_is_in_the_graph(repos, tmp_path, capsys, name):
    import onnxruntime as ort

    with imports_from(repos.patched) as load:
        module = load(f"models.{name}")
        torch.manual_seed(11)
        decayed = module.Model(configs(name, attn_decay_type="powerLaw", attn_decay_scale=0.8)).eval()
        plain = module.Model(configs(name)).eval()
    plain.load_state_dict(decayed.state_dict())
    path = tmp_path / "checkpoint.pth"
    torch.save(decayed.state_dict(), path)
    out = tmp_path / "export"
    sets = ["--config", json.dumps({**RUN, "model": name, "attn_decay_type": "powerLaw", "attn_decay_scale": 0.8})]
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--checkpoint", path,
                       "--exporter", "dynamo" if name == "PatchTST" else "legacy", *sets], capsys)
    assert rc == 0, err
    raw = checked_manifest(out)
    graph = raw["graphs"]["model"]
    assert [t["name"] for t in graph["inputs"]] == INPUTS[name]
    assert graph["outputs"] == [{"name": "forecast", "dtype": "float32", "shape": ["batch", 8, 3]}]
    assert all(row["ok"] for row in raw["parity"])
    m = load_manifest(out)
    assert m.source["weights"] == "checkpoint"
    assert m.source["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    wcmha = m.source["wcmha"]
    assert wcmha["decayed_attentions"] == {"Transformer": 3}.get(name, 2)
    assert wcmha["attentions"] == {"Transformer": 4}.get(name, 2)  # the decoder's cross-attention has none
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 24, 3, generator=g) * 3 + 2
    marks = {"x_mark": torch.randn(5, 24, 4, generator=g), "y_mark": torch.randn(5, 20, 4, generator=g)}
    feeds = {"x": x, **marks}
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {n: feeds[n].numpy() for n in INPUTS[name]})
    args = [feeds[n] for n in INPUTS[name]]
    want = forecast(decayed, name, *args)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    assert np.abs(got - forecast(plain, name, *args).numpy()).max() > 1e-3


def test_random_weights_default_decay_and_dynamo(repos, tmp_path, capsys):
    out = tmp_path / "e"
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--set", "model=iTransformer",
                       "--set", "seq_len=24", "--set", "pred_len=8", "--set", "label_len=12"], capsys)
    assert rc == 0, err
    m = load_manifest(out)
    assert m.source["weights"].startswith("random (seed 0)")
    assert m.source["wcmha"]["attn_decay_type"] == "powerlaw" and m.source["wcmha"]["decayed_attentions"] == 2
    task = checked_manifest(out)["task"]
    assert task["kind"] == "forecast" and task["horizon"] == 8
    assert task["client"]["tokens"] == "variates and time features"


@pytest.mark.parametrize("argv, message", [
    (["--set", "model=Informer"], "is not one of PatchTST, iTransformer, Transformer"),
    (["--set", "d_model=10", "--set", "n_heads=4"], "divisible by n_heads"),
    (["--set", "frequency=2"], "unknown Time-Series-Library export option"),
    (["--checkpoint", "CKPT"], "checkpoints hold no config"),
    (["--exporter", "legacy"], "cannot be exported with the legacy exporter: PatchTST patches its window"),
])
def test_bad_options_exit_2_naming_the_option(repos, tmp_path, capsys, argv, message):
    ckpt = tmp_path / "c.pth"
    torch.save({}, ckpt)
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", *argv], capsys)
    assert rc == 2 and message in err


def test_an_unpatched_clone_is_refused(repos, tmp_path, capsys):
    rc, _, err = _run(["--target", repos.base, "--feature", "wcmha", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "layers/PowerformerDecay.py missing" in err and "tsattn-inject" in err


def test_a_trained_decay_scale_from_the_checkpoint_is_the_graphs(repos, tmp_path, capsys):
    import onnxruntime as ort

    name = "iTransformer"
    with imports_from(repos.patched) as load:
        module = load(f"models.{name}")
        torch.manual_seed(12)
        model = module.Model(configs(name, attn_decay_type="powerlaw", attn_decay_scale=0.5,
                                     train_attn_decay=True)).eval()
    scales = [k for k in model.state_dict() if k.endswith("attn_decay.scale")]
    assert len(scales) == 2
    with torch.no_grad():  # as if trained: each layer's exponent moved away from the initial -0.5
        for i, key in enumerate(scales):
            model.state_dict()[key].fill_(-1.5 - i)
    path = tmp_path / "checkpoint.pth"
    torch.save(model.state_dict(), path)
    sets = ["--config", json.dumps({**RUN, "model": name, "attn_decay_type": "powerlaw", "attn_decay_scale": 0.5,
                                    "train_attn_decay": True})]
    out = tmp_path / "export"
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--checkpoint", path,
                       "--exporter", "legacy", *sets], capsys)
    assert rc == 0, err
    m = load_manifest(out)
    g = torch.Generator().manual_seed(5)
    x, x_mark = torch.randn(3, 24, 3, generator=g), torch.randn(3, 24, 4, generator=g)
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy(), "x_mark": x_mark.numpy()})
    np.testing.assert_allclose(got, forecast(model, name, x, x_mark).numpy(), atol=1e-4, rtol=0)
    with torch.no_grad():
        for key in scales:
            model.state_dict()[key].fill_(-0.5)
    assert np.abs(got - forecast(model, name, x, x_mark).numpy()).max() > 1e-3  # the initial scale would differ
