"""Open streams and their eviction: the registry half of ``tsattn.runtime.engine.Runtime``.

``Stream`` is what a caller holds; ``_Block`` the device caches of the streams stepped together last.
``StreamRegistry`` (a base of ``Runtime``) keeps the open streams in LRU order, the ids of evicted ones (an evicted
id answers ``StreamEvicted`` naming why, an unknown one ``UnknownStream``), the bytes of cache held, and evicts:
``max_streams`` and ``max_cache_bytes`` the least recently used stream without an append in flight,
``idle_ttl_s`` every stream unused that long. It reads the runtime's lock (``_lock``: every ``*_locked`` method
is called holding it), clock, limits and counters.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Union

import numpy as np

from tsattn.runtime.errors import StreamEvicted, UnknownStream

log = logging.getLogger("tsattn.runtime")

_EVICTED_MEMORY = 10_000  # evicted ids remembered, for a clear answer instead of "unknown"


class Stream:
    """An open stream: ``id``, ``rows`` (batch rows = channels), ``length`` (positions in its cache, at most
    max_context), ``observed`` (values appended in all). Internal state is the runtime's; use its methods."""

    __slots__ = ("id", "rows", "length", "observed", "opened", "last_used", "_block", "_pending", "_queued",
                 "_closed", "_statics", "_static_key", "_last")

    def __init__(self, stream_id: str, rows: int, now: float, statics: Optional[List[Any]] = None) -> None:
        self.id = stream_id
        self.rows = rows
        self.length = 0
        self.observed = 0
        self.opened = now
        self.last_used = now
        self._block: Optional[_Block] = None  # where the cache is (rows of a block of OrtValues); None: empty
        self._pending = 0  # appends queued or in flight
        self._queued = 0  # steps of those appends (a cache that does not slide: observed + queued <= capacity)
        self._closed = False
        self._statics = statics  # an encoder-decoder's encoder outputs fed to every step (OrtValues), or None
        self._static_key = tuple(tuple(v.shape()[1:]) for v in statics) if statics else ()
        self._last: Optional[np.ndarray] = None  # the primary output at the last step (generate reads it)

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


class StreamRegistry:
    """The open streams of a runtime, their cache bytes and eviction (see the module docstring)."""

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

    def _gone(self, s: Stream) -> Exception:
        reason = self._evicted.get(s.id)
        if reason is not None:
            return StreamEvicted(f"stream {s.id!r} was evicted ({reason}) before its append ran")
        return UnknownStream(f"stream {s.id!r} was closed before its append ran")


__all__ = ["Stream", "StreamRegistry"]
