"""Streams for every cached export: the typed task contract (and version-1 manifests upgraded), seed 002's
autoregressive and encoder-decoder exports streamed in uneven chunks through tsattn.runtime and the HTTP app against
one stateless predict and the eager model, batching across streams with named inputs.

(Hephaestus and Wave-Transformer streams: tests/test_export_hephaestus.py and tests/test_export_wave.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from runtime_exports import http_stream_in_chunks, reference_export, stream_in_chunks
from tsattn.export import cli
from tsattn.export.exporter import export
from tsattn.export.manifest import ManifestError, load_manifest
from tsattn.export.models import MODELS
from tsattn.export.task import EncoderTask, StepTensor, Task, TaskError
from tsattn.runtime import InputError, NotSupported, load
from tsattn.runtime.server import create_app

TOL = 1e-4
SMALL = {"embed_dim": 16, "ffn_latent_dim": 24, "num_heads": 4, "max_seq_len": 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(tmp_path_factory, name, **options):
    exportable = MODELS[name].build(dict(SMALL, **options), None, 0)
    out = tmp_path_factory.mktemp("seed002") / name
    export(exportable, out, formats=["onnx"])
    return out, exportable


@pytest.fixture(scope="module")
def autoregressive(tmp_path_factory):
    return _export(tmp_path_factory, "autoregressive")


@pytest.fixture(scope="module")
def sliding(tmp_path_factory):
    return _export(tmp_path_factory, "autoregressive", max_context=6, attention_type="mqa")


@pytest.fixture(scope="module")
def encoder_decoder(tmp_path_factory):
    return _export(tmp_path_factory, "encoder_decoder", decay="powerlaw", alpha=0.6)


# ------------------------------------------------------------------------------------------------ the contract


def test_a_task_round_trips_and_refuses_contradictions():
    task = Task("seq2seq", (StepTensor("target", 1),), (StepTensor("y", 1),), horizon=1,
                encoder=EncoderTask("encoder", (StepTensor("source", 1),), (("c.0", "c.0"),)), client={"a": 1})
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    with pytest.raises(TaskError, match="kind must be one of"):
        Task("guess", (StepTensor("x", 1),), (StepTensor("y", 1),))
    with pytest.raises(TaskError, match="need a time axis"):
        Task("sequence", (StepTensor("x", None),), (StepTensor("y", 1),))
    with pytest.raises(TaskError, match="only one, has an encoder"):
        Task("sequence", (StepTensor("x", 1),), (StepTensor("y", 1),), encoder=task.encoder)
    with pytest.raises(TaskError, match="time_axis must be an integer >= 1"):
        StepTensor("x", 0)
    with pytest.raises(TaskError, match="unsupported task version"):
        Task.from_dict(dict(task.to_dict(), version=7))
    shapes = {"model": ({"target": ("batch", "seq", 3), "c.0": ("batch", 2, "src", 4)}, {"y": ("batch", 5, 3)}),
              "encoder": ({"source": ("batch", "src", 3)}, {"c.0": ("batch", 2, "src", 4)})}
    with pytest.raises(TaskError, match=r"output 'y': axis 1 of its shape \['batch', 5, 3\] is not the time dim"):
        task.check(shapes)


def test_version_1_manifests_keep_loading_with_their_task_upgraded(tmp_path):
    out, _ = reference_export(tmp_path / "ref")
    raw = json.loads((out / "manifest.json").read_text())
    old = dict(raw, manifest_version=1, task={
        "kind": "streaming_forecast", "input": "values", "output": "forecast", "sequence_dim": "seq", "horizon": 5,
        "loc": 0.0, "scale": 1.0})
    (out / "manifest.json").write_text(json.dumps(old))
    task = load_manifest(out).task
    assert (task.kind, task.answer, task.horizon, task.input_names, task.output_names) == (
        "streaming_forecast", "last", 5, ("values",), ("forecast",))
    assert task.inputs[0].time_axis == 1 and task.client == {"loc": 0.0, "scale": 1.0}
    runtime = load(out, device="cpu")  # and it streams as before
    assert runtime.append(runtime.open_stream(), [0.1, 0.2]).shape == (5,)
    runtime.shutdown()
    # Hephaestus' version-1 task: a list of inputs, per-step outputs
    heph = Task.upgrade({"kind": "streaming_forecast", "input": "n", "output": "o", "inputs": ["n", "c"],
                         "outputs": ["o", "p"], "sequence_dim": "seq", "horizon": 1, "tokens": ["[PAD]"]}, "model",
                        {"n": ("batch", 3, "seq"), "c": ("batch", 1, "seq")},
                        {"o": ("batch", 3, "seq"), "p": ("batch", 1, "seq", 9)}, cached=True)
    assert (heph.kind, heph.answer, [t.time_axis for t in heph.inputs + heph.outputs]) == ("sequence", "steps",
                                                                                             [2, 2, 2, 2])
    assert heph.client == {"tokens": ["[PAD]"]}
    (out / "manifest.json").write_text(json.dumps(dict(old, task={"kind": "forecast", "input": "nope"})))
    with pytest.raises(ManifestError, match="'nope' is not an input of graph 'model'"):
        load_manifest(out)


def test_export_list_names_seed002s_models(capsys):
    assert cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "autoregressive" in listing and "encoder_decoder" in listing


def test_unknown_seed002_options_exit_2_naming_them(tmp_path, capsys):
    rc = cli.main(["--model", "autoregressive", "--out", str(tmp_path / "x"), "--set", "num_layer=2"])
    assert rc == 2 and "num_layer" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ seed 002


def _series(length, dim=3, seed=0):
    return np.random.default_rng(seed).normal(size=(length, dim)).astype(np.float32)


def test_autoregressive_streams_in_uneven_chunks_as_one_forward(autoregressive):
    out, exportable = autoregressive
    model = exportable.module.model
    manifest = load_manifest(out)
    assert manifest.task.kind == "sequence" and manifest.cache.max_context is None
    x = _series(23)
    with torch.no_grad():
        want = model(torch.from_numpy(x[None]))[0].numpy()  # the eager model, one forward over all 23 steps
    runtime = load(out, device="cpu")
    whole = runtime.predict({"x": x[None]})["y"][0]
    got = stream_in_chunks(runtime, {"x": x})["y"]
    with TestClient(create_app(runtime)) as client:
        over_http = http_stream_in_chunks(client, runtime.manifest, {"x": x})["y"]
    for y in (whole, got, over_http):
        np.testing.assert_allclose(y, want, atol=TOL, rtol=0)
    # the values form fits one input with time after the batch: the output after the last step
    s = runtime.open_stream()
    np.testing.assert_allclose(runtime.append(s, x[:4]), want[3], atol=TOL, rtol=0)
    runtime.shutdown()


def test_a_sliding_window_feeds_the_start_position(sliding):
    out, exportable = sliding
    model = exportable.module.model
    manifest = load_manifest(out)
    assert manifest.task.position == "start_pos" and manifest.cache.max_context == 6 and manifest.cache.sliding
    x = _series(20, seed=1)
    with torch.no_grad():
        want = model(torch.from_numpy(x[None]), expanding_context=False)[0].numpy()
    runtime = load(out, device="cpu")
    got = stream_in_chunks(runtime, {"x": x})["y"]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    runtime.shutdown()


def test_encoder_decoder_streams_open_with_their_source(encoder_decoder):
    out, exportable = encoder_decoder
    model = exportable.module.model
    manifest = load_manifest(out)
    assert manifest.task.kind == "seq2seq" and sorted(manifest.graphs) == ["encoder", "model"]
    source, target = _series(9, seed=2), _series(17, seed=3)
    with torch.no_grad():
        want = model(torch.from_numpy(source[None]), torch.from_numpy(target[None]))[0].numpy()
    runtime = load(out, device="cpu")
    whole = runtime.predict({"source": source[None], "target": target[None]})["y"][0]
    got = stream_in_chunks(runtime, {"target": target}, open_inputs={"source": source})["y"]
    assert runtime.stats()["encoder_calls"] == 1  # once when the stream opened, not per step
    with TestClient(create_app(runtime)) as client:
        contract = client.get("/v1/models").json()["models"][0]["stream"]
        assert contract["encoder_inputs"] == [{"name": "source", "dtype": "float32", "shape": ["src_len", 3],
                                               "time_axis": 0}]
        over_http = http_stream_in_chunks(client, runtime.manifest, {"target": target},
                                          open_inputs={"source": source})["y"]
        r = client.post("/v1/streams", json={})
        assert r.status_code == 422 and "encoder inputs ['source']" in r.json()["error"]
    for y in (whole, got, over_http):
        np.testing.assert_allclose(y, want, atol=TOL, rtol=0)
    with pytest.raises(InputError, match=r"missing encoder input\(s\) \['source'\]"):
        runtime.open_stream(inputs={})
    runtime.shutdown()


def test_streams_of_different_sources_step_together_when_they_fit(encoder_decoder):
    """Batched stepping with named inputs and per-stream encoder outputs: streams whose sources have one length
    step in one call; each stream's outputs are its own model's."""
    out, exportable = encoder_decoder
    model = exportable.module.model
    runtime = load(out, device="cpu", batch_window_ms=50.0)
    sources = [_series(9, seed=10 + k) for k in range(3)]
    targets = [_series(6, seed=20 + k) for k in range(3)]
    streams = [runtime.open_stream(inputs={"source": s}) for s in sources]
    for t in range(0, 6, 2):
        futures = [runtime.submit(s, {"target": tg[t:t + 2]}) for s, tg in zip(streams, targets)]
        results = [f.result(30) for f in futures]
        for k, r in enumerate(results):
            with torch.no_grad():
                want = model(torch.from_numpy(sources[k][None]), torch.from_numpy(targets[k][None, :t + 2]))[0]
            np.testing.assert_allclose(r.outputs["y"], want[t:t + 2].numpy(), atol=TOL, rtol=0)
    assert runtime.stats()["batched_appends"] >= 2
    runtime.shutdown()


def test_named_inputs_are_checked(autoregressive):
    out, _ = autoregressive
    runtime = load(out, device="cpu")
    s = runtime.open_stream()
    with pytest.raises(InputError, match=r"unknown input\(s\) \['z'\]"):
        runtime.append(s, {"z": [[1.0, 2.0, 3.0]]})
    with pytest.raises(InputError, match=r"input 'x' has shape \(3,\); a stream takes \['seq', 3\]"):
        runtime.append(s, {"x": [1.0, 2.0, 3.0]})
    with pytest.raises(InputError, match="dim 2 is 2; the graph expects 3"):
        runtime.append(s, {"x": [[1.0, 2.0]]})
    with pytest.raises(NotSupported, match="has no encoder"):
        runtime.open_stream(inputs={"source": [[1.0, 2.0, 3.0]]})
    with pytest.raises(NotSupported, match="generate needs a causal_lm"):
        runtime.generate(s, 2)
    assert runtime.get_stream(s).observed == 0
    runtime.shutdown()

