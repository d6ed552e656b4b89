"""tsattn-serve as an attacker and an unlucky client meet it: a real server process on 127.0.0.1 (a free port),
hostile requests to every endpoint with and without a token (no 5xx, no hang, every error JSON), a bounded load
test against the offline runtime, the memory a long predict takes (the server's VmHWM), idempotent appends over
HTTP, and SIGTERM/SIGINT draining the requests in flight and exiting 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from runtime_exports import reference_export
from tsattn.runtime import load

TOKEN = "h0st1le"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEAD_LIMIT = 8192
CLIENT_TIMEOUT = 20  # a request that takes longer is a hang

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    # max_context 1024: a long predict would need GBs as one dense call; scale 0.01: 1e37 overflows in the graph
    return reference_export(tmp_path_factory.mktemp("hostile") / "ref", max_context=1024, scale=0.01)[0]


class Server:
    """``tsattn-serve`` in its own process on 127.0.0.1 with port 0; ``port``, ``pid``, ``log()``, ``stop(sig)``."""

    def __init__(self, export, tmp: Path, *args: str, token: str = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        env.pop("TSATTN_SERVE_TOKEN", None)
        if token:
            env["TSATTN_SERVE_TOKEN"] = token
        self.log_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tsattn.runtime.cli", str(export), "--port", "0",
                                      "--device", "cpu", *args], stderr=self._log, env=env)
        deadline = time.monotonic() + 120
        while True:
            match = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", self.log())
            if match:
                break
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)
        self.port = int(match.group(1))
        self.pid = self.proc.pid
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def hwm_mb(self) -> float:
        """Peak resident memory of the server process so far (VmHWM), MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def _raw(port: int, data: bytes, wait: float = CLIENT_TIMEOUT, chunks=None) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it, the response is complete, or
    ``wait`` seconds pass (then b"<timeout>" is appended)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(data)
            for piece in chunks or ():
                s.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused mid-way; its answer may still be readable
        out = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                got = s.recv(65536)
                if not got:
                    break
                out += got
                head, sep, body = out.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.I)
                if sep and length and len(body) >= int(length.group(1)):
                    break
            else:
                out += b"<timeout>"
        except socket.timeout:
            out += b"<timeout>"
        except ConnectionResetError:
            out += b"<reset>"
        return out


def _parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    return status, head, body


def _request(method: str, path: str, body: bytes = b"", headers: dict = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}",
             "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _values(body: str) -> bytes:
    return ('{"values": ' + body + "}").encode()


# (name, method, path, body or raw bytes, extra headers, allowed statuses). "{sid}" is an open stream of the server.
DEEP = b"[" * 100_000
CASES = [
    ("malformed_json", "POST", "/v1/streams/{sid}/observations", b'{"values": [1, 2', None, {400}),
    ("not_utf8", "POST", "/v1/streams/{sid}/observations", b'{"values": [\xff]}', None, {400}),
    ("a_list", "POST", "/v1/streams/{sid}/observations", b"[1, 2]", None, {422}),
    ("empty", "POST", "/v1/streams/{sid}/observations", b"", None, {422}),
    ("unknown_field", "POST", "/v1/streams/{sid}/observations", b'{"vals": [1]}', None, {422}),
    ("nan", "POST", "/v1/streams/{sid}/observations", _values("[1, NaN]"), None, {422}),
    ("infinity", "POST", "/v1/streams/{sid}/observations", _values("[-Infinity]"), None, {422}),
    ("1e999", "POST", "/v1/streams/{sid}/observations", _values("[1e999]"), None, {422}),
    ("1e39", "POST", "/v1/streams/{sid}/observations", _values("[1e39]"), None, {422}),
    ("near_float32_max", "POST", "/v1/streams/{sid}/observations", _values("[3.3e38]"), None, {422}),
    ("overflows_in_graph", "POST", "/v1/streams/{sid}/observations", _values("[1e37]"), None, {422}),
    ("strings", "POST", "/v1/streams/{sid}/observations", _values('["1"]'), None, {422}),
    ("booleans", "POST", "/v1/streams/{sid}/observations", _values("[true]"), None, {422}),
    ("null", "POST", "/v1/streams/{sid}/observations", _values("null"), None, {422}),
    ("ragged", "POST", "/v1/streams/{sid}/observations", _values("[[1, 2], [3]]"), None, {422}),
    ("wrong_shape", "POST", "/v1/streams/{sid}/observations", _values("[[1, 2], [3, 4]]"), None, {422}),
    ("no_values", "POST", "/v1/streams/{sid}/observations", _values("[]"), None, {422}),
    ("object_values", "POST", "/v1/streams/{sid}/observations", _values('{"a": 1}'), None, {422}),
    ("too_many_values", "POST", "/v1/streams/{sid}/observations", _values(json.dumps([1.0] * 2049)), None, {413}),
    ("depth_100000", "POST", "/v1/streams/{sid}/observations", b'{"values": ' + DEEP, None, {400}),
    ("depth_1000_closed", "POST", "/v1/streams/{sid}/observations",
     _values("[" * 1000 + "1" + "]" * 1000), None, {400}),
    ("int_5000_digits", "POST", "/v1/streams/{sid}/observations", _values("[" + "9" * 5000 + "]"), None, {400}),
    ("float_5000_digits", "POST", "/v1/streams/{sid}/observations", _values("[0." + "1" * 5000 + "]"), None,
     {400}),
    ("int_60_digits", "POST", "/v1/streams/{sid}/observations", _values("[" + "9" * 60 + "]"), None, {422}),
    ("exponent_huge", "POST", "/v1/streams/{sid}/observations", _values("[1e99999999]"), None, {422}),
    ("offset_string", "POST", "/v1/streams/{sid}/observations", b'{"values": [1], "offset": "0"}', None, {422}),
    ("offset_negative", "POST", "/v1/streams/{sid}/observations", b'{"values": [1], "offset": -1}', None, {422}),
    ("offset_bool", "POST", "/v1/streams/{sid}/observations", b'{"values": [1], "offset": true}', None, {422}),
    ("offset_huge", "POST", "/v1/streams/{sid}/observations",
     b'{"values": [1], "offset": 1000000000000000000000000000000}', None, {422}),
    ("offset_mismatch", "POST", "/v1/streams/{sid}/observations", b'{"values": [1], "offset": 7}', None, {409}),
    ("unknown_stream", "POST", "/v1/streams/0123abcd/observations", _values("[1]"), None, {404}),
    ("odd_stream_id", "POST", "/v1/streams/%00%ff%2e%2e/observations", _values("[1]"), None, {404}),
    ("long_path", "POST", "/v1/streams/" + "a" * 20_000 + "/observations", _values("[1]"), None, {431}),
    ("content_type_text", "POST", "/v1/streams/{sid}/observations", _values("[1]"),
     {"content-type": "text/plain"}, {200}),
    ("open_channels_string", "POST", "/v1/streams", b'{"channels": "two"}', None, {422}),
    ("open_channels_zero", "POST", "/v1/streams", b'{"channels": 0}', None, {422}),
    ("open_channels_huge", "POST", "/v1/streams", b'{"channels": 1000000000000000000000000000000}', None, {422}),
    ("open_channels_too_many", "POST", "/v1/streams", b'{"channels": 1025}', None, {413}),
    ("open_channels_bool", "POST", "/v1/streams", b'{"channels": true}', None, {422}),
    ("open_a_list", "POST", "/v1/streams", b"[]", None, {422}),
    ("open_deep", "POST", "/v1/streams", b'{"channels": ' + DEEP, None, {400}),
    ("predict_unknown_model", "POST", "/v1/models/calf/predict", b'{"inputs": {}}', None, {404}),
    ("predict_not_object", "POST", "/v1/models/reference/predict", b'{"inputs": [1]}', None, {422}),
    ("predict_unknown_input", "POST", "/v1/models/reference/predict", b'{"inputs": {"x": [[1]]}}', None, {422}),
    ("predict_rank", "POST", "/v1/models/reference/predict", b'{"inputs": {"values": [1, 2]}}', None, {422}),
    ("predict_nan", "POST", "/v1/models/reference/predict", b'{"inputs": {"values": [[1, NaN]]}}', None, {422}),
    ("predict_1e39", "POST", "/v1/models/reference/predict", b'{"inputs": {"values": [[1e39]]}}', None, {422}),
    ("predict_overflows_in_graph", "POST", "/v1/models/reference/predict", b'{"inputs": {"values": [[1e37]]}}',
     None, {422}),
    ("predict_bad_past", "POST", "/v1/models/reference/predict",
     b'{"inputs": {"values": [[1]], "past_key_values.0.key": [[[[1]]]]}}', None, {422}),
    ("predict_deep", "POST", "/v1/models/reference/predict", b'{"inputs": {"values": ' + DEEP, None, {400}),
    ("predict_100000_values", "POST", "/v1/models/reference/predict",
     ('{"inputs": {"values": [' + json.dumps([0.5] * 100_000) + "]}}").encode(), None, {413}),
    ("close_unknown", "DELETE", "/v1/streams/0123abcd", b"", None, {404}),
    ("state_unknown", "GET", "/v1/streams/0123abcd", b"", None, {404}),
    ("put_streams", "PUT", "/v1/streams", b"", None, {405}),
    ("patch_models", "PATCH", "/v1/models", b"{}", None, {405}),
    ("unknown_path", "GET", "/v2/nothing", b"", None, {404}),
    ("query_junk", "GET", "/v1/models?a=%%%&b=%ff%00", b"", None, {200}),
    ("wrong_token", "GET", "/v1/models", b"", {"authorization": "Bearer nope"}, {401}),
    ("basic_auth", "GET", "/v1/models", b"", {"authorization": f"Basic {TOKEN}"}, {401}),
    ("long_authorization", "GET", "/v1/models", b"", {"authorization": "Bearer " + "x" * 7000}, {401}),
]
RAW = [  # (name, bytes ({auth}: the token's header on that server), then-sent chunks, allowed statuses): requests
    # no client library would send
    ("garbage_request_line", b"HELLO WORLD\r\n\r\n", (), {400}),
    ("bad_content_length", b"POST /v1/streams HTTP/1.1\r\nhost: x\r\n{auth}content-length: abc\r\n\r\n{}", (),
     {400}),
    ("content_length_over_limit",
     b"POST /v1/streams HTTP/1.1\r\nhost: x\r\n{auth}content-length: 99999999\r\n\r\n", (), {413}),
    ("body_never_sent", b"POST /v1/streams HTTP/1.1\r\nhost: x\r\n{auth}content-length: 100\r\n\r\n{", (), {408}),
    ("head_never_finished", b"POST /v1/streams HTTP/1.1\r\nhost: x\r\n", (), {408}),
    ("headers_20kb", b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n", (), {431}),
    ("many_headers", b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"x-a: b\r\n" * 3000 + b"\r\n", (), {431}),
    ("headers_16mb", b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ", (b"a" * (1 << 20),) * 16 + (b"\r\n\r\n",),
     {431, "reset"}),
    ("chunked_over_limit",
     b"POST /v1/streams HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\n",
     tuple(b"%x\r\n%s\r\n" % (60_000, b"1" * 60_000) for _ in range(20)) + (b"0\r\n\r\n",), {413, "reset"}),
    ("http_1_0", b"GET /healthz HTTP/1.0\r\n\r\n", (), {200}),
]


def _strict_json(body: bytes):
    """JSON as the standard has it: a bare NaN or Infinity raises."""
    def refuse(constant):
        raise AssertionError(f"{constant} in a response: not JSON")
    return json.loads(body, parse_constant=refuse)


def _check_answer(raw: bytes, allowed, name: str, token: bool) -> int:
    assert b"<timeout>" not in raw, f"{name}: no answer within {CLIENT_TIMEOUT} s (a hang): {raw[:300]!r}"
    if "reset" in allowed and not raw.startswith(b"HTTP/"):  # refused mid-send: the answer can be lost in the RST
        assert raw in (b"", b"<reset>"), raw[:300]
        return 0
    status, head, body = _parse(raw.replace(b"<reset>", b""))
    assert status is not None, f"{name}: not an HTTP answer: {raw[:300]!r}"
    assert status < 500, f"{name}: {status} {body[:300]!r}"
    assert status in allowed, f"{name}: {status} not in {allowed}: {body[:300]!r}"
    if status >= 400:
        assert b"application/json" in head.lower(), f"{name}: error without a JSON body: {raw[:300]!r}"
        err = _strict_json(body)
        assert {"error", "type", "status"} <= set(err) and err["status"] == status, err
    elif body:
        _strict_json(body)
    return status


@pytest.fixture(scope="module")
def servers(export_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logs")
    common = ("--body-timeout", "1", "--header-timeout", "1", "--max-header-bytes", str(HEAD_LIMIT))
    started = {"open": Server(export_dir, tmp, *common), "token": Server(export_dir, tmp, *common, token=TOKEN)}
    yield started
    for s in started.values():
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("kind", ["open", "token"])
def test_hostile_requests_get_json_4xx_never_5xx_and_never_hang(servers, kind):
    server = servers[kind]
    auth = AUTH if kind == "token" else {}
    with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT, headers=auth) as http:
        sid = http.post("/v1/streams").json()["id"]
        assert http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0]}).status_code == 200
    seen = 0
    for name, method, path, body, headers, allowed in CASES:
        extra = dict(auth, **(headers or {}))
        if kind == "open" and name in ("wrong_token", "basic_auth", "long_authorization"):
            allowed = {200}  # no token required: the header is ignored
        raw = _raw(server.port, _request(method, path.replace("{sid}", sid), body, extra))
        _check_answer(raw, allowed, name, kind == "token")
        seen += 1
    auth_line = f"authorization: {AUTH['Authorization']}\r\n".encode() if kind == "token" else b""
    for name, data, chunks, allowed in RAW:
        data = data.replace(b"{auth}", auth_line)
        _check_answer(_raw(server.port, data, chunks=chunks), allowed, name, kind == "token")
        seen += 1
    # without the token, every endpoint but /healthz is 401 (JSON), however hostile the body
    if kind == "token":
        for method, path, body in (("GET", "/v1/models", b""), ("POST", "/v1/streams", b"{}"),
                                   ("POST", f"/v1/streams/{sid}/observations", b'{"values": ' + DEEP),
                                   ("GET", f"/v1/streams/{sid}", b""), ("DELETE", f"/v1/streams/{sid}", b""),
                                   ("POST", "/v1/models/reference/predict", b'{"inputs": {}}'),
                                   ("GET", "/metrics", b""), ("GET", "/openapi.json", b"")):
            _check_answer(_raw(server.port, _request(method, path, body)), {401}, f"{method} {path}", True)
            seen += 1
    assert seen >= 60
    with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT, headers=auth) as http:
        assert http.get("/healthz").status_code == 200
        state = http.get(f"/v1/streams/{sid}").json()
        assert state["observed"] == 3  # the two values and the one text/plain append: nothing hostile applied
        metrics = http.get("/metrics").text
        fives = re.findall(r'^tsattn_http_requests_total\{.*status="5\d\d".*$', metrics, re.M)
        assert not fives, fives
        assert http.delete(f"/v1/streams/{sid}").status_code == 204
    assert "Traceback" not in server.log()


def test_a_retried_append_with_the_same_offset_is_applied_once(servers):
    server = servers["open"]
    with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT) as http:
        sid = http.post("/v1/streams").json()["id"]
        first = http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0], "offset": 0})
        assert first.status_code == 200 and first.json()["observed"] == 2
        retry = http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0], "offset": 0})
        assert retry.status_code == 409
        body = retry.json()
        assert body["observed"] == 2 and body["length"] == 2 and body["type"] == "offset_mismatch"
        state = http.get(f"/v1/streams/{sid}").json()
        assert {k: state[k] for k in ("id", "model", "channels", "length", "observed", "pending")} == {
            "id": sid, "model": "reference", "channels": 1, "length": 2, "observed": 2, "pending": 0}
        assert state["created"].endswith("Z") and state["idle_s"] >= 0
        nxt = http.post(f"/v1/streams/{sid}/observations", json={"values": [3.0], "offset": 2})
        assert nxt.status_code == 200 and nxt.json()["observed"] == 3
        assert re.search(r"^tsattn_rejected_offset_total [1-9]", http.get("/metrics").text, re.M)
        paths = http.get("/openapi.json").json()["paths"]
        assert "get" in paths["/v1/streams/{stream_id}"]
        assert {"408", "409", "413"} <= set(paths["/v1/streams/{stream_id}/observations"]["post"]["responses"])


def test_an_append_that_timed_out_and_is_retried_with_its_offset_is_applied_once(export_dir, tmp_path):
    """The case of the issue: the append answers 503 (it did not run in time) but runs later; the retry as told
    (same offset) must not apply the values twice."""
    server = Server(export_dir, tmp_path, "--append-timeout", "0.3", "--batch-window-ms", "400", "--max-batch", "8")
    try:
        with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT) as http:
            sid = http.post("/v1/streams").json()["id"]
            slow = http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0], "offset": 0})
            assert slow.status_code == 503 and "offset" in slow.json()["error"] and slow.headers["retry-after"]
            retry = http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0], "offset": 0})
            assert retry.status_code in (409, 503)
            deadline = time.monotonic() + 20
            while http.get(f"/v1/streams/{sid}").json()["pending"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert http.get(f"/v1/streams/{sid}").json()["observed"] == 2  # once
    finally:
        assert server.stop() == 0


async def _load(port: int, streams: int, appends: int, series: np.ndarray):
    """``streams`` keep-alive connections, each appending ``appends`` values one at a time; forecasts per stream."""

    async def request(reader, writer, method, path, body=b""):
        writer.write(_request(method, path, body))
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def one(k):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, body = await request(reader, writer, "POST", "/v1/streams", b"{}")
            assert status == 201, body
            path = f"/v1/streams/{json.loads(body)['id']}"
            forecasts, errors = [], []
            for i in range(appends):
                status, body = await request(reader, writer, "POST", path + "/observations",
                                             json.dumps({"values": [float(series[k, i])], "offset": i}).encode())
                if status != 200:
                    errors.append((status, body[:200]))
                else:
                    forecasts.append(json.loads(body)["forecast"])
            await request(reader, writer, "DELETE", path)
            return forecasts, errors
        finally:
            writer.close()

    return await asyncio.gather(*(one(k) for k in range(streams)))


def test_a_bounded_load_test_has_no_errors_and_the_offline_forecasts(export_dir, tmp_path):
    streams, appends = 50, 200
    series = np.random.default_rng(7).normal(size=(streams, appends)).astype(np.float32)
    server = Server(export_dir, tmp_path, "--batch-window-ms", "2")
    try:
        results = asyncio.run(asyncio.wait_for(_load(server.port, streams, appends, series), 300))
    finally:
        assert server.stop() == 0
    errors = [e for _, errs in results for e in errs]
    assert errors == []
    with load(export_dir, device="cpu") as rt:
        worst = 0.0
        for k, (forecasts, _) in enumerate(results):
            s = rt.open_stream()
            for i in range(appends):
                want = rt.append(s, float(series[k, i]))
                worst = max(worst, float(np.abs(np.asarray(forecasts[i], np.float32) - want).max()))
    assert worst <= 1e-5, worst  # batched over HTTP vs one stream at a time offline


def test_a_long_predict_takes_bounded_memory_and_100000_values_are_refused(export_dir, tmp_path):
    server = Server(export_dir, tmp_path, "--max-body-bytes", str(8 << 20))
    try:
        with httpx.Client(base_url=server.base, timeout=120) as http:
            x = np.sin(np.arange(100_000) / 9.0).round(4)
            warm = http.post("/v1/models/reference/predict", json={"inputs": {"values": [x[:64].tolist()]}})
            assert warm.status_code == 200
            before = server.hwm_mb()
            r = http.post("/v1/models/reference/predict", json={"inputs": {"values": [x[:8192].tolist()]}})
            assert r.status_code == 200
            forecast = np.asarray(r.json()["outputs"]["forecast"])
            assert forecast.shape == (1, 8192, 5) and np.isfinite(forecast).all()
            grown = server.hwm_mb() - before
            assert grown < 1024, f"a predict of 8,192 values raised the server's peak RSS by {grown:.0f} MiB"
            big = http.post("/v1/models/reference/predict", json={"inputs": {"values": [x.tolist()]}})
            assert big.status_code == 413 and "max_predict_values" in big.json()["error"]
            assert http.get("/healthz").status_code == 200
        with load(export_dir, device="cpu") as rt:  # the chunked answer is the runtime's answer
            want = rt.predict({"values": x[None, :8192].astype(np.float32)})["forecast"]
        assert np.abs(forecast - want).max() <= 1e-5
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_requests_in_flight_then_stops_and_exits_0(export_dir, tmp_path, sig):
    # a batch window of 1.5 s keeps an append in flight when the signal comes
    server = Server(export_dir, tmp_path, "--batch-window-ms", "1500", "--max-batch", "8")
    answers = []
    with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT) as http:
        sid = http.post("/v1/streams").json()["id"]

        def append():
            answers.append(http.post(f"/v1/streams/{sid}/observations", json={"values": [1.0, 2.0, 3.0]}))

        t = threading.Thread(target=append)
        t.start()
        time.sleep(0.5)
        server.proc.send_signal(sig)
        t.join(CLIENT_TIMEOUT)
    try:
        code = server.proc.wait(timeout=30)
    finally:
        server.stop()
    log = server.log()
    assert code == 0, log
    assert answers and answers[0].status_code == 200 and answers[0].json()["observed"] == 3  # drained, not dropped
    assert f"stopped by {signal.Signals(sig).name}" in log and "Traceback" not in log
