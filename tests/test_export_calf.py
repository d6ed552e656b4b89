"""tsattn-export --target CALF --feature wcmha: the CALF export spec on the patched look-alike.

The exported graphs are checked against a CALF model the test builds itself, the way CALF's run.py does
(``models.CALF.Model(configs, device)`` with the GPT-2 built offline), not only against the exporter's own eager
reference: the user's checkpoint path is the independent one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tsattn.examples import TINY_GPT2, import_from, lookalike_repo, offline_gpt2
from tsattn.export import cli
from tsattn.export.manifest import load_manifest
from tsattn.injector import engine

from repo_checks import checked_manifest

warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")

SEQ, PRED = 12, 5
# the test's own GPT-2 (tsattn.examples.TINY_GPT2, as in test_calf_wcmha), given to the export as a gpt2 dict
GPT2 = {k: TINY_GPT2[k] for k in ("n_embd", "n_head", "n_positions", "vocab_size")}
RUN = {"seq_len": SEQ, "pred_len": PRED, "gpt_layers": 2, "r": 4, "lora_alpha": 8}  # CHECKPOINT_KEYS
FAST = ["--exporter", "legacy", "--set", f"seq_len={SEQ}", "--set", f"pred_len={PRED}"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("calf")
    base = lookalike_repo("calf_lookalike", root / "base")
    patched = lookalike_repo("calf_lookalike", root / "patched")
    engine.inject(patched, "wcmha", options={"alpha": 0.5}, patch_out=root / "p.patch")
    return types.SimpleNamespace(base=base, patched=patched, patch=root / "p.patch")


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def random_export(repos, tmp_path_factory):
    """Random weights, every default but the exporter and the window: the end-to-end case."""
    out = tmp_path_factory.mktemp("e") / "calf"
    rc = cli.main(["--target", str(repos.patched), "--feature", "wcmha", "--out", str(out), *FAST])
    return rc, out


def test_patched_lookalike_exports_end_to_end(random_export, repos):
    rc, out = random_export
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.pt"]
    raw = checked_manifest(out)  # sha256 and sizes recomputed here, independently of tsattn
    graph = raw["graphs"]["model"]
    assert graph["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", SEQ, "channels"]}]
    assert graph["outputs"] == [{"name": "forecast", "dtype": "float32", "shape": ["batch", PRED, "channels"]}]
    assert raw["cache"] is None  # CALF has no KV cache: a runtime serves it with a stateless predict
    task = raw["task"]
    assert task["kind"] == "forecast" and task["inputs"] == [{"name": "x", "time_axis": 1}]
    assert task["outputs"] == [{"name": "forecast", "time_axis": 1}]
    assert (task["client"]["context"], task["horizon"], task["client"]["channels"]) == (SEQ, PRED, None)
    rows = raw["parity"]
    assert rows and all(r["ok"] and r["tol"] == 1e-4 and r["max_abs_err"] <= 1e-4 for r in rows)
    traced = {"batch": 3, "channels": 7}  # distinct_sizes avoiding seq_len 12 and pred_len 5
    for backend in ("onnxruntime", "torchscript"):
        shapes = [r["sizes"] for r in rows if r["backend"] == backend and r["check"] == "forward"]
        assert len(shapes) >= 2 and traced not in shapes
        assert {s["channels"] for s in shapes} - {traced["channels"]}  # other channel counts, 1 included
    src = raw["source"]
    assert (src["kind"], src["target"], src["feature"]) == ("target", "calf", "wcmha")
    assert src["upstream_commit"] == _head(repos.patched) and src["options"] == {"alpha": 0.5, "decay": "powerlaw"}
    assert src["options_from"].startswith("injection record")
    assert src["exported"] == ["outputs_time"] and src["weights"].startswith("random (seed 0)")
    assert src["gpt2"]["pretrained"] is False and src["checkpoint"] is None
    assert src["wcmha"] == {"decay": ["powerlaw"], "alpha": [0.5, 0.5], "layers": 2}  # the injected alpha
    assert src["lora"]["merged"] and src["lora"]["max_abs_diff_vs_unmerged"] <= 1e-4
    assert load_manifest(out).parity_ok


def test_exported_graph_runs_at_other_batch_and_channel_counts(random_export):
    import onnxruntime as ort

    _, out = random_export
    m = load_manifest(out)
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(m.graph_file("model", "torchscript")))
    x = np.random.default_rng(0).standard_normal((6, SEQ, 23)).astype(np.float32) * 3 + 10
    got = session.run(None, {"x": x})[0]
    assert got.shape == (6, PRED, 23)
    with torch.no_grad():
        assert np.abs(ts(torch.from_numpy(x)).numpy() - got).max() <= 1e-4
    # CALF normalises each channel over its window: a shifted and scaled input gives the same shift and scale
    assert np.abs(session.run(None, {"x": x * 2 - 1})[0] - (got * 2 - 1)).max() <= 1e-3


def _calf_like_run_py(repo, powerformer_alpha, seed):
    """A CALF model built as its run.py does, with trained-looking (random, non-zero) LoRA adapters."""
    module = import_from(repo, "models.CALF")
    configs = types.SimpleNamespace(**RUN, d_model=GPT2["n_embd"], lora_dropout=0.1,
                                    powerformer_alpha=powerformer_alpha)
    with offline_gpt2(seed=seed):
        torch.manual_seed(seed)
        model = module.Model(configs, "cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def trained(repos, tmp_path_factory):
    model = _calf_like_run_py(repos.patched, powerformer_alpha=0.7, seed=5)
    assert type(model.gpt2).__name__ == "PeftModelForCausalLM"
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save(model.state_dict(), path)  # what CALF's exp_long_term_forecasting saves
    return model, path


@pytest.mark.parametrize("merge", [True, False], ids=["lora-merged", "lora-wrapped"])
def test_checkpoint_export_matches_the_users_model(repos, trained, tmp_path, capsys, merge):
    import onnxruntime as ort

    model, path = trained
    out = tmp_path / "calf"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(dict(RUN, gpt2=GPT2)))
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--checkpoint", path,
                       "--config", config, "--exporter", "legacy", "--set", f"merge_lora={str(merge).lower()}"],
                      capsys)
    assert rc == 0, err
    assert "weights are random" not in err
    m = load_manifest(out)
    assert m.source["weights"] == "checkpoint" and m.source["seed"] is None
    assert m.source["checkpoint"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.source["lora"]["merged"] is merge and m.source["lora"]["wrapper"] == "PeftModelForCausalLM"
    assert m.source["wcmha"]["alpha"] == [0.7, 0.7]  # from the checkpoint, not the injected 0.5
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(m.graph_file("model", "torchscript")))
    for batch, channels in ((3, 9), (1, 1), (2, 40)):
        x = torch.randn(batch, SEQ, channels) * 2 + 1
        with torch.no_grad():
            want = model(x)["outputs_time"].numpy()  # the user's model: peft-wrapped, unmerged
            assert np.abs(ts(x).numpy() - want).max() <= 1e-4
        assert np.abs(session.run(None, {"x": x.numpy()})[0] - want).max() <= 1e-4


def test_fixed_channels_and_the_text_branch(repos, tmp_path, capsys):
    out = tmp_path / "calf"
    rc, stdout, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, *FAST,
                            "--set", "enc_in=6", "--set", "text_branch=true", "--set", "merge_lora=false",
                            "--json"], capsys)
    assert rc == 0, err
    raw = json.loads(stdout)
    graph = raw["graphs"]["model"]
    assert graph["inputs"][0]["shape"] == ["batch", SEQ, 6]
    assert [(t["name"], t["shape"]) for t in graph["outputs"]] == [("forecast", ["batch", PRED, 6]),
                                                                    ("forecast_text", ["batch", PRED, 6])]
    assert raw["task"]["client"]["channels"] == 6 and raw["source"]["exported"] == ["outputs_time", "outputs_text"]
    assert {r["output"] for r in raw["parity"]} == {"forecast", "forecast_text"} and all(r["ok"] for r in raw["parity"])
    assert {r["sizes"]["batch"] for r in raw["parity"]} >= {1, 2}


def test_the_text_branch_reads_the_users_word_embedding_file(repos, tmp_path, capsys):
    import hashlib
    import re

    base = ["--target", repos.patched, "--feature", "wcmha", *FAST, "--set", "text_branch=true"]
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(3, 7), wrong)
    rc, _, err = _run(base + ["--out", tmp_path / "bad", "--set", f"word_embedding_path={wrong}"], capsys)
    assert rc == 2 and f"word_embedding_path {wrong}: shape (3, 7)" in err and not (tmp_path / "bad").exists()
    width = int(re.search(r"d_model=(\d+)", err).group(1))
    words = tmp_path / "words.pt"
    torch.save(torch.randn(width, 7), words)
    rc, stdout, err = _run(base + ["--out", tmp_path / "ok", "--set", f"word_embedding_path={words}", "--json"],
                           capsys)
    assert rc == 0, err
    assert hashlib.sha256(words.read_bytes()).hexdigest() in stdout  # the manifest names the file it read


def test_dynamo_export_keeps_batch_and_channels_symbolic(repos, tmp_path, capsys):
    """The default exporter (the one export with it here: ~10-30 s)."""
    import onnx

    out = tmp_path / "calf"
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", out, "--format", "onnx",
                       "--set", f"seq_len={SEQ}", "--set", f"pred_len={PRED}"], capsys)
    assert rc == 0, err
    m = load_manifest(out)
    assert m.exporter == "dynamo" and m.parity_ok
    proto = onnx.load(str(m.graph_file("model")))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(proto.graph.input) + list(proto.graph.output)]
    assert dims == [["batch", SEQ, "channels"], ["batch", PRED, "channels"]]


def test_unpatched_calf_is_refused(repos, tmp_path, capsys):
    rc, _, err = _run(["--target", repos.base, "--feature", "wcmha", "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert "target calf" in err and "is not patched with wcmha" in err and "models/PowerformerGPT2.py" in err
    assert f"tsattn-inject --target {repos.base.resolve()} --feature wcmha" in err
    assert not (tmp_path / "o").exists()


def test_half_patched_calf_is_refused_naming_the_cause(repos, tmp_path, capsys):
    import shutil

    repo = tmp_path / "calf"
    shutil.copytree(repos.patched, repo)
    original = (repos.base / "models/CALF.py").read_text()
    (repo / "models/CALF.py").write_text(original)  # the templates are there, models/CALF.py is upstream's
    rc, _, err = _run(["--target", repo, "--feature", "wcmha", "--out", tmp_path / "o", *FAST], capsys)
    assert rc == 2 and "models/CALF.py:" in err and "NameError" in err and "get_peft_model" in err
    (repo / "models/CALF.py").write_text("from peft import get_peft_model\n" + original)
    rc, _, err = _run(["--target", repo, "--feature", "wcmha", "--out", tmp_path / "o", *FAST], capsys)
    assert rc == 2 and "no WCMHA attention in its time branch" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_refusals(repos, trained, tmp_path, capsys):
    _, good = trained
    target = ["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", "--exporter", "legacy"]
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": types.SimpleNamespace(a=1)}, evil)  # pickles a class
    rc, _, err = _run(target + ["--checkpoint", evil, "--config", json.dumps(RUN)], capsys)
    assert rc == 4 and "needs arbitrary unpickling" in err and "weights_only=True" in err
    rc, _, err = _run(target + ["--checkpoint", good, "--set", "seq_len=12"], capsys)
    assert rc == 2 and "CALF checkpoints hold no config" in err and "pred_len, gpt_layers, r, lora_alpha" in err
    rc, _, err = _run(target + ["--checkpoint", good, "--config", json.dumps(dict(RUN, gpt2=GPT2)),
                                "--set", "seq_len=24"], capsys)
    assert rc == 4 and "does not fit the model" in err and "time_in.weight" in err
    rc, _, err = _run(target + ["--checkpoint", good, "--config", json.dumps(dict(RUN, gpt2=GPT2)),
                                "--set", "text_branch=true"], capsys)
    assert rc == 2 and "give its word_embedding_path" in err
    assert not (tmp_path / "o").exists()


def test_a_patch_applied_by_hand_is_exported_with_the_models_own_values(repos, tmp_path, capsys):
    import shutil

    repo = tmp_path / "calf"
    shutil.copytree(repos.base, repo)
    subprocess.run(["git", "apply", str(repos.patch)], cwd=repo, check=True)  # no injection record
    out = tmp_path / "o"
    rc, _, err = _run(["--target", repo, "--feature", "wcmha", "--out", out, *FAST, "--format", "onnx"], capsys)
    assert rc == 0, err
    src = load_manifest(out).source
    assert src["options"] is None and src["options_from"].startswith("no injection record")
    assert src["wcmha"]["alpha"] == [0.5, 0.5]  # the patch's default, read from the built model
    assert src["upstream_commit"] == src["head"] == _head(repo)
    assert sorted(src["dirty"]) == []  # the patched files are the injection's own


@pytest.mark.parametrize("argv,match", [
    (["--set", "colour=red"], "unknown CALF export option(s) ['colour']"),
    (["--set", "d_model=64"], "must equal the GPT-2's n_embd (48)"),
    (["--set", "gpt2=huge"], "gpt2: 'huge' is not one of"),
    (["--set", "seq_len=0"], "seq_len must be a positive integer"),
    (["--set", "enc_in=100"], "exceeds the GPT-2's n_positions (64)"),
    (["--set", "task_name=classification"], "only the forecast tasks"),
    (["--config", "{not json"], "--config: invalid JSON"),
    (["--config", "[1, 2]"], "neither"),
])
def test_bad_options_exit_2_naming_them(repos, tmp_path, capsys, argv, match):
    rc, _, err = _run(["--target", repos.patched, "--feature", "wcmha", "--out", tmp_path / "o", *argv], capsys)
    assert rc == 2 and match in err
    assert not (tmp_path / "o").exists()
