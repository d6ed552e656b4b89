"""The batching scheduler: appends are queued and stepped by one worker thread, the half of
``tsattn.runtime.engine.Runtime`` that decides what runs together.

Appends of different streams whose caches have the same length and which add the same number of steps (and, for
an encoder-decoder, whose encoder outputs have one shape; for a graph that takes a start position, at one
position) are stepped together in one batched session call (``Runtime._step``), at most ``max_batch`` appends
and ``limits.CALL_POSITIONS`` rows per call. ``batch_window_ms``: the worker waits while appends keep arriving,
until none came for that long (at most ten windows after the first), so that concurrent streams step together;
0: no waiting. Two appends to one stream are never in one batch: they are applied in the order they were
submitted. Futures are ``concurrent.futures`` ones or an asyncio loop's (resolved on their loop, one wake-up per
batch). ``Scheduler`` (a base of ``Runtime``) uses the runtime's lock and condition (``_lock``, ``_wake``), its
queue and ``_step``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tsattn.runtime import limits
from tsattn.runtime.errors import Overloaded
from tsattn.runtime.streams import Stream

log = logging.getLogger("tsattn.runtime")


@dataclass(frozen=True)
class StepResult:
    """What an append returns through ``submit``'s future: ``outputs``, every step output for the new steps (the
    graph's layout without the batch axis for a one-row stream, with it for several; time on the task's axis),
    ``forecast``, the primary output after the last new step (``(*out,)`` for one row, ``(*out, rows)`` for
    several: what the ``values`` form answers), and the stream's cache length and step count after it."""

    forecast: np.ndarray
    length: int
    observed: int
    outputs: Dict[str, np.ndarray] = field(default_factory=dict)


class _Append:
    """A queued append: its stream, its values, and the future to resolve: a ``concurrent.futures.Future``, or an
    asyncio future of ``loop`` (resolved on that loop, one wake-up per batch)."""

    __slots__ = ("stream", "inputs", "n", "future", "loop", "queued", "offset")

    def __init__(self, stream: Stream, inputs: Dict[str, np.ndarray], n: int, loop=None,
                 offset: Optional[int] = None) -> None:
        self.stream = stream
        self.inputs = inputs  # step input name -> array in the graph's layout (rows on axis 0) and dtype
        self.n = n  # new steps
        self.offset = offset  # the stream's ``observed`` the caller expects before these steps (None: any)
        self.loop = loop
        self.future = concurrent.futures.Future() if loop is None else loop.create_future()
        self.queued = time.perf_counter()


class Scheduler:
    """The append queue and its worker thread (see the module docstring)."""

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
                r.stream._queued -= r.n
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
        """The queued appends of distinct streams, grouped by what one call needs alike (cache length, new steps,
        the shapes of encoder outputs, the start position where the graph takes one); the rest stay."""
        taken: Dict[Tuple, List[_Append]] = {}
        seen: set = set()
        keep: "collections.deque[_Append]" = collections.deque()
        while self._queue:
            r = self._queue.popleft()
            s = r.stream
            if s._closed:
                s._pending -= 1
                s._queued -= r.n
                _resolve([(r, None, self._gone(s))])
                continue
            if s.id in seen:
                keep.append(r)  # a later append of a stream already in this round: next round, in order
                continue
            seen.add(s.id)
            position = s.observed if self._stream_graph.position else 0  # one start position per call
            taken.setdefault((s.length, r.n, s._static_key, position), []).append(r)
        self._queue = keep
        return list(taken.values())


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


__all__ = ["Scheduler", "StepResult"]
