"""A real Triton Inference Server serves what ``tsattn-export --triton-repo --triton-backend python`` writes, and the
same client code (``servers.stream_sequence``, tritonclient.http) gets the same outputs from it as from
``tsattn-serve`` and the runtime's streams. Skipped, naming why, where no tritonserver is installed (CI installs
the one the ``nvidia-pytriton`` wheel ships: .ci/run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime_exports import cacheless_export, reference_export
from servers import (infer_inputs, python_backend_dir, stream_sequence, triton_install, tritonserver,
                     tsattn_serve)
from tsattn.export.triton import write_triton_repo
from tsattn.runtime import load

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT, WHY = triton_install()
pytestmark = [pytest.mark.skipif(ROOT is None, reason=WHY), pytest.mark.usefixtures("one_torch_thread")]

CHUNKS = (1, 3, 1, 7, 2, 5)
LOG = Path("/tmp/tsattn-tests-tritonserver.log")


def hephaestus_export(root: Path) -> Path:
    """The Hephaestus look-alike injected with ``efficient`` and exported with local attention (a cache that does
    not slide: absolute positions)."""
    from tsattn.examples import lookalike_repo
    from tsattn.export import cli
    from tsattn.injector import engine

    patched = lookalike_repo("hephaestus_lookalike", root / "patched")
    engine.inject(patched, "efficient", patch_out=root / "efficient.patch")
    out = root / "hephaestus"
    assert cli.main(["--target", str(patched), "--feature", "efficient", "--out", str(out), "--set",
                     "attention_type=local", "--set", 'attention_kwargs={"window_size": 3}']) == 0
    return out


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
    for name in ("reference", "window", "hephaestus"):
        write_triton_repo(exports[name], repo, backend="python", model_name=name)
    log = root / "tritonserver.log"
    try:
        with tritonserver(ROOT, backends, repo, log) as url:
            client = httpclient.InferenceServerClient(url, network_timeout=60)
            yield client
            client.close()
    finally:
        if log.exists():
            shutil.copyfile(log, LOG)  # kept for a look after the run


def _sequence(x, sizes):
    start, chunks = 0, []
    for n in sizes:
        chunks.append({"values": x[:, start : start + n]})
        start += n
    return chunks


def test_tritonserver_loads_both_entries(triton):
    assert triton.is_server_ready()
    index = {m["name"]: m.get("state") for m in triton.get_model_repository_index()}
    assert index == {"reference": "READY", "window": "READY", "hephaestus": "READY"}
    meta = triton.get_model_metadata("reference")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("values", "FP32", [-1, -1])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("forecast", [-1, -1, 5])]


@pytest.mark.parametrize("binary", [True, False])
def test_the_same_client_streams_the_same_outputs_from_triton_and_tsattn_serve(triton, exports, binary):
    """start, uneven appends, end: Triton's answers equal the runtime's stream after every request, and
    tsattn-serve's answers to the very same calls."""
    x = np.random.default_rng(11).normal(size=(2, sum(CHUNKS))).astype(np.float32)
    chunks = _sequence(x, CHUNKS)
    from_triton = stream_sequence(triton, "reference", chunks, sequence_id=101, outputs=["forecast"], binary=binary)
    with tsattn_serve(exports["reference"]) as urls:
        client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
        from_tsattn = stream_sequence(client, "reference", chunks, sequence_id=101, outputs=["forecast"],
                                      binary=binary)
        client.close()
    with load(exports["reference"], device="cpu") as rt:
        stream = rt.open_stream(channels=2)
        for chunk, t, s in zip(chunks, from_triton, from_tsattn):
            want = rt.append(stream, chunk["values"].T).T  # (rows, horizon) after the chunk's last step
            assert t["forecast"].shape == (2, chunk["values"].shape[1], 5)  # every new step, as the graph gives it
            assert np.abs(t["forecast"][:, -1] - want).max() <= 1e-5
            assert np.abs(s["forecast"][:, -1] - t["forecast"][:, -1]).max() <= 1e-5


def test_triton_refuses_a_sequence_that_was_not_started_and_frees_ended_ones(triton):
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(InferenceServerException):
        triton.infer("reference", infer_inputs({"values": x}, True), sequence_id=555)  # no START
    stream_sequence(triton, "reference", _sequence(x, (1, 2)), sequence_id=556, outputs=["forecast"])
    with pytest.raises(InferenceServerException, match="no cache here|START"):
        triton.infer("reference", infer_inputs({"values": x}, True), sequence_id=556)  # ended


def test_a_stateless_entry_answers_plain_infer(triton, exports):
    import torch

    x = np.random.default_rng(2).normal(size=(2, 16, 3)).astype(np.float32)
    r = triton.infer("window", infer_inputs({"x": x}, True))
    with torch.no_grad():
        want = exports["window_module"](torch.from_numpy(x)).numpy()
    assert np.abs(r.as_numpy("y") - want).max() <= 1e-4


def _hephaestus_sequence(n: int, rng) -> dict:
    """n time steps of the look-alike's 3 numeric and 1 categorical column (token ids), one row."""
    numeric = rng.normal(size=(1, 3, n)).astype(np.float32)
    categorical = rng.integers(8, 12, size=(1, 1, n)).astype(np.float32)  # tok0..tok3
    return {"numeric_inputs": numeric, "categorical_inputs": categorical}


def test_the_same_client_streams_hephaestus_through_triton(triton, exports):
    """start, uneven appends, end on the Hephaestus export: every step's outputs equal one stateless forward over
    the whole sequence (its time axis is 2: (batch, columns, seq))."""
    x = _hephaestus_sequence(sum(CHUNKS), np.random.default_rng(4))
    chunks, start = [], 0
    for n in CHUNKS:
        chunks.append({k: v[:, :, start : start + n] for k, v in x.items()})
        start += n
    outputs = ["numeric", "categorical"]
    answers = stream_sequence(triton, "hephaestus", chunks, sequence_id=202, outputs=outputs)
    with load(exports["hephaestus"], device="cpu") as rt:
        full = rt.predict(x)
    start = 0
    for n, got in zip(CHUNKS, answers):
        for name in outputs:
            want = full[name][:, :, start : start + n]
            assert got[name].shape == want.shape
            assert np.abs(got[name] - want).max() <= 1e-4
        start += n
