"""The runtime: ONNX Runtime sessions for an export, streams with a KV cache kept on the device, stateless predict.

``load(export_dir)`` reads and verifies the export (``tsattn.export.manifest``: every file's size and sha256; the
ONNX bytes that are hashed are the bytes the session is built from), opens one session per graph on the chosen
device (``tsattn.runtime.device``) and returns a ``Runtime``:

    rt = load("exported_models/reference")             # device="auto": CUDA if a GPU is usable, else CPU
    s = rt.open_stream()                                # channels=C: a C-channel series, C rows of the batch
    forecast = rt.append(s, [0.1, 0.3, 0.2])           # (horizon,) after the last observation; (horizon, C)
    forecast = rt.append(s, 0.4)                        # one more observation: one cached step
    rt.close(s)
    out = rt.predict({"values": batch})                 # stateless: a full forward, caches empty

Streams. A stream's cache is the list of ``present`` tensors of its last call, kept as ``OrtValue`` on the
session's device and bound as the next call's ``past`` with IO binding: no copy through numpy per step (on CUDA the
cache never visits the host). The graph trims ``present`` to ``max_context`` positions (the manifest's cache
spec), so the window slides by itself. Appends are queued and stepped by one worker thread; appends of different
streams whose caches have the same length and which add the same number of values are stepped together in one
batched session call (their caches gathered along the batch axis and split afterwards on the device,
``tsattn.runtime.cacheops``); the present tensors of a batched step stay one block, which is the next past as it
is when the same streams step together again (the steady state of concurrent streams: no gather, no scatter).
``batch_window_ms``: the worker waits while appends keep arriving, until none came for that long (at most ten
windows after the first), so that concurrent streams step together; 0: no waiting, batches form only from appends
that queued while the worker was busy. ``max_batch`` caps a batch (1: no batching). Two appends to one stream are
never in one batch: they are applied in the order they were submitted.

Limits. ``max_streams`` open streams and ``max_cache_bytes`` of cache in all: beyond either, the least recently
used stream without an append in flight is evicted; ``idle_ttl_s``: a stream unused that long is evicted (checked
on every call and by ``sweep()``; ``clock`` is injectable). An evicted stream's id answers ``StreamEvicted``
(naming the reason), an unknown one ``UnknownStream``. ``max_pending`` queued appends (``Overloaded``),
``max_append`` values per append and ``max_predict_values`` per predict (``TooManyValues``). Every method is
thread-safe.

Hostile input (``tsattn.runtime.limits``): a long append or a predict on the cache graph runs in chunks of at most
``PREFILL_CHUNK`` positions and ``CALL_POSITIONS`` rows x positions per session call, each chunk's presents fed
back on the device, so memory grows linearly with a request's length; an append whose outputs would not be
finite is refused (``NonFiniteOutput``) before its stream's cache changes; ``append(..., offset=n)`` applies the
values only if the stream has observed ``n`` before them (``OffsetMismatch`` otherwise: a retry is applied once);
``load`` checks the manifest against its graphs (``tsattn.runtime.validate``).

Streams of every cached export. The manifest's task (``tsattn.export.task.Task``) names the step inputs and outputs
with their time axes: ``append(s, {name: array})`` takes them (no batch axis for a one-row stream, one or many
steps) and returns every step output for the new steps; the values form above is kept for an export with one step
input whose time axis follows the batch. An encoder-decoder's stream opens with its encoder inputs
(``open_stream(inputs=...)``: the encoder runs once); a graph with a start position gets the stream's step count;
``generate`` samples a ``causal_lm``. A cache that does not slide (absolute positions) refuses an append past its
``max_context`` (``CacheFull``, 409) and the stream stays as it was.

One job per module: ``sessions.py`` (verified sessions, the stream contract), ``inputs.py`` (input validation),
``streams.py`` (the stream registry and eviction), ``scheduler.py`` (the append queue, the worker and batching);
``Runtime`` here composes them and holds what runs a step (device caches, gather and scatter, the encoder) and
predict.

Only onnxruntime and numpy are imported (torch is not needed to serve).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import asyncio

from tsattn.export.manifest import Manifest, ManifestError, load_manifest
from tsattn.runtime import limits
from tsattn.runtime.cacheops import CacheOps
from tsattn.runtime.chunked import finite_rows, joined, run_cached
from tsattn.runtime.errors import (CacheFull, InputError, NonFiniteOutput, NotSupported, OffsetMismatch, Overloaded,
                                   TooManyStreams, TooManyValues)
from tsattn.runtime.inputs import InputChecks
from tsattn.runtime.scheduler import Scheduler, StepResult, _Append, _resolve
from tsattn.runtime.sessions import Sessions, _StreamGraph
from tsattn.runtime.streams import Stream, StreamRegistry, _Block

log = logging.getLogger("tsattn.runtime")

COUNTERS = ("opened", "closed", "model_calls", "appends", "batched_calls", "batched_appends", "predict_calls",
            "encoder_calls", "rejected_overloaded", "rejected_offset", "rejected_nonfinite", "rejected_cache_full")
DEFAULT_MAX_APPEND = 2048  # a prefill longer than the window is fine (stacked windows reach further back)


class Runtime(Sessions, InputChecks, StreamRegistry, Scheduler):
    """Sessions, streams and predict for one export (see the module docstring). Build with ``load``."""

    def __init__(self, manifest: Manifest, *, device: str = "auto", threads: Optional[int] = 1,
                 max_streams: int = 1024, max_cache_bytes: Optional[int] = 1 << 30,
                 idle_ttl_s: Optional[float] = 900.0, batch_window_ms: float = 0.0, max_batch: int = 64,
                 max_pending: int = 4096, max_append: Optional[int] = None, max_predict_values: int = limits.DEFAULT_MAX_PREDICT_VALUES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, value in (("max_streams", max_streams), ("max_batch", max_batch), ("max_pending", max_pending),
                            ("max_predict_values", max_predict_values)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if max_cache_bytes is not None and (not isinstance(max_cache_bytes, int) or max_cache_bytes < 1):
            raise ValueError(f"max_cache_bytes must be a positive integer or None; got {max_cache_bytes!r}")
        if idle_ttl_s is not None and not (idle_ttl_s > 0):
            raise ValueError(f"idle_ttl_s must be > 0 or None; got {idle_ttl_s!r}")
        if not (batch_window_ms >= 0 and math.isfinite(batch_window_ms)):
            raise ValueError(f"batch_window_ms must be >= 0; got {batch_window_ms!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
        if manifest.root is None:
            raise ManifestError("the manifest has no export directory (load it with load_manifest)")
        self.manifest = manifest
        self.name = manifest.name
        self.max_streams = max_streams
        self.max_cache_bytes = max_cache_bytes
        self.idle_ttl_s = idle_ttl_s
        self.batch_window_s = batch_window_ms / 1e3
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_predict_values = max_predict_values
        self._clock = clock

        self._open_sessions(device, threads)
        where = self.placement

        self._stream_graph, self.streams_unsupported = self._streaming_spec()
        cache = manifest.cache
        if max_append is None:
            max_append = DEFAULT_MAX_APPEND
        if isinstance(max_append, bool) or not isinstance(max_append, int) or max_append < 1:
            raise ValueError(f"max_append must be a positive integer; got {max_append!r}")
        self.max_append = max_append
        self._cacheops = None
        if self._stream_graph is not None:
            self._cacheops = CacheOps(len(cache.cache_tensors()), cache.dtype, list(where.providers),
                                      self._device_type, where.device_id, threads=threads or 1)
            self._itemsize = np.dtype(cache.dtype).itemsize
            sg = self._stream_graph
            if sg.statics:
                dtypes = {sg.graph.input(n).dtype for n in sg.statics}
                if len(dtypes) != 1:
                    raise ManifestError(f"the encoder's outputs fed to every step have dtypes {sorted(dtypes)}; the "
                                        f"runtime gathers them as one")
                self._staticops = CacheOps(len(sg.statics), dtypes.pop(), list(where.providers), self._device_type,
                                           where.device_id, threads=threads or 1)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._streams: "collections.OrderedDict[str, Stream]" = collections.OrderedDict()  # LRU order
        self._evicted: "collections.OrderedDict[str, str]" = collections.OrderedDict()
        self._queue: "collections.deque[_Append]" = collections.deque()
        self._cache_bytes = 0
        self._last_sweep = -math.inf
        self._counters = collections.Counter()
        self._evictions = collections.Counter()
        self._worker: Optional[threading.Thread] = None
        self._stopping = False


    # ------------------------------------------------------------------------------------------------ streams

    def open_stream(self, channels: int = 1, inputs: Optional[Mapping[str, Any]] = None) -> Stream:
        """A new stream of ``channels`` rows (a C-channel series is C rows: the model is channel-independent).

        ``inputs``: for an encoder-decoder (task kind ``seq2seq``), the encoder's inputs by name (the source
        sequence, no batch axis for one row): the encoder runs once here and its outputs feed every step of the
        stream. Raises ``NotSupported`` (no cache; encoder inputs for an export without an encoder),
        ``InputError`` (channels < 1, bad encoder inputs, or one stream's full cache would exceed
        ``max_cache_bytes``), ``TooManyStreams`` (``max_streams`` open, all busy).
        """
        sg = self._streams_or_raise()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise InputError(f"channels must be a positive integer; got {channels!r}")
        if channels > limits.MAX_CHANNELS:
            raise TooManyValues(f"channels={channels}: a stream has at most {limits.MAX_CHANNELS} channels "
                                f"(max_channels)")
        full = sg.cache.max_context
        if self.max_cache_bytes is not None and full is not None:
            need = sg.cache.bytes_per_position(self._itemsize) * full * channels
            if need > self.max_cache_bytes:
                raise InputError(f"a stream of {channels} channels needs up to {need} bytes of cache, more than "
                                 f"max_cache_bytes={self.max_cache_bytes}")
        statics = self._encode(inputs, channels, sg)
        with self._lock:
            now = self._clock()
            self._sweep_locked(now)
            while len(self._streams) >= self.max_streams:
                if not self._evict_lru_locked("max_streams"):
                    raise TooManyStreams(f"{len(self._streams)} streams are open (max_streams={self.max_streams}) "
                                         f"and every one has an append in flight", retry_after=1.0)
            stream_id = secrets.token_hex(8)
            while stream_id in self._streams or stream_id in self._evicted:
                stream_id = secrets.token_hex(8)
            stream = Stream(stream_id, channels, now, statics)
            self._streams[stream_id] = stream
            self._counters["opened"] += 1
        return stream

    def _encode(self, inputs: Optional[Mapping[str, Any]], rows: int, sg: _StreamGraph) -> Optional[List[Any]]:
        """Run an encoder-decoder's encoder on a new stream's inputs; its outputs that feed the steps, on the
        device (None for an export without an encoder)."""
        enc = sg.task.encoder
        if enc is None:
            if inputs:
                raise NotSupported(f"export {self.name!r} has no encoder: a stream opens without inputs")
            return None
        if not isinstance(inputs, Mapping):
            raise InputError(f"export {self.name!r} is an encoder-decoder: open a stream with its encoder inputs "
                             f"{[t.name for t in enc.inputs]} (inputs={{name: array}})")
        arrays = self._batched(inputs, [sg.encoder.input(t.name) for t in enc.inputs], rows, "encoder input")
        import onnxruntime as ort

        session = self.sessions[enc.graph]
        io = session.io_binding()
        dev, dev_id = self._device_type, self.placement.device_id
        for n, a in arrays.items():
            io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(a, dev, dev_id))
        for src, _ in enc.feeds:
            io.bind_output(src, dev, dev_id)
        session.run_with_iobinding(io)
        with self._lock:
            self._counters["encoder_calls"] += 1
        return list(io.get_outputs())

    def append(self, stream: Union[Stream, str], observations: Any, timeout: Optional[float] = None,
               offset: Optional[int] = None) -> Union[np.ndarray, Dict[str, np.ndarray]]:
        """Append steps to a stream: with a mapping, return every step output for the new steps; with values, the
        primary output after the last one (the reference model's forecast).

        ``observations``, a mapping: the task's step inputs by name (``manifest.task.inputs``), each in the
        graph's layout without the batch axis (with a leading axis of ``channels`` rows for a stream of several),
        time on the task's axis, one or many steps; returns output name -> array alike (``StepResult.outputs``).
        ``observations``, values (an export with one step input whose time axis follows the batch): ``(n,
        *features)`` for a one-channel stream (a scalar for one value of a univariate model), ``(n, channels,
        *features)`` otherwise; returns ``(*out,)`` or ``(*out, channels)``, e.g. ``(horizon,)`` / ``(horizon,
        C)`` for the reference model. Numbers, finite, at most ``max_append`` steps.
        ``offset``: the number of steps the caller expects the stream to have observed before these (its
        ``observed``); when it differs, nothing is applied and ``OffsetMismatch`` (409) says the stream's count,
        so that an append retried with the same offset is applied exactly once. A long append is stepped in
        chunks (``tsattn.runtime.limits``). Raises ``InputError``, ``TooManyValues``, ``CacheFull`` (409: a
        cache that does not slide would pass its capacity; nothing is appended), ``NonFiniteOutput`` (the
        model's output would not be finite: the stream is left as it was), ``OffsetMismatch``,
        ``UnknownStream``/``StreamEvicted``, ``Overloaded``.
        """
        result = self.submit(stream, observations, offset=offset).result(timeout)
        return result.outputs if isinstance(observations, Mapping) else result.forecast

    def generate(self, stream: Union[Stream, str], n: int, *, top_k: Optional[int] = None,
                 temperature: float = 1.0, seed: Optional[int] = None,
                 timeout: Optional[float] = None) -> np.ndarray:
        """Sample ``n`` tokens after the stream's last one and feed each back through the cache (a ``causal_lm``
        export, one-row streams): greedy (``top_k`` None or 1: the most likely token) or top-k sampling at
        ``temperature`` from ``numpy.random.default_rng(seed)``. The stream must hold at least one token (the
        prompt, appended first). Returns the ``n`` token ids; the stream then holds them too. Raises
        ``NotSupported`` (not a language model), ``InputError`` (bad arguments, empty stream), ``CacheFull``."""
        sg = self._streams_or_raise()
        if sg.task.kind != "causal_lm":
            raise NotSupported(f"export {self.name!r} is a {sg.task.kind!r} task; generate needs a causal_lm")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be a positive integer; got {n!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive integer or None; got {top_k!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise InputError(f"temperature must be > 0; got {temperature!r}")
        s = self.get_stream(stream)
        if s.rows != 1:
            raise InputError("generate samples one sequence: open the stream with channels=1")
        if s._last is None:
            raise InputError(f"stream {s.id!r} holds no token yet: append the prompt first")
        rng = np.random.default_rng(seed)
        spec, axis = sg.inputs[0]
        tokens = []
        logits = s._last
        for _ in range(n):
            if top_k is None or top_k == 1:
                token = int(np.argmax(logits))
            else:
                k = min(top_k, logits.shape[-1])
                top = np.argpartition(logits, -k)[-k:]
                z = logits[top].astype(np.float64) / temperature
                p = np.exp(z - z.max())
                token = int(top[rng.choice(k, p=p / p.sum())])
            tokens.append(token)
            step = np.full([1 if i == axis - 1 else d for i, d in enumerate(spec.shape[1:])], token,
                           dtype=spec.numpy_dtype)
            self.submit(s, {spec.name: step}).result(timeout)
            logits = self.get_stream(s)._last
        return np.asarray(tokens, dtype=np.int64)

    def submit(self, stream: Union[Stream, str], observations: Any,
               offset: Optional[int] = None) -> "concurrent.futures.Future[StepResult]":
        """Queue an append (``append``'s ``observations``, a mapping or values); the future resolves to a
        ``StepResult`` (or the error of the step). Input, unknown streams, a full cache, a full queue and an
        offset that already differs (nothing queued before it) raise here, before anything is queued; an offset
        is checked again when the append runs, after the appends queued before it."""
        return self._enqueue(stream, observations, None, offset).future

    def append_async(self, stream: Union[Stream, str], observations: Any,
                     offset: Optional[int] = None) -> "asyncio.Future[StepResult]":
        """``submit`` for a caller on an asyncio event loop (call it from the loop): an asyncio future, resolved on
        the loop; the appends of one batched step cost the loop one wake-up. Cancelling it does not undo the step."""
        import asyncio

        return self._enqueue(stream, observations, asyncio.get_running_loop(), offset).future

    @staticmethod
    def _offset_mismatch(s: Stream, offset: int) -> OffsetMismatch:
        return OffsetMismatch(f"offset {offset} does not match stream {s.id!r}, which has observed {s.observed} "
                              f"value(s) (length {s.length}); nothing was applied", s.observed, s.length)

    def _enqueue(self, stream: Union[Stream, str], observations: Any, loop, offset: Optional[int] = None) -> _Append:
        sg = self._streams_or_raise()
        known = self._streams.get(stream.id if isinstance(stream, Stream) else str(stream))  # a dict read: atomic
        if known is None:
            with self._lock:
                known = self._get_locked(stream)  # raises UnknownStream / StreamEvicted
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
            raise InputError(f"offset must be an integer >= 0 (the stream's observed count before these values); "
                             f"got {offset!r}")
        inputs, n = self._step_inputs(observations, known.rows, sg)
        with self._lock:
            now = self._clock()
            self._sweep_locked(now)
            s = self._get_locked(stream)
            if self.idle_ttl_s is not None and s._pending == 0 and now - s.last_used > self.idle_ttl_s:
                self._evict_locked(s, "idle_ttl", f"idle for more than {self.idle_ttl_s:g} s (idle_ttl_s)")
                s = self._get_locked(stream)  # raises StreamEvicted
            if offset is not None and s._pending == 0 and offset != s.observed:
                self._counters["rejected_offset"] += 1
                raise self._offset_mismatch(s, offset)
            if len(self._queue) >= self.max_pending:
                self._counters["rejected_overloaded"] += 1
                raise Overloaded(f"{len(self._queue)} appends are queued (max_pending={self.max_pending})",
                                 retry_after=max(0.05, self.batch_window_s * 4))
            if not sg.cache.sliding and not sg.cache.fits(s.observed + s._queued, n):
                held = s.observed + s._queued
                self._counters["rejected_cache_full"] += 1
                raise CacheFull(f"stream {s.id!r} holds {held} of the cache's {sg.cache.max_context} positions; "
                                f"{n} more would pass its capacity (absolute positions: the cache does not slide). "
                                f"Append at most {sg.cache.max_context - held} more, or close the stream and open "
                                f"a new one; the stream is unchanged")
            request = _Append(s, inputs, n, loop, offset)
            s._pending += 1
            s._queued += n
            s.last_used = now
            self._streams.move_to_end(s.id)
            self._queue.append(request)
            self._ensure_worker_locked()
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._wake.notify()  # the worker waits for the first append, or for a full batch; no more wake-ups
        return request


    def stats(self) -> Dict[str, Any]:
        """Counters and gauges: open streams, cache bytes, evictions by reason, model calls, appends, ..."""
        with self._lock:
            self._sweep_locked(self._clock(), force=True)
            return {
                "active_streams": len(self._streams),
                "cache_bytes": self._cache_bytes,
                "queued_appends": len(self._queue),
                "evictions": dict(self._evictions),
                **{k: self._counters.get(k, 0) for k in COUNTERS},
            }

    # ------------------------------------------------------------------------------------------------ predict

    def predict(self, inputs: Union[Mapping[str, Any], Any], graph: Optional[str] = None,
                outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """A stateless forward of ``graph`` (default: the only graph, or the cache graph).

        For an encoder-decoder, the step graph's inputs may hold the encoder's inputs instead of what the encoder
        feeds the steps: the encoder runs first (one forward over source and target, caches empty).
        ``inputs``: input name -> array (an array alone when the graph has one non-cache input). Dtypes and
        shapes are checked against the manifest (symbolic dims must agree across inputs, fixed dims match);
        values must be finite. Cache inputs that are not given are zero-length (a full forward from scratch);
        cache outputs are not returned. On the streaming cache graph the input runs in chunks (bounded memory, the
        same result). Returns output name -> numpy array. Raises ``InputError``, ``TooManyValues``,
        ``NonFiniteOutput`` (an output is NaN or Inf), ``NotSupported`` (unknown graph).
        """
        name = self._graph_name(graph)
        spec = self.manifest.graphs[name]
        enc = self.manifest.task.encoder
        if enc is not None and name == self.manifest.task.graph and isinstance(inputs, Mapping) \
                and any(t.name in inputs for t in enc.inputs):  # an encoder-decoder: the encoder first
            own = {t.name: inputs[t.name] for t in enc.inputs if t.name in inputs}
            fed = self.predict(own, graph=enc.graph, outputs=[src for src, _ in enc.feeds])
            inputs = dict({k: v for k, v in inputs.items() if k not in own},
                          **{dst: fed[src] for src, dst in enc.feeds})
        cache = self.manifest.cache if self.manifest.cache and self.manifest.cache.graph == name else None
        past = set(cache.past_names()) if cache else set()
        present = set(cache.present_names()) if cache else set()
        data_inputs = [t for t in spec.inputs if t.name not in past]
        if not isinstance(inputs, Mapping):
            if len(data_inputs) != 1:
                raise InputError(f"graph {name!r} takes {len(data_inputs)} inputs {[t.name for t in data_inputs]}; "
                                 f"pass a mapping of name -> array")
            inputs = {data_inputs[0].name: inputs}
        unknown = sorted(set(inputs) - {t.name for t in spec.inputs})
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; graph {name!r} takes {[t.name for t in spec.inputs]}")
        missing = [t.name for t in data_inputs if t.name not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing} of graph {name!r}")
        sizes: Dict[str, int] = {}
        arrays: Dict[str, np.ndarray] = {}
        total = 0
        for t in spec.inputs:
            if t.name not in inputs:
                continue
            arrays[t.name] = self._tensor(inputs[t.name], t, sizes, f"input {t.name!r}")
            total += arrays[t.name].size
            if total > self.max_predict_values:
                raise TooManyValues(f"more than {self.max_predict_values} input values in one predict "
                                    f"(max_predict_values)")
        if cache is not None:
            batch = sizes.get(cache.batch_dim)
            for p, empty in zip(cache.past_names(), cache.shapes(batch or 0, 0)):
                if p not in arrays:
                    if batch is None:
                        raise InputError(f"cannot size the empty cache: no input gives the {cache.batch_dim!r} dim")
                    arrays[p] = np.zeros(empty, dtype=cache.dtype)
        wanted = [o.name for o in spec.outputs if o.name not in present] if outputs is None else list(outputs)
        bad = [o for o in wanted if o not in [t.name for t in spec.outputs]]
        if bad:
            raise InputError(f"unknown output(s) {bad} of graph {name!r}")
        import onnxruntime as ort

        result = self._predict_chunked(arrays, wanted) if cache is not None else None
        if result is None:  # not the streaming cache graph: one call
            session = self.sessions[name]
            io = session.io_binding()
            dev, dev_id = self._device_type, self.placement.device_id
            for n, a in arrays.items():
                io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(a, dev, dev_id))
            for n in wanted:
                io.bind_output(n, "cpu")
            session.run_with_iobinding(io)
            result = {n: v.numpy() for n, v in zip(wanted, io.get_outputs())}
        for n, v in result.items():
            if v.dtype.kind in "fc" and not np.isfinite(v).all():
                raise NonFiniteOutput(f"the model's output {n!r} for these inputs is not finite (NaN or Inf: a value "
                                      f"too large for the model?)")
        with self._lock:
            self._counters["predict_calls"] += 1
        return result

    def _predict_chunked(self, arrays: Dict[str, np.ndarray], wanted: List[str]) -> Optional[Dict[str, np.ndarray]]:
        """A predict on the streaming cache graph in chunks (``limits.chunk_length`` positions, ``limits.row_groups``
        rows per call), each chunk's presents fed back: bounded memory for any length. None when the graph or an
        output asked for does not fit that contract (one call then)."""
        sg = self._stream_graph
        if sg is None or any(t.name not in arrays for t, _ in sg.inputs):
            return None
        presents = sg.cache.present_names()
        out_axes = {t.name: ax for t, ax in sg.outputs}
        axes: Dict[str, int] = {}
        for n in wanted:
            if n in presents:
                continue
            if n not in out_axes:  # not a step output: no time axis to join chunks along
                return None
            axes[n] = out_axes[n]
        first, axis = arrays[sg.inputs[0][0].name], sg.inputs[0][1]
        rows, length = first.shape[0], first.shape[axis]
        past = [arrays[p] for p in sg.cache.past_names()]
        position = None if sg.position is None else (sg.position, int(arrays[sg.position]))
        pieces: Dict[str, List[np.ndarray]] = {n: [] for n in wanted}
        for lo, hi in limits.row_groups(rows, length):
            outs, last = run_cached(self.sessions[sg.graph.name], {t.name: (arrays[t.name][lo:hi], ax)
                                                                   for t, ax in sg.inputs},
                                    [p[lo:hi] for p in past], sg.cache.past_names(), presents, list(axes),
                                    self._device_type, self.placement.device_id, limits.chunk_length(1, length),
                                    fixed={n: arrays[n][lo:hi] for n in sg.statics}, position=position)
            steps = joined(outs, axes)
            for n in wanted:
                pieces[n].append(steps[n] if n in axes else last[presents.index(n)].numpy())
        return {n: p[0] if len(p) == 1 else np.concatenate(p, axis=0) for n, p in pieces.items()}

    def _graph_name(self, graph: Optional[str]) -> str:
        if graph is not None:
            if graph not in self.manifest.graphs:
                raise NotSupported(f"export {self.name!r} has no graph {graph!r}; it has {sorted(self.manifest.graphs)}")
            return graph
        if len(self.manifest.graphs) == 1:
            return next(iter(self.manifest.graphs))
        if self.manifest.cache is not None:
            return self.manifest.cache.graph
        raise NotSupported(f"export {self.name!r} has several graphs {sorted(self.manifest.graphs)}; name one")


    def _empty_cache(self, rows: int) -> List[Any]:
        import onnxruntime as ort

        cache = self._stream_graph.cache
        return [ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(cache.dtype), self._device_type,
                                                           self.placement.device_id)
                for shape in cache.shapes(rows, 0)]

    def _split(self, block: _Block) -> Dict[int, List[Any]]:
        """Split a shared block into per-stream blocks (its open members get their own); id(stream) -> tensors."""
        pieces = self._cacheops.scatter(block.tensors, [m.rows for m in block.members])
        for member, tensors in zip(block.members, pieces):
            if member._block is block and not member._closed:
                member._block = _Block(tensors, [member])
        return {id(m): t for m, t in zip(block.members, pieces)}

    def _past(self, group: List[_Append], blocks: List[Optional[_Block]]) -> Tuple[List[_Append], List[Any]]:
        """The group in row order and its past caches: a block as it is when the group is exactly its streams,
        else the streams' own caches gathered along the batch axis. ``blocks``: each stream's block, read under
        the lock (a stream closed meanwhile keeps its place in this step)."""
        if group[0].stream.length == 0:
            return group, self._empty_cache(sum(r.stream.rows for r in group))
        block = blocks[0]
        if len(block.members) == len(group) and all(b is block for b in blocks):
            order = {id(m): i for i, m in enumerate(block.members)}
            return sorted(group, key=lambda r: order[id(r.stream)]), block.tensors
        split: Dict[int, Dict[int, List[Any]]] = {}
        own = []
        for r, b in zip(group, blocks):
            if len(b.members) == 1:
                own.append(b.tensors)
            else:
                if id(b) not in split:
                    split[id(b)] = self._split(b)
                own.append(split[id(b)][id(r.stream)])
        return group, own[0] if len(group) == 1 else self._cacheops.gather(own)

    def _step(self, group: List[_Append]) -> None:
        """One model call for ``group`` (same cache length, same number of new steps; a long append in chunks),
        caches kept on device."""
        sg = self._stream_graph
        with self._lock:  # streams closed since they were taken leave the step; the others' blocks are read here
            gone = [(r, None, self._gone(r.stream)) for r in group if r.stream._closed]
            # an offset is checked here, after every append queued before it ran: applied at most once
            gone += [(r, None, self._offset_mismatch(r.stream, r.offset)) for r in group
                     if not r.stream._closed and r.offset is not None and r.offset != r.stream.observed]
            self._counters["rejected_offset"] += sum(isinstance(e, OffsetMismatch) for _, _, e in gone)
            for r, _, _ in gone:
                r.stream._pending -= 1
                r.stream._queued -= r.n
            group = [r for r in group if not r.stream._closed and (r.offset is None or r.offset == r.stream.observed)]
            blocks = [r.stream._block for r in group]
        if gone:
            _resolve(gone)
        if not group:
            return
        try:
            group, past = self._past(group, blocks)
            rows = [r.stream.rows for r in group]
            total = sum(rows)
            inputs = {spec.name: (group[0].inputs[spec.name] if len(group) == 1 else
                                  np.concatenate([r.inputs[spec.name] for r in group], axis=0), axis)
                      for spec, axis in sg.inputs}
            statics = {}
            if sg.statics:  # an encoder-decoder's encoder outputs, the streams' own, gathered on the device
                values = group[0].stream._statics if len(group) == 1 else \
                    self._staticops.gather([r.stream._statics for r in group])
                statics = dict(zip(sg.statics, values))
            position = None if sg.position is None else (sg.position, group[0].stream.observed)
            # a long append runs in chunks (bounded memory), each chunk's presents the next one's past
            out_axes = {spec.name: axis for spec, axis in sg.outputs}
            outs, presents = run_cached(self.sessions[sg.graph.name], inputs, past, sg.cache.past_names(),
                                        sg.cache.present_names(), list(out_axes), self._device_type,
                                        self.placement.device_id, limits.chunk_length(total, group[0].n),
                                        fixed=statics, position=position)
            steps = joined(outs, out_axes)
            results_host = [steps[spec.name] for spec, _ in sg.outputs]
            finite = finite_rows(results_host, total)  # every new position's output
            block = _Block(presents, [r.stream for r in group])
            length = int(block.tensors[0].shape()[2])
        except Exception as exc:  # a failed step fails its appends, not the worker
            log.exception("step of %d stream(s) failed", len(group))
            with self._lock:
                for r in group:
                    r.stream._pending -= 1
                    r.stream._queued -= r.n
                _resolve([(r, None, exc) for r in group])
            return
        primary_axis = sg.primary[1]
        results = []
        with self._lock:
            self._counters["model_calls"] += 1
            self._counters["appends"] += len(group)
            if len(group) > 1:
                self._counters["batched_calls"] += 1
                self._counters["batched_appends"] += len(group)
            start = 0
            for r, n_rows in zip(group, rows):
                s = r.stream
                s._pending -= 1
                s._queued -= r.n
                pieces = [a[start : start + n_rows] for a in results_host]
                ok = bool(finite[start : start + n_rows].all())
                start += n_rows
                if not ok:  # the stream keeps its cache as it was: a NaN would stay in it for ever
                    self._counters["rejected_nonfinite"] += 1
                    results.append((r, None, NonFiniteOutput(
                        f"the model's output for these {r.n} step(s) is not finite (NaN or Inf: a value too large "
                        f"for the model?); stream {s.id!r} is left as it was (observed {s.observed})")))
                    continue
                outputs = {spec.name: np.array(p[0] if n_rows == 1 else p) for (spec, _), p in zip(sg.outputs, pieces)}
                last = np.take(pieces[0], -1, axis=primary_axis)  # (rows, *out) after the last new step
                forecast = np.array(last[0] if n_rows == 1 else np.moveaxis(last, 0, -1))
                if not s._closed:
                    self._cache_bytes += self._stream_bytes(n_rows, length) - self._stream_bytes(n_rows, s.length)
                    s._block = block
                    s.length = length
                    s.observed += r.n
                    s._last = forecast
                results.append((r, StepResult(forecast, s.length, s.observed, outputs), None))
            if self.max_cache_bytes is not None:
                while self._cache_bytes > self.max_cache_bytes and self._evict_lru_locked("max_cache_bytes"):
                    pass
        _resolve(results)


def load(export_dir: Union[str, Path], device: str = "auto", *, verify: bool = True, **options: Any) -> Runtime:
    """Read and verify an export (manifest schema, every file's size and sha256, parity rows all ok) and open its
    sessions on ``device`` ("auto", "cpu", "cuda", "cuda:N"). ``options``: ``Runtime``'s keyword arguments
    (threads, max_streams, max_cache_bytes, idle_ttl_s, batch_window_ms, max_batch, max_pending, max_append,
    max_predict_values, clock).

    Raises ``ManifestError`` (missing, malformed, tampered or truncated files, failed parity, a file that is not a
    valid ONNX graph, a manifest that disagrees with its graph: ``tsattn.runtime.validate``), ``DeviceUnavailable``
    (``device`` names CUDA and no usable GPU), ``ValueError`` (a bad option).
    """
    manifest = load_manifest(export_dir, verify=verify)
    if not manifest.parity_ok:
        failed = [r for r in manifest.parity if not r.get("ok")]
        raise ManifestError(f"{export_dir}: the export failed {len(failed)} parity check(s); refusing to serve it")
    if "onnx" not in {fmt for g in manifest.graphs.values() for fmt in g.files}:
        raise ManifestError(f"{export_dir}: the export has no ONNX graph (exported with --format torchscript?)")
    return Runtime(manifest, device=device, **options)


__all__ = ["Runtime", "StepResult", "Stream", "load"]
