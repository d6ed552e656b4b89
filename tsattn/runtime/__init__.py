"""ONNX Runtime sessions, per-stream KV-cache state and the server (``tsattn-serve``).

    engine.py    load(export_dir) -> Runtime: streams of every cached export (open_stream/append/generate/close)
                 with caches kept as OrtValues on the device, batched stepping, stateless predict; composed of
    sessions.py  verified sessions and the stream contract read from the manifest's task
    inputs.py    input validation (named step inputs, values, encoder and predict inputs)
    streams.py   the stream registry and eviction (max_streams, max_cache_bytes, idle TTL)
    scheduler.py the append queue, its worker thread and batching across streams
    device.py    execution providers: CUDA with IO binding when a GPU is usable, else CPU; what a session really got
    cacheops.py  device-side gather/scatter of caches for batched steps (tiny Concat/Split graphs)
    errors.py    the runtime's errors, each with its HTTP status
    limits.py    what one request may cost: chunk sizes of long inputs, JSON depth and number size, defaults
    chunked.py   a long input through the cache graph in chunks, presents fed back on the device
    validate.py  the manifest checked against its ONNX graph at load (ManifestError naming the field)
    server.py    the ASGI app (Starlette): streams, predict, health, metrics, token, limits
    oip.py       the Open Inference Protocol (KServe v2, Triton's dialect) under /v2: sequences are streams
    oip_grpc.py  the same over gRPC (tsattn-serve --grpc-port), from tritonclient's service definitions
    protocol.py  uvicorn's HTTP protocol with request-head limits and JSON errors before the app
    cli.py       tsattn-serve

Importing ``tsattn.runtime`` needs onnxruntime and numpy only (no torch; the server's modules import FastAPI when
used).
"""

from tsattn.export.manifest import ManifestError
from tsattn.runtime.device import DeviceUnavailable
from tsattn.runtime.engine import Runtime, StepResult, Stream, load
from tsattn.runtime.errors import (CacheFull, CapacityError, InputError, NonFiniteOutput, NotSupported,
                                   OffsetMismatch, Overloaded, ServingError, StreamEvicted, TooManyStreams,
                                   TooManyValues, UnknownStream)

__all__ = ["CacheFull", "CapacityError", "DeviceUnavailable", "InputError", "ManifestError", "NonFiniteOutput", "NotSupported",
           "OffsetMismatch", "Overloaded", "Runtime", "ServingError", "StepResult", "Stream", "StreamEvicted",
           "TooManyStreams", "TooManyValues", "UnknownStream", "load"]
