"""The limits that bound what one request can cost, and the helpers that enforce them before any work is done.

Memory. A causal graph evaluates a call of ``n`` new positions over ``p`` cached ones with attention scores of
``rows x heads x n x (p + n)`` per layer, so one long call grows with the square of its length. Every call of the
cache graph that the runtime makes (a stream's append, a predict on the cache graph) is therefore cut into
chunks (``chunk_length``): at most ``PREFILL_CHUNK`` positions per row, and at most ``CALL_POSITIONS`` rows x
positions per call; each chunk's ``present`` caches are fed back as the next chunk's ``past`` (on the device).
The streaming contract says this is the same computation (a stream's forecasts do not depend on how its values
are cut into appends); a sliding cache keeps ``p <= max_context``, so a call's working memory is bounded by
``CALL_POSITIONS x heads x (max_context + PREFILL_CHUNK)`` scores per layer, whatever the input's length, and a
request's memory grows linearly with its length (its values in and its outputs out).

The request-size limits (``max_predict_values``, ``max_append``, ``max_channels``, the body size) then bound the
linear part; the README's table gives the budget they imply.

JSON. ``check_json`` runs on the raw body before ``json.loads``: nesting deeper than ``MAX_JSON_DEPTH`` (Python's
parser recurses, 1,000+ levels is a RecursionError) and numbers longer than ``MAX_NUMBER_CHARS`` characters
(int() refuses 4,300+ digits with a ValueError) are refused with a ``JsonRefused`` naming the limit. ``loads``
parses with integers beyond int64 read as floats (so that an array of them is numeric, and a float32 input says
it overflows).
"""

from __future__ import annotations

import json
import re
from typing import Any

PREFILL_CHUNK = 256  # positions per row per call of the cache graph (a long input is evaluated in such chunks)
CALL_POSITIONS = 1024  # rows x positions per call (more rows: shorter chunks; a batch of appends splits by rows)
MAX_CHANNELS = 1024  # rows of one stream (channels); a stream of more would need calls over CALL_POSITIONS rows
DEFAULT_MAX_PREDICT_VALUES = 65536  # input values per predict
MAX_JSON_DEPTH = 32  # nesting of a request body (a predict input of rank r nests r + 2 deep)
MAX_NUMBER_CHARS = 64  # characters of one JSON number (a float64 needs at most 24)


def chunk_length(rows: int, n: int, chunk: int = PREFILL_CHUNK, positions: int = CALL_POSITIONS) -> int:
    """Positions per call for ``rows`` rows and ``n`` new positions: at most ``chunk``, at most ``positions //
    rows``, at least 1."""
    return max(1, min(n, chunk, positions // max(rows, 1)))


def row_groups(rows: int, length: int, chunk: int = PREFILL_CHUNK, positions: int = CALL_POSITIONS):
    """``(start, stop)`` row ranges for a predict of ``rows`` rows of ``length`` positions, so that each call holds
    at most ``positions`` rows x positions (a chunk of ``chunk_length(1, length)`` positions)."""
    per_call = max(1, positions // chunk_length(1, length, chunk, positions))
    return [(start, min(rows, start + per_call)) for start in range(0, rows, per_call)]


class JsonRefused(ValueError):
    """A request body refused before parsing: ``status`` (400), ``kind`` and a message naming the limit."""

    def __init__(self, message: str, kind: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


# a JSON string (the closing quote optional, so that an unterminated string is one linear match, never a retry
# from every later quote)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.S)
_NUMBER_RUN = re.compile(rb"[0-9.eE+\-]{%d,}" % (MAX_NUMBER_CHARS + 1))


def check_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS) -> None:
    """Refuse (``JsonRefused``) a body nested deeper than ``max_depth`` or holding a number of more than
    ``max_number_chars`` characters, in time linear in its size and without parsing it. Strings are blanked out
    (their brackets and digits do not count) only when the raw body could exceed a limit."""
    pattern = _NUMBER_RUN if max_number_chars == MAX_NUMBER_CHARS else re.compile(
        rb"[0-9.eE+\-]{%d,}" % (max_number_chars + 1))
    deep = raw.count(b"[") + raw.count(b"{") > max_depth
    long_number = pattern.search(raw) is not None
    if not (deep or long_number):
        return  # the common case: two counts and one search
    if b'"' in raw:
        raw = _STRING.sub(b'""', raw)
    if deep:
        import numpy as np

        codes = np.frombuffer(raw, dtype=np.uint8)
        step = (np.isin(codes, (0x5B, 0x7B)).astype(np.int32) - np.isin(codes, (0x5D, 0x7D)).astype(np.int32))
        depth = int(np.cumsum(step).max()) if step.size else 0
        if depth > max_depth:
            raise JsonRefused(f"the JSON body nests {depth} levels deep; the limit is {max_depth} (max_json_depth)",
                              "json_too_deep")
    found = pattern.search(raw) if long_number else None
    if found:
        raise JsonRefused(f"a JSON number of {len(found.group())} characters; the limit is {max_number_chars} "
                          f"characters (max_number_chars)", "number_too_long")


def _int(text: str) -> Any:
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 64) else float(value)


_DECODER = json.JSONDecoder(parse_int=_int)  # made once: json.loads(..., parse_int=...) builds one per call
_ENCODER = json.JSONEncoder(allow_nan=False)


def loads(raw: bytes) -> Any:
    """``json.loads`` after ``check_json``; integers outside int64/uint64 become floats. Raises ``JsonRefused``,
    ``UnicodeDecodeError``, ``json.JSONDecodeError``."""
    check_json(raw)
    text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, (bytes, bytearray)) else raw
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def dumps(body: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (``ValueError`` instead: they are not JSON)."""
    return _ENCODER.encode(body)


__all__ = ["CALL_POSITIONS", "DEFAULT_MAX_PREDICT_VALUES", "JsonRefused", "MAX_CHANNELS", "MAX_JSON_DEPTH",
           "MAX_NUMBER_CHARS", "PREFILL_CHUNK", "check_json", "chunk_length", "dumps", "loads", "row_groups"]
