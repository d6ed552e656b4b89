"""A real Triton Inference Server serves what ``tsattn-export --triton-repo --triton-backend python`` writes, and the
same client code (``servers.stream_sequence``, tritonclient.http) gets the same outputs from it as from
``tsattn-serve`` and the runtime's streams. Skipped, naming why, where no tritonserver is installed (CI installs
the one the ``nvidia-pytriton`` wheel ships: .ci/run)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime_exports import cacheless_export, hephaestus_export, hephaestus_steps, reference_export
from servers import (infer_inputs, python_backend_dir, split_steps, stream_sequence, triton_install, tritonserver,
                     tsattn_serve)
from tsattn.export.triton import write_triton_repo
from tsattn.runtime import load

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT, WHY = triton_install()
pytestmark = [pytest.mark.skipif(ROOT is None, reason=WHY), pytest.mark.usefixtures("one_torch_thread")]

CHUNKS = (1, 3, 1, 7, 2, 5)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-server")
    ref, _ = reference_export(root / "ref")
    window, module = cacheless_export(root / "window")
    heph = hephaestus_export(root)
    return {"reference": ref, "window": window, "window_module": module, "hephaestus": heph, "root": root}


@pytest.fixture(scope="module")
def triton(exports):
    root = exports["root"]
    backends, why = python_backend_dir(ROOT, root / "backends")
    if backends is None:
        pytest.skip(why)
    repo = root / "models"
    # in a virtual environment, the stub runs in it (EXECUTION_ENV_PATH); else it embeds this interpreter's libpython
    env = sys.prefix if sys.prefix != sys.base_prefix else None
    for name in ("reference", "window", "hephaestus"):
        write_triton_repo(exports[name], repo, backend="python", python_env=env)  # named as the export: same client
    with tritonserver(ROOT, backends, repo, root / "tritonserver.log") as url:  # the log stays in pytest's tmp
        client = httpclient.InferenceServerClient(url, network_timeout=60)
        yield client
        client.close()


def test_tritonserver_loads_every_entry(triton):
    assert triton.is_server_ready()
    index = {m["name"]: m.get("state") for m in triton.get_model_repository_index()}
    assert index == {"reference": "READY", "window": "READY", "hephaestus-local": "READY"}
    meta = triton.get_model_metadata("reference")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("values", "FP32", [-1, -1])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("forecast", [-1, -1, 5])]


@pytest.mark.parametrize("binary", [True, False])
def test_the_same_client_streams_the_same_outputs_from_triton_and_tsattn_serve(triton, exports, binary):
    """start, uneven appends, end: Triton's answers equal the runtime's stream after every request, and
    tsattn-serve's answers to the very same calls."""
    x = np.random.default_rng(11).normal(size=(2, sum(CHUNKS))).astype(np.float32)
    chunks = split_steps({"values": x}, CHUNKS)
    from_triton = stream_sequence(triton, "reference", chunks, sequence_id=101, outputs=["forecast"], binary=binary)
    with tsattn_serve(exports["reference"]) as urls:
        client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
        for side in ("inputs", "outputs"):  # the same tensors, named and shaped alike
            assert client.get_model_metadata("reference")[side] == triton.get_model_metadata("reference")[side]
        from_tsattn = stream_sequence(client, "reference", chunks, sequence_id=101, outputs=["forecast"],
                                      binary=binary)
        client.close()
    with load(exports["reference"], device="cpu") as rt:
        stream = rt.open_stream(channels=2)
        for chunk, t, s in zip(chunks, from_triton, from_tsattn):
            want = rt.append(stream, {"values": chunk["values"]})["forecast"]  # (rows, n, horizon): every new step
            assert t["forecast"].shape == s["forecast"].shape == want.shape == (2, chunk["values"].shape[1], 5)
            assert np.abs(t["forecast"] - want).max() <= 1e-5
            assert np.abs(s["forecast"] - t["forecast"]).max() <= 1e-5


def test_triton_refuses_a_sequence_that_was_not_started_and_frees_ended_ones(triton):
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(InferenceServerException):
        triton.infer("reference", infer_inputs({"values": x}, True), sequence_id=555)  # no START
    stream_sequence(triton, "reference", split_steps({"values": x}, (1, 2)), sequence_id=556, outputs=["forecast"])
    with pytest.raises(InferenceServerException, match="no cache here|START"):
        triton.infer("reference", infer_inputs({"values": x}, True), sequence_id=556)  # ended


def test_a_stateless_entry_answers_plain_infer(triton, exports):
    import torch

    x = np.random.default_rng(2).normal(size=(2, 16, 3)).astype(np.float32)
    r = triton.infer("window", infer_inputs({"x": x}, True))
    with torch.no_grad():
        want = exports["window_module"](torch.from_numpy(x)).numpy()
    assert np.abs(r.as_numpy("y") - want).max() <= 1e-4


def test_the_same_client_streams_hephaestus_through_triton_and_tsattn_serve(triton, exports):
    """start, uneven appends, end on the Hephaestus export (two step inputs and outputs, time on axis 2): Triton's
    answers equal the runtime's stream and tsattn-serve's answers to the same calls, and together one stateless
    forward over the whole sequence."""
    x = hephaestus_steps(sum(CHUNKS), seed=4)
    chunks = split_steps(x, CHUNKS, axis=2)
    outputs = ["numeric", "categorical"]
    from_triton = stream_sequence(triton, "hephaestus-local", chunks, sequence_id=202, outputs=outputs)
    with tsattn_serve(exports["hephaestus"]) as urls:
        client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
        from_tsattn = stream_sequence(client, "hephaestus-local", chunks, sequence_id=202, outputs=outputs)
        client.close()
    with load(exports["hephaestus"], device="cpu") as rt:
        full = rt.predict(x)
        stream = rt.open_stream()
        for chunk, t, s in zip(chunks, from_triton, from_tsattn):
            want = rt.append(stream, {k: v[0] for k, v in chunk.items()})
            for name in outputs:
                assert t[name].shape == s[name].shape == (1, *want[name].shape)
                assert np.abs(t[name][0] - want[name]).max() <= 1e-5
                assert np.abs(s[name] - t[name]).max() <= 1e-5
    for name in outputs:
        whole = np.concatenate([a[name] for a in from_triton], axis=2)
        assert np.abs(whole - full[name]).max() <= 1e-4
