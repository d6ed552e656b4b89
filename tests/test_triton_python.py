"""tsattn-export --triton-repo --triton-backend python: the config parsed with Triton's model-config protobuf, and
model.py's sequence model driven the way the sequence batcher drives it (no server needed; a real one in
test_triton_server.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from runtime_exports import cacheless_export, reference_export
from tsattn.export import cli
from tsattn.export.triton import TritonRepoError, write_triton_repo
from tsattn.export.triton_python import TEMPLATE
from tsattn.export.triton_python_model import SequenceModel, StepError
from tsattn.runtime import load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("tpy") / "ref")


@pytest.fixture(scope="module")
def entry(ref, tmp_path_factory):
    return write_triton_repo(ref[0], tmp_path_factory.mktemp("tpy") / "models", backend="python",
                             python_env="/opt/venvs/ort", instances=2)


def test_the_entry_and_its_config(entry, ref):
    assert sorted(p.name for p in entry.iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (entry / "1").iterdir()) == ["model.onnx", "model.py", "tsattn_stream.json"]
    assert (entry / "1" / "model.py").read_bytes() == TEMPLATE.read_bytes()
    assert (entry / "1" / "model.onnx").read_bytes() == (ref[0] / "model.onnx").read_bytes()  # the graph as it is
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("values", mc.TYPE_FP32, [-1, -1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("forecast", [-1, -1, 5])]
    sb = config.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "direct" and not sb.state  # the cache lives in model.py
    Kind = mc.ModelSequenceBatching.Control
    controls = {c.name: c.control[0] for c in sb.control_input}
    assert controls["START"].kind == Kind.CONTROL_SEQUENCE_START and list(controls["START"].int32_false_true) == [0, 1]
    assert controls["END"].kind == Kind.CONTROL_SEQUENCE_END
    assert controls["CORRID"].kind == Kind.CONTROL_SEQUENCE_CORRID and controls["CORRID"].data_type == mc.TYPE_UINT64
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == "/opt/venvs/ort"


def test_model_py_driven_as_the_sequence_batcher_drives_it_equals_the_runtime(entry, ref):
    """Two interleaved sequences (Triton gives each its CORRID), uneven requests: every request's last step equals
    the runtime's stream, and every step equals one stateless forward over the sequence so far."""
    model = SequenceModel(str(entry / "1"))
    rng = np.random.default_rng(5)
    xs = {7: rng.normal(size=(2, 20)).astype(np.float32), 8: rng.normal(size=(1, 20)).astype(np.float32)}
    with load(ref[0], device="cpu") as rt:
        streams = {c: rt.open_stream(channels=x.shape[0]) for c, x in xs.items()}
        start = 0
        sizes = (3, 1, 1, 12, 3)
        for i, n in enumerate(sizes):
            for corrid, x in xs.items():
                chunk = x[:, start : start + n]
                out = model.step(corrid, i == 0, i == len(sizes) - 1, {"values": chunk})
                assert set(out) == {"forecast"} and out["forecast"].shape == (x.shape[0], n, 5)
                want = rt.append(streams[corrid], chunk.T if x.shape[0] > 1 else chunk[0])
                want = want.T if x.shape[0] > 1 else want[None]
                assert np.abs(out["forecast"][:, -1] - want).max() <= 1e-5
                if start + n <= 16:  # within the window: the same as a full forward from scratch
                    full = rt.predict({"values": x[:, : start + n]})["forecast"][:, start:]
                    assert np.abs(out["forecast"] - full).max() <= 1e-5
            start += n
    assert model.sequences() == 0  # END freed both


def test_model_py_refuses_what_it_cannot_answer(entry, tmp_path):
    clock = [0.0]
    model = SequenceModel(str(entry / "1"), idle_s=10, clock=lambda: clock[0])
    x = np.zeros((1, 2), np.float32)
    with pytest.raises(StepError, match="never started"):
        model.step(1, False, False, {"values": x})
    model.step(1, True, False, {"values": x})
    with pytest.raises(StepError, match="has 1 rows"):
        model.step(1, False, False, {"values": np.zeros((2, 2), np.float32)})
    with pytest.raises(StepError, match="missing input"):
        model.step(1, False, False, {})
    clock[0] = 11.0  # idle past the sequence batcher's limit: Triton freed the slot, the cache goes too
    with pytest.raises(StepError, match="idle for longer than 10"):
        model.step(1, False, False, {"values": x})
    # a cache that does not slide (absolute positions): refused past its capacity, the cache left as it was
    spec = json.loads((entry / "1" / "tsattn_stream.json").read_text())
    spec["cache"].update(sliding=False, max_context=5)
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "tsattn_stream.json").write_text(json.dumps(spec))
    (fixed / "model.onnx").symlink_to(entry / "1" / "model.onnx")
    model = SequenceModel(str(fixed))
    model.step(3, True, False, {"values": np.zeros((1, 4), np.float32)})
    with pytest.raises(StepError, match="at most 5"):
        model.step(3, False, False, {"values": np.zeros((1, 2), np.float32)})
    assert model.step(3, False, True, {"values": np.zeros((1, 1), np.float32)})["forecast"].shape == (1, 1, 5)


def test_a_cacheless_export_gets_a_stateless_python_entry(tmp_path):
    out, module = cacheless_export(tmp_path / "window")
    entry = write_triton_repo(out, tmp_path / "models", backend="python")
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert not config.HasField("sequence_batching") and "EXECUTION_ENV_PATH" not in config.parameters
    model = SequenceModel(str(entry / "1"))
    x = np.random.default_rng(0).normal(size=(3, 16, 3)).astype(np.float32)
    import torch

    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert np.abs(model.step(0, False, False, {"x": x})["y"] - want).max() <= 1e-4


def test_export_cli_triton_backend_flag(tmp_path, capsys):
    argv = ["--model", "reference", "--set", "d_model=16", "--set", "n_layers=1", "--set", "horizon=3",
            "--max-context", "8", "--exporter", "legacy", "--format", "onnx", "--triton-repo", str(tmp_path / "tr"),
            "--triton-backend", "python", "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 0
    assert "1/model.py, model.onnx" in capsys.readouterr().out
    assert 'backend: "python"' in (tmp_path / "tr" / "reference" / "config.pbtxt").read_text()
    with pytest.raises(SystemExit):
        cli.main(argv[:-1] + [str(tmp_path / "b"), "--triton-backend", "tensorrt"])
    with pytest.raises(TritonRepoError, match="backend must be one of"):
        write_triton_repo(tmp_path / "a", tmp_path / "tr2", backend="tensorrt")


def test_only_numpys_report_on_consumed_capsules_is_kept_out_of_the_log():
    from types import SimpleNamespace

    from tsattn.export.triton_python_model import CAPSULE_NAME_ERROR, _quiet_consumed_capsules

    seen = []
    hook = _quiet_consumed_capsules(seen.append)
    hook(SimpleNamespace(exc_value=ValueError(CAPSULE_NAME_ERROR)))
    other = [SimpleNamespace(exc_value=ValueError("something else")), SimpleNamespace(exc_value=KeyError("x"))]
    for u in other:
        hook(u)
    assert seen == other


def test_a_graph_that_takes_its_start_position_gets_the_step_count(tmp_path):
    """seed 002's autoregressive model with a sliding window takes its start position: model.py feeds the
    sequence's step count, and every request equals the runtime's stream past the window."""
    from runtime_exports import stream_in_chunks
    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS

    exportable = MODELS["autoregressive"].build({"embed_dim": 16, "ffn_latent_dim": 24, "num_heads": 4,
                                                 "max_seq_len": 8, "max_context": 6, "attention_type": "mqa"},
                                                None, 0)
    export(exportable, tmp_path / "ar", formats=["onnx"])
    entry = write_triton_repo(tmp_path / "ar", tmp_path / "models", backend="python")
    spec = json.loads((entry / "1" / "tsattn_stream.json").read_text())
    assert spec["position"]["name"] not in spec["inputs"]
    x = np.random.default_rng(1).normal(size=(17, 3)).astype(np.float32)
    with load(tmp_path / "ar", device="cpu") as rt:
        (step,), (out,) = rt.manifest.task.input_names, rt.manifest.task.output_names
        want = stream_in_chunks(rt, {step: x})[out]  # chunks 1, 3, 1, 7, ...
    model = SequenceModel(str(entry / "1"))
    got, start = [], 0
    for i, n in enumerate((2, 1, 5, 9)):
        got.append(model.step(9, i == 0, False, {step: x[None, start : start + n]})[out][0])
        start += n
    assert np.abs(np.concatenate(got) - want).max() <= 1e-5
