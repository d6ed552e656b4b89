"""The ASGI app of ``tsattn-serve`` (Starlette): one export, its streams, predict, health and metrics.

    GET    /healthz                          liveness (never needs the token)
    GET    /v1/models                        the served export: name, task, graph inputs/outputs, cache, device
    POST   /v1/models/{name}/predict         {"inputs": {input: nested list}} -> {"outputs": {output: nested list}}
    POST   /v1/streams                       {"channels": C, "inputs": {...}} (both optional; inputs: an encoder-
                                             decoder's encoder inputs) -> 201 {"id", "horizon", "max_context", ...}
    POST   /v1/streams/{id}/observations     {"inputs": {name: nested list}, "offset": n (optional)} ->
                                             {"outputs": {name: nested list}, "length", "observed"}: every step
                                             output for the new steps, any cached export; or {"values": [v, ...] or
                                             [[v_c, ...], ...], "offset": n} -> {"forecast", "length", "observed"}:
                                             the primary output after the last step
    POST   /v1/streams/{id}/generate         {"n", "top_k", "temperature", "seed"} -> {"tokens", "length", ...}
                                             (a causal_lm export: samples fed back through the cache)
    GET    /v1/streams/{id}                  {"id", "model", "channels", "length", "observed", "pending", "created",
                                              "last_used", "age_s", "idle_s"}
    DELETE /v1/streams/{id}                  204
    GET    /metrics                          Prometheus text: requests, latency, streams, cache bytes, evictions
    GET    /openapi.json                     the OpenAPI 3.1 schema (request and response bodies from pydantic models)

Errors are JSON ``{"error": message, "type": kind, "status": code}`` (``ERRORS`` lists every status and its
causes); bad input is never a 5xx: malformed JSON, nesting deeper than 32 levels or a number of more than 64
characters (checked before parsing, ``tsattn.runtime.limits``) 400; a body that is not the documented object, wrong
shapes, dtypes, NaN/Inf, values outside float32, or inputs whose output would not be finite (the stream is left as
it was) 422; too many values or a body over the size limit 413 (naming the limit); a body that does not arrive
within ``body_timeout_s`` 408; an append whose ``offset`` is not the stream's ``observed`` 409 (with ``observed``
and ``length``: nothing applied, so a retried append is applied once), or that would pass the capacity of a
cache that does not slide 409 (``cache_full``, naming it; the stream is unchanged); an unknown stream 404 (410 once evicted,
naming why); an unknown model 404; over capacity 503 (queue full, an append that timed out, predicts busy) or 429
(max_streams, all busy), both with ``Retry-After``; a missing or wrong bearer token 401. Responses never contain NaN
or Infinity. With a token (``create_app(token=...)``, ``tsattn-serve --token`` or the ``TSATTN_SERVE_TOKEN``
environment variable), every path but /healthz needs ``Authorization: Bearer <token>``. Request heads (431, 408)
and malformed HTTP (400) are answered in JSON by ``tsattn.runtime.protocol`` before the app sees them.

Starlette rather than FastAPI: the handlers parse their bodies themselves (so that malformed JSON is a 400 that says
where, and the array checks run once, in the runtime), and FastAPI's per-request machinery measured a third of the
HTTP cost of an append here; the OpenAPI document is written from the same pydantic models FastAPI would use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
from typing import Any, Dict, List, Optional, Union

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tsattn.runtime import limits
from tsattn.runtime.engine import Runtime
from tsattn.runtime.errors import CapacityError, OffsetMismatch, Overloaded, ServingError

log = logging.getLogger("tsattn.runtime.server")

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_BODY_TIMEOUT_S = 30.0
OPEN_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready")  # liveness and readiness (tsattn.runtime.oip)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
JSON = "application/json"


class HttpError(Exception):
    """An error answered with ``status`` and ``{"error": message, "type": kind, "status": status}``."""

    def __init__(self, status: int, message: str, kind: str = "bad_request",
                 headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": message, "type": kind, "status": status}).encode()


def _error(status: int, message: str, kind: str, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(_error_body(status, message, kind), status_code=status, headers=headers, media_type=JSON)


# ---------------------------------------------------------------------------------------------------- OpenAPI


def _schemas() -> Dict[str, Any]:
    """The request and response bodies as pydantic models (documentation: the handlers parse bodies themselves)."""
    from pydantic import BaseModel, ConfigDict, Field

    Number = Union[int, float]

    class OpenStreamRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: int = Field(1, ge=1, description="rows of the stream: a C-channel series is C channel-independent "
                                                   "rows")
        inputs: Optional[Dict[str, Any]] = Field(
            None, description="an encoder-decoder's encoder inputs by name (GET /v1/models: stream.encoder_inputs), "
                              "nested lists without the batch axis: the encoder runs once, its outputs feed every "
                              "step of the stream")

    class Observations(BaseModel):
        model_config = ConfigDict(extra="forbid")
        offset: Optional[int] = Field(None, ge=0, description="the number of steps the client expects the stream "
                                                              "to have observed before these; a mismatch is 409 "
                                                              "and applies nothing (retries are applied once)")

    class ValuesObservations(Observations):
        values: Union[Number, List[Number], List[List[Number]]] = Field(
            ..., description="new observations, oldest first: one number, a list of n numbers (one channel), or n "
                             "lists of C numbers (C channels); finite; at most max_append per request. For an "
                             "export with one step input whose time axis follows the batch (the reference model)")

    class InputsObservations(Observations):
        inputs: Dict[str, Any] = Field(
            ..., description="the task's step inputs by name (GET /v1/models: stream.inputs), each a nested list "
                             "in the graph's layout without the batch axis (a leading axis of C rows for a "
                             "C-channel stream), time on the declared axis, one or many steps")

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(..., ge=1, description="tokens to sample after the stream's last one (at most max_append)")
        top_k: Optional[int] = Field(None, ge=1, description="null or 1: greedy (the most likely token); k: sample "
                                                             "among the k most likely")
        temperature: float = Field(1.0, gt=0, description="softmax temperature of top-k sampling")
        seed: Optional[int] = Field(None, description="seed of the sampler (the same seed, the same tokens)")

    class GenerateResponse(BaseModel):
        id: str
        tokens: List[int]
        length: int
        observed: int

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: Dict[str, Any] = Field(..., description="graph input name -> nested list of numbers in the graph's "
                                                        "shape (GET /v1/models); cache inputs may be left out")

    class StreamInfo(BaseModel):
        id: str
        model: str
        channels: int
        horizon: Optional[int] = None
        max_context: Optional[int] = None

    class OutputsResponse(BaseModel):
        id: str
        outputs: Dict[str, Any] = Field(..., description="every step output for the new steps, by name, in the "
                                                         "graph's layout without the batch axis")
        length: int = Field(..., description="positions in the stream's cache")
        observed: int = Field(..., description="steps appended to the stream in all")

    class StreamState(BaseModel):
        id: str
        model: str
        channels: int
        length: int = Field(..., description="positions in the stream's cache (at most max_context)")
        observed: int = Field(..., description="observations appended in all: the offset of the next append")
        pending: int = Field(..., description="appends queued or running")
        created: str
        last_used: str
        age_s: float
        idle_s: float

    class ForecastResponse(BaseModel):
        id: str
        forecast: List[Any] = Field(..., description="forecast after the last observation: (horizon,) or "
                                                      "(horizon, channels)")
        length: int = Field(..., description="positions in the stream's cache (at most max_context)")
        observed: int = Field(..., description="observations appended to the stream in all")

    class PredictResponse(BaseModel):
        model: str
        outputs: Dict[str, Any]

    class ModelsResponse(BaseModel):
        models: List[Dict[str, Any]]

    class Health(BaseModel):
        status: str
        model: str
        device: str

    class ErrorResponse(BaseModel):
        error: str = Field(..., description="what is wrong, naming the field, value or limit")
        type: str
        status: int
        observed: Optional[int] = Field(None, description="409 only: the stream's observed count")
        length: Optional[int] = Field(None, description="409 only: the stream's cache length")

    return {m.__name__: m.model_json_schema(ref_template="#/components/schemas/{model}")
            for m in (OpenStreamRequest, ValuesObservations, InputsObservations, PredictRequest, StreamInfo,
                      StreamState, ForecastResponse, OutputsResponse, GenerateRequest, GenerateResponse,
                      PredictResponse, ModelsResponse, Health, ErrorResponse)}


ERRORS = {400: "malformed JSON or HTTP; JSON nested deeper than 32 levels or a number longer than 64 characters",
          401: "missing or wrong bearer token", 404: "unknown stream, model or path", 405: "method not allowed",
          408: "the request body (or head) did not arrive in time", 409: "offset differs from the stream's observed "
          "count, or the append would pass the capacity of a cache that does not slide (cache_full): nothing "
          "applied", 410: "stream evicted",
          413: "too many values (max_append, max_predict_values, max_channels) or body too large (max_body_bytes)",
          422: "wrong shape or dtype, NaN/Inf, outside float32, an output that would not be finite, or not the "
               "documented object", 429: "max_streams reached, all streams busy (Retry-After)",
          431: "request head too large", 500: "internal error (a bug: JSON body, logged)",
          503: "over capacity: queue full, append not run in time, predicts busy, shutting down (Retry-After)"}


def openapi(title: str, version: str, description: str) -> Dict[str, Any]:
    """The OpenAPI 3.1 document of the app."""
    schemas = _schemas()

    def ref(name: str) -> Dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def schema_of(names: str) -> Dict[str, Any]:
        """``"A"`` -> a reference; ``"A|B"`` -> one of them."""
        refs = [ref(n) for n in names.split("|")]
        return refs[0] if len(refs) == 1 else {"oneOf": refs}

    def op(summary: str, tag: str, ok: int, ok_schema: Optional[str], errors: tuple, body: Optional[str] = None,
           params: tuple = (), ok_type: str = JSON) -> Dict[str, Any]:
        responses: Dict[str, Any] = {str(ok): {"description": "OK" if ok < 300 else "Created"}}
        if ok == 204:
            responses[str(ok)] = {"description": "No Content"}
        elif ok_schema:
            responses[str(ok)]["content"] = {ok_type: {"schema": schema_of(ok_schema)}}
        else:
            responses[str(ok)]["content"] = {ok_type: {"schema": {"type": "string"}}}
        for code in errors:
            responses[str(code)] = {"description": ERRORS[code], "content": {JSON: {"schema": ref("ErrorResponse")}}}
        operation = {"summary": summary, "tags": [tag], "responses": responses,
                     "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                    for p in params]}
        if body:
            operation["requestBody"] = {"required": body != "OpenStreamRequest",
                                        "content": {JSON: {"schema": schema_of(body)}}}
        return operation

    common = (401,)
    paths = {
        "/healthz": {"get": op("Liveness (no token needed)", "service", 200, "Health", ())},
        "/v1/models": {"get": op("The served export: task, graphs, cache, device, limits", "models", 200,
                                 "ModelsResponse", common)},
        "/v1/models/{name}/predict": {"post": op("Stateless forward (caches empty)", "models", 200, "PredictResponse",
                                                 (400, 401, 404, 408, 413, 422, 503), "PredictRequest", ("name",))},
        "/v1/streams": {"post": op("Open a stream (an encoder-decoder's with its encoder inputs)", "streams", 201,
                                   "StreamInfo", (400, 401, 413, 422, 429), "OpenStreamRequest")},
        "/v1/streams/{stream_id}/observations": {"post": op(
            "Append steps: {inputs} answers every step output for the new steps, {values} the primary output after "
            "the last one", "streams", 200, "OutputsResponse|ForecastResponse",
            (400, 401, 404, 408, 409, 410, 413, 422, 503), "InputsObservations|ValuesObservations", ("stream_id",))},
        "/v1/streams/{stream_id}/generate": {"post": op(
            "A causal language model's stream: sample n tokens (greedy, or top-k with a seed), each fed back",
            "streams", 200, "GenerateResponse", (400, 401, 404, 409, 410, 422, 503), "GenerateRequest",
            ("stream_id",))},
        "/v1/streams/{stream_id}": {"delete": op("Close a stream", "streams", 204, None, (401, 404, 410),
                                                 params=("stream_id",)),
                                    "get": op("A stream's length, observed count (the next offset), times", "streams",
                                              200, "StreamState", (401, 404, 410), params=("stream_id",))},
        "/metrics": {"get": op("Prometheus metrics (text format)", "service", 200, None, common,
                               ok_type="text/plain")},
    }
    defs: Dict[str, Any] = {}
    for name, schema in schemas.items():
        defs.update(schema.pop("$defs", {}))
        defs[name] = schema
    return {"openapi": "3.1.0", "info": {"title": title, "version": version, "description": description},
            "paths": paths, "components": {"schemas": defs}}


# ---------------------------------------------------------------------------------------------------- metrics


class _RuntimeCollector:
    """Prometheus collector reading the runtime's gauges and counters at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.runtime.stats()
        yield GaugeMetricFamily("tsattn_active_streams", "Open streams", value=stats["active_streams"])
        yield GaugeMetricFamily("tsattn_cache_bytes", "Bytes of KV cache held by open streams",
                                value=stats["cache_bytes"])
        yield GaugeMetricFamily("tsattn_queued_appends", "Appends waiting for the worker",
                                value=stats["queued_appends"])
        evictions = CounterMetricFamily("tsattn_stream_evictions", "Streams evicted, by reason", labels=["reason"])
        for reason in ("idle_ttl", "max_streams", "max_cache_bytes"):
            evictions.add_metric([reason], stats["evictions"].get(reason, 0))
        yield evictions
        for key, help_text in (("model_calls", "Streaming model calls (a batched step is one call)"),
                               ("appends", "Appends stepped"),
                               ("batched_appends", "Appends stepped in a batch of two or more streams"),
                               ("predict_calls", "Stateless predict calls"),
                               ("rejected_offset", "Appends refused because their offset was not the stream's "
                                                   "observed count (409)"),
                               ("rejected_nonfinite", "Appends refused because the model's output would not be "
                                                      "finite (422)"),
                               ("rejected_cache_full", "Appends refused because they would pass the capacity of a "
                                                       "cache that does not slide (409)"),
                               ("encoder_calls", "Encoder runs of encoder-decoder streams (one per stream opened)")):
            yield CounterMetricFamily(f"tsattn_{key}", help_text, value=stats.get(key, 0))


class Metrics:
    """Prometheus registry of one app: HTTP requests and latency by route, and the runtime's collector."""

    def __init__(self, runtime: Runtime) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tsattn_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("tsattn_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_RuntimeCollector(runtime))
        self._children: Dict[tuple, tuple] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() validates and locks on every call: look each series up once
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                               self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---------------------------------------------------------------------------------------------------- the gate


class Gate:
    """ASGI middleware in front of the app: metrics (every request, rejected ones too), the bearer token, the
    request body size limit (Content-Length checked up front, streamed bodies counted) and the body read timeout
    (each part of the body must arrive within ``body_timeout_s``: 408)."""

    def __init__(self, app, metrics: Metrics, token: Optional[str], max_body_bytes: int,
                 body_timeout_s: Optional[float] = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def _reply(self, send, status: int, message: str, kind: str, headers=()) -> None:
        body = _error_body(status, message, kind)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if self.token is not None and scope["path"] not in OPEN_PATHS:
                auth = headers.get(b"authorization", b"")
                scheme, _, given = auth.partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                    await self._reply(send_status, 401, "missing or wrong bearer token (Authorization: Bearer "
                                                        "<token>)", "unauthorized",
                                      [(b"www-authenticate", b'Bearer realm="tsattn"')])
                    return
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    await self._reply(send_status, 400, "Content-Length is not a number", "bad_request")
                    return
                if declared > self.max_body_bytes:
                    await self._reply(send_status, 413, f"request body of {declared} bytes exceeds the limit of "
                                                        f"{self.max_body_bytes} bytes (max_body_bytes)",
                                      "body_too_large", [(b"connection", b"close")])
                    return
            received = [0]
            more = [True]
            limit = self.max_body_bytes
            timeout = self.body_timeout_s

            async def counted_receive():
                if more[0] and timeout:
                    # a timer that cancels this task (cheaper than asyncio.timeout on the hot path of appends)
                    task, fired = asyncio.current_task(), []
                    timer = asyncio.get_running_loop().call_later(timeout, lambda: (fired.append(1), task.cancel()))
                    try:
                        message = await receive()
                    except asyncio.CancelledError:
                        if not fired:
                            raise
                        task.uncancel() if hasattr(task, "uncancel") else None
                        raise HttpError(408, f"the request body did not arrive within {timeout:g} s "
                                             f"(body_timeout_s)", "body_timeout", {"Connection": "close"}) from None
                    finally:
                        timer.cancel()
                else:
                    message = await receive()
                if message["type"] == "http.request":
                    more[0] = message.get("more_body", False)
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise HttpError(413, f"request body exceeds the limit of {limit} bytes (max_body_bytes)",
                                        "body_too_large", {"Connection": "close"})
                return message

            await self.app(scope, counted_receive, send_status)
        finally:
            label = getattr(scope.get("route"), "path", None) or "unrouted"  # the route's template, not the path
            self.metrics.observe(label, scope.get("method", ""), status[0], time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------- the app


async def _within(future, seconds: float):
    """``await future`` for at most ``seconds`` (``asyncio.TimeoutError`` after; ``asyncio.timeout`` where the
    Python has it: cheaper than ``wait_for``)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        return await asyncio.wait_for(future, seconds)
    async with timeout(seconds):
        return await future


def _floats(array) -> Any:
    """A numpy array as nested lists of Python floats (JSON-ready)."""
    return array.tolist()


def create_app(runtime: Runtime, *, token: Optional[str] = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               append_timeout_s: float = 30.0, max_concurrent_predicts: int = 2,
               sweep_interval_s: float = 30.0, body_timeout_s: Optional[float] = DEFAULT_BODY_TIMEOUT_S) -> Starlette:
    """The app serving ``runtime`` (see the module docstring). ``token``: bearer token required on every path but
    /healthz (None: open). ``max_body_bytes``: request body limit (413). ``append_timeout_s``: an append that has
    not run by then answers 503 (it may still be applied). ``max_concurrent_predicts``: predicts run in threads, at
    most this many at once (503 beyond). ``sweep_interval_s``: how often idle streams are evicted without traffic.
    ``body_timeout_s``: a request body (each part of it) not received within that many seconds answers 408.
    ``app.state.runtime`` and ``app.state.metrics`` hold the runtime and the Prometheus registry."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive; got {max_body_bytes}")
    m = runtime.manifest
    cache = m.cache
    horizon = m.task.horizon
    predicts = threading.BoundedSemaphore(max_concurrent_predicts)
    metrics = Metrics(runtime)
    schema = openapi("tsattn-serve", m.versions.get("tsattn") or "0",
                     f"Streaming forecasts and predict for the export {m.name!r} (ONNX Runtime, device "
                     f"{runtime.device}). Errors are JSON {{error, type, status}}.")

    async def json_body(request: Request, required: bool) -> Dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            if required:
                raise HttpError(422, "empty body: expected a JSON object", "invalid_request")
            return {}
        try:
            data = limits.loads(raw)  # depth and number size checked before parsing
        except limits.JsonRefused as exc:
            raise HttpError(exc.status, str(exc), exc.kind) from None
        except UnicodeDecodeError:
            raise HttpError(400, "malformed JSON: the body is not UTF-8", "malformed_json") from None
        except json.JSONDecodeError as exc:
            raise HttpError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                            "malformed_json") from None
        except (RecursionError, ValueError) as exc:  # not reached past check_json; never a 500
            raise HttpError(400, f"malformed JSON: {type(exc).__name__}", "malformed_json") from None
        if not isinstance(data, dict):
            raise HttpError(422, f"expected a JSON object, got {type(data).__name__}", "invalid_request")
        return data

    def fields(data: Dict[str, Any], allowed: tuple, required: tuple = ()) -> None:
        extra = sorted(set(data) - set(allowed))
        if extra:
            raise HttpError(422, f"unknown field(s) {extra}; expected {list(allowed)}", "invalid_request")
        missing = [f for f in required if f not in data]
        if missing:
            raise HttpError(422, f"missing field(s) {missing}", "invalid_request")

    def ok(body: Any, status: int = 200) -> Response:
        try:
            text = limits.dumps(body)  # never NaN or Infinity (the runtime refuses them before; this is the net)
        except ValueError:
            raise HttpError(422, "the answer would contain NaN or Infinity, which JSON cannot carry",
                            "non_finite_output") from None
        return Response(text, status_code=status, media_type=JSON)

    def stream_contract() -> Optional[Dict[str, Any]]:
        """What a stream takes and answers: step inputs and outputs without the batch axis, time axes counted
        there; an encoder-decoder's encoder inputs (None: the export does not stream)."""
        if runtime.streams_unsupported is not None:
            return None
        task = m.task

        def described(graph: str, tensors) -> List[Dict[str, Any]]:
            g = m.graphs[graph]
            specs = {t.name: t for t in list(g.inputs) + list(g.outputs)}
            return [{"name": t.name, "dtype": specs[t.name].dtype, "shape": list(specs[t.name].shape[1:]),
                     "time_axis": None if t.time_axis is None else t.time_axis - 1} for t in tensors]

        return {"kind": task.kind, "answer": task.answer, "time_dim": task.time_dim,
                "inputs": described(task.graph, task.inputs), "outputs": described(task.graph, task.outputs),
                "encoder_inputs": None if task.encoder is None else described(task.encoder.graph,
                                                                                task.encoder.inputs),
                "max_context": None if cache is None else cache.max_context,
                "sliding": None if cache is None else cache.sliding,
                "values_form": runtime._stream_graph.features is not None}

    def model_summary() -> Dict[str, Any]:
        return {
            "name": m.name,
            "task": m.task.to_dict(),
            "stream": stream_contract(),
            "source": {k: v for k, v in m.source.items() if k in ("kind", "target", "feature", "config", "seed")},
            "graphs": {n: {"inputs": [t.to_dict() for t in g.inputs], "outputs": [t.to_dict() for t in g.outputs]}
                       for n, g in m.graphs.items()},
            "cache": None if cache is None else cache.to_dict(),
            "streams": runtime.streams_unsupported is None,
            "exporter": m.exporter, "opset": m.opset, "parity_ok": m.parity_ok, "versions": m.versions,
            "device": runtime.device, "providers": runtime.providers,
            "limits": {"max_streams": runtime.max_streams, "max_cache_bytes": runtime.max_cache_bytes,
                       "idle_ttl_s": runtime.idle_ttl_s, "max_append": runtime.max_append,
                       "max_predict_values": runtime.max_predict_values, "max_batch": runtime.max_batch,
                       "batch_window_ms": runtime.batch_window_s * 1e3, "max_body_bytes": max_body_bytes,
                       "max_channels": limits.MAX_CHANNELS, "max_json_depth": limits.MAX_JSON_DEPTH,
                       "max_number_chars": limits.MAX_NUMBER_CHARS, "prefill_chunk": limits.PREFILL_CHUNK,
                       "call_positions": limits.CALL_POSITIONS, "body_timeout_s": body_timeout_s,
                       "append_timeout_s": append_timeout_s},
        }

    async def healthz(request: Request) -> Response:
        return ok({"status": "ok", "model": m.name, "device": runtime.device})

    async def models(request: Request) -> Response:
        return ok({"models": [model_summary()]})

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        if name != m.name:
            raise HttpError(404, f"unknown model {name!r}; this server serves {m.name!r}", "unknown_model")
        data = await json_body(request, required=True)
        fields(data, ("inputs",), ("inputs",))
        if not isinstance(data["inputs"], dict):
            raise HttpError(422, "inputs: expected an object of input name -> nested list", "invalid_request")
        if not predicts.acquire(blocking=False):
            raise Overloaded(f"{max_concurrent_predicts} predicts are running (max_concurrent_predicts)")
        try:
            outputs = await run_in_threadpool(runtime.predict, data["inputs"])
        finally:
            predicts.release()
        return ok({"model": m.name, "outputs": {k: _floats(v) for k, v in outputs.items()}})

    async def open_stream(request: Request) -> Response:
        data = await json_body(request, required=False)
        fields(data, ("channels", "inputs"))
        channels = data.get("channels", 1)
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise HttpError(422, f"channels: expected an integer, got {json.dumps(channels)}", "invalid_request")
        inputs = data.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise HttpError(422, "inputs: expected an object of encoder input name -> nested list", "invalid_request")
        stream = runtime.open_stream(channels, inputs) if inputs is not None else runtime.open_stream(channels)
        return ok({"id": stream.id, "model": m.name, "channels": stream.rows, "horizon": horizon,
                   "max_context": None if cache is None else cache.max_context}, 201)

    async def observations(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        data = await json_body(request, required=True)
        fields(data, ("values", "inputs", "offset"))
        if ("inputs" in data) == ("values" in data):
            raise HttpError(422, "expected exactly one of 'inputs' (step inputs by name) or 'values'",
                            "invalid_request")
        if "inputs" in data and not isinstance(data["inputs"], dict):
            raise HttpError(422, "inputs: expected an object of step input name -> nested list", "invalid_request")
        if isinstance(data.get("values"), dict):
            raise HttpError(422, "values: expected numbers (a number or nested lists), got an object; step inputs "
                                 "by name go in 'inputs'", "invalid_request")
        offset = data.get("offset")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
            raise HttpError(422, f"offset: expected an integer >= 0 (the stream's observed count before these "
                                 f"steps), got {json.dumps(offset)}", "invalid_request")
        future = runtime.append_async(stream_id, data["inputs"] if "inputs" in data else data["values"],
                                      offset=offset)
        try:
            result = await _within(future, append_timeout_s)
        except asyncio.TimeoutError:
            raise Overloaded(f"the append did not run within {append_timeout_s:g} s; it may still be applied: "
                             f"retry with the same 'offset' (applied at most once), or GET /v1/streams/{stream_id} "
                             f"for 'observed'", retry_after=1.0) from None
        if "inputs" in data:
            return ok({"id": stream_id, "outputs": {k: _floats(v) for k, v in result.outputs.items()},
                       "length": result.length, "observed": result.observed})
        return ok({"id": stream_id, "forecast": _floats(result.forecast), "length": result.length,
                   "observed": result.observed})

    async def generate(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        data = await json_body(request, required=True)
        fields(data, ("n", "top_k", "temperature", "seed"), ("n",))
        n = data["n"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= runtime.max_append:
            raise HttpError(422, f"n: expected an integer from 1 to {runtime.max_append} (max_append), got "
                                 f"{json.dumps(n)}", "invalid_request")
        for key in ("top_k", "seed"):
            if data.get(key) is not None and (isinstance(data[key], bool) or not isinstance(data[key], int)):
                raise HttpError(422, f"{key}: expected an integer or null, got {json.dumps(data[key])}",
                                "invalid_request")
        temperature = data.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise HttpError(422, f"temperature: expected a number, got {json.dumps(temperature)}", "invalid_request")
        tokens = await run_in_threadpool(runtime.generate, stream_id, n, top_k=data.get("top_k"),
                                         temperature=float(temperature), seed=data.get("seed"),
                                         timeout=append_timeout_s)
        info = runtime.stream_info(stream_id)
        return ok({"id": stream_id, "tokens": tokens.tolist(), "length": info["length"],
                   "observed": info["observed"]})

    async def close_stream(request: Request) -> Response:
        runtime.close(request.path_params["stream_id"])
        return Response(status_code=204)

    async def stream_state(request: Request) -> Response:
        return ok(runtime.stream_info(request.path_params["stream_id"]))

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(schema)

    async def on_http_error(request: Request, exc: HttpError) -> Response:
        return _error(exc.status, exc.message, exc.kind, exc.headers)

    async def on_serving_error(request: Request, exc: ServingError) -> Response:
        headers = None
        if isinstance(exc, CapacityError):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
        kind = "".join("_" + c.lower() if c.isupper() else c for c in type(exc).__name__).lstrip("_")
        if isinstance(exc, OffsetMismatch):  # the stream's state, so that the client can resume without a GET
            body = {"error": str(exc), "type": kind, "status": exc.status, "observed": exc.observed,
                    "length": exc.length}
            return Response(json.dumps(body), status_code=exc.status, media_type=JSON)
        return _error(exc.status, str(exc), kind, headers)

    async def on_starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), "http", getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> Response:  # a bug: still JSON, never a traceback
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details", "internal")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def sweeper():
            while True:
                await asyncio.sleep(sweep_interval_s)
                runtime.sweep()

        task = asyncio.create_task(sweeper()) if runtime.idle_ttl_s else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        Route("/v1/streams", open_stream, methods=["POST"]),
        Route("/v1/streams/{stream_id}/observations", observations, methods=["POST"]),
        Route("/v1/streams/{stream_id}/generate", generate, methods=["POST"]),
        Route("/v1/streams/{stream_id}", close_stream, methods=["DELETE"]),
        Route("/v1/streams/{stream_id}", stream_state, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    from tsattn.runtime import oip  # the Open Inference Protocol (/v2): its own module, behind the same Gate

    v2 = oip.routes(runtime, predicts=predicts, max_concurrent_predicts=max_concurrent_predicts,
                    append_timeout_s=append_timeout_s)
    routes += v2
    schema["paths"].update(oip.openapi_paths())
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HttpError: on_http_error, ServingError: on_serving_error,
                                        StarletteHTTPException: on_starlette_error, Exception: on_unexpected})
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.oip = v2.service  # the Open Inference Protocol service, for tsattn.runtime.oip_grpc
    app.add_middleware(Gate, metrics=metrics, token=token, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)
    return app


__all__ = ["DEFAULT_MAX_BODY", "Gate", "HttpError", "Metrics", "create_app", "openapi"]
