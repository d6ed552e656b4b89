"""The Open Inference Protocol (KServe v2, as Triton speaks it) in ``tsattn-serve``: one client for one machine and
for a Triton cluster.

    GET  /v2                                     server metadata: name, version, extensions
    GET  /v2/health/live, /v2/health/ready       200 (no token needed, like /healthz)
    GET  /v2/models/{name}[/versions/1]          model metadata: inputs and outputs (datatype, shape; -1: any)
    GET  /v2/models/{name}[/versions/1]/ready    200, or 404 for another name
    POST /v2/models/{name}[/versions/1]/infer    JSON tensors, or Triton's binary tensor extension
    POST /v2/repository/index                    [{"name", "version", "state"}]

Tensors are the graph's tensors in the graph's layout, batch axis included (what the ``--triton-repo`` entry takes,
``max_batch_size: 0``); which ones a request carries is the manifest's task contract (``manifest.task``), read
here and nowhere guessed: a sequence's requests carry the task's step inputs and answer its step outputs for the
new steps (the reference export: ``values`` ``[rows, n]`` in, ``forecast`` ``[rows, n, horizon]`` out;
Hephaestus: ``numeric_inputs`` ``[rows, 3, n]`` and ``categorical_inputs`` in, ``numeric`` and ``categorical``
out); an encoder-decoder's first request carries the encoder's inputs too. The cache tensors never appear. The
metadata lists the tensors.

Sequences (Triton's sequence extension) are streams: ``parameters.sequence_id`` (a positive integer or a
non-empty string) names the sequence; ``sequence_start: true`` opens a stream for it (closing one that the id
named before), ``sequence_end: true`` closes it after its request; every request of a sequence appends its
steps to the stream (``Runtime.append_async`` with the step inputs by name) and answers the outputs of those
steps. A request without a ``sequence_id`` is a stateless forward (the runtime's ``predict``: caches empty); an
export without a cache (stateless) has only that. An id that was never started answers 400, as Triton does; a
stream evicted meanwhile 410 (and the id is forgotten); a cache that does not slide, full, 409.

``Service`` is the protocol-independent part (names, tensors, sequences, runtime calls); this module's routes
speak HTTP, ``tsattn.runtime.oip_grpc`` speaks gRPC on the same ``Service``.

Binary tensors: a request whose header ``Inference-Header-Content-Length`` is N has N bytes of JSON, then the
raw little-endian data of every input whose ``parameters.binary_data_size`` is set, in input order. Outputs are
binary when their ``parameters.binary_data`` is true, or by default when the request's
``parameters.binary_data_output`` is true; the answer then carries ``Inference-Header-Content-Length`` too.

Same rules as the ``/v1`` API (``tsattn.runtime.server``): the token, the body limit and the metrics of its
``Gate``, the runtime's limits, statuses and ``Retry-After``; errors are v2 JSON ``{"error": message}``. A
datatype that is not the graph's is refused (422), as Triton refuses it; ``BYTES`` tensors are not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tsattn.runtime.engine import Runtime
from tsattn.runtime.errors import CapacityError, NotSupported, Overloaded, ServingError, StreamEvicted, UnknownStream

JSON = "application/json"
HEADER_LENGTH = "inference-header-content-length"
VERSION = "1"
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
EXTENSIONS = ["binary_tensor_data", "sequence", "parameters"]

# v2 datatype <-> numpy (little-endian on the wire)
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {v: k for k, v in DATATYPES.items()}


class OipError(Exception):
    """An error answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(json.dumps({"error": message}), status_code=status, headers=headers, media_type=JSON)


# ---------------------------------------------------------------------------------------------------- the wire


@dataclass
class InferRequest:
    """A parsed infer request: ``inputs`` name -> array (the declared shape and datatype), ``outputs`` the
    requested outputs as (name, binary) or None for all, ``binary_default`` for outputs not named."""

    id: Optional[str]
    parameters: Dict[str, Any]
    inputs: Dict[str, np.ndarray]
    outputs: Optional[List[Tuple[str, bool]]]
    binary_default: bool


def _object(value: Any, what: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OipError(422, f"{what}: expected an object, got {type(value).__name__}")
    return value


def _flag(parameters: Mapping[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise OipError(422, f"{what}.{key}: expected true or false, got {json.dumps(value)}")
    return value


def _shape(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in value):
        raise OipError(422, f"{what}.shape: expected a list of non-negative integers, got {json.dumps(value)}")
    return tuple(value)


def parse_infer(raw: bytes, header_length: Optional[str]) -> InferRequest:
    """Parse an infer request body (JSON, or JSON and binary tensor data when ``header_length`` is given)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise OipError(400, f"Inference-Header-Content-Length is not a number: {header_length!r}") from None
        if not 0 < n <= len(raw):
            raise OipError(400, f"Inference-Header-Content-Length is {n}; the body has {len(raw)} bytes")
        head, binary = raw[:n], memoryview(raw)[n:]
    else:
        head, binary = raw, memoryview(b"")
    from tsattn.runtime import limits

    try:
        data = limits.loads(bytes(head))  # the /v1 API's limits: depth and number size checked before parsing
    except limits.JsonRefused as exc:
        raise OipError(exc.status, str(exc)) from None
    except UnicodeDecodeError:
        raise OipError(400, "malformed JSON: the request header is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise OipError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:  # not reached past the limits' check; never a 500
        raise OipError(400, f"malformed JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise OipError(422, f"expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - {"id", "parameters", "inputs", "outputs"})
    if extra:
        raise OipError(422, f"unknown field(s) {extra}; an infer request has id, parameters, inputs, outputs")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipError(422, f"id: expected a string, got {json.dumps(request_id)}")
    parameters = _object(data.get("parameters"), "parameters")
    inputs_field = data.get("inputs")
    if not isinstance(inputs_field, list) or not inputs_field:
        raise OipError(422, "inputs: expected a non-empty list of tensors")
    inputs: Dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs_field):
        what = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise OipError(422, f"{what}: expected an object with name, shape, datatype, data")
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise OipError(422, f"{what}.name: expected a non-empty string")
        what = f"input {name!r}"
        if name in inputs:
            raise OipError(422, f"{what} is given twice")
        shape = _shape(t.get("shape"), what)
        datatype = t.get("datatype")
        if datatype not in DATATYPES:
            raise OipError(422, f"{what}: datatype {json.dumps(datatype)} is not served; one of {sorted(DATATYPES)}")
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        count = math.prod(shape)
        t_params = _object(t.get("parameters"), f"{what}.parameters")
        size = t_params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise OipError(422, f"{what}.parameters.binary_data_size: expected a byte count, got {size!r}")
            if "data" in t:
                raise OipError(422, f"{what} has both data and binary_data_size")
            if size != count * dtype.itemsize:
                raise OipError(422, f"{what}: binary_data_size is {size} bytes; shape {list(shape)} of {datatype} "
                                    f"needs {count * dtype.itemsize}")
            if offset + size > len(binary):
                raise OipError(400, f"{what}: the body ends {offset + size - len(binary)} bytes short of its binary "
                                    f"data")
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            if "data" not in t:
                raise OipError(422, f"{what}: no data (give data, or binary_data_size with binary data)")
            array = _json_tensor(t["data"], dtype, shape, what)
        inputs[name] = array.astype(dtype.newbyteorder("="), copy=False)
    if offset != len(binary):
        raise OipError(400, f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size")
    outputs = None
    if data.get("outputs") is not None:
        if not isinstance(data["outputs"], list):
            raise OipError(422, "outputs: expected a list of {name, parameters}")
        outputs = []
        for i, o in enumerate(data["outputs"]):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise OipError(422, f"outputs[{i}]: expected an object with a name")
            o_params = _object(o.get("parameters"), f"output {o['name']!r}.parameters")
            if o_params.get("classification"):
                raise OipError(422, f"output {o['name']!r}: the classification extension is not served")
            binary_flag = o_params.get("binary_data")
            if binary_flag is not None and not isinstance(binary_flag, bool):
                raise OipError(422, f"output {o['name']!r}.parameters.binary_data: expected true or false")
            outputs.append((o["name"], binary_flag))
    default = _flag(parameters, "binary_data_output", "parameters")
    if outputs is not None:
        outputs = [(n, default if b is None else b) for n, b in outputs]
    return InferRequest(request_id, parameters, inputs, outputs, default)


def _json_tensor(data: Any, dtype: np.dtype, shape: Tuple[int, ...], what: str) -> np.ndarray:
    """JSON ``data`` (flat, row-major, or nested) as an array of ``shape``."""
    if not isinstance(data, list):
        raise OipError(422, f"{what}.data: expected a list of numbers")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise OipError(422, f"{what}.data: not a rectangular list of numbers") from None
    kind = array.dtype.kind
    if dtype.kind == "b" and kind != "b" or dtype.kind != "b" and kind not in "iuf" and array.size:
        raise OipError(422, f"{what}.data: expected {'booleans' if dtype.kind == 'b' else 'numbers'}")
    if array.size != math.prod(shape):
        raise OipError(422, f"{what}: {array.size} values for shape {list(shape)} ({math.prod(shape)} values)")
    if dtype.kind in "iu" and kind == "f" and not np.array_equal(array, np.round(array)):
        raise OipError(422, f"{what}.data: expected integers for {NUMPY_TO_V2[dtype.name]}")
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype).reshape(shape)


def encode_response(model: str, request: InferRequest, outputs: Mapping[str, np.ndarray],
                    parameters: Optional[Dict[str, Any]] = None) -> Response:
    """The infer response: requested outputs (all by default) as JSON data or binary data after the JSON."""
    wanted = request.outputs if request.outputs is not None else [(n, request.binary_default) for n in outputs]
    unknown = [n for n, _ in wanted if n not in outputs]
    if unknown:
        raise OipError(422, f"unknown output(s) {unknown}; the model's outputs are {list(outputs)}")
    entries, blobs = [], []
    for name, binary in wanted:
        array = np.ascontiguousarray(outputs[name])
        entry: Dict[str, Any] = {"name": name, "datatype": NUMPY_TO_V2[array.dtype.name], "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body: Dict[str, Any] = {"model_name": model, "model_version": VERSION, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    if parameters:
        body["parameters"] = parameters
    head = json.dumps(body).encode()
    if not blobs:
        return Response(head, media_type=JSON)
    return Response(b"".join([head, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


# ---------------------------------------------------------------------------------------------------- the model


def _v2_shape(shape: Sequence) -> List[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


class _Model:
    """What OIP serves of the runtime's export, read from the manifest's task contract (``manifest.task``): the
    tensors a sequence request carries (the task's step inputs and outputs; for an encoder-decoder also the
    encoder's inputs, on ``sequence_start`` only) and those of a stateless request (the predict graph's inputs and
    outputs without the cache), each in the graph's layout with the batch axis first."""

    def __init__(self, runtime: Runtime) -> None:
        m = runtime.manifest
        task = m.task
        self.runtime = runtime
        self.name = m.name
        self.streams = runtime.streams_unsupported is None
        cache = m.cache
        hidden = set(cache.past_names()) | set(cache.present_names()) if cache is not None else set()
        self.graph = m.graphs[task.graph if self.streams else runtime._graph_name(None)]
        self.predict_inputs = [t for t in self.graph.inputs if t.name not in hidden]
        self.predict_outputs = [t for t in self.graph.outputs if t.name not in hidden]
        self.encoder_inputs: List[Any] = []
        if self.streams:
            self.inputs = [self.graph.input(t.name) for t in task.inputs]
            self.outputs = [self.graph.output(t.name) for t in task.outputs]
            if task.encoder is not None:  # a stateless forward takes the encoder's inputs too (the runtime runs it)
                encoder = m.graphs[task.encoder.graph]
                self.encoder_inputs = [encoder.input(t.name) for t in task.encoder.inputs]
                self.predict_inputs = self.inputs + self.encoder_inputs
        else:
            self.inputs, self.outputs = self.predict_inputs, self.predict_outputs

    def metadata(self) -> Dict[str, Any]:
        def tensor(t) -> Dict[str, Any]:
            return {"name": t.name, "datatype": NUMPY_TO_V2[t.dtype], "shape": _v2_shape(t.shape)}

        return {"name": self.name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                "inputs": [tensor(t) for t in self.inputs + self.encoder_inputs],
                "outputs": [tensor(t) for t in self.outputs]}

    def check(self, inputs: Mapping[str, np.ndarray], specs: Sequence[Any], what: str) -> None:
        """The request's inputs are ``specs``, with the graph's datatype and rank (the runtime checks dims)."""
        names = [t.name for t in specs]
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise OipError(422, f"unknown input(s) {unknown}; {what} of model {self.name!r} takes {names}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise OipError(422, f"missing input(s) {missing}; {what} of model {self.name!r} takes {names}")
        for t in specs:
            a = inputs[t.name]
            if a.dtype != np.dtype(t.dtype):
                raise OipError(422, f"input {t.name!r}: datatype {NUMPY_TO_V2[a.dtype.name]}; model {self.name!r} "
                                    f"expects {NUMPY_TO_V2[t.dtype]}")
            if a.ndim != len(t.shape):
                raise OipError(422, f"input {t.name!r} has shape {list(a.shape)}; model {self.name!r} expects "
                                    f"{_v2_shape(t.shape)}")

    def split(self, inputs: Mapping[str, np.ndarray], start: bool) -> Tuple[Dict[str, np.ndarray],
                                                                            Optional[Dict[str, np.ndarray]]]:
        """A sequence request's step inputs, and on ``sequence_start`` of an encoder-decoder its encoder inputs."""
        encoder_names = {t.name for t in self.encoder_inputs}
        if start and self.encoder_inputs:
            self.check(inputs, self.inputs + self.encoder_inputs, "the first request of a sequence")
            return ({k: v for k, v in inputs.items() if k not in encoder_names},
                    {k: v for k, v in inputs.items() if k in encoder_names})
        self.check(inputs, self.inputs, "a request of a sequence" + (" after its first" if encoder_names else ""))
        return dict(inputs), None

    def rows(self, inputs: Mapping[str, np.ndarray]) -> int:
        rows = {a.shape[0] for a in inputs.values()}
        if len(rows) != 1 or 0 in rows:
            raise OipError(422, f"the inputs' first dim (the batch: a sequence's rows) differs or is empty: "
                                f"{ {n: list(a.shape) for n, a in inputs.items()} }")
        return rows.pop()

    @staticmethod
    def unbatched(arrays: Mapping[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
        """The runtime's stream layout: the graph's without the batch axis for one row, with it for several."""
        return {k: v[0] if rows == 1 else v for k, v in arrays.items()}

    @staticmethod
    def batched(arrays: Mapping[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
        """Back to the graph's layout, batch first."""
        return {k: np.asarray(v)[None] if rows == 1 else np.asarray(v) for k, v in arrays.items()}


# ---------------------------------------------------------------------------------------------------- sequences


class Sequences:
    """Sequence ids -> the runtime's stream ids (bounded: entries whose stream is gone are dropped as the map
    grows past ``runtime.max_streams``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._streams: Dict[Tuple[str, Union[int, str]], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(parameters: Mapping[str, Any]) -> Optional[Tuple[str, Union[int, str]]]:
        """The sequence's key, or None for a request outside any sequence (no id, 0 or "")."""
        value = parameters.get("sequence_id")
        if value is None or value == 0 or value == "":
            for flag in ("sequence_start", "sequence_end"):
                if parameters.get(flag):
                    raise OipError(400, f"parameters.{flag} without a sequence_id")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, int) and value < 0):
            raise OipError(422, f"parameters.sequence_id: expected a positive integer or a string, got "
                                f"{json.dumps(value)}")
        return ("i", value) if isinstance(value, int) else ("s", value)

    def start(self, key, rows: int, inputs: Optional[Dict[str, np.ndarray]] = None) -> str:
        """Open the sequence's stream (``inputs``: an encoder-decoder's encoder inputs, the stream's layout)."""
        with self._lock:
            old = self._streams.pop(key, None)
        if old is not None:
            self._close(old)
        stream = self.runtime.open_stream(rows) if inputs is None else self.runtime.open_stream(rows, inputs=inputs)
        with self._lock:
            self._streams[key] = stream.id
            if len(self._streams) > 2 * self.runtime.max_streams:
                self._prune_locked()
        return stream.id

    def get(self, key, model: str) -> str:
        with self._lock:
            stream_id = self._streams.get(key)
        if stream_id is None:
            raise OipError(400, f"inference request for sequence {key[1]!r} to model {model!r} must specify the "
                                f"START flag on the first request of the sequence")
        return stream_id

    def end(self, key, stream_id: str) -> None:
        with self._lock:
            if self._streams.get(key) == stream_id:
                del self._streams[key]
        self._close(stream_id)

    def forget(self, key, stream_id: str) -> None:
        with self._lock:
            if self._streams.get(key) == stream_id:
                del self._streams[key]

    def _close(self, stream_id: str) -> None:
        try:
            self.runtime.close(stream_id)
        except UnknownStream:  # evicted or closed meanwhile
            pass

    def _prune_locked(self) -> None:
        for key, stream_id in list(self._streams.items()):
            try:
                self.runtime.get_stream(stream_id)
            except UnknownStream:
                del self._streams[key]


# ---------------------------------------------------------------------------------------------------- the service


@dataclass
class Step:
    """One infer request, checked and placed: ``stream_id`` None for a stateless forward, else the stream the
    request appends ``values`` to (its sequence ``key``, ``rows``, and whether it ends the sequence)."""

    inputs: Dict[str, np.ndarray]
    key: Any = None
    stream_id: Optional[str] = None
    rows: int = 0
    end: bool = False
    values: Any = None


class Service:
    """The protocol-independent part of OIP (HTTP here, gRPC in ``tsattn.runtime.oip_grpc``): model and version
    names, the model's tensors, sequences mapped onto streams, and the runtime calls with the /v1 API's limits."""

    def __init__(self, runtime: Runtime, predicts: threading.BoundedSemaphore, max_concurrent_predicts: int,
                 append_timeout_s: float) -> None:
        self.runtime = runtime
        self.model = _Model(runtime)
        self.sequences = Sequences(runtime)
        self.predicts = predicts
        self.max_concurrent_predicts = max_concurrent_predicts
        self.append_timeout_s = append_timeout_s

    def named(self, name: str, version: Optional[str] = None) -> None:
        if name != self.model.name:
            raise OipError(404, f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version not in (None, "", VERSION):
            raise OipError(404, f"model {name!r} has no version {version!r}; it has version {VERSION!r}")

    def begin(self, inputs: Dict[str, np.ndarray], parameters: Mapping[str, Any]) -> Step:
        """Check a request's inputs and sequence parameters; open or find its stream (``sequence_start``)."""
        model = self.model
        key = Sequences.key(parameters)
        if key is None:
            model.check(inputs, model.predict_inputs, "a request without a sequence_id (a stateless forward)")
            return Step(inputs)
        if not model.streams:
            raise NotSupported(f"model {model.name!r} does not stream: {self.runtime.streams_unsupported}; send the "
                               f"request without a sequence_id")
        start = _flag(parameters, "sequence_start", "parameters")
        end = _flag(parameters, "sequence_end", "parameters")
        steps, encoder = model.split(inputs, start)
        rows = model.rows(inputs)
        if start:
            stream_id = self.sequences.start(key, rows, None if encoder is None else model.unbatched(encoder, rows))
        else:
            stream_id = self.sequences.get(key, model.name)
        step = Step(inputs, key, stream_id, rows, end)
        try:
            stream = self.runtime.get_stream(stream_id)
            if stream.rows != rows:
                raise OipError(422, f"sequence {key[1]!r} has {stream.rows} rows (its first request's batch); this "
                                    f"request has {rows}")
            step.values = model.unbatched(steps, rows)
        except BaseException as exc:
            self.after(step, exc)
            raise
        return step

    def after(self, step: Step, error: Optional[BaseException] = None) -> None:
        """A sequence request is done: forget a stream that is gone, close one the request ends."""
        if isinstance(error, (StreamEvicted, UnknownStream)):
            self.sequences.forget(step.key, step.stream_id)
        if step.end:
            self.sequences.end(step.key, step.stream_id)

    def predict(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """A stateless forward (blocking: call it in a thread), at most ``max_concurrent_predicts`` at once."""
        if not self.predicts.acquire(blocking=False):
            raise Overloaded(f"{self.max_concurrent_predicts} predicts are running (max_concurrent_predicts)")
        try:
            return self.runtime.predict(inputs, self.model.graph.name)
        finally:
            self.predicts.release()

    def _timed_out(self) -> Overloaded:
        return Overloaded(f"the step did not run within {self.append_timeout_s:g} s; it may still be applied",
                          retry_after=1.0)

    @contextlib.contextmanager
    def _appending(self, step: Step):
        """Around a sequence request's append: ``after`` with the error it ended with, if any."""
        error = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.after(step, error)

    async def infer(self, step: Step) -> Dict[str, np.ndarray]:
        """Run a request on the event loop: the forward in a thread, or the append through the batching worker."""
        if step.stream_id is None:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(self.predict, step.inputs)
        from tsattn.runtime.server import _within

        with self._appending(step):
            try:
                result = await _within(self.runtime.append_async(step.stream_id, step.values), self.append_timeout_s)
            except asyncio.TimeoutError:
                raise self._timed_out() from None
        return self.model.batched(result.outputs, step.rows)

    def infer_blocking(self, step: Step) -> Dict[str, np.ndarray]:
        """``infer`` for a caller on a thread (the gRPC server's)."""
        if step.stream_id is None:
            return self.predict(step.inputs)
        import concurrent.futures

        with self._appending(step):
            try:
                result = self.runtime.submit(step.stream_id, step.values).result(self.append_timeout_s)
            except concurrent.futures.TimeoutError:
                raise self._timed_out() from None
        return self.model.batched(result.outputs, step.rows)

    def server_metadata(self) -> Dict[str, Any]:
        from tsattn import __version__

        return {"name": "tsattn-serve", "version": __version__, "extensions": EXTENSIONS}

    def repository_index(self) -> List[Dict[str, str]]:
        return [{"name": self.model.name, "version": VERSION, "state": "READY"}]


def retry_headers(exc: ServingError) -> Optional[Dict[str, str]]:
    if isinstance(exc, CapacityError):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
    return None


# ---------------------------------------------------------------------------------------------------- routes


def routes(runtime: Runtime, *, predicts: threading.BoundedSemaphore, max_concurrent_predicts: int,
           append_timeout_s: float) -> List[Route]:
    """The ``/v2`` routes for ``runtime`` (mounted by ``tsattn.runtime.server.create_app``, behind its Gate).
    ``predicts``: the semaphore that bounds the /v1 predicts, shared. ``app.state.oip`` (set by the caller) may
    hold the ``Service`` for other protocols: it is ``routes.service`` of the returned list."""
    service = Service(runtime, predicts, max_concurrent_predicts, append_timeout_s)
    model = service.model

    def v2(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except OipError as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except ServingError as exc:
                return error_response(exc.status, str(exc), retry_headers(exc))

        return endpoint

    def named(request: Request) -> None:
        service.named(request.path_params["name"], request.path_params.get("version"))

    def ok(body: Any) -> Response:
        return Response(json.dumps(body), media_type=JSON)

    async def server_metadata(request: Request) -> Response:
        return ok(service.server_metadata())

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def model_metadata(request: Request) -> Response:
        named(request)
        return ok(model.metadata())

    async def model_ready(request: Request) -> Response:
        named(request)
        return Response(status_code=200)

    async def repository_index(request: Request) -> Response:
        return ok(service.repository_index())

    async def infer(request: Request) -> Response:
        named(request)
        if request.headers.get("content-encoding", "identity") != "identity":
            raise OipError(415, f"Content-Encoding {request.headers['content-encoding']!r} is not accepted; send "
                                f"the request uncompressed")
        parsed = parse_infer(await request.body(), request.headers.get(HEADER_LENGTH))
        outputs = await service.infer(service.begin(parsed.inputs, parsed.parameters))
        return encode_response(model.name, parsed, outputs)

    table = _Routes([Route("/v2", v2(server_metadata), methods=["GET"]),
                     Route("/v2/health/live", v2(health), methods=["GET"]),
                     Route("/v2/health/ready", v2(health), methods=["GET"]),
                     Route("/v2/repository/index", v2(repository_index), methods=["POST"])])
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        table += [Route(base, v2(model_metadata), methods=["GET"]),
                  Route(base + "/ready", v2(model_ready), methods=["GET"]),
                  Route(base + "/infer", v2(infer), methods=["POST"])]
    table.service = service
    return table


def openapi_paths() -> Dict[str, Any]:
    """The /v2 paths for the app's OpenAPI document: the bodies as the Open Inference Protocol defines them (the
    binary tensor extension is a JSON header of Inference-Header-Content-Length bytes, then raw data)."""
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": sorted(DATATYPES)}, "data": {"type": "array", "description": "row-major values"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
    request = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor, "minItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object", "properties": {
                "binary_data": {"type": "boolean"}}}}}},
        "parameters": {"type": "object", "properties": {
            "sequence_id": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
                            "description": "a sequence is a stream; 0 or absent: a stateless forward"},
            "sequence_start": {"type": "boolean"}, "sequence_end": {"type": "boolean"},
            "binary_data_output": {"type": "boolean"}}}}}
    response = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": tensor}}}
    error = {"description": "v2 error", "content": {JSON: {"schema": {
        "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
    errors = {str(c): error for c in (400, 401, 404, 409, 410, 413, 422, 429, 503)}

    def get(summary: str, body: Optional[Dict[str, Any]] = None, params: Sequence[str] = ()) -> Dict[str, Any]:
        ok: Dict[str, Any] = {"description": "OK"}
        if body is not None:
            ok["content"] = {JSON: {"schema": body}}
        return {"summary": summary, "tags": ["oip"], "responses": {"200": ok, "401": error, "404": error},
                "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                               for p in params]}

    metadata = {"type": "object", "properties": {"name": {"type": "string"}, "versions": {"type": "array"},
                                                 "platform": {"type": "string"}, "inputs": {"type": "array"},
                                                 "outputs": {"type": "array"}}}
    infer = {"summary": "Infer: a stateless forward, or a sequence's step (parameters.sequence_id)", "tags": ["oip"],
             "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
             "requestBody": {"required": True, "content": {JSON: {"schema": request},
                                                           "application/octet-stream": {"schema": {
                                                               "type": "string", "format": "binary"}}}},
             "responses": {"200": {"description": "OK", "content": {JSON: {"schema": response},
                                                                    "application/octet-stream": {"schema": {
                                                                        "type": "string", "format": "binary"}}}},
                           **errors}}
    return {"/v2": {"get": get("Server metadata (Open Inference Protocol)", {"type": "object"})},
            "/v2/health/live": {"get": get("Liveness (no token needed)")},
            "/v2/health/ready": {"get": get("Readiness (no token needed)")},
            "/v2/models/{name}": {"get": get("Model metadata: inputs and outputs", metadata, ("name",))},
            "/v2/models/{name}/ready": {"get": get("Model readiness", None, ("name",))},
            "/v2/models/{name}/infer": {"post": infer},
            "/v2/repository/index": {"post": dict(get("The served model", {"type": "array"}), summary="Repository "
                                                                                                   "index")}}


class _Routes(list):
    """The route list, carrying the ``Service`` behind it (``.service``) for the gRPC server."""

    service: Service


__all__ = ["DATATYPES", "InferRequest", "OPEN_PATHS", "OipError", "Sequences", "Service", "Step",
           "encode_response", "openapi_paths", "parse_infer", "retry_headers", "routes"]
