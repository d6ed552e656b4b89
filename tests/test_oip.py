"""tsattn-serve speaks the Open Inference Protocol (KServe v2): a real client nobody here wrote
(``tritonclient.http``) against a real ``tsattn-serve`` on 127.0.0.1, sequences as streams, binary tensors, and
the same token, limits and error rules as /v1 (the wire details through Starlette's TestClient)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from starlette.testclient import TestClient

from runtime_exports import cacheless_export, hephaestus_export, hephaestus_steps, reference_export, wave_export
from servers import infer_inputs, split_steps, stream_sequence, tsattn_serve
from tsattn.runtime import load
from tsattn.runtime.oip import OipError, parse_infer
from tsattn.runtime.server import create_app

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "oip-t0k3n"


def auth():
    """The token header, a new dict per call (tritonclient's infer adds Inference-Header-Content-Length to it)."""
    return {"authorization": f"Bearer {TOKEN}"}  # lower case: gRPC metadata keys must be

CHUNKS = (1, 3, 1, 7, 2, 5)  # uneven appends: 19 steps, past the 16-position window

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("oip") / "ref")


@pytest.fixture(scope="module")
def urls(ref):
    """A real tsattn-serve with a token (from the environment), HTTP and gRPC."""
    with tsattn_serve(ref[0], "--grpc-port", "0", env={"TSATTN_SERVE_TOKEN": TOKEN}) as urls:
        yield urls


@pytest.fixture(scope="module")
def served(urls):
    client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
    yield client
    client.close()


def _chunks(x, sizes):
    return split_steps({"values": x}, sizes)


def _runtime_stream(export_dir, chunks, rows):
    """The runtime's stream over the same chunks (graph layout, batch first): each chunk's step outputs, batch
    first, through ``append(stream, inputs)``."""
    with load(export_dir, device="cpu") as rt:
        stream = rt.open_stream(channels=rows)
        answers = []
        for chunk in chunks:
            out = rt.append(stream, {k: v[0] if rows == 1 else v for k, v in chunk.items()})
            answers.append({k: v[None] if rows == 1 else v for k, v in out.items()})
        return answers


@pytest.mark.parametrize("rows,binary", [(2, True), (1, False)])
def test_a_sequence_streams_like_the_runtime(served, ref, rows, binary):
    """start, uneven appends, end: every answer holds the outputs of its new steps, equal to the runtime's
    stream over the same chunks, and its last step to the forecast the values form answers."""
    x = np.random.default_rng(rows).normal(size=(rows, sum(CHUNKS))).astype(np.float32)
    chunks = _chunks(x, CHUNKS)
    answers = stream_sequence(served, "reference", chunks, sequence_id=40 + rows, outputs=["forecast"],
                              binary=binary, headers=auth())
    want = _runtime_stream(ref[0], chunks, rows)
    with load(ref[0], device="cpu") as rt:
        stream = rt.open_stream(channels=rows)
        for chunk, got, expected in zip(chunks, answers, want):
            f = got["forecast"]
            assert f.dtype == np.float32 and f.shape == (rows, chunk["values"].shape[1], 5)
            assert np.abs(f - expected["forecast"]).max() <= 1e-5
            last = rt.append(stream, chunk["values"].T if rows > 1 else chunk["values"][0])
            assert np.abs(f[:, -1] - (last.T if rows > 1 else last[None])).max() <= 1e-5
    # the sequence ended: a further request without START is refused, as Triton refuses it
    with pytest.raises(InferenceServerException, match="START flag"):
        served.infer("reference", infer_inputs({"values": x[:, :2]}, binary), sequence_id=40 + rows, headers=auth())


def test_interleaved_sequences_and_a_restart_keep_their_own_caches(served, ref):
    rng = np.random.default_rng(7)
    a, b = (rng.normal(size=(1, 12)).astype(np.float32) for _ in range(2))
    want_a = _runtime_stream(ref[0], _chunks(a, (4, 8)), 1)
    want_b = _runtime_stream(ref[0], _chunks(b, (5, 7)), 1)

    def send(x, piece, seq, start, end=False):
        r = served.infer("reference", infer_inputs({"values": x[:, piece]}, True), sequence_id=seq,
                         sequence_start=start, sequence_end=end, headers=auth())
        return r.as_numpy("forecast")

    send(b, slice(0, 3), "b-seq", True)  # a string id, restarted below: its first steps are dropped
    assert np.abs(send(a, slice(0, 4), 9, True) - want_a[0]["forecast"]).max() <= 1e-5
    assert np.abs(send(b, slice(0, 5), "b-seq", True) - want_b[0]["forecast"]).max() <= 1e-5
    assert np.abs(send(a, slice(4, 12), 9, False, True) - want_a[1]["forecast"]).max() <= 1e-5
    assert np.abs(send(b, slice(5, 12), "b-seq", False, True) - want_b[1]["forecast"]).max() <= 1e-5


def test_stateless_infer_is_predict(served, ref):
    x = np.random.default_rng(3).normal(size=(3, 9)).astype(np.float32)
    r = served.infer("reference", infer_inputs({"values": x}, True), headers=auth())
    with load(ref[0], device="cpu") as rt:
        want = rt.predict({"values": x})["forecast"]
    assert r.as_numpy("forecast").shape == want.shape == (3, 9, 5)
    assert np.abs(r.as_numpy("forecast") - want).max() <= 1e-5


def test_health_metadata_token_and_errors_through_tritonclient(served):
    assert served.is_server_live() and served.is_server_ready()  # open, like /healthz
    with pytest.raises(InferenceServerException, match="bearer token"):
        served.get_model_metadata("reference")
    assert served.is_model_ready("reference", headers=auth())
    assert not served.is_model_ready("nope", headers=auth())
    meta = served.get_model_metadata("reference", headers=auth())
    assert meta["inputs"] == [{"name": "values", "datatype": "FP32", "shape": [-1, -1]}]
    assert meta["outputs"] == [{"name": "forecast", "datatype": "FP32", "shape": [-1, -1, 5]}]
    server = served.get_server_metadata(headers=auth())
    assert server["name"] == "tsattn-serve" and "sequence" in server["extensions"]
    index = served.get_model_repository_index(headers=auth())
    assert index == [{"name": "reference", "version": "1", "state": "READY"}]
    x = np.zeros((1, 4), np.float64)
    with pytest.raises(InferenceServerException, match="datatype FP64; model 'reference' expects FP32"):
        served.infer("reference", infer_inputs({"values": x}, True), sequence_id=5, sequence_start=True,
                     headers=auth())
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        served.infer("nope", infer_inputs({"values": x.astype(np.float32)}, True), headers=auth())
    with pytest.raises(InferenceServerException, match="unknown input"):
        served.infer("reference", infer_inputs({"x": x.astype(np.float32)}, True), headers=auth())


# ---------------------------------------------------------------------------------------------------- the wire


@pytest.fixture
def app_client(ref):
    runtime = load(ref[0], device="cpu", max_append=8)
    with TestClient(create_app(runtime, max_body_bytes=4096)) as c:
        yield c
    runtime.shutdown()


def _binary_body(header: dict, *blobs: bytes):
    head = json.dumps(header).encode()
    return b"".join([head, *blobs]), {"Inference-Header-Content-Length": str(len(head)),
                                      "Content-Type": "application/octet-stream"}


def _v2_error(r, status, pattern):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and pattern in body["error"], body


def test_binary_request_and_response_on_the_wire(app_client):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = _binary_body({"inputs": [{"name": "values", "shape": [2, 3], "datatype": "FP32",
                                              "parameters": {"binary_data_size": 24}}],
                                  "outputs": [{"name": "forecast", "parameters": {"binary_data": True}}],
                                  "parameters": {"sequence_id": 3, "sequence_start": True}, "id": "r1"},
                                 x.tobytes())
    r = app_client.post("/v2/models/reference/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["id"] == "r1" and head["model_name"] == "reference" and head["model_version"] == "1"
    (out,) = head["outputs"]
    size = out["parameters"]["binary_data_size"]
    assert size == len(r.content) - n == 4 * int(np.prod(out["shape"]))
    binary = np.frombuffer(r.content[n:], "<f4").reshape(out["shape"])
    # the same step as JSON (a new sequence, same data): identical numbers
    r = app_client.post("/v2/models/reference/versions/1/infer", json={
        "inputs": [{"name": "values", "shape": [2, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()}],
        "parameters": {"sequence_id": 4, "sequence_start": True, "sequence_end": True}})
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    (out,) = r.json()["outputs"]
    assert np.array_equal(np.asarray(out["data"], np.float32).reshape(out["shape"]), binary)


def test_every_bad_request_is_a_v2_json_4xx(app_client):
    url = "/v2/models/reference/infer"
    good = {"name": "values", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}
    _v2_error(app_client.post(url, content=b"{not json"), 400, "malformed JSON")
    _v2_error(app_client.post(url, content=b'{"inputs": ' + b"[" * 100 + b"]" * 100 + b"}"), 400, "deep")
    _v2_error(app_client.post(url, content=b'{"inputs": [' + b"9" * 500 + b"]}"), 400, "characters")
    _v2_error(app_client.post(url, json=[1]), 422, "expected a JSON object")
    _v2_error(app_client.post(url, json={"inputs": []}), 422, "non-empty list")
    _v2_error(app_client.post(url, json={"inputs": [good], "bogus": 1}), 422, "unknown field(s) ['bogus']")
    _v2_error(app_client.post(url, json={"inputs": [dict(good, shape=[1, 3])]}), 422, "2 values for shape [1, 3]")
    _v2_error(app_client.post(url, json={"inputs": [dict(good, datatype="BYTES")]}), 422, "is not served")
    _v2_error(app_client.post(url, json={"inputs": [dict(good, data=["a", "b"])]}), 422, "expected numbers")
    nan = json.dumps({"inputs": [dict(good, data=[1.0, float("nan")])]})
    _v2_error(app_client.post(url, content=nan), 422, "finite")
    _v2_error(app_client.post(url, json={"inputs": [good], "parameters": {"sequence_id": 77}}), 400, "START flag")
    _v2_error(app_client.post(url, json={"inputs": [good], "parameters": {"sequence_end": True}}), 400,
              "without a sequence_id")
    _v2_error(app_client.post(url, json={"inputs": [good], "parameters": {"sequence_id": 1.5}}), 422,
              "sequence_id")
    _v2_error(app_client.post(url, json={"inputs": [good], "outputs": [{"name": "present.0.key"}]}), 422,
              "unknown output")
    _v2_error(app_client.post(url, json={"inputs": [dict(good, shape=[1, 9], data=[0.0] * 9)],
                                         "parameters": {"sequence_id": 2, "sequence_start": True}}), 413,
              "max_append")
    _v2_error(app_client.post("/v2/models/reference/versions/2/infer", json={"inputs": [good]}), 404, "version")
    _v2_error(app_client.get("/v2/models/other"), 404, "unknown model 'other'")
    head = {"inputs": [{"name": "values", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    body, headers = _binary_body(head, struct.pack("<f", 1.0))
    _v2_error(app_client.post(url, content=body, headers=headers), 400, "4 bytes short")
    body, headers = _binary_body(head, struct.pack("<3f", 1.0, 2.0, 3.0))
    _v2_error(app_client.post(url, content=body, headers=headers), 400, "4 bytes of binary data after")
    _v2_error(app_client.post(url, content=body, headers={"Inference-Header-Content-Length": "9999"}), 400,
              "the body has")
    r = app_client.post(url, content=b"x" * 5000)
    assert r.status_code == 413 and "limit of 4096 bytes" in r.json()["error"]  # the Gate's body limit
    # a sequence's rows are its first request's batch
    start = {"inputs": [good], "parameters": {"sequence_id": 8, "sequence_start": True}}
    assert app_client.post(url, json=start).status_code == 200
    _v2_error(app_client.post(url, json={"inputs": [dict(good, shape=[2, 1])], "parameters": {"sequence_id": 8}}),
              422, "has 1 rows")


def test_metrics_count_v2_routes(app_client):
    assert app_client.get("/v2/health/ready").status_code == 200
    assert app_client.get("/v2/models/reference").status_code == 200
    text = app_client.get("/metrics").text
    assert 'route="/v2/models/{name}"' in text and 'route="/v2/health/ready"' in text


def test_parse_infer_reads_nested_json_and_refuses_mixed_binary():
    r = parse_infer(json.dumps({"inputs": [{"name": "v", "shape": [2, 2], "datatype": "INT64",
                                            "data": [[1, 2], [3, 4]]}]}).encode(), None)
    assert r.inputs["v"].dtype == np.int64 and r.inputs["v"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(OipError, match="both data and binary_data_size"):
        parse_infer(json.dumps({"inputs": [{"name": "v", "shape": [1], "datatype": "FP32", "data": [1.0],
                                            "parameters": {"binary_data_size": 4}}]}).encode(), None)
    with pytest.raises(OipError, match="expected integers"):
        parse_infer(json.dumps({"inputs": [{"name": "v", "shape": [1], "datatype": "INT32",
                                            "data": [1.5]}]}).encode(), None)


def test_a_cacheless_export_serves_plain_infer_and_refuses_sequences(tmp_path):
    out, module = cacheless_export(tmp_path / "window")
    runtime = load(out, device="cpu")
    import torch

    with TestClient(create_app(runtime)) as c:
        meta = c.get("/v2/models/window").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16, 3]}]
        x = np.random.default_rng(1).normal(size=(2, 16, 3)).astype(np.float32)
        body = {"inputs": [{"name": "x", "shape": [2, 16, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
        r = c.post("/v2/models/window/infer", json=body)
        assert r.status_code == 200, r.text
        (y,) = r.json()["outputs"]
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert y["shape"] == [2, 4, 3] and np.abs(np.asarray(y["data"]).reshape(2, 4, 3) - want).max() <= 1e-4
        _v2_error(c.post("/v2/models/window/infer", json=dict(body, parameters={"sequence_id": 1,
                                                                               "sequence_start": True})),
                  400, "does not stream")
    runtime.shutdown()


# ---------------------------------------------------------------------------------------------------- gRPC


def test_grpc_streams_the_same_sequence_as_http(urls, served, ref):
    """tritonclient.grpc on the same server and the same client code: the same outputs as over HTTP and as the
    runtime's stream; the token in the metadata; errors with the HTTP message and a mapped code."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    assert urls.grpc is not None
    client = grpcclient.InferenceServerClient(urls.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready()  # open
        with pytest.raises(InferenceServerException, match="bearer token") as info:
            client.get_model_metadata("reference")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        meta = client.get_model_metadata("reference", headers=auth(), as_json=True)
        assert meta["inputs"] == [{"name": "values", "datatype": "FP32", "shape": ["-1", "-1"]}]
        assert client.is_model_ready("reference", headers=auth()) and not client.is_model_ready("x", headers=auth())
        x = np.random.default_rng(9).normal(size=(2, sum(CHUNKS))).astype(np.float32)
        over_grpc = stream_sequence(client, "reference", _chunks(x, CHUNKS), sequence_id=77, outputs=["forecast"],
                                    headers=auth())
        over_http = stream_sequence(served, "reference", _chunks(x, CHUNKS), sequence_id=78, outputs=["forecast"],
                                    headers=auth())
        for g, h, want in zip(over_grpc, over_http, _runtime_stream(ref[0], _chunks(x, CHUNKS), 2)):
            assert np.array_equal(g["forecast"], h["forecast"])
            assert np.abs(g["forecast"] - want["forecast"]).max() <= 1e-5
        with pytest.raises(InferenceServerException, match="START flag") as info:
            client.infer("reference", infer_inputs({"values": x[:, :1]}, True, grpcclient), sequence_id=77,
                         headers=auth())
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
            client.infer("nope", infer_inputs({"values": x[:, :1]}, True, grpcclient), headers=auth())
        assert info.value.status() == "StatusCode.NOT_FOUND"
        r = client.infer("reference", infer_inputs({"values": x}, True, grpcclient), headers=auth())
        with load(ref[0], device="cpu") as rt:
            assert np.abs(r.as_numpy("forecast") - rt.predict({"values": x})["forecast"]).max() <= 1e-5
    finally:
        client.close()
    metrics = httpclient.InferenceServerClient(urls.http)
    text = metrics._get("metrics", headers=auth(), query_params=None).read().decode()
    assert 'route="grpc:ModelInfer"' in text


# ---------------------------------------------------------------------------------------------------- Hephaestus


@pytest.fixture(scope="module")
def heph(tmp_path_factory):
    return hephaestus_export(tmp_path_factory.mktemp("oip-heph"))


@pytest.mark.parametrize("rows", [1, 2])
def test_hephaestus_streams_through_oip_like_the_runtime(heph, rows):
    """The export's task contract (two step inputs and outputs, time on axis 2): a sequence of uneven requests
    gives every new step's outputs as the runtime's stream does, and as one stateless forward over the whole."""
    x = hephaestus_steps(sum(CHUNKS), rows=rows, seed=rows)
    chunks = split_steps(x, CHUNKS, axis=2)
    outputs = ["numeric", "categorical"]
    with tsattn_serve(heph) as urls:
        client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
        meta = client.get_model_metadata("hephaestus-local")
        assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("numeric_inputs", [-1, 3, -1]),
                                                                     ("categorical_inputs", [-1, 1, -1])]
        assert [t["name"] for t in meta["outputs"]] == outputs
        answers = stream_sequence(client, "hephaestus-local", chunks, sequence_id=5, outputs=outputs)
        stateless = client.infer("hephaestus-local", infer_inputs(x, True))
        # past the capacity of a cache that does not slide: 409, naming it; the sequence is unchanged
        with pytest.raises(InferenceServerException, match="1024 positions") as info:
            client.infer("hephaestus-local", infer_inputs(hephaestus_steps(1025, rows=rows), True),
                         sequence_id=6, sequence_start=True)
        assert info.value.status() == "409"
        client.close()
    want = _runtime_stream(heph, chunks, rows)
    for chunk, got, expected in zip(chunks, answers, want):
        for name in outputs:
            assert got[name].shape == expected[name].shape and got[name].shape[2] == chunk["numeric_inputs"].shape[2]
            assert np.abs(got[name] - expected[name]).max() <= 1e-5
    for name in outputs:
        whole = np.concatenate([a[name] for a in answers], axis=2)
        assert np.abs(whole - stateless.as_numpy(name)).max() <= 1e-4


# ---------------------------------------------------------------------------------------------------- Wave


def test_wave_transformer_streams_token_ids_through_oip(tmp_path):
    """A causal_lm export: INT64 token ids in binary, logits for every new token out, equal to the runtime's
    stream; a datatype other than the graph's (FP32 ids) is refused as Triton refuses it."""
    out = wave_export(tmp_path)
    ids = np.random.default_rng(0).integers(0, 40, size=(1, 19)).astype(np.int64)
    chunks = split_steps({"token_ids": ids}, CHUNKS)
    with tsattn_serve(out) as urls:
        client = httpclient.InferenceServerClient(urls.http, network_timeout=60)
        meta = client.get_model_metadata("wave-transformer")
        assert meta["inputs"] == [{"name": "token_ids", "datatype": "INT64", "shape": [-1, -1]}]
        answers = stream_sequence(client, "wave-transformer", chunks, sequence_id=1, outputs=["logits"])
        with pytest.raises(InferenceServerException, match="datatype FP32; model 'wave-transformer' expects INT64"):
            client.infer("wave-transformer", infer_inputs({"token_ids": ids.astype(np.float32)}, True),
                         sequence_id=2, sequence_start=True)
        client.close()
    for got, want in zip(answers, _runtime_stream(out, chunks, 1)):
        assert got["logits"].shape == want["logits"].shape == (1, *want["logits"].shape[1:2], 40)
        assert np.abs(got["logits"] - want["logits"]).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------- seed 002


def _v2(arrays, **parameters):
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.reshape(-1).tolist()}
                       for k, v in arrays.items()]}
    if parameters:
        body["parameters"] = parameters
    return body


def _outputs(r):
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}


@pytest.mark.parametrize("name", ["autoregressive", "encoder_decoder"])
def test_seed002_models_stream_through_oip(tmp_path, name):
    """seed 002's two models by their task contract: the autoregressive model's step input; the encoder-decoder's
    source on the first request only (its encoder runs once), then target steps. Each request's outputs equal the
    runtime's stream, and a stateless request with the encoder's inputs equals the whole."""
    from runtime_exports import stream_in_chunks
    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS

    exportable = MODELS[name].build({"embed_dim": 16, "ffn_latent_dim": 24, "num_heads": 4, "max_seq_len": 8},
                                    None, 0)
    export(exportable, tmp_path / name, formats=["onnx"])
    runtime = load(tmp_path / name, device="cpu")
    task = runtime.manifest.task
    rng = np.random.default_rng(0)
    step_name = task.inputs[0].name
    steps = rng.normal(size=(1, 17, 3)).astype(np.float32)
    source = {t.name: rng.normal(size=(1, 9, 3)).astype(np.float32) for t in (task.encoder.inputs if task.encoder
                                                                                  else ())}
    want = stream_in_chunks(runtime, {step_name: steps[0]}, open_inputs={k: v[0] for k, v in source.items()}
                            if source else None)
    with TestClient(create_app(runtime)) as c:
        meta = c.get(f"/v2/models/{runtime.name}").json()
        assert [t["name"] for t in meta["inputs"]] == [step_name] + list(source)
        url = f"/v2/models/{runtime.name}/infer"
        got, start = [], 0
        for i, n in enumerate((1, 3, 1, 7, 5)):
            arrays = {step_name: steps[:, start : start + n], **(source if i == 0 else {})}
            got.append(_outputs(c.post(url, json=_v2(arrays, sequence_id=3, sequence_start=i == 0,
                                                       sequence_end=n == 5))))
            start += n
        if source:  # the encoder's inputs belong to the first request only
            _v2_error(c.post(url, json=_v2({step_name: steps[:, :1], **source}, sequence_id=4)), 422,
                      "unknown input(s) ['source']")
            _v2_error(c.post(url, json=_v2({step_name: steps[:, :1]}, sequence_id=4, sequence_start=True)), 422,
                      "missing input(s) ['source']")
        whole = _outputs(c.post(url, json=_v2({step_name: steps, **source})))
    runtime.shutdown()
    for out in task.outputs:
        streamed = np.concatenate([g[out.name] for g in got], axis=out.time_axis)
        assert np.abs(streamed[0] - want[out.name]).max() <= 1e-5
        assert np.abs(whole[out.name] - streamed).max() <= 1e-4


def test_an_evicted_sequence_answers_410_then_needs_start(ref):
    """The runtime evicts a sequence's stream (max_streams=1): its next request is 410 naming why, and the id is
    forgotten: the one after needs START again."""
    runtime = load(ref[0], device="cpu", max_streams=1)
    url = "/v2/models/reference/infer"
    body = {"inputs": [{"name": "values", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    with TestClient(create_app(runtime)) as c:
        assert c.post(url, json=dict(body, parameters={"sequence_id": 1, "sequence_start": True})).status_code == 200
        assert c.post(url, json=dict(body, parameters={"sequence_id": 2, "sequence_start": True})).status_code == 200
        _v2_error(c.post(url, json=dict(body, parameters={"sequence_id": 1})), 410, "evicted")
        _v2_error(c.post(url, json=dict(body, parameters={"sequence_id": 1})), 400, "START flag")
        assert c.post(url, json=dict(body, parameters={"sequence_id": 2, "sequence_end": True})).status_code == 200
        assert runtime.stats()["active_streams"] == 0
    runtime.shutdown()


def test_openapi_documents_the_v2_paths(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
            "/v2/models/{name}/infer", "/v2/repository/index"} <= set(paths)
    infer = paths["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["inputs"] and "sequence_id" in body["properties"]["parameters"]["properties"]
    assert infer["responses"]["422"]["content"]["application/json"]["schema"]["required"] == ["error"]
    # every /v2 route the app serves is documented
    served = {r.path for r in app_client.app.routes if getattr(r, "path", "").startswith("/v2")}
    assert {p for p in served if "/versions/" not in p} == {p for p in paths if p.startswith("/v2")}
