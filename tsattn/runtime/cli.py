"""``tsattn-serve``: serve an export over HTTP (FastAPI on uvicorn). See ``main``'s ``--help``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Optional, Sequence

from tsattn.cliutil import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, setup_logging
from tsattn.runtime.limits import DEFAULT_MAX_PREDICT_VALUES
from tsattn.runtime.protocol import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_HEADER_BYTES

EXIT_EXPORT = 3  # the export is refused: missing or malformed manifest, tampered or truncated file, failed parity
EXIT_DEVICE = 4  # --device names CUDA and no usable GPU (never a silent fallback to the CPU)
EXIT_LISTEN = 5  # cannot listen on --host/--port (address in use, not permitted, unknown host)

PROG = "tsattn-serve"
TOKEN_ENV = "TSATTN_SERVE_TOKEN"
log = logging.getLogger("tsattn.runtime")

EPILOG = f"""\
examples:
  tsattn-serve exported_models/reference                         # http://127.0.0.1:8000, device auto
  {TOKEN_ENV}=s3cret tsattn-serve exported_models/reference --host 0.0.0.0 --port 8080
  tsattn-serve /tmp/ref --device cuda --max-streams 10000 --max-cache-mb 4096 --batch-window-ms 2
  curl -s -XPOST localhost:8000/v1/streams                       # -> {{"id": ...}}
  curl -s -XPOST localhost:8000/v1/streams/ID/observations -d '{{"values": [0.1, 0.3]}}'

endpoints: GET /healthz, GET /v1/models, POST /v1/models/NAME/predict, POST /v1/streams,
POST /v1/streams/ID/observations, GET /v1/streams/ID, DELETE /v1/streams/ID, GET /metrics (Prometheus),
GET /openapi.json. Every error is JSON {{"error", "type", "status"}}, request heads and malformed HTTP included.
The Open Inference Protocol (KServe v2, as Triton speaks it; tritonclient works unchanged): GET /v2,
/v2/health/live, /v2/health/ready, /v2/models/NAME[/ready], POST /v2/models/NAME/infer (sequence_id,
sequence_start, sequence_end: a sequence is a stream); over gRPC too with --grpc-port.

limits: a request body of at most --max-body-bytes (413), received within --body-timeout (408); a request head of
at most --max-header-bytes (431) within --header-timeout (408); JSON nested at most 32 deep, numbers of at most 64
characters (400); --max-predict-values input values per predict and --max-append values per append (413); long
inputs run through the cache graph in chunks of 256 positions, so a request's memory grows linearly with its size.

shutdown: SIGTERM or SIGINT stops accepting connections, lets the requests in flight finish (at most
--drain-timeout seconds), shuts the runtime down, prints "stopped" and exits 0. A second SIGINT forces it.

token: --token T or the environment variable {TOKEN_ENV} (preferred: a command line is visible to other users
in `ps`) makes every path but /healthz require "Authorization: Bearer T". Without one the server is open, so it
binds 127.0.0.1 by default; a non-loopback --host without a token logs a warning.

exit codes:
  0  stopped cleanly (SIGINT/SIGTERM, or --max-requests served)
  1  internal error (a traceback is printed)
  2  usage error: bad arguments or limits
  {EXIT_EXPORT}  export refused: no manifest, malformed manifest, a file missing, truncated or modified (sha256),
     failed parity, or no ONNX graph
  {EXIT_DEVICE}  --device cuda[:N] and ONNX Runtime cannot run on that GPU (no CUDA provider, no GPU, missing CUDA
     libraries): the server never falls back to the CPU silently
  {EXIT_LISTEN}  cannot listen on --host/--port (address in use, permission denied, unknown host)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve an export (tsattn-export) over HTTP: streaming forecasts with a per-stream KV cache kept "
                    "in ONNX Runtime on the device, batched across streams, and stateless predict.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="an export directory (manifest.json, model.onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--token", help=f"bearer token required on every path but /healthz (or ${TOKEN_ENV})")
    p.add_argument("--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads per session call (default 1; the HTTP loop needs a core)")
    p.add_argument("--max-streams", type=int, default=1024, help="open streams; beyond, the LRU idle one is evicted (default %(default)s)")
    p.add_argument("--max-cache-mb", type=float, default=1024.0,
                   help="KV cache of all streams, MiB; beyond, LRU idle streams are evicted (default 1024; 0: no limit)")
    p.add_argument("--idle-ttl", type=float, default=900.0, metavar="S",
                   help="evict a stream idle for S seconds (default 900; 0: never)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="batch appends arriving less than this apart (default 2.0; 0: no waiting)")
    p.add_argument("--max-batch", type=int, default=64, help="appends stepped in one call (default %(default)s; 1: no batching)")
    p.add_argument("--max-pending", type=int, default=4096, help="queued appends before 503 (default 4096)")
    p.add_argument("--max-append", type=int, help="observations per append (default 2048)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-predict-values", type=int, default=DEFAULT_MAX_PREDICT_VALUES,
                   help=f"input values per predict (default {DEFAULT_MAX_PREDICT_VALUES})")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="a request body not received within S seconds answers 408 (default 30; 0: no limit)")
    p.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES,
                   help=f"request line and headers limit, 431 beyond (default {DEFAULT_MAX_HEADER_BYTES})")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="S",
                   help=f"a request head not received within S seconds answers 408 (default "
                        f"{DEFAULT_HEADER_TIMEOUT_S:g}; 0: no limit)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM/SIGINT, wait at most S seconds for requests in flight (default 30)")
    p.add_argument("--append-timeout", type=float, default=30.0, metavar="S",
                   help="an append not run within S seconds answers 503 (default 30)")
    p.add_argument("--grpc-port", type=int, metavar="PORT",
                   help="also serve the Open Inference Protocol over gRPC on --host:PORT (0: any free port, printed)")
    p.add_argument("--max-requests", type=int, help="stop after serving this many requests (tests, recycling)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and uvicorn's access log")
    return p


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (its own, so that port 0 can be reported and bind errors are ours)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT is not raised again after the graceful shutdown (uvicorn >= 0.29
        does, which ends the process with -15 or a KeyboardInterrupt traceback): main() finishes the shutdown of
        the runtime, prints "stopped" and returns 0."""

        stopped_by: Optional[int] = None

        def handle_exit(self, sig, frame) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for requests in flight
            else:
                self.should_exit = True

    return Server


def _Server(config):
    return _server_class()(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    for name in ("port", "grpc_port", "threads", "max_streams", "max_batch", "max_pending", "max_append",
                 "max_body_bytes", "max_requests", "max_predict_values", "max_header_bytes"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (value == 0 and not name.endswith("port"))):
            parser.error(f"--{name.replace('_', '-')} must be {'>= 0' if name.endswith('port') else 'positive'}; "
                         f"got {value}")
    for name in ("max_cache_mb", "batch_window_ms", "append_timeout", "idle_ttl", "body_timeout", "header_timeout",
                 "drain_timeout"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    token = args.token or os.environ.get(TOKEN_ENV) or None

    from tsattn.export.manifest import ManifestError
    from tsattn.runtime.device import DeviceUnavailable
    from tsattn.runtime.engine import load

    try:
        runtime = load(args.export_dir, device=args.device, threads=args.threads, max_streams=args.max_streams,
                       max_cache_bytes=int(args.max_cache_mb * (1 << 20)) or None, idle_ttl_s=args.idle_ttl or None,
                       batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, max_pending=args.max_pending,
                       max_append=args.max_append, max_predict_values=args.max_predict_values)
    except ManifestError as exc:
        print(f"{PROG}: export refused: {exc}", file=sys.stderr)
        return EXIT_EXPORT
    except DeviceUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        runtime.shutdown()
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_LISTEN
    grpc_server = None
    try:
        import uvicorn

        from tsattn.runtime.protocol import guarded
        from tsattn.runtime.server import create_app

        app = create_app(runtime, token=token, max_body_bytes=args.max_body_bytes,
                         append_timeout_s=args.append_timeout, body_timeout_s=args.body_timeout or None)
        if not token and not _is_loopback(sock):
            log.warning("listening on %s without a token: anyone who can reach it can use the model (set --token or "
                        "$%s)", sock.getsockname()[0], TOKEN_ENV)
        config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose,
                                limit_max_requests=args.max_requests, timeout_graceful_shutdown=args.drain_timeout,
                                http=guarded(args.max_header_bytes, args.header_timeout),
                                h11_max_incomplete_event_size=args.max_header_bytes)
        server = _Server(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if args.grpc_port is not None:  # tsattn.runtime.oip_grpc: the same /v2 service over gRPC
            from tsattn.runtime import oip_grpc

            try:
                grpc_server, grpc_port = oip_grpc.serve(app.state.oip, host, args.grpc_port, token=token,
                                                        max_message_bytes=args.max_body_bytes,
                                                        metrics=app.state.metrics)
            except OSError as exc:
                print(f"{PROG}: cannot listen for gRPC on {host}:{args.grpc_port}: {exc}", file=sys.stderr)
                return EXIT_LISTEN
            print(f"{PROG}: gRPC (Open Inference Protocol) on {shown}:{grpc_port}", file=sys.stderr, flush=True)
        print(f"{PROG}: serving {runtime.name!r} on http://{shown}:{port} (device {runtime.device}, providers "
              f"{runtime.providers[next(iter(runtime.providers))]}, token {'required' if token else 'off'})",
              file=sys.stderr, flush=True)
        server.run(sockets=[sock])
        if not server.started:
            print(f"{PROG}: the server did not start (see the log above)", file=sys.stderr)
            return EXIT_INTERNAL
        if grpc_server is not None:  # before the runtime: gRPC calls in flight finish first
            grpc_server.stop(2).wait(5)
            grpc_server = None
        runtime.shutdown()
        why = f" by {signal.Signals(server.stopped_by).name}" if server.stopped_by else ""
        print(f"{PROG}: stopped{why}", file=sys.stderr, flush=True)
        return EXIT_OK
    except Exception:
        traceback.print_exc()
        return EXIT_INTERNAL
    finally:
        if grpc_server is not None:
            grpc_server.stop(2).wait(5)
        runtime.shutdown()
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
