"""uvicorn's HTTP protocol with the guards that must act before the app sees a request.

uvicorn with httptools accepts request heads of any size (16 MB were accepted) and waits for them for ever, and
answers a malformed request with a plain-text 400. ``guarded(max_header_bytes, header_timeout_s)`` is its
``HttpToolsProtocol`` (or ``H11Protocol`` where httptools is missing) with:

- a request head (request line and headers) over ``max_header_bytes`` -> 431, JSON, connection closed;
- a request head not complete within ``header_timeout_s`` of its first byte -> 408, JSON, connection closed (a
  connection that sends nothing at all is closed after that time without an answer);
- a request the parser refuses -> 400 with a JSON body (``{"error", "type", "status"}``, as every error of the
  app), instead of uvicorn's plain text.

The body's own timeout (408) and size limit (413) are the app's (``server.Gate``). Pass the class as
``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import json
from typing import Optional

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT_S = 10.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def error_response(status: int, message: str, kind: str) -> bytes:
    """A complete HTTP/1.1 response with the app's JSON error body; the connection is to be closed after it."""
    body = json.dumps({"error": message, "type": kind, "status": status}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))) + body


def guarded(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
            base: Optional[type] = None) -> type:
    """A uvicorn HTTP protocol class with the guards above (``base``: the protocol to extend; default httptools',
    else h11's)."""
    if base is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        except ImportError:  # no httptools: h11, whose own limit bounds the head (h11_max_incomplete_event_size)
            from uvicorn.protocols.http.h11_impl import H11Protocol as base
    if not hasattr(base, "on_headers_complete"):  # h11's protocol has no parser callbacks: JSON 400s only

        class JsonErrors(base):
            def send_400_response(self, msg: str) -> None:
                if not self.transport.is_closing():
                    self.transport.write(error_response(400, f"malformed HTTP request: {msg}", "bad_request"))
                    self.transport.close()

        JsonErrors.__name__ = JsonErrors.__qualname__ = f"JsonErrors{base.__name__}"
        return JsonErrors

    class Guarded(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_bytes = 0  # bytes received while the head is incomplete (a head still arriving)
            self._head_size = 0  # request line and headers as parsed (a head that arrived in one piece)
            self._head_refused = False
            self._in_head = True
            self._head_timer = None
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is None and header_timeout_s:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _refuse(self, status: int, message: str, kind: str) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            if self._idle():  # never in the middle of another response on this connection
                self.transport.write(error_response(status, message, kind))
            self.transport.close()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self._head_bytes == 0:
                self.transport.close()  # connected and silent: nobody to answer
                return
            self._refuse(408, f"the request head did not arrive within {header_timeout_s:g} s (header_timeout_s)",
                         "header_timeout")

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > max_header_bytes:
                self._refuse(431, f"the request head exceeds {max_header_bytes} bytes (max_header_bytes)",
                             "header_too_large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._disarm()
            if self._head_size > max_header_bytes:
                self._head_refused = True
                raise ValueError("request head too large")  # the parser stops: send_400_response answers 431
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # what comes next is the next request's head

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            if self._head_refused:
                self._refuse(431, f"the request head of {self._head_size} bytes exceeds {max_header_bytes} bytes "
                                  f"(max_header_bytes)", "header_too_large")
                return
            self._refuse(400, f"malformed HTTP request: {msg}", "bad_request")

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "DEFAULT_MAX_HEADER_BYTES", "error_response", "guarded"]
