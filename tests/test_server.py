"""tsattn-serve: the HTTP API (Starlette TestClient), every 4xx, capacity answers, token, metrics, OpenAPI, and one
real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from runtime_exports import cacheless_export, reference_export
from tsattn.runtime import cli, load
from tsattn.runtime.server import create_app

TOKEN = "t0k3n"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference_export(tmp_path_factory.mktemp("srv") / "ref")


def _client(export_dir, token=None, **options):
    app_options = {k: options.pop(k) for k in ("max_body_bytes", "append_timeout_s", "max_concurrent_predicts")
                   if k in options}
    runtime = load(export_dir, device="cpu", **options)
    return TestClient(create_app(runtime, token=token, **app_options)), runtime


@pytest.fixture
def client(ref):
    c, runtime = _client(ref[0])
    with c:
        yield c
    runtime.shutdown()


def _open(client, **body):
    r = client.post("/v1/streams", json=body or None)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _error(r, status, pattern):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "type", "status"} and body["status"] == status
    assert re.search(pattern, body["error"]), body["error"]
    return body


def test_stream_lifecycle_over_http_matches_the_eager_model(ref, client):
    _, model = ref
    assert client.get("/healthz").json() == {"status": "ok", "model": "reference", "device": "cpu"}
    info = client.get("/v1/models").json()["models"][0]
    assert info["name"] == "reference" and info["streams"] and info["cache"]["max_context"] == 16
    assert info["providers"] == {"model": ["CPUExecutionProvider"]} and info["parity_ok"]
    r = client.post("/v1/streams", json={"channels": 1})
    assert r.status_code == 201 and r.json()["horizon"] == 5 and r.json()["max_context"] == 16
    sid = r.json()["id"]
    series = np.random.default_rng(0).normal(size=12).astype(np.float32)
    client.post(f"/v1/streams/{sid}/observations", json={"values": series[:10].tolist()})
    last = client.post(f"/v1/streams/{sid}/observations", json={"values": series[10:].tolist()}).json()
    assert last["id"] == sid and last["length"] == 12 and last["observed"] == 12
    with torch.no_grad():
        want = model(torch.from_numpy(series[None]))[0][0, -1].numpy()
    assert np.abs(np.asarray(last["forecast"]) - want).max() <= 1e-4
    one = client.post(f"/v1/streams/{sid}/observations", json={"values": 0.5}).json()  # one number
    assert one["observed"] == 13
    assert client.delete(f"/v1/streams/{sid}").status_code == 204
    _error(client.post(f"/v1/streams/{sid}/observations", json={"values": [1]}), 404, "unknown stream")


def test_multichannel_stream_and_predict_over_http(ref, client):
    sid = _open(client, channels=2)
    r = client.post(f"/v1/streams/{sid}/observations", json={"values": [[1, 2], [3, 4], [5, 6]]}).json()
    assert np.asarray(r["forecast"]).shape == (5, 2)
    p = client.post("/v1/models/reference/predict", json={"inputs": {"values": [[1, 3, 5], [2, 4, 6]]}})
    assert p.status_code == 200
    forecast = np.asarray(p.json()["outputs"]["forecast"])
    assert forecast.shape == (2, 3, 5) and np.abs(forecast[:, -1].T - np.asarray(r["forecast"])).max() <= 1e-4


@pytest.mark.parametrize("body,status,pattern", [
    (b'{"values": [1, 2', 400, r"malformed JSON: .* line 1 column"),
    (b'{"values": [\xff]}', 400, "not UTF-8"),
    (b"[1, 2]", 422, "expected a JSON object, got list"),
    (b"", 422, "empty body"),
    (b'{"vals": [1]}', 422, r"unknown field\(s\) \['vals'\]"),
    (b'{"values": [1, NaN]}', 422, r"observations\[1\] is nan"),
    (b'{"values": [1, Infinity]}', 422, "finite"),
    (b'{"values": [1e999]}', 422, "finite"),
    (b'{"values": [1e39]}', 422, "overflows float32"),
    (b'{"values": ["1"]}', 422, "got strings"),
    (b'{"values": [true]}', 422, "got booleans"),
    (b'{"values": [[1, 2], [3]]}', 422, "ragged"),
    (b'{"values": [[1, 2], [3, 4]]}', 422, r"shape \(2, 2\); this stream takes \(n,\)"),
    (b'{"values": []}', 422, "empty"),
    (b'{"values": {"a": 1}}', 422, "expected numbers"),
    (("[" + ",".join(["1"] * 2049) + "]").join([b'{"values": '.decode(), "}"]).encode(), 413, "limit is 2048"),
])
def test_bad_appends_are_4xx_with_a_json_body_naming_the_problem(client, body, status, pattern):
    sid = _open(client)
    _error(client.post(f"/v1/streams/{sid}/observations", content=body,
                       headers={"content-type": "application/json"}), status, pattern)
    assert client.app.state.runtime.get_stream(sid).observed == 0


def test_other_4xx_cases(client):
    _error(client.post("/v1/streams/0123abcd/observations", json={"values": [1]}), 404, "unknown stream '0123abcd'")
    _error(client.delete("/v1/streams/0123abcd"), 404, "unknown stream")
    _error(client.post("/v1/models/calf/predict", json={"inputs": {}}), 404, "unknown model 'calf'; .*'reference'")
    _error(client.post("/v1/models/reference/predict", json={"inputs": {"values": [1, 2]}}), 422,
           r"1 dims \(2,\); the graph expects 2")
    _error(client.post("/v1/models/reference/predict", json={"inputs": [1]}), 422, "expected an object")
    _error(client.post("/v1/models/reference/predict", json={"input": {}}), 422, "unknown field")
    _error(client.post("/v1/streams", json={"channels": "two"}), 422, "channels: expected an integer")
    _error(client.post("/v1/streams", json={"channels": 0}), 422, "positive integer")
    _error(client.put("/v1/streams"), 405, "Method Not Allowed")
    _error(client.get("/v2/nothing"), 404, "Not Found")


def test_evicted_stream_is_410_naming_why(ref):
    c, runtime = _client(ref[0], max_streams=1)
    with c:
        first = _open(c)
        _open(c)
        _error(c.post(f"/v1/streams/{first}/observations", json={"values": [1]}), 410, "evicted .*max_streams")
    runtime.shutdown()


def test_body_size_limit_is_413_declared_or_streamed(ref):
    c, runtime = _client(ref[0], max_body_bytes=64)
    with c:
        sid = _open(c)
        big = json.dumps({"values": list(range(40))}).encode()
        _error(c.post(f"/v1/streams/{sid}/observations", content=big), 413, "exceeds the limit of 64 bytes")

        def chunks():  # no Content-Length: counted as it streams
            for i in range(0, len(big), 16):
                yield big[i : i + 16]

        _error(c.post(f"/v1/streams/{sid}/observations", content=chunks()), 413, "exceeds the limit of 64 bytes")
        assert c.post(f"/v1/streams/{sid}/observations", json={"values": [1]}).status_code == 200
    runtime.shutdown()


def test_over_capacity_is_503_or_429_with_retry_after(ref):
    c, runtime = _client(ref[0], max_pending=1, max_streams=2, append_timeout_s=0.5, max_concurrent_predicts=1)
    gate, started = threading.Event(), threading.Event()
    step = runtime._step

    def held(group):
        started.set()
        gate.wait(20)
        step(group)

    runtime._step = held
    with c:
        a, b = _open(c), _open(c)
        first = runtime.submit(a, [1.0])  # the worker holds it
        assert started.wait(10)
        # b's append waits in the queue (now full) and times out: 503
        r = c.post(f"/v1/streams/{b}/observations", json={"values": [1]})
        _error(r, 503, "did not run within 0.5 s")
        assert int(r.headers["retry-after"]) >= 1
        r = c.post(f"/v1/streams/{a}/observations", json={"values": [2]})  # queue full
        _error(r, 503, r"max_pending=1")
        assert int(r.headers["retry-after"]) >= 1
        r = c.post("/v1/streams")  # two streams open, both with appends in flight
        _error(r, 429, "max_streams=2")
        assert int(r.headers["retry-after"]) >= 1
        runtime.predict = lambda *a, **k: (gate.wait(20), {})[1]  # one predict at a time
        results = []
        t = threading.Thread(target=lambda: results.append(
            c.post("/v1/models/reference/predict", json={"inputs": {"values": [[1.0]]}})))
        t.start()
        time.sleep(0.3)
        r = c.post("/v1/models/reference/predict", json={"inputs": {"values": [[1.0]]}})
        _error(r, 503, "max_concurrent_predicts")
        assert int(r.headers["retry-after"]) >= 1
        gate.set()
        t.join(20)
        first.result(20)
        assert results[0].status_code == 200
    runtime.shutdown()


def test_the_token_is_required_everywhere_but_healthz(ref):
    c, runtime = _client(ref[0], token=TOKEN)
    with c:
        assert c.get("/healthz").status_code == 200
        for method, path in (("get", "/v1/models"), ("post", "/v1/streams"), ("get", "/metrics"),
                             ("get", "/openapi.json"), ("post", "/v1/models/reference/predict")):
            r = getattr(c, method)(path)
            _error(r, 401, "bearer token")
            assert r.headers["www-authenticate"].startswith("Bearer")
            _error(getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}), 401, "bearer token")
        assert c.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        sid = c.post("/v1/streams", headers=AUTH).json()["id"]
        assert c.post(f"/v1/streams/{sid}/observations", json={"values": [1]}, headers=AUTH).status_code == 200
    runtime.shutdown()


def test_metrics_text_counts_requests_latency_streams_cache_and_evictions(ref):
    c, runtime = _client(ref[0], max_streams=1)
    with c:
        first = _open(c)
        c.post(f"/v1/streams/{first}/observations", json={"values": [1, 2, 3]})
        second = _open(c)  # evicts the first
        c.post(f"/v1/streams/{second}/observations", json={"values": [1, 2]})
        c.post(f"/v1/streams/{second}/observations", content=b"{")
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    runtime.shutdown()
    per_position = runtime.manifest.cache.bytes_per_position(4)

    def value(pattern):
        m = re.search("^" + pattern + r" ([0-9.e+]+)$", text, re.M)
        assert m, pattern
        return float(m.group(1))

    route = re.escape('route="/v1/streams/{stream_id}/observations"')
    assert value(r'tsattn_http_requests_total\{method="POST",' + route + r',status="200"\}') == 2
    assert value(r'tsattn_http_requests_total\{method="POST",' + route + r',status="400"\}') == 1
    assert value(r"tsattn_http_request_duration_seconds_count\{" + route + r"\}") == 3
    assert value(r'tsattn_http_request_duration_seconds_bucket\{le="10.0",' + route + r"\}") == 3
    assert value("tsattn_active_streams") == 1
    assert value("tsattn_cache_bytes") == 2 * per_position
    assert value(r'tsattn_stream_evictions_total\{reason="max_streams"\}') == 1
    assert value("tsattn_model_calls_total") == 2 and value("tsattn_appends_total") == 2


def test_openapi_schema_documents_every_endpoint_and_body(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/healthz", "/v1/models", "/v1/models/{name}/predict", "/v1/streams",
            "/v1/streams/{stream_id}/observations", "/v1/streams/{stream_id}", "/metrics"} <= set(paths)
    components = schema["components"]["schemas"]

    def resolve(node):
        return components[node["$ref"].rsplit("/", 1)[1]]

    append = paths["/v1/streams/{stream_id}/observations"]["post"]
    inputs, values = map(resolve, append["requestBody"]["content"]["application/json"]["schema"]["oneOf"])
    assert inputs["required"] == ["inputs"] and values["required"] == ["values"]
    assert inputs["additionalProperties"] is False and values["additionalProperties"] is False
    assert {"200", "400", "404", "409", "410", "413", "422", "503"} <= set(append["responses"])
    answers = map(resolve, append["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"])
    assert [a["required"] for a in answers] == [["id", "outputs", "length", "observed"],
                                                ["id", "forecast", "length", "observed"]]
    opened = resolve(paths["/v1/streams"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert set(opened["properties"]) == {"channels", "inputs"}
    assert resolve(append["responses"]["422"]["content"]["application/json"]["schema"])["required"] == [
        "error", "type", "status"]
    assert [p["name"] for p in append["parameters"]] == ["stream_id"]
    assert "delete" in paths["/v1/streams/{stream_id}"] and schema["openapi"].startswith("3.")
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(schema))
    assert refs and set(refs) <= set(components)  # every reference resolves


def test_predict_endpoint_on_a_cacheless_export(tmp_path):
    out, module = cacheless_export(tmp_path / "window")
    c, runtime = _client(out)
    with c:
        info = c.get("/v1/models").json()["models"][0]
        assert info["name"] == "window" and info["streams"] is False and info["cache"] is None
        x = np.random.default_rng(1).normal(size=(2, 16, 3)).astype(np.float32)
        r = c.post("/v1/models/window/predict", json={"inputs": {"x": x.tolist()}})
        assert r.status_code == 200
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert np.abs(np.asarray(r.json()["outputs"]["y"]) - want).max() <= 1e-4
        _error(c.post("/v1/streams"), 400, "does not stream: .* no KV cache")
        _error(c.post("/v1/models/window/predict", json={"inputs": {"x": x[:, :3].tolist()}}), 422,
               "dim 1 is 3; the graph expects 16")
    runtime.shutdown()


# ---------------------------------------------------------------------------------------------------- the CLI


def test_serve_cli_on_an_ephemeral_loopback_port_stops_itself(ref, tmp_path):
    """The real server: uvicorn on 127.0.0.1, port 0, a token from the environment, --max-requests ends it."""
    env = dict(os.environ, TSATTN_SERVE_TOKEN=TOKEN, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "tsattn.runtime.cli", str(ref[0]), "--port", "0", "--device", "cpu",
                             "--max-requests", "4"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the server exited before serving"
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        base = f"http://127.0.0.1:{match.group(1)}"
        with httpx.Client(base_url=base, timeout=20) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            assert http.get("/v1/models").status_code == 401
            sid = http.post("/v1/streams", headers=AUTH).json()["id"]
            r = http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0]}, headers=AUTH)
            assert r.status_code == 200 and len(r.json()["forecast"]) == 5
        assert proc.wait(timeout=30) == 0  # the 4th request was the last: it stopped by itself
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_serve_cli_exit_codes(ref, tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing")]) == cli.EXIT_EXPORT
    assert "export refused" in capsys.readouterr().err
    assert cli.main([str(ref[0]), "--device", "tpu"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main([str(ref[0]), "--max-streams", "0"])
    assert info.value.code == 2
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main([str(ref[0]), "--device", "cpu", "--port", str(port)]) == cli.EXIT_LISTEN
    assert "cannot listen" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for code in ("0  stopped", "3  export refused", "4  --device cuda", "5  cannot listen", "TSATTN_SERVE_TOKEN"):
        assert code in text
