"""tsattn-export --triton-repo: config.pbtxt parsed with Triton's model-config protobuf (tritonclient), the wrapped
model checked the way the ONNX Runtime backend checks it and run the way the sequence batcher drives it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from runtime_exports import TINY, cacheless_export, chunk_sizes, reference_export
from tsattn.export import cli
from tsattn.export.manifest import CacheSpec, load_manifest
from tsattn.export.triton import TritonRepoError, state_names, state_names_safe, write_triton_repo
from tsattn.runtime import load

ONNX_TO_TRITON = {"tensor(float)": mc.TYPE_FP32, "tensor(uint64)": mc.TYPE_UINT64, "tensor(int64)": mc.TYPE_INT64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("triton") / "ref")


@pytest.fixture(scope="module")
def repo(ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton") / "models"
    entry = write_triton_repo(ref[0], root)
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    return entry, config


def _dims(t):
    return [d if isinstance(d, int) else -1 for d in t.shape]


def test_config_parses_with_tritons_model_config_protobuf(ref, repo):
    entry, config = repo
    cache = load_manifest(ref[0]).cache
    assert sorted(p.name for p in entry.iterdir()) == ["1", "config.pbtxt"]
    assert (entry / "1" / "model.onnx").is_file()
    assert config.name == "reference" and config.backend == "onnxruntime" and config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("values", mc.TYPE_FP32, [-1, -1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("forecast", mc.TYPE_FP32, [-1, -1, 5])]
    sb = config.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "direct" and sb.max_sequence_idle_microseconds == 60_000_000
    kinds = {c.name: c.control[0] for c in sb.control_input}
    assert set(kinds) == {"START", "END", "READY", "CORRID"}
    Kind = mc.ModelSequenceBatching.Control
    assert kinds["START"].kind == Kind.CONTROL_SEQUENCE_START and list(kinds["START"].fp32_false_true) == [0, 1]
    assert kinds["END"].kind == Kind.CONTROL_SEQUENCE_END and kinds["READY"].kind == Kind.CONTROL_SEQUENCE_READY
    assert kinds["CORRID"].kind == Kind.CONTROL_SEQUENCE_CORRID and kinds["CORRID"].data_type == mc.TYPE_UINT64
    assert len(sb.state) == 2 * cache.layers
    for state, (past, present) in zip(sb.state, state_names(cache)):
        assert (state.input_name, state.output_name) == (past, present)
        assert state.data_type == mc.TYPE_FP32 and list(state.dims) == [-1, cache.kv_heads, -1, cache.head_dim]
        init = state.initial_state[0]
        # the shape Triton really gives a starting request (every variable dim 1), zeros; the graph ignores it
        assert init.zero_data and list(init.dims) == [1, cache.kv_heads, 1, cache.head_dim] and init.name
    assert config.instance_group[0].count == 1


def backend_checks(entry, config) -> None:
    """What Triton's ONNX Runtime backend checks when it loads a sequence model: the model's inputs are exactly the
    config's inputs + controls + states (its expected input count), control inputs have shape [1] and their config
    dtype, state inputs and outputs exist with the state dtype, every configured output exists."""
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    sb = config.sequence_batching
    expected = [i.name for i in config.input] + [c.name for c in sb.control_input] + [s.input_name for s in sb.state]
    assert sorted(inputs) == sorted(expected)
    for c in sb.control_input:
        dtype = c.control[0].data_type or mc.TYPE_FP32
        assert inputs[c.name].shape == [1] and ONNX_TO_TRITON[inputs[c.name].type] == dtype
    for s in sb.state:
        assert ONNX_TO_TRITON[inputs[s.input_name].type] == s.data_type
        assert ONNX_TO_TRITON[outputs[s.output_name].type] == s.data_type
        assert len(inputs[s.input_name].shape) == len(s.dims) == len(s.initial_state[0].dims)
    for i in config.input:
        assert ONNX_TO_TRITON[inputs[i.name].type] == i.data_type and len(inputs[i.name].shape) == len(i.dims)
    for o in config.output:
        assert o.name in outputs
    assert state_names_safe([(s.input_name, s.output_name) for s in sb.state]) is None


def test_the_wrapped_model_has_what_the_onnxruntime_backend_checks(repo):
    backend_checks(*repo)


def test_the_wrapped_model_run_as_the_sequence_batcher_drives_it_equals_the_runtime(ref, repo):
    """START=1 with the [1, H, 1, D] zero state Triton hands a new sequence, then each output state fed back as the
    next input state: the forecasts equal the runtime's stream (and eager's), across two sequences."""
    entry, config = repo
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    sb = config.sequence_batching
    x = np.random.default_rng(0).normal(size=(2, 26)).astype(np.float32)  # two sequences of 2 channels each
    with load(ref[0], device="cpu") as rt:
        for sequence, corrid in ((x[:, :20], 7), (x[:, 20:], 8)):
            state = {s.input_name: np.zeros(list(s.initial_state[0].dims), np.float32) for s in sb.state}
            stream = rt.open_stream(channels=2)
            start = 0
            for n in (3, 1, 1, 12, 1, 2)[: 6 if sequence.shape[1] == 20 else 3]:
                chunk = sequence[:, start : start + n]
                feed = {"values": chunk, "START": np.float32([start == 0]), "END": np.float32([0]),
                        "READY": np.float32([1]), "CORRID": np.uint64([corrid]), **state}
                out = dict(zip(names, session.run(None, feed)))
                state = {s.input_name: out[s.output_name] for s in sb.state}
                want = rt.append(stream, chunk.T)  # (n, channels) -> (horizon, channels)
                assert np.abs(out["forecast"][:, -1].T - want).max() <= 1e-5
                start += n
            assert state[sb.state[0].input_name].shape[2] == min(start, TINY["max_context"])


def test_state_names_are_prefix_free_and_pair_in_sorted_order_with_11_or_more_layers(tmp_path):
    cache = CacheSpec(layers=12, kv_heads=2, head_dim=4, max_context=8)
    pairs = state_names(cache)
    assert pairs[2] == ("past_key_values.01.key", "present.01.key")
    assert pairs[-1] == ("past_key_values.11.value", "present.11.value")
    assert state_names_safe(pairs) is None
    names = [n for pair in pairs for n in pair]
    assert not any(a != b and b.startswith(a) for a in names for b in names)
    # what the checker refuses: unpadded names, one a prefix of another, and pairs that sort differently
    raw = [(f"past.{i}", f"present.{i}") for i in range(11)]
    assert "is a prefix of" in state_names_safe(raw)
    issue_8586 = [("cache_last_channel", "cache_last_channel_next"),
                  ("cache_last_channel_len", "cache_last_channel_len_next")]  # triton-inference-server/server#8586
    assert "is a prefix of" in state_names_safe(issue_8586)
    assert "line up" in state_names_safe([("a_x", "out_b"), ("b_x", "out_a")])
    # an 11-layer export through the writer: the config's states follow the padded names
    out, _ = reference_export(tmp_path / "deep", d_model=16, n_heads=2, n_kv_heads=1, n_layers=11, horizon=3,
                              max_context=8)
    entry = write_triton_repo(out, tmp_path / "models", model_name="deep")
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    states = [(s.input_name, s.output_name) for s in config.sequence_batching.state]
    assert len(states) == 22 and states[20] == ("past_key_values.10.key", "present.10.key")
    assert state_names_safe(states) is None
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {s for pair in states for s in pair} <= {t.name for t in session.get_inputs() + session.get_outputs()}


def test_a_cacheless_export_gets_dynamic_batching(tmp_path):
    out, _ = cacheless_export(tmp_path / "window")
    entry = write_triton_repo(out, tmp_path / "models", instances=2)
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert not config.HasField("sequence_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16, 3])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [4, 3])]
    assert config.instance_group[0].count == 2
    assert (entry / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_export_cli_triton_repo_flag(tmp_path, capsys):
    argv = ["--model", "reference", "--set", "d_model=16", "--set", "n_layers=1", "--set", "horizon=3",
            "--max-context", "8", "--exporter", "legacy", "--format", "onnx", "--triton-repo", str(tmp_path / "tr")]
    assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert "Triton model repository entry" in capsys.readouterr().out
    text_format.Parse((tmp_path / "tr" / "reference" / "config.pbtxt").read_text(), mc.ModelConfig())
    # the entry exists: refused before exporting anything, unless --overwrite
    assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 2
    assert "exists" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert cli.main(argv + ["--out", str(tmp_path / "b"), "--overwrite", "--triton-name", "ref2"]) == 0
    assert (tmp_path / "tr" / "ref2" / "1" / "model.onnx").is_file()
    with pytest.raises(TritonRepoError, match="exists"):
        write_triton_repo(tmp_path / "a", tmp_path / "tr")


# ------------------------------------------------------------------------------- every cached export, not only ours


def drive_as_the_sequence_batcher(entry, runtime, inputs, corrid=5, source=None) -> int:
    """Run a Triton entry's wrapped graph as the sequence batcher does (START=1 with the zero initial state Triton
    hands a new sequence, each output state fed back as the next input state) on one sequence of named step
    inputs (no batch axis) in uneven chunks, against a runtime stream fed the same chunks: every output of every
    chunk equals the stream's (<= 1e-5). ``source``: an encoder-decoder's encoder inputs, sent with the START
    request (the stream opens with them) and as one zero step afterwards (Triton needs every input each time).
    Returns the steps fed."""
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    backend_checks(entry, config)
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    sb = config.sequence_batching
    axes = {t.name: t.time_axis - 1 for t in runtime.manifest.task.inputs}
    state = {s.input_name: np.zeros(list(s.initial_state[0].dims), np.int64 if s.data_type == mc.TYPE_INT64
                                    else np.float32) for s in sb.state}
    stream = runtime.open_stream() if source is None else runtime.open_stream(inputs=source)
    total = next(iter(inputs.values())).shape[axes[next(iter(inputs))]]
    start = 0
    for n in chunk_sizes(total):
        chunk = {k: np.take(v, range(start, start + n), axis=axes[k]) for k, v in inputs.items()}
        encoder = {} if source is None else {k: v[None] if start == 0 else np.zeros((1, 1) + v.shape[1:], v.dtype)
                                             for k, v in source.items()}
        feed = {**{k: v[None] for k, v in chunk.items()}, **encoder, "START": np.float32([start == 0]),
                "END": np.float32([start + n == total]), "READY": np.float32([1]), "CORRID": np.uint64([corrid]),
                **state}
        out = dict(zip(names, session.run(None, feed)))
        state = {s.input_name: out[s.output_name] for s in sb.state}
        want = runtime.append(stream, chunk)
        assert set(want) == {o.name for o in config.output}
        for name, value in want.items():
            assert np.abs(out[name][0] - value).max() <= 1e-5, name
        start += n
    runtime.close(stream)
    return start


@pytest.fixture(scope="module")
def target_exports(tmp_path_factory):
    """Hephaestus (efficient, local attention) and Wave-Transformer (enhancements) look-alikes, patched and exported
    as a user does (random weights, legacy exporter, ONNX only), and seed 002's autoregressive model."""
    from tsattn.examples import lookalike_repo
    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS
    from tsattn.injector import engine

    root = tmp_path_factory.mktemp("targets")
    heph = lookalike_repo("hephaestus_lookalike", root / "Hephaestus")
    engine.inject(heph, "efficient", patch_out=root / "h.patch")
    wave = lookalike_repo("wave_transformer_lookalike", root / "Wave-Transformer")
    engine.inject(wave, "enhancements", patch_out=root / "w.patch")
    common = ["--exporter", "legacy", "--format", "onnx"]
    assert cli.main(["--target", str(heph), "--feature", "efficient", "--out", str(root / "heph"), "--set",
                     "attention_type=local", "--set", 'attention_kwargs={"window_size": 4}', *common]) == 0
    assert cli.main(["--target", str(wave), "--feature", "enhancements", "--out", str(root / "wave"), *common]) == 0
    export(MODELS["autoregressive"].build({"embed_dim": 16, "ffn_latent_dim": 24}, None, 0), root / "ar",
           formats=["onnx"])
    export(MODELS["encoder_decoder"].build({"embed_dim": 16, "ffn_latent_dim": 24}, None, 0), root / "ed",
           formats=["onnx"])
    export(MODELS["autoregressive"].build({"embed_dim": 16, "ffn_latent_dim": 24, "max_context": 6}, None, 0),
           root / "sliding", formats=["onnx"])  # a window of 6: the graph takes start_pos
    return root


def _sequence(manifest, total, seed):
    """One stream's step inputs of ``total`` steps for the export's task."""
    rng = np.random.default_rng(seed)
    graph = manifest.graphs[manifest.task.graph]
    out = {}
    for t in manifest.task.inputs:
        spec = graph.input(t.name)
        shape = [total if i == t.time_axis else d for i, d in enumerate(spec.shape)][1:]
        if t.name == "categorical_inputs":  # Hephaestus: token ids of the object tokens
            tokens = manifest.task.client["tokens"]
            ids = [tokens.index(v) for v in tokens if v.startswith("tok")]
            out[t.name] = rng.choice(ids, size=shape).astype(np.float32)
        elif spec.dtype == "int64":
            out[t.name] = rng.integers(0, 40, size=shape, dtype=np.int64)
        else:
            out[t.name] = rng.normal(size=shape).astype(np.float32)
    return out


@pytest.mark.parametrize("name", ["heph", "wave", "ar", "ed", "sliding"])
def test_every_cached_export_gets_a_sequence_model_driven_like_the_runtimes_stream(target_exports, tmp_path, name):
    export_dir = target_exports / name
    entry = write_triton_repo(export_dir, tmp_path / "models")
    config = text_format.Parse((entry / "config.pbtxt").read_text(), mc.ModelConfig())
    manifest = load_manifest(export_dir)
    tensors = manifest.cache.cache_tensors()
    encoder = manifest.task.encoder
    cross = [] if encoder is None else [manifest.graphs["model"].input(dst) for _, dst in encoder.feeds]
    position = [] if manifest.task.position is None else ["past_position"]  # the step count, kept as a state
    assert len(config.sequence_batching.state) == len(tensors) + len(cross) + len(position)
    assert [s.input_name for s in config.sequence_batching.state][len(tensors) + len(cross):] == position
    for state, t in zip(config.sequence_batching.state, tensors):  # each state has its own tensor's shape
        assert list(state.dims) == [-1, t.heads, -1, t.dim] and list(state.initial_state[0].dims) == [1, t.heads, 1,
                                                                                                     t.dim]
    for state, t in zip(config.sequence_batching.state[len(tensors):], cross):  # the encoder's, kept as states
        assert list(state.dims) == [-1, t.shape[1], -1, t.shape[3]] and state.input_name.startswith("cross_")
    assert [i.name for i in config.input] == list(manifest.task.input_names) + (
        [] if encoder is None else [t.name for t in encoder.inputs])
    source = None
    if encoder is not None:  # an encoder-decoder's stream opens with its source, here 7 steps
        source = {"source": np.random.default_rng(4).normal(size=(7, 3)).astype(np.float32)}
    with load(export_dir, device="cpu") as rt:
        assert drive_as_the_sequence_batcher(entry, rt, _sequence(manifest, 19, seed=3), source=source) == 19


def test_an_export_triton_cannot_drive_is_refused_naming_why():
    from tsattn.export.manifest import TensorSpec
    from tsattn.export.task import StepTensor, Task
    from tsattn.export.triton import unsupported

    cache = CacheSpec(layers=1, kv_heads=2, head_dim=4, max_context=8)
    task = Task("sequence", (StepTensor("x", 1),), (StepTensor("y", 1),))
    inputs = [TensorSpec("x", "float32", ("batch", "seq", 3)), TensorSpec("temperature", "float32", ())]
    assert "graph input 'temperature' is a scalar" in unsupported(task, cache, inputs + cache.past_specs())
    assert unsupported(task, cache, inputs[:1] + cache.past_specs()) is None
    positioned = Task("sequence", (StepTensor("x", 1),), (StepTensor("y", 1),), position="start_pos")
    assert unsupported(positioned, cache, [inputs[0], TensorSpec("start_pos", "int64", ())]) is None
