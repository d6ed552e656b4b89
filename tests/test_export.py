"""tsattn-export: the Done-when export, parity failures, exporter traps, checkpoints, the manifest validator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsattn.export import cli
from tsattn.export.exporter import GraphContractError, ParityError, check_onnx_io, export
from tsattn.export.manifest import (CacheSpec, Manifest, ManifestError, TensorSpec, load_manifest, parity_table,
                                    sha256_file)
from tsattn.export.spec import Exportable, ExportSpec, SpecError, distinct_sizes
from tsattn.models.reference import ReferenceConfig, build_reference, save_checkpoint

from repo_checks import checked_manifest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "d_model=32", "--set", "n_layers=2", "--set", "n_kv_heads=2", "--set", "horizon=5",
        "--max-context", "16", "--exporter", "legacy"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The Done-when command with every default: tsattn-export --model reference --out DIR (in-process)."""
    out = tmp_path_factory.mktemp("done") / "x"
    rc = cli.main(["--model", "reference", "--out", str(out)])
    return rc, out


def test_done_when_default_export_writes_onnx_torchscript_and_a_verified_manifest(default_export):
    rc, out = default_export
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "model.onnx", "model.pt"]
    raw = checked_manifest(out)  # sha256 and sizes recomputed here, independently of tsattn
    assert {f["path"] for f in raw["files"]} == {"model.onnx", "model.pt"}
    # parity: every row within the fp32 tolerance, both backends, >= 2 forward shapes other than the traced one
    rows = raw["parity"]
    assert rows and all(r["ok"] and r["tol"] == 1e-4 and r["max_abs_err"] <= 1e-4 for r in rows)
    assert {r["backend"] for r in rows} == {"onnxruntime", "torchscript"}
    outputs = {t["name"] for t in raw["graphs"]["model"]["outputs"]}
    for backend in ("onnxruntime", "torchscript"):
        shapes = {json.dumps(r["sizes"]) for r in rows if r["backend"] == backend and r["check"] == "forward"}
        assert len(shapes) >= 2 and json.dumps({"batch": 3, "seq": 5, "past": 7}) not in shapes
        stepwise = {r["output"] for r in rows if r["backend"] == backend and r["check"] == "stepwise"}
        assert stepwise == outputs  # forecasts and every final cache tensor
    assert raw["exporter"] == "dynamo" and raw["opset"] == 18 and raw["source"]["kind"] == "reference"
    assert set(raw["versions"]) >= {"tsattn", "torch", "onnx", "onnxruntime"}
    assert raw["cache"]["layers"] == 4 and raw["cache"]["kv_heads"] == 4 and raw["cache"]["head_dim"] == 32
    assert raw["cache"]["max_context"] == 512


def test_graph_dims_in_the_onnx_file_are_the_manifests(default_export):
    import onnx

    _, out = default_export
    m = load_manifest(out)
    proto = onnx.load(str(m.graph_file("model", "onnx")))
    got = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
           for v in list(proto.graph.input) + list(proto.graph.output)}
    graph = m.graphs["model"]
    assert [t.name for t in graph.inputs] == ["values"] + m.cache.past_names()
    assert [t.name for t in graph.outputs] == ["forecast"] + m.cache.present_names()
    for t in graph.inputs + graph.outputs:
        assert got[t.name] == list(t.shape)
    assert got["present.3.value"] == ["batch", 4, "present", 32]  # renamed from the dynamo exporter's expression


def test_an_export_streams_with_onnxruntime_and_numpy_alone(default_export):
    """What the runtime will do: read the manifest, open the graph, prefill on an empty cache, then step."""
    import onnxruntime as ort

    _, out = default_export
    m = load_manifest(out)
    session = ort.InferenceSession(str(m.graph_file("model")), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 30)).astype(np.float32)
    past = {n: np.zeros(m.cache.shape(2, 0), np.float32) for n in m.cache.past_names()}
    names = [o.name for o in session.get_outputs()]
    forecasts = []
    for chunk in (x[:, :20],) + tuple(x[:, t : t + 1] for t in range(20, 30)):
        result = dict(zip(names, session.run(None, {"values": chunk, **past})))
        forecasts.append(result["forecast"])
        past = {p: result[o] for o, p in m.cache.pairs()}
    full = session.run(["forecast"], {"values": x, **{n: np.zeros(m.cache.shape(2, 0), np.float32)
                                                      for n in m.cache.past_names()}})[0]
    assert np.abs(np.concatenate(forecasts, 1) - full).max() <= 1e-4
    assert full.shape == (2, 30, m.task.horizon)


def test_cli_subprocess_json_is_the_manifest(tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "tsattn.export.cli", "--model", "reference", "--out", str(out),
                           "--json", *TINY], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout holds the JSON alone; progress and logs go to stderr
    assert data["exporter"] == "legacy" and all(r["ok"] for r in data["parity"])
    assert data["cache"]["max_context"] == 16 and data["source"]["config"]["d_model"] == 32
    assert load_manifest(out).parity_ok


def test_broken_parity_fails_names_the_output_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import tsattn.modules.wcmha as wcmha

    dense = wcmha.dense_bias  # the exported graphs' bias; eager uses the blockwise path

    def skewed(*args, **kwargs):
        return dense(*args, **kwargs) * 0.5

    monkeypatch.setattr(wcmha, "dense_bias", skewed)
    out = tmp_path / "broken"
    rc = cli.main(["--model", "reference", "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_PARITY == 3
    assert "parity failed" in err and "output 'forecast'" in err and "max abs error" in err and "FAIL" in err
    assert not out.exists() and _leftovers(tmp_path) == []


class _SpecialisesSeq(torch.nn.Module):
    """Reads a dim as a Python int: tracing bakes it in (the trap the spec and the checks guard against)."""

    def forward(self, x):
        return x * float(int(x.shape[1]))


def _specialising(exporter):
    spec = ExportSpec("toy", (TensorSpec("x", "float32", ("batch", "seq")),),
                      (TensorSpec("y", "float32", ("batch", "seq")),),
                      example_sizes=distinct_sizes(["batch", "seq"]),
                      parity_sizes=({"batch": 2, "seq": 9}, {"batch": 1, "seq": 1}), exporter=exporter)
    return Exportable(_SpecialisesSeq(), spec, {"kind": "test"})


def test_legacy_exporter_specialised_dim_is_caught_by_parity(tmp_path):
    with pytest.raises(ParityError, match="output 'y'") as info:
        export(_specialising("legacy"), tmp_path / "toy", formats=["onnx"])
    assert any(not r["ok"] for r in info.value.rows)
    assert not (tmp_path / "toy").exists() and _leftovers(tmp_path) == []


def test_dynamo_exporter_specialised_dim_is_a_contract_error(tmp_path):
    with pytest.raises(GraphContractError, match="specialised"):
        export(_specialising("dynamo"), tmp_path / "toy", formats=["onnx"])
    assert not (tmp_path / "toy").exists() and _leftovers(tmp_path) == []


def _onnx_model(in_dims, out_dims):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)])
    return helper.make_model(graph)


def _identity_spec(out_dim="present"):
    return ExportSpec("id", (TensorSpec("x", "float32", ("batch", "seq")),),
                      (TensorSpec("y", "float32", ("batch", out_dim)),), example_sizes={"batch": 3, "seq": 5},
                      parity_sizes=({"batch": 1, "seq": 1}, {"batch": 2, "seq": 9}))


def test_graph_contract_check_rejects_specialised_and_renamed_dims_and_names_outputs_only_dims():
    with pytest.raises(GraphContractError, match=r"input 'x' dim 0 \('batch'\) was specialised to 3"):
        check_onnx_io(_onnx_model([3, "seq"], ["batch", "seq"]), _identity_spec("seq"))
    with pytest.raises(GraphContractError, match="named 's0'"):
        check_onnx_io(_onnx_model(["s0", "seq"], ["s0", "seq"]), _identity_spec("seq"))
    with pytest.raises(GraphContractError, match="output 'y' dim 1 is named 's1'"):
        check_onnx_io(_onnx_model(["batch", "seq"], ["batch", "s1"]), _identity_spec("seq"))
    model = _onnx_model(["batch", "seq"], ["batch", "Max(0, seq - 3)"])  # an output-only dim, as dynamo names it
    assert check_onnx_io(model, _identity_spec("present")) == ["y[1]: 'Max(0, seq - 3)' -> 'present'"]
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_param == "present"


@pytest.mark.parametrize("change,match", [
    ({"example_sizes": {"batch": 1, "seq": 5}}, "0 or 1"),
    ({"example_sizes": {"batch": 5, "seq": 5}}, "repeat"),
    ({"parity_sizes": ({"batch": 3, "seq": 5}, {"batch": 1, "seq": 1})}, "equal the traced"),
    ({"parity_sizes": ({"batch": 1, "seq": 1},)}, "at least 2"),
    ({"exporter": "onnx-magic"}, "exporter"),
])
def test_spec_validation_rules_out_exporter_traps(change, match):
    spec = _identity_spec("seq")
    with pytest.raises(SpecError, match=match):
        ExportSpec(**{**spec.__dict__, **change}).validate()


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": _SpecialisesSeq()}, path)  # pickles a custom class
    rc = cli.main(["--model", "reference", "--out", str(tmp_path / "o"), "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_CHECKPOINT == 4
    assert "needs arbitrary unpickling" in err and "_SpecialisesSeq" in err and "weights_only=True" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_weights_and_config_are_exported(tmp_path, capsys):
    import onnxruntime as ort

    cfg = ReferenceConfig(d_model=32, n_layers=2, n_heads=4, horizon=3, max_context=10, loc=5.0, scale=2.0)
    model = build_reference(cfg, seed=11)
    save_checkpoint(model, tmp_path / "ref.pt")
    out = tmp_path / "o"
    assert cli.main(["--model", "reference", "--out", str(out), "--checkpoint", str(tmp_path / "ref.pt"),
                     "--exporter", "legacy", "--format", "onnx"]) == 0
    m = load_manifest(out)
    assert m.source["config"] == cfg.to_dict() and m.source["seed"] is None
    assert m.source["checkpoint"]["sha256"] == sha256_file(tmp_path / "ref.pt")
    assert [f.path for f in m.files] == ["model.onnx"]
    x = np.random.default_rng(1).standard_normal((2, 12)).astype(np.float32) * 2 + 5
    empty = {n: np.zeros(m.cache.shape(2, 0), np.float32) for n in m.cache.past_names()}
    got = ort.InferenceSession(str(m.graph_file("model"))).run(["forecast"], {"values": x, **empty})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4
    # the same checkpoint against a different architecture is refused, naming the mismatch
    capsys.readouterr()
    assert cli.main(["--model", "reference", "--out", str(tmp_path / "p"), "--checkpoint", str(tmp_path / "ref.pt"),
                     "--set", "d_model=64"]) == cli.EXIT_CHECKPOINT
    assert "does not fit the model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "e"
    assert cli.main(["--model", "reference", "--out", str(out), *TINY]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_validator_refuses_tampered_truncated_and_missing_files(small_export, tmp_path):
    m = load_manifest(small_export)
    assert m.parity_ok and m.cache.pairs()[0] == ("present.0.key", "past_key_values.0.key")

    tampered = _copy(small_export, tmp_path / "tampered")
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"model\.onnx: sha256 .* differs"):
        load_manifest(tampered)
    assert load_manifest(tampered, verify=False).name == "reference"

    truncated = _copy(small_export, tmp_path / "truncated")
    (truncated / "model.pt").write_bytes((truncated / "model.pt").read_bytes()[:100])
    with pytest.raises(ManifestError, match=r"model\.pt: size 100 bytes differs"):
        load_manifest(truncated)

    missing = _copy(small_export, tmp_path / "missing")
    (missing / "model.pt").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(missing)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(format="something"), "not a tsattn export"),
    (lambda d: d.update(manifest_version=99), "unsupported manifest_version"),
    (lambda d: d["files"].append({"path": "../x", "bytes": 1, "sha256": "0"}), "relative"),
    (lambda d: d["graphs"]["model"]["outputs"].pop(), "not an output"),
    (lambda d: d["cache"].update(layout=["batch", "length", "kv_heads", "head_dim"]), "layout"),
    (lambda d: d.pop("graphs"), "malformed"),
])
def test_manifest_validator_refuses_malformed_manifests(small_export, tmp_path, edit, match):
    broken = _copy(small_export, tmp_path / "m")
    data = json.loads((broken / "manifest.json").read_text())
    edit(data)
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=match):
        load_manifest(broken)


def test_manifest_round_trip_and_no_directory(small_export, tmp_path):
    m = load_manifest(small_export)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())), root=small_export)
    assert again.to_dict() == m.to_dict()
    assert isinstance(again.cache, CacheSpec) and again.cache.bytes_per_position() == 2 * 2 * 2 * 8 * 4
    with pytest.raises(ManifestError, match="no such directory"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")
    assert "FAIL" not in parity_table(m.parity) and "worst output" in parity_table(m.parity)


def test_manifest_loader_does_not_import_torch():
    code = ("import sys; from tsattn.export.manifest import load_manifest, CacheSpec; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_overwrite_replaces_an_export_and_refuses_without_it(small_export, tmp_path, capsys):
    out = _copy(small_export, tmp_path / "o")
    assert cli.main(["--model", "reference", "--out", str(out), *TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["--model", "reference", "--out", str(out), *TINY, "--seed", "7", "--format", "onnx",
                     "--overwrite"]) == 0
    m = load_manifest(out)
    assert m.source["seed"] == 7 and sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("argv,match", [
    (["--target", "{tmp}", "--feature", "wcmha", "--out", "{tmp}/o"], "no export spec for target"),
    (["--target", "{tmp}/absent", "--feature", "wcmha", "--out", "{tmp}/o"], "no such directory"),
    (["--model", "reference", "--out", "{tmp}/o", "--set", "colour=red"], "colour"),
    (["--model", "reference", "--out", "{tmp}/o", "--set", "novalue"], "KEY=VALUE"),
    (["--model", "reference", "--out", "{tmp}/o", "--max-context", "lots"], "max-context"),
    (["--model", "reference", "--out", "{tmp}/o", "--checkpoint", "{tmp}/none.pt"], "no such file"),
    (["--model", "reference", "--out", "{tmp}/o", "--format", "onnx,tflite"], "--format"),
    (["--model", "reference", "--out", "{tmp}/o", "--opset", "7"], "--opset"),
    (["--model", "reference"], "--out"),
    (["--model", "reference", "--out", "{tmp}/o", "--feature", "x"], "--feature goes with --target"),
    (["--model", "resnet", "--out", "{tmp}/o"], "invalid choice"),
])
def test_usage_errors_exit_2_with_a_message(tmp_path, capsys, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_recognised_target_that_is_not_patched_is_named(tmp_path, capsys):
    repo = tmp_path / "Wave-Transformer"  # the injector's wave_transformer fingerprints, nothing else
    core = repo / "src/wave_transformer/core"
    core.mkdir(parents=True)
    (core / "wave_transformer.py").write_text("class WaveTransformer:\n    pass\n")
    (core / "transformer.py").write_text("class MultiQueryFlashAttention:\n    pass\nclass TransformerParallelBlock:\n"
                                         "    pass\n")
    rc = cli.main(["--target", str(repo), "--feature", "wcmha", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "target wave_transformer" in err and "not patched with wcmha" in err and "tsattn-inject" in err
    assert not (tmp_path / "o").exists()


def test_list_and_help_document_exit_codes(capsys):
    assert cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "reference" in listing and "calf" in listing.split("targets:")[1]
    targets = listing.split("targets:")[1]
    assert "hephaestus" in targets and "wave_transformer" in targets and "no export spec yet" not in listing
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("exit codes:", "  3  parity failure", "  4  checkpoint refused", "examples:"):
        assert needle in text
