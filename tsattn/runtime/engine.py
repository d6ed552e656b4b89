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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import asyncio

from tsattn.export.manifest import CacheSpec, GraphSpec, Manifest, ManifestError, TensorSpec, load_manifest
from tsattn.runtime import limits, validate
from tsattn.runtime.cacheops import CacheOps
from tsattn.runtime.chunked import finite_rows, run_cached
from tsattn.runtime.device import Placement, open_session, placement
from tsattn.runtime.errors import (InputError, NonFiniteOutput, NotSupported, OffsetMismatch, Overloaded,
                                   StreamEvicted, TooManyStreams, TooManyValues, UnknownStream)

log = logging.getLogger("tsattn.runtime")

_NUMERIC_KINDS = "iuf"  # numpy kinds accepted as numbers: signed, unsigned, float (not bool, str, object)
_EVICTED_MEMORY = 10_000
COUNTERS = ("opened", "closed", "model_calls", "appends", "batched_calls", "batched_appends", "predict_calls",
            "rejected_overloaded", "rejected_offset", "rejected_nonfinite")
DEFAULT_MAX_APPEND = 2048  # a prefill longer than the window is fine (stacked windows reach further back)  # evicted ids remembered, for a clear answer instead of "unknown"


class Stream:
    """An open stream: ``id``, ``rows`` (batch rows = channels), ``length`` (positions in its cache, at most
    max_context), ``observed`` (values appended in all). Internal state is the runtime's; use its methods."""

    __slots__ = ("id", "rows", "length", "observed", "opened", "last_used", "_block", "_pending", "_closed")

    def __init__(self, stream_id: str, rows: int, now: float) -> None:
        self.id = stream_id
        self.rows = rows
        self.length = 0
        self.observed = 0
        self.opened = now
        self.last_used = now
        self._block: Optional[_Block] = None  # where the cache is (rows of a block of OrtValues); None: empty
        self._pending = 0  # appends queued or in flight
        self._closed = False

    def __repr__(self) -> str:
        return f"Stream({self.id!r}, rows={self.rows}, length={self.length}, observed={self.observed})"


class _Block:
    """Caches on the device: ``tensors`` (the cache tensors in graph order, OrtValues) hold the rows of ``members``
    in order. A step's present tensors become one block for all the streams stepped together; when the same
    streams step together again (the steady state of concurrent streams), the block is the next past as it is, with
    no gather or scatter. A block is split into per-stream blocks only when its streams part ways."""

    __slots__ = ("tensors", "members")

    def __init__(self, tensors: List[Any], members: List["Stream"]) -> None:
        self.tensors = tensors
        self.members = members


@dataclass(frozen=True)
class StepResult:
    """What an append returns through ``submit``'s future: the forecast after the last observation (``(*out,)``
    for one row, ``(*out, rows)`` for several) and the stream's cache length and observation count after it."""

    forecast: np.ndarray
    length: int
    observed: int


class _Append:
    """A queued append: its stream, its values, and the future to resolve: a ``concurrent.futures.Future``, or an
    asyncio future of ``loop`` (resolved on that loop, one wake-up per batch)."""

    __slots__ = ("stream", "values", "future", "loop", "queued", "offset")

    def __init__(self, stream: Stream, values: np.ndarray, loop=None, offset: Optional[int] = None) -> None:
        self.stream = stream
        self.values = values  # (rows, n, *features), the graph's dtype
        self.offset = offset  # the stream's ``observed`` the caller expects before these values (None: any)
        self.loop = loop
        self.future = concurrent.futures.Future() if loop is None else loop.create_future()
        self.queued = time.perf_counter()


@dataclass(frozen=True)
class _StreamGraph:
    """How the streaming graph is driven: its input/output tensors and axes (checked against the manifest)."""

    graph: GraphSpec
    cache: CacheSpec
    input: TensorSpec
    output: TensorSpec
    features: Tuple[int, ...]  # fixed dims of one observation (() for a univariate value)
    output_seq_axis: Optional[int]
    extra_outputs: Tuple[str, ...]


class Runtime:
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

        where = placement(device)
        self.sessions: Dict[str, Any] = {}
        for name in manifest.graphs:
            try:
                session, where = open_session(self._verified_model(name), where, threads,
                                              label=f"{manifest.name}/{name}")
            except Exception as exc:
                if validate.is_ort_error(exc):  # not a graph ONNX Runtime can load
                    raise validate.open_error(manifest, name, exc) from None
                raise
            self.sessions[name] = session
        validate.check_export(manifest, self.sessions)  # the manifest tells the truth about its graphs
        self.placement: Placement = where
        self.providers: Dict[str, List[str]] = {n: list(s.get_providers()) for n, s in self.sessions.items()}

        self._stream_graph, self.streams_unsupported = self._streaming_spec()
        cache = manifest.cache
        if max_append is None:
            max_append = DEFAULT_MAX_APPEND
        if isinstance(max_append, bool) or not isinstance(max_append, int) or max_append < 1:
            raise ValueError(f"max_append must be a positive integer; got {max_append!r}")
        self.max_append = max_append
        self._cacheops = None
        if self._stream_graph is not None:
            self._cacheops = CacheOps(2 * cache.layers, cache.dtype, list(where.providers), self._device_type,
                                      where.device_id, threads=threads or 1)
            self._itemsize = np.dtype(cache.dtype).itemsize

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

    # ------------------------------------------------------------------------------------------------ loading

    def _verified_model(self, graph: str) -> Union[bytes, Path]:
        """The ONNX model of ``graph``: its bytes, hashed again here so that the session is built from exactly
        the bytes that match the manifest (a path when the graph keeps weights in external data files)."""
        import hashlib

        path = self.manifest.graph_file(graph, "onnx")
        entry = next((f for f in self.manifest.files if f.path == self.manifest.graphs[graph].files["onnx"]), None)
        if entry is None:
            raise ManifestError(f"{path}: not listed in the manifest's files")
        if any(f.format == "data" and f.graph == graph for f in self.manifest.files):
            return path  # external data: verified by load_manifest, resolved by ONNX Runtime beside the file
        data = path.read_bytes()
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ManifestError(f"{path}: changed since the manifest was verified (size or sha256 differs); "
                                f"refusing to load it")
        return data

    @property
    def _device_type(self) -> str:
        return "cuda" if self.placement.kind == "cuda" else "cpu"

    @property
    def device(self) -> str:
        return self.placement.name

    def _streaming_spec(self) -> Tuple[Optional[_StreamGraph], Optional[str]]:
        cache, task = self.manifest.cache, self.manifest.task
        if cache is None:
            return None, "the export has no KV cache (use predict)"
        if task.get("kind") != "streaming_forecast":
            return None, f"the export's task is {task.get('kind')!r}, not 'streaming_forecast'"
        graph = self.manifest.graphs[cache.graph]
        try:
            inp, out = graph.input(task["input"]), graph.output(task["output"])
        except KeyError as exc:
            return None, f"the task names a tensor the graph lacks: {exc}"
        seq = task.get("sequence_dim")
        if inp.shape[:2] != (cache.batch_dim, seq) or any(not isinstance(d, int) for d in inp.shape[2:]):
            return None, (f"input {inp.name!r} has shape {list(inp.shape)}; streams need ({cache.batch_dim!r}, "
                          f"{seq!r}, fixed dims...)")
        others = [t.name for t in graph.inputs if t.name != inp.name and t.name not in cache.past_names()]
        if others:
            return None, f"the graph has inputs a stream cannot feed: {others}"
        if not out.shape or out.shape[0] != cache.batch_dim:
            return None, f"output {out.name!r} has shape {list(out.shape)}; its first dim must be the batch"
        seq_axis = out.shape.index(seq) if seq in out.shape else None
        extra = tuple(t.name for t in graph.outputs if t.name != out.name and t.name not in cache.present_names())
        features = tuple(int(d) for d in inp.shape[2:])
        return _StreamGraph(graph, cache, inp, out, features, seq_axis, extra), None

    # ------------------------------------------------------------------------------------------------ streams

    def open_stream(self, channels: int = 1) -> Stream:
        """A new stream of ``channels`` rows (a C-channel series is C rows: the model is channel-independent).

        Raises ``NotSupported`` (no cache), ``InputError`` (channels < 1, or one stream's full cache would exceed
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
            stream = Stream(stream_id, channels, now)
            self._streams[stream_id] = stream
            self._counters["opened"] += 1
        return stream

    def append(self, stream: Union[Stream, str], observations: Any, timeout: Optional[float] = None,
               offset: Optional[int] = None) -> np.ndarray:
        """Append observations to a stream and return the forecast after the last one.

        ``observations``: ``(n, *features)`` for a one-channel stream (a scalar for one value of a univariate
        model), ``(n, channels, *features)`` otherwise; numbers, finite, at most ``max_append``. Returns
        ``(*out,)`` or ``(*out, channels)``, e.g. ``(horizon,)`` / ``(horizon, C)`` for the reference model.
        ``offset``: the number of values the caller expects the stream to have observed before these (its
        ``observed``); when it differs, nothing is applied and ``OffsetMismatch`` (409) says the stream's count,
        so that an append retried with the same offset is applied exactly once. A long append is stepped in
        chunks (``tsattn.runtime.limits``). Raises ``InputError``, ``TooManyValues``, ``NonFiniteOutput`` (the
        model's output would not be finite: the stream is left as it was), ``OffsetMismatch``,
        ``UnknownStream``/``StreamEvicted``, ``Overloaded``.
        """
        return self.submit(stream, observations, offset=offset).result(timeout).forecast

    def submit(self, stream: Union[Stream, str], observations: Any,
               offset: Optional[int] = None) -> "concurrent.futures.Future[StepResult]":
        """Queue an append; the future resolves to a ``StepResult`` (or the error of the step). Input, unknown
        streams, a full queue and an offset that already differs (nothing queued before it) raise here, before
        anything is queued; an offset is checked again when the append runs, after the appends queued before it."""
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
        values = self._observations(observations, known.rows, sg)
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
            request = _Append(s, values, loop, offset)
            s._pending += 1
            s.last_used = now
            self._streams.move_to_end(s.id)
            self._queue.append(request)
            self._ensure_worker_locked()
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._wake.notify()  # the worker waits for the first append, or for a full batch; no more wake-ups
        return request

    def close(self, stream: Union[Stream, str]) -> None:
        """Close a stream and free its cache; an append still queued for it fails with ``UnknownStream``."""
        with self._lock:
            s = self._get_locked(stream)
            self._drop_locked(s)
            self._counters["closed"] += 1

    def get_stream(self, stream: Union[Stream, str]) -> Stream:
        with self._lock:
            return self._get_locked(stream)

    def stream_info(self, stream: Union[Stream, str]) -> Dict[str, Any]:
        """What a client may know of an open stream: ``id``, ``model``, ``channels``, ``length`` (positions in its
        cache), ``observed`` (values appended: the ``offset`` of the next append), ``pending`` (appends queued or
        running), ``created`` / ``last_used`` (UTC, ISO 8601) and ``age_s`` / ``idle_s``. Raises
        ``UnknownStream`` / ``StreamEvicted``."""
        import datetime

        with self._lock:
            s = self._get_locked(stream)
            now = self._clock()
            info = {"id": s.id, "model": self.name, "channels": s.rows, "length": s.length, "observed": s.observed,
                    "pending": s._pending, "age_s": now - s.opened, "idle_s": now - s.last_used}
        wall = time.time()

        def iso(seconds_ago: float) -> str:
            stamp = datetime.datetime.fromtimestamp(wall - seconds_ago, datetime.timezone.utc)
            return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        info["created"], info["last_used"] = iso(info["age_s"]), iso(info["idle_s"])
        return info

    def sweep(self) -> int:
        """Evict streams idle for longer than ``idle_ttl_s``; returns how many."""
        with self._lock:
            return self._sweep_locked(self._clock(), force=True)

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

        ``inputs``: input name -> array (an array alone when the graph has one non-cache input). Dtypes and
        shapes are checked against the manifest (symbolic dims must agree across inputs, fixed dims match);
        values must be finite. Cache inputs that are not given are zero-length (a full forward from scratch);
        cache outputs are not returned. On the streaming cache graph the input runs in chunks (bounded memory, the
        same result). Returns output name -> numpy array. Raises ``InputError``, ``TooManyValues``,
        ``NonFiniteOutput`` (an output is NaN or Inf), ``NotSupported`` (unknown graph).
        """
        name = self._graph_name(graph)
        spec = self.manifest.graphs[name]
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
        if sg is None or sg.input.name not in arrays:
            return None
        seq = self.manifest.task.get("sequence_dim")
        presents = sg.cache.present_names()
        axes: Dict[str, int] = {}
        for n in wanted:
            if n in presents:
                continue
            shape = sg.graph.output(n).shape
            if not shape or shape[0] != sg.cache.batch_dim or seq not in shape:
                return None
            axes[n] = shape.index(seq)
        values = arrays[sg.input.name]  # (B, L, *features)
        rows, length = values.shape[:2]
        past = [arrays[p] for p in sg.cache.past_names()]
        fetch = list(axes)
        pieces: Dict[str, List[np.ndarray]] = {n: [] for n in wanted}
        for lo, hi in limits.row_groups(rows, length):
            outs, last = run_cached(self.sessions[sg.graph.name], sg.input.name, values[lo:hi],
                                    [p[lo:hi] for p in past], sg.cache.past_names(), presents, fetch,
                                    self._device_type, self.placement.device_id, limits.chunk_length(1, length))
            for n in wanted:
                if n in axes:
                    parts = [o[n] for o in outs]
                    pieces[n].append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axes[n]))
                else:
                    pieces[n].append(last[presents.index(n)].numpy())
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

    # ------------------------------------------------------------------------------------------------ input checks

    @staticmethod
    def _numbers(data: Any, what: str) -> np.ndarray:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as exc:  # ragged nesting
            detail = "ragged nesting" if "inhomogeneous" in str(exc) else str(exc).splitlines()[0][:200]
            raise InputError(f"{what}: not a rectangular array of numbers ({detail})") from None
        if arr.dtype.kind not in _NUMERIC_KINDS:
            kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "a ragged or mixed array"}.get(
                arr.dtype.kind, str(arr.dtype))
            raise InputError(f"{what}: expected numbers, got {kind}")
        return arr

    @staticmethod
    def _finite(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
        """``arr`` cast to ``dtype``; ``InputError`` naming the first NaN/Inf, before or after the cast."""
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InputError(f"{what}{list(index)} is {float(arr[index])!r}: values must be finite (no NaN or "
                                 f"Inf)")
        if np.dtype(dtype).kind == "f":
            with np.errstate(over="ignore"):
                cast = arr.astype(dtype)
            bad = ~np.isfinite(cast)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InputError(f"{what}{list(index)} = {float(arr[index])!r} overflows {np.dtype(dtype).name}")
            return cast
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{what}: expected integers for a {np.dtype(dtype).name} tensor")
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        if info is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InputError(f"{what}: values outside the range of {np.dtype(dtype).name}")
        return arr.astype(dtype)

    def _observations(self, observations: Any, rows: int, sg: _StreamGraph) -> np.ndarray:
        arr = self._numbers(observations, "observations")
        features = sg.features
        if rows == 1 and arr.ndim == len(features):
            arr = arr[None]  # a single observation
        expected = ("n",) + ((rows,) if rows > 1 else ()) + features
        if arr.ndim != len(expected) or tuple(arr.shape[1:]) != tuple(expected[1:]):
            shape = "(" + ", ".join(str(d) for d in expected) + ("," if len(expected) == 1 else "") + ")"
            raise InputError(f"observations have shape {tuple(arr.shape)}; this stream takes {shape}"
                             + (" (n values, channels)" if rows > 1 else ""))
        n = arr.shape[0]
        if n == 0:
            raise InputError("observations are empty: append at least one value")
        if n > self.max_append:
            raise TooManyValues(f"{n} observations in one append; the limit is {self.max_append} (max_append)")
        arr = self._finite(arr, sg.input.numpy_dtype, "observations")
        if rows > 1:
            arr = np.moveaxis(arr, 1, 0)  # (rows, n, *features)
        else:
            arr = arr[None]
        return np.ascontiguousarray(arr)

    def _tensor(self, data: Any, spec: TensorSpec, sizes: Dict[str, int], what: str) -> np.ndarray:
        arr = self._numbers(data, what) if spec.numpy_dtype.kind != "b" else np.asarray(data)
        if spec.numpy_dtype.kind == "b" and arr.dtype.kind != "b":
            raise InputError(f"{what}: expected booleans, got {arr.dtype}")
        if arr.ndim != len(spec.shape):
            raise InputError(f"{what} has {arr.ndim} dims {tuple(arr.shape)}; the graph expects {len(spec.shape)} "
                             f"{list(spec.shape)}")
        for axis, (dim, size) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(f"{what} dim {axis} is {size}; the graph expects {dim} (shape {list(spec.shape)})")
            elif dim in sizes and sizes[dim] != size:
                raise InputError(f"{what} dim {axis} ({dim!r}) is {size}, but another input has {dim}={sizes[dim]}")
            else:
                if size == 0 and dim != (self.manifest.cache.past_dim if self.manifest.cache else None):
                    raise InputError(f"{what} dim {axis} ({dim!r}) is empty")
                sizes[dim] = size
        if spec.numpy_dtype.kind == "b":
            return np.ascontiguousarray(arr)
        return np.ascontiguousarray(self._finite(arr, spec.numpy_dtype, what))

    # ------------------------------------------------------------------------------------------------ bookkeeping

    def _streams_or_raise(self) -> _StreamGraph:
        if self._stream_graph is None:
            raise NotSupported(f"export {self.name!r} does not stream: {self.streams_unsupported}")
        return self._stream_graph

    def _get_locked(self, stream: Union[Stream, str]) -> Stream:
        stream_id = stream.id if isinstance(stream, Stream) else str(stream)
        s = self._streams.get(stream_id)
        if s is None:
            reason = self._evicted.get(stream_id)
            if reason is not None:
                raise StreamEvicted(f"stream {stream_id!r} was evicted ({reason}); open a new one")
            raise UnknownStream(f"unknown stream {stream_id!r} (never opened, or closed)")
        return s

    def _stream_bytes(self, rows: int, length: int) -> int:
        return self._stream_graph.cache.bytes_per_position(self._itemsize) * rows * length

    def _drop_locked(self, s: Stream) -> None:
        self._streams.pop(s.id, None)
        self._cache_bytes -= self._stream_bytes(s.rows, s.length)
        s._closed = True
        s._block = None  # its rows in a shared block go when the block's other streams part ways or close

    def _evict_locked(self, s: Stream, reason: str, detail: str) -> None:
        self._drop_locked(s)
        self._evicted[s.id] = detail
        while len(self._evicted) > _EVICTED_MEMORY:
            self._evicted.popitem(last=False)
        self._evictions[reason] += 1
        log.debug("evicted stream %s: %s", s.id, detail)

    def _evict_lru_locked(self, reason: str, keep: Optional[set] = None) -> bool:
        for s in self._streams.values():  # least recently used first
            if reason == "max_cache_bytes" and s.length == 0:
                continue  # holds no cache: evicting it frees nothing
            if s._pending == 0 and (keep is None or s.id not in keep):
                detail = {"max_streams": f"least recently used when {self.max_streams} streams were open "
                                         f"(max_streams)",
                          "max_cache_bytes": f"least recently used when the caches exceeded "
                                             f"{self.max_cache_bytes} bytes (max_cache_bytes)"}[reason]
                self._evict_locked(s, reason, detail)
                return True
        return False

    def _sweep_locked(self, now: float, force: bool = False) -> int:
        """Evict expired streams; a full scan at most every ``idle_ttl_s / 16`` (1 s at most) unless forced."""
        if self.idle_ttl_s is None:
            return 0
        if not force and now - self._last_sweep < min(1.0, self.idle_ttl_s / 16):
            return 0
        self._last_sweep = now
        expired = [s for s in self._streams.values() if s._pending == 0 and now - s.last_used > self.idle_ttl_s]
        for s in expired:
            self._evict_locked(s, "idle_ttl", f"idle for more than {self.idle_ttl_s:g} s (idle_ttl_s)")
        return len(expired)

    # ------------------------------------------------------------------------------------------------ the worker

    def _ensure_worker_locked(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stopping = False
            self._worker = threading.Thread(target=self._work, name=f"tsattn-runtime-{self.name}", daemon=True)
            self._worker.start()

    def shutdown(self) -> None:
        """Stop the worker (queued appends fail with ``Overloaded``) and drop every stream."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10)
        with self._lock:
            while self._queue:
                r = self._queue.popleft()
                r.stream._pending -= 1
                _resolve([(r, None, Overloaded("the runtime is shutting down"))])
            for s in list(self._streams.values()):
                self._drop_locked(s)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                if self.batch_window_s > 0 and self.max_batch > 1:
                    # wait while appends keep arriving: until none came for a window (at most 10 windows)
                    cap = self._queue[0].queued + 10 * self.batch_window_s
                    while len(self._queue) < self.max_batch and not self._stopping:
                        deadline = min(self._queue[-1].queued + self.batch_window_s, cap)
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._wake.wait(remaining)
                    if self._stopping:
                        return
                groups = self._take_locked()
            for group in groups:
                for chunk in _batches(group, self.max_batch, limits.CALL_POSITIONS):
                    try:
                        self._step(chunk)
                    except Exception as exc:  # a bug in the bookkeeping: fail these appends, keep the worker
                        log.exception("internal error stepping %d stream(s)", len(chunk))
                        _resolve([(r, None, exc) for r in chunk])

    def _take_locked(self) -> List[List[_Append]]:
        """The queued appends of distinct streams, grouped by (cache length, values per row); the rest stay."""
        taken: Dict[Tuple[int, int], List[_Append]] = {}
        seen: set = set()
        keep: "collections.deque[_Append]" = collections.deque()
        while self._queue:
            r = self._queue.popleft()
            s = r.stream
            if s._closed:
                s._pending -= 1
                _resolve([(r, None, self._gone(s))])
                continue
            if s.id in seen:
                keep.append(r)  # a later append of a stream already in this round: next round, in order
                continue
            seen.add(s.id)
            taken.setdefault((s.length, r.values.shape[1]), []).append(r)
        self._queue = keep
        return list(taken.values())

    def _gone(self, s: Stream) -> Exception:
        reason = self._evicted.get(s.id)
        if reason is not None:
            return StreamEvicted(f"stream {s.id!r} was evicted ({reason}) before its append ran")
        return UnknownStream(f"stream {s.id!r} was closed before its append ran")

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
        """One model call for ``group`` (same cache length, same number of new values), caches kept on device."""
        sg = self._stream_graph
        with self._lock:  # streams closed since they were taken leave the step; the others' blocks are read here
            gone = [(r, None, self._gone(r.stream)) for r in group if r.stream._closed]
            # an offset is checked here, after every append queued before it ran: applied at most once
            gone += [(r, None, self._offset_mismatch(r.stream, r.offset)) for r in group
                     if not r.stream._closed and r.offset is not None and r.offset != r.stream.observed]
            self._counters["rejected_offset"] += sum(isinstance(e, OffsetMismatch) for _, _, e in gone)
            for r, _, _ in gone:
                r.stream._pending -= 1
            group = [r for r in group if not r.stream._closed and (r.offset is None or r.offset == r.stream.observed)]
            blocks = [r.stream._block for r in group]
        if gone:
            _resolve(gone)
        if not group:
            return
        try:
            group, past = self._past(group, blocks)
            rows = [r.stream.rows for r in group]
            values = group[0].values if len(group) == 1 else np.concatenate([r.values for r in group], axis=0)
            # a long append runs in chunks (bounded memory), each chunk's presents the next one's past
            total = sum(rows)
            fetch = [sg.output.name, *sg.extra_outputs]
            outs, presents = run_cached(self.sessions[sg.graph.name], sg.input.name, values, past,
                                        sg.cache.past_names(), sg.cache.present_names(), fetch, self._device_type,
                                        self.placement.device_id, limits.chunk_length(total, values.shape[1]))
            forecast = outs[-1][sg.output.name]
            finite = finite_rows([a for o in outs for a in o.values()], total)  # every new position's output
            block = _Block(presents, [r.stream for r in group])
            length = int(block.tensors[0].shape()[2])
        except Exception as exc:  # a failed step fails its appends, not the worker
            log.exception("step of %d stream(s) failed", len(group))
            with self._lock:
                for r in group:
                    r.stream._pending -= 1
                _resolve([(r, None, exc) for r in group])
            return
        if sg.output_seq_axis is not None:
            forecast = np.take(forecast, -1, axis=sg.output_seq_axis)  # (B, *out) after the last observation
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
                piece = forecast[start : start + n_rows]
                ok = bool(finite[start : start + n_rows].all())
                start += n_rows
                if not ok:  # the stream keeps its cache as it was: a NaN would stay in it for ever
                    self._counters["rejected_nonfinite"] += 1
                    results.append((r, None, NonFiniteOutput(
                        f"the model's output for these {r.values.shape[1]} value(s) is not finite (NaN or Inf: a "
                        f"value too large for the model?); stream {s.id!r} is left as it was (observed "
                        f"{s.observed})")))
                    continue
                piece = piece[0] if n_rows == 1 else np.moveaxis(piece, 0, -1)
                if not s._closed:
                    self._cache_bytes += self._stream_bytes(n_rows, length) - self._stream_bytes(n_rows, s.length)
                    s._block = block
                    s.length = length
                    s.observed += r.values.shape[1]
                results.append((r, StepResult(np.array(piece), s.length, s.observed), None))
            if self.max_cache_bytes is not None:
                while self._cache_bytes > self.max_cache_bytes and self._evict_lru_locked("max_cache_bytes"):
                    pass
        _resolve(results)


def _batches(group: List[_Append], max_batch: int, max_rows: int) -> List[List[_Append]]:
    """``group`` cut into batches of at most ``max_batch`` appends and ``max_rows`` rows (a stream of more rows
    than that is a batch of its own)."""
    batches: List[List[_Append]] = []
    current: List[_Append] = []
    rows = 0
    for r in group:
        if current and (len(current) >= max_batch or rows + r.stream.rows > max_rows):
            batches.append(current)
            current, rows = [], 0
        current.append(r)
        rows += r.stream.rows
    if current:
        batches.append(current)
    return batches


def _settle(future, result: Any = None, error: Optional[BaseException] = None) -> None:
    """Resolve a future unless its caller gave up on it (cancelled, e.g. an HTTP append that timed out: the step
    still happened)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except (concurrent.futures.InvalidStateError, RuntimeError):  # cancelled meanwhile
        pass


def _settle_all(outcomes: List[Tuple[Any, Any, Optional[BaseException]]]) -> None:
    for future, result, error in outcomes:
        _settle(future, result, error)


def _resolve(outcomes: List[Tuple[_Append, Any, Optional[BaseException]]]) -> None:
    """Resolve appends: concurrent futures here, asyncio futures on their loop, one wake-up per loop."""
    by_loop: Dict[Any, List] = {}
    for r, result, error in outcomes:
        if r.loop is None:
            _settle(r.future, result, error)
        else:
            by_loop.setdefault(r.loop, []).append((r.future, result, error))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


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
