"""The Open Inference Protocol over gRPC (``tsattn-serve --grpc-port N``): Triton's ``inference.GRPCInferenceService``
from the service definitions that ``tritonclient`` ships (``tritonclient.grpc.service_pb2``/``service_pb2_grpc``),
served with grpcio, on the same ``Service`` as the HTTP ``/v2`` API (``tsattn.runtime.oip``): one model, one map of
sequences onto streams, one predict limit.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer (tensors in
``raw_input_contents`` or typed ``contents``; outputs in ``raw_output_contents``), RepositoryIndex. The other
methods (streaming infer, model control, shared memory, statistics, traces) answer UNIMPLEMENTED.

Same rules as HTTP: with a token every method but ServerLive/ServerReady needs the metadata ``authorization:
Bearer <token>``; a message over ``max_body_bytes`` is refused by grpcio (RESOURCE_EXHAUSTED); requests are
counted in the app's Prometheus metrics (route ``grpc:<Method>``, the HTTP status the error maps from). Statuses
map to gRPC codes in one place (``CODES``); the message is the one HTTP answers.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from tsattn.runtime.errors import ServingError
from tsattn.runtime.oip import DATATYPES, NUMPY_TO_V2, OipError, Service, _shape

log = logging.getLogger("tsattn.runtime.oip_grpc")

OPEN_METHODS = ("ServerLive", "ServerReady")
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


def _codes():
    import grpc

    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            404: grpc.StatusCode.NOT_FOUND, 410: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
            415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
            429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}


def _parameter(p) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _tensor(t, raw: Optional[bytes]) -> np.ndarray:
    what = f"input {t.name!r}"
    if t.datatype not in DATATYPES:
        raise OipError(422, f"{what}: datatype {t.datatype!r} is not served; one of {sorted(DATATYPES)}")
    shape = _shape(list(t.shape), what)
    dtype = np.dtype(DATATYPES[t.datatype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise OipError(422, f"{what}: {len(raw)} bytes of raw contents; shape {list(shape)} of {t.datatype} "
                                f"needs {count * dtype.itemsize}")
        array = np.frombuffer(raw, dtype=dtype)
    else:
        values = list(getattr(t.contents, CONTENTS[t.datatype]))
        if len(values) != count:
            raise OipError(422, f"{what}: {len(values)} values for shape {list(shape)} ({count} values)")
        array = np.asarray(values).astype(dtype)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


class Servicer:
    """The ``GRPCInferenceService`` methods on a ``Service`` (registered by ``serve``)."""

    def __init__(self, service: Service, token: Optional[str], metrics=None) -> None:
        from tritonclient.grpc import service_pb2 as pb

        self.pb = pb
        self.service = service
        self.token = token.encode() if token else None
        self.metrics = metrics
        self.codes = _codes()

    # the plumbing: token, errors, metrics -------------------------------------------------------------------

    def _call(self, method: str, context, body):
        started = time.perf_counter()
        status = 200
        try:
            if self.token is not None and method not in OPEN_METHODS:
                given = dict(context.invocation_metadata()).get("authorization", "")
                scheme, _, value = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                    raise OipError(401, "missing or wrong bearer token (metadata authorization: Bearer <token>)")
            return body()
        except (OipError, ServingError) as exc:
            status = exc.status
            message = exc.message if isinstance(exc, OipError) else str(exc)
            context.abort(self.codes.get(status, self.codes[400]), message)
        except Exception:
            status = 500
            log.exception("gRPC %s failed", method)
            import grpc

            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (see the server's log)")
        finally:
            if self.metrics is not None:
                self.metrics.observe(f"grpc:{method}", "POST", status, time.perf_counter() - started)

    # the methods ----------------------------------------------------------------------------------------------

    def ServerLive(self, request, context):
        return self._call("ServerLive", context, lambda: self.pb.ServerLiveResponse(live=True))

    def ServerReady(self, request, context):
        return self._call("ServerReady", context, lambda: self.pb.ServerReadyResponse(ready=True))

    def ModelReady(self, request, context):
        def body():
            try:
                self.service.named(request.name, request.version)
            except OipError:
                return self.pb.ModelReadyResponse(ready=False)
            return self.pb.ModelReadyResponse(ready=True)

        return self._call("ModelReady", context, body)

    def ServerMetadata(self, request, context):
        return self._call("ServerMetadata", context, lambda: self.pb.ServerMetadataResponse(
            **self.service.server_metadata()))

    def ModelMetadata(self, request, context):
        def body():
            self.service.named(request.name, request.version)
            meta = self.service.model.metadata()
            tensor = self.pb.ModelMetadataResponse.TensorMetadata
            return self.pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

        return self._call("ModelMetadata", context, body)

    def RepositoryIndex(self, request, context):
        index = self.pb.RepositoryIndexResponse.ModelIndex
        return self._call("RepositoryIndex", context, lambda: self.pb.RepositoryIndexResponse(
            models=[index(**m) for m in self.service.repository_index()]))

    def ModelInfer(self, request, context):
        return self._call("ModelInfer", context, lambda: self._infer(request))

    def _infer(self, request):
        service = self.service
        service.named(request.model_name, request.model_version)
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise OipError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        inputs: Dict[str, np.ndarray] = {}
        for i, t in enumerate(request.inputs):
            if t.name in inputs:
                raise OipError(422, f"input {t.name!r} is given twice")
            inputs[t.name] = _tensor(t, raw[i] if raw else None)
        parameters = {k: _parameter(v) for k, v in request.parameters.items()}
        step = service.begin(inputs, parameters)
        outputs = service.infer_blocking(step)
        wanted = [o.name for o in request.outputs] or list(outputs)
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise OipError(422, f"unknown output(s) {unknown}; the model's outputs are {list(outputs)}")
        response = self.pb.ModelInferResponse(model_name=service.model.name, model_version="1", id=request.id)
        for name in wanted:
            array = np.ascontiguousarray(outputs[name])
            response.outputs.add(name=name, datatype=NUMPY_TO_V2[array.dtype.name], shape=list(array.shape))
            response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        return response


def serve(service: Service, host: str, port: int, *, token: Optional[str] = None, max_message_bytes: int = 1 << 20,
          metrics=None, workers: int = 8) -> Tuple[Any, int]:
    """Start the gRPC server on host:port (0: a free port); returns (the grpc server, the bound port). Raises
    ``OSError`` when it cannot listen. ``server.stop(grace)`` stops it."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsattn-grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.so_reuseport", 0)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Generic(Servicer(service, token, metrics)), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, bound


def _Generic(servicer: Servicer):
    """The generated servicer base class with our methods; the rest answer UNIMPLEMENTED (the base's default)."""
    from tritonclient.grpc import service_pb2_grpc

    class GRPCInferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
        pass

    instance = GRPCInferenceService()
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                 "RepositoryIndex"):
        setattr(instance, name, getattr(servicer, name))
    return instance


__all__ = ["OPEN_METHODS", "Servicer", "serve"]
