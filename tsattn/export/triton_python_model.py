"""model.py of a Triton Python-backend entry (``tsattn-export --triton-repo DIR --triton-backend python``): runs
the export's ONNX graph with ONNX Runtime on the CPU and keeps each sequence's KV cache itself.

This file is copied verbatim into ``DIR/<name>/1/model.py``, beside the export's ``model.onnx`` and
``tsattn_stream.json`` (what the graph takes and returns, written from the manifest). It needs numpy and
onnxruntime in the Python the backend's stub runs (the stub's own environment, or the virtual environment named by
the config's ``EXECUTION_ENV_PATH``), nothing of tsattn.

Sequences: the sequence batcher gives every request the controls ``START``, ``END`` (INT32 0/1) and ``CORRID``
(UINT64), each of shape [1]. ``START`` begins the sequence's cache empty, each request feeds the cache it left
and keeps the graph's ``present`` tensors for the next one, ``END`` frees it; a cache idle for longer than the
sequence batcher's idle limit is dropped too (Triton has freed that sequence's slot). A request without a cache
(not started, or dropped) is an error naming the sequence; so is one that would pass a cache that does not slide
(absolute positions). A graph that takes its start position (the task's ``position``) gets the sequence's step
count before the request. An export without a cache is stateless: each request is one forward.

Under NumPy 2, tensors cross the stub by DLPack, not by ``as_numpy()`` / ``Tensor(name, ndarray)``: the stub's
pybind11 NumPy interop (the nvidia-pytriton wheel's stubs, Triton 2.51) is compiled against the NumPy 1.x ABI, and
under NumPy 2 it reads input data wrongly (zeros, or the first value repeated) and gives outputs a byte size of 0
(Triton then answers "output tensor shape does not match size of output"). Under NumPy 1.x the stub's own
conversions are the ones that work (its ``Tensor.from_dlpack`` of a NumPy 1.x array fails on the capsule's name).
The stub marks a DLPack capsule it consumed ``used_dlpack`` where the protocol says ``used_dltensor``, so NumPy 2's
capsule destructor reports "PyCapsule_GetPointer called with incorrect name" (an unraisable error) and frees
nothing, which is right: the stub's deleter frees the tensor. That one report is kept out of the server's log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

try:  # present inside Triton's Python backend only; the class below works without it (tests drive it directly)
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - outside Triton
    pb_utils = None

STREAM_FILE = "tsattn_stream.json"
MAX_SEQUENCES = 4096  # caches kept at most; beyond, the least recently used one is dropped


class StepError(ValueError):
    """A request this model refuses (answered as the request's error)."""


class SequenceModel:
    """The export's graph and the caches of open sequences; ``step(corrid, start, end, inputs)`` is one request."""

    def __init__(self, model_dir: str, threads: int = 1, idle_s: Optional[float] = None,
                 clock=time.monotonic) -> None:
        import onnxruntime as ort

        with open(os.path.join(model_dir, STREAM_FILE)) as f:
            self.spec = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, self.spec["model"]), options,
                                            providers=["CPUExecutionProvider"])
        cache = self.spec["cache"]
        self.cache = cache
        self.inputs: List[str] = self.spec["inputs"]
        self.outputs: List[str] = self.spec["outputs"]
        self.idle_s = idle_s
        self._clock = clock
        self.position = self.spec.get("position")
        self._caches: "OrderedDict[int, Tuple[List[np.ndarray], float, int]]" = OrderedDict()  # past, used, steps

    def _empty(self, rows: int) -> List[np.ndarray]:
        dtype = np.dtype(self.cache["dtype"])
        return [np.zeros((rows, t["heads"], 0, t["dim"]), dtype) for t in self.cache["tensors"]]

    def _drop_idle(self, now: float) -> None:
        if self.idle_s is None:
            return
        while self._caches:
            corrid, (_, used, _) = next(iter(self._caches.items()))
            if now - used <= self.idle_s:
                break
            del self._caches[corrid]

    def step(self, corrid: int, start: bool, end: bool, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """One request: the graph on ``inputs`` (graph layout, batch first) after the sequence's cache; returns
        the outputs the config declares (the cache tensors stay here)."""
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise StepError(f"missing input(s) {missing}")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.inputs}
        if self.cache is None:
            return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        now = self._clock()
        self._drop_idle(now)
        rows = int(feed[self.spec["batch_input"]].shape[0])
        if start:
            past, steps = self._empty(rows), 0
        elif corrid in self._caches:
            past, _, steps = self._caches[corrid]
        else:
            raise StepError(f"sequence {corrid} has no cache here: it was never started (START), it ended, or it "
                            f"was idle for longer than {self.idle_s} s")
        if past[0].shape[0] != rows:
            raise StepError(f"sequence {corrid} has {past[0].shape[0]} rows (its first request's batch); this "
                            f"request has {rows}")
        tensors = self.cache["tensors"]
        feed.update({t["past"]: p for t, p in zip(tensors, past)})
        if self.position is not None:  # the graph's start position: the steps the sequence holds before these
            feed[self.position["name"]] = np.asarray(steps, dtype=self.position["dtype"])
        new = int(feed[self.position["input"]].shape[self.position["time_axis"]]) if self.position else 0
        names = self.outputs + [t["present"] for t in tensors]
        out = dict(zip(names, self.session.run(names, feed)))
        present = [out.pop(t["present"]) for t in tensors]
        length = present[0].shape[2]
        if not self.cache["sliding"] and length > self.cache["max_context"]:
            raise StepError(f"sequence {corrid} would hold {length} positions; this export's cache holds at most "
                            f"{self.cache['max_context']} (absolute positions): end the sequence and start a new one")
        if end:
            self._caches.pop(corrid, None)
        else:
            self._caches[corrid] = (present, now, steps + new)
            self._caches.move_to_end(corrid)
            while len(self._caches) > MAX_SEQUENCES:
                self._caches.popitem(last=False)
        return out

    def sequences(self) -> int:
        return len(self._caches)


NUMPY_2 = int(np.__version__.split(".")[0]) >= 2  # see the module docstring: how tensors cross the stub


def _numpy(tensor) -> np.ndarray:
    return np.from_dlpack(tensor) if NUMPY_2 else tensor.as_numpy()


CAPSULE_NAME_ERROR = "PyCapsule_GetPointer called with incorrect name"


def _quiet_consumed_capsules(hook):
    """``sys.unraisablehook`` without NumPy's report on the capsules the stub consumed (see the module docstring)."""
    def filtered(unraisable) -> None:
        if isinstance(unraisable.exc_value, ValueError) and str(unraisable.exc_value) == CAPSULE_NAME_ERROR:
            return
        hook(unraisable)

    return filtered


def _tensor(name: str, array: np.ndarray):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)


class TritonPythonModel:
    """The Python backend's entry points."""

    def initialize(self, args: Dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds")
        params = {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items()}
        self.model = SequenceModel(model_dir, threads=int(params.get("threads") or 1),
                                   idle_s=None if not idle_us else int(idle_us) / 1e6)
        self.sequence = "sequence_batching" in config
        if NUMPY_2:
            sys.unraisablehook = _quiet_consumed_capsules(sys.unraisablehook)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {}
                for name in self.model.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        inputs[name] = _numpy(tensor)
                corrid, start, end = 0, False, False
                if self.sequence:
                    start = bool(_numpy(pb_utils.get_input_tensor_by_name(request, "START")).reshape(-1)[0])
                    end = bool(_numpy(pb_utils.get_input_tensor_by_name(request, "END")).reshape(-1)[0])
                    corrid = int(_numpy(pb_utils.get_input_tensor_by_name(request, "CORRID")).reshape(-1)[0])
                outputs = self.model.step(corrid, start, end, inputs)
                tensors = [_tensor(n, a) for n, a in outputs.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # one request's error, not the model's
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"{type(exc).__name__}: {exc}" if not isinstance(exc, StepError) else str(exc))))
        return responses

    def finalize(self) -> None:
        self.model = None
