"""Errors of the runtime, each with the HTTP status the server answers it with (``status``)."""

from __future__ import annotations

from typing import Optional


class ServingError(Exception):
    """Base class. ``status``: the HTTP status for it; ``retry_after``: seconds, for capacity errors."""

    status = 500
    retry_after: Optional[float] = None


class InputError(ServingError, ValueError):
    """Observations or predict inputs of the wrong shape, dtype, or with NaN/Inf; the message names the problem."""

    status = 422


class TooManyValues(InputError):
    """More values in one call than the configured limit (``max_append``, ``max_predict_values``)."""

    status = 413


class NotSupported(ServingError):
    """The export cannot do this (streams on a graph without a cache, an unknown graph)."""

    status = 400


class UnknownStream(ServingError, LookupError):
    """No open stream has this id."""

    status = 404


class StreamEvicted(UnknownStream):
    """The stream existed and was evicted (idle TTL, LRU under max_streams or the cache byte budget)."""

    status = 410


class CacheFull(ServingError):
    """An append would take a stream past its cache's capacity (a cache that does not slide: absolute positions,
    ``max_context`` in all); the stream is unchanged. Close it and open a new one to go on."""

    status = 409


class OffsetMismatch(ServingError):
    """An append's ``offset`` (the number of values the client expects the stream to hold before its values) is
    not the stream's ``observed`` count: nothing was applied. ``observed`` and ``length`` are the stream's now (a
    retried append that was already applied gets this, so a retry is applied at most once)."""

    status = 409

    def __init__(self, message: str, observed: int, length: int) -> None:
        super().__init__(message)
        self.observed = observed
        self.length = length


class NonFiniteOutput(InputError):
    """The model's output for these inputs is not finite (NaN or Inf, e.g. a value near float32's maximum that
    overflows inside the graph); a stream's cache is left as it was before the append."""

    status = 422


class CapacityError(ServingError):
    """The runtime cannot take this now; try again after ``retry_after`` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(CapacityError):
    """Too many appends are queued (``max_pending``), or one did not finish in time."""

    status = 503


class TooManyStreams(CapacityError):
    """``max_streams`` streams are open and every one of them has an append in flight (none can be evicted)."""

    status = 429


__all__ = ["CacheFull", "CapacityError", "InputError", "NonFiniteOutput", "NotSupported", "OffsetMismatch",
           "Overloaded", "ServingError", "StreamEvicted", "TooManyStreams", "TooManyValues", "UnknownStream"]
