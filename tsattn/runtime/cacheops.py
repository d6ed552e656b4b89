"""Device-side gather and scatter of KV caches: stepping N streams in one batched call without leaving the device.

Each stream's cache lives in ONNX Runtime values (``OrtValue``) on the session's device. To step N streams in
one call, their caches are concatenated along the batch axis (``gather``) and the batched ``present`` tensors are
split back into per-stream pieces afterwards (``scatter``). Both run as tiny ONNX graphs (``Concat``, ``Split``,
no weights) in sessions on the same execution provider, bound with IO binding, so a CUDA cache never visits the
host and a CPU cache is copied once by the same kernels the model uses.

The graphs are written here with a minimal protobuf encoder (the ``ModelProto`` fields that a Concat/Split graph
needs), so that the runtime needs onnxruntime and numpy only, not the ``onnx`` package. Tests check the bytes
with ``onnx.checker``.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Sequence, Tuple

import numpy as np

# ONNX TensorProto.DataType codes
ELEM_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "float64": 11,
              "uint64": 13}

_OPSET = 17  # Split with a ``split`` input, Concat: stable since 13; every ONNX Runtime >= 1.14 runs 17


# ---------------------------------------------------------------------------------------------------- encoder


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode())


def _value_info(name: str, elem_type: int, rank: int = 0) -> bytes:
    """ValueInfoProto: a tensor of ``elem_type``; ``rank`` > 0 gives that many unnamed (symbolic) dims."""
    dims = b"".join(_bytes(1, b"") for _ in range(rank))  # TensorShapeProto.dim: Dimension without value or param
    tensor = _int(1, elem_type) + (_bytes(2, dims) if rank else b"")  # TypeProto.Tensor: elem_type, shape
    return _str(1, name) + _bytes(2, _bytes(1, tensor))  # ValueInfoProto: name, type(TypeProto.tensor_type)


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, axis: int) -> bytes:
    attr = _str(1, "axis") + _int(3, axis) + _int(20, 2)  # AttributeProto: name, i, type=INT
    return (b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs) + _str(3, name)
            + _str(4, op) + _bytes(5, attr))


def _model(nodes: List[bytes], inputs: List[bytes], outputs: List[bytes], name: str) -> bytes:
    graph = (b"".join(_bytes(1, n) for n in nodes) + _str(2, name) + b"".join(_bytes(11, i) for i in inputs)
             + b"".join(_bytes(12, o) for o in outputs))
    opset = _str(1, "") + _int(2, _OPSET)
    return _int(1, 8) + _str(2, "tsattn.runtime") + _bytes(7, graph) + _bytes(8, opset)  # ir_version 8


def concat_model(parts: int, tensors: int, dtype: str = "float32", rank: int = 4, axis: int = 0) -> bytes:
    """``y{k} = Concat(x{k}_0, ..., x{k}_{parts-1}, axis)`` for k < ``tensors``; inputs in order k-major."""
    et = ELEM_TYPES[dtype]
    inputs = [_value_info(f"x{k}_{j}", et, rank) for k in range(tensors) for j in range(parts)]
    outputs = [_value_info(f"y{k}", et, rank) for k in range(tensors)]
    nodes = [_node("Concat", [f"x{k}_{j}" for j in range(parts)], [f"y{k}"], f"concat{k}", axis)
             for k in range(tensors)]
    return _model(nodes, inputs, outputs, f"concat_{parts}x{tensors}")


def split_model(parts: int, tensors: int, dtype: str = "float32", rank: int = 4, axis: int = 0) -> bytes:
    """``x{k}_0, ..., x{k}_{parts-1} = Split(y{k}, sizes, axis)``; ``sizes`` is an int64 vector of ``parts``."""
    et = ELEM_TYPES[dtype]
    inputs = [_value_info(f"y{k}", et, rank) for k in range(tensors)] + [_value_info("sizes", ELEM_TYPES["int64"], 1)]
    outputs = [_value_info(f"x{k}_{j}", et, rank) for k in range(tensors) for j in range(parts)]
    nodes = [_node("Split", [f"y{k}", "sizes"], [f"x{k}_{j}" for j in range(parts)], f"split{k}", axis)
             for k in range(tensors)]
    return _model(nodes, inputs, outputs, f"split_{parts}x{tensors}")


# ---------------------------------------------------------------------------------------------------- the ops


def bucket(parts: int) -> int:
    """The number of parts a graph is built for: exact up to 8, then the next multiple of 8 (padding parts are
    zero-row tensors, which Concat and Split handle as no-ops), so that a few sessions serve every batch size."""
    return parts if parts <= 8 else -(-parts // 8) * 8


class CacheOps:
    """Gather/scatter of per-stream caches on one device; one small session per bucket of stream counts
    (``bucket``, made on first use; a bucket's unused parts are zero-row tensors).

    ``gather(caches)``: caches[j] is stream j's list of ``tensors`` OrtValues (same shape but for axis 0); returns
    ``tensors`` OrtValues, each the concatenation over streams along axis 0. ``scatter(batched, rows)``: the
    inverse, ``rows[j]`` rows each.
    """

    def __init__(self, tensors: int, dtype: str, providers: List, device_type: str, device_id: int,
                 threads: int = 1) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.tensors = tensors
        self.dtype = dtype
        self.providers = providers
        self.device_type = device_type
        self.device_id = device_id
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.options.log_severity_level = 3
        self._sessions: Dict[Tuple[str, int], object] = {}
        self._lock = threading.Lock()

    def _session(self, kind: str, parts: int):
        key = (kind, parts)
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    build = concat_model if kind == "concat" else split_model
                    session = self._ort.InferenceSession(build(parts, self.tensors, self.dtype), self.options,
                                                         providers=self.providers)
                    self._sessions[key] = session
        return session

    def _empty_like(self, value):
        shape = value.shape()
        return self._ort.OrtValue.ortvalue_from_shape_and_type([0] + list(shape[1:]), np.dtype(self.dtype),
                                                                self.device_type, self.device_id)

    def gather(self, caches: Sequence[Sequence]) -> List:
        n = len(caches)
        parts = bucket(n)
        session = self._session("concat", parts)
        io = session.io_binding()
        for k in range(self.tensors):
            pad = self._empty_like(caches[0][k]) if parts > n else None
            for j in range(parts):
                io.bind_ortvalue_input(f"x{k}_{j}", caches[j][k] if j < n else pad)
        for k in range(self.tensors):
            io.bind_output(f"y{k}", self.device_type, self.device_id)
        session.run_with_iobinding(io)
        return list(io.get_outputs())

    def scatter(self, batched: Sequence, rows: Sequence[int]) -> List[List]:
        n = len(rows)
        parts = bucket(n)
        session = self._session("split", parts)
        io = session.io_binding()
        for k in range(self.tensors):
            io.bind_ortvalue_input(f"y{k}", batched[k])
        sizes = np.zeros(parts, dtype=np.int64)
        sizes[:n] = rows
        io.bind_cpu_input("sizes", sizes)  # a shape argument: ONNX Runtime reads it on the host
        for k in range(self.tensors):
            for j in range(parts):
                io.bind_output(f"x{k}_{j}", self.device_type, self.device_id)
        session.run_with_iobinding(io)
        flat = list(io.get_outputs())  # k-major, as bound
        return [[flat[k * parts + j] for k in range(self.tensors)] for j in range(n)]


__all__ = ["CacheOps", "ELEM_TYPES", "bucket", "concat_model", "split_model"]
