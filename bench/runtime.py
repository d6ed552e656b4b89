"""The runtime and the server on the reference forecaster (d_model 128, 4 layers, 4 heads; max_context 2048 so that
a context of 2048 is really cached), exported once with the default exporter; each case in its own process.

Rows (``--json PATH`` writes exactly these fields):

    {"impl": "cached_step" | "recompute", "context": C, "ms": float}
        one new observation on a stream holding C values (``Runtime.append``: one cached step, caches kept as
        OrtValues) vs recomputing the forecast from the C + 1 values (``Runtime.predict``, a full forward);
        ONNX Runtime, medians
    {"impl": "ort" | "eager" | "torchscript", "batch": 32, "ms": float}
        a batch forecast: 32 series of ``--batch-length`` values (default 96), one forward: ``Runtime.predict``
        (ONNX Runtime), the eager PyTorch model, the export's TorchScript file; medians
    {"impl": "server_batched" | "server_unbatched", "streams": 64, "p50_ms", "p99_ms", "appends_per_s"}
        ``tsattn-serve`` on 127.0.0.1 (an ephemeral port, its own process) and 64 concurrent streams over loopback
        (keep-alive HTTP/1.1 connections, one per stream, an asyncio client): the 64 streams are opened, then all
        append one value at a time, each sending its next value when its forecast arrives, 2,000 appends in all
        (after a warm-up of 200 on other streams); batched: ``--max-batch 64
        --batch-window-ms W``; unbatched: ``--max-batch 1``. Latency per append at the client; appends/s = 2,000 /
        wall time. Bounded: 2,000 appends and ``--server-timeout`` seconds (the case fails beyond it).
    {"impl": "predict_memory", "values": N, "peak_mb", "delta_mb", "ms"}
        one predict request of a single series of N values (1024, 8192, 32768), each in its own process, as the
        server handles it: the JSON body parsed (``tsattn.runtime.limits.loads``), ``Runtime.predict`` (the cache
        graph in chunks of ``PREFILL_CHUNK`` positions), the answer written as JSON. peak_mb: the process's peak
        RSS after it; delta_mb: minus the peak after loading and one warm-up predict of 64 values.

    python bench/runtime.py --json out.json [--repeats 5] [--threads 2] [--only server|memory]

After the table, the ratios of the issue's targets are printed (recompute/cached_step at 512 and 2048, eager/ort,
server_batched/server_unbatched appends/s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from harness import main, median_ms  # noqa: E402

CONTEXTS = (128, 512, 2048)
PREDICT_LENGTHS = (1024, 8192, 32768)
BATCH = 32
STREAMS = 64
APPENDS = 2000
CASES = ([{"impl": impl, "context": c} for c in CONTEXTS for impl in ("cached_step", "recompute")]
         + [{"impl": impl, "batch": BATCH} for impl in ("ort", "eager", "torchscript")]
         + [{"impl": impl, "streams": STREAMS} for impl in ("server_batched", "server_unbatched")]
         + [{"impl": "predict_memory", "values": n} for n in PREDICT_LENGTHS])
COLUMNS = ("impl", "context", "batch", "streams", "values", "ms", "p50_ms", "p99_ms", "appends_per_s", "peak_mb",
           "delta_mb")
OPTIONS = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_context": 2048}


def _export(out: Path, exporter: str) -> None:
    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS

    print(f"exporting the reference forecaster ({exporter} exporter, max_context 2048) to {out}", file=sys.stderr)
    export(MODELS["reference"].build(OPTIONS, None, 0), out, exporter=exporter)


def _series(n: int, seed: int = 0):
    import numpy as np

    t = np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return (np.sin(t / 11.0) + 0.3 * np.sin(t / 3.7) + 0.1 * rng.normal(size=n)).astype(np.float32)


def _stream_case(case: Dict, repeats: int, threads: int) -> Dict:
    from tsattn.runtime import load

    context = case["context"]
    values = _series(context + 400)
    with load(case["export"], device="cpu", threads=threads) as rt:
        if case["impl"] == "cached_step":
            stream = rt.open_stream()
            rt.append(stream, values[:context])
            steps = iter(values[context:].tolist())
            ms = median_ms(lambda: rt.append(stream, next(steps)), max(repeats, 30), warmup=3)
        else:
            window = values[None, : context + 1]
            ms = median_ms(lambda: rt.predict({"values": window}), repeats)
    return {"impl": case["impl"], "context": context, "ms": ms}


def _vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM, MiB). Not ru_maxrss: a child inherits its parent's at fork, and this case's
    parent exported the model with torch."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _memory_case(case: Dict, repeats: int, threads: int) -> Dict:
    from tsattn.runtime import limits, load

    peak_rss_mb = _vm_hwm_mb

    n = case["values"]
    body = json.dumps({"inputs": {"values": [_series(n).round(5).tolist()]}}).encode()
    with load(case["export"], device="cpu", threads=threads) as rt:
        rt.predict({"values": _series(64)[None]})
        base = peak_rss_mb()
        t0 = time.perf_counter()
        data = limits.loads(body)
        outputs = rt.predict(data["inputs"])
        text = limits.dumps({"model": rt.name, "outputs": {k: v.tolist() for k, v in outputs.items()}})
        ms = (time.perf_counter() - t0) * 1e3
        peak = peak_rss_mb()
    assert len(text) > n
    return {"impl": "predict_memory", "values": n, "peak_mb": peak, "delta_mb": peak - base, "ms": ms}


def _batch_case(case: Dict, repeats: int, threads: int) -> Dict:
    import numpy as np

    batch = np.stack([_series(case["length"], seed=i) for i in range(BATCH)])
    if case["impl"] == "ort":
        from tsattn.runtime import load

        with load(case["export"], device="cpu", threads=threads) as rt:
            ms = median_ms(lambda: rt.predict({"values": batch}), repeats, warmup=2)
        return {"impl": "ort", "batch": BATCH, "ms": ms}
    import torch

    from tsattn.export.manifest import load_manifest

    manifest = load_manifest(case["export"])
    x = torch.from_numpy(batch)
    if case["impl"] == "eager":
        from tsattn.models.reference import ReferenceConfig, build_reference

        model = build_reference(ReferenceConfig.from_dict(manifest.source["config"]), seed=0)  # the export's weights
        args = (x,)
    else:
        model = torch.jit.load(str(manifest.graph_file("model", "torchscript"))).eval()
        empty = torch.zeros(manifest.cache.shape(BATCH, 0))  # the traced graph takes the (empty) caches
        args = (x,) + (empty,) * (2 * manifest.cache.layers)

    def run():
        with torch.no_grad():
            return model(*args)[0]

    ms = median_ms(run, repeats, warmup=2)
    return {"impl": case["impl"], "batch": BATCH, "ms": ms}


# ---------------------------------------------------------------------------------------------------- the server


class _Connection:
    """A keep-alive HTTP/1.1 connection: just enough client to time the server, not itself."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "_Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"") -> (int, bytes):
        self.writer.write(f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                          f"content-length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _drive(port: int, streams: int, appends: int, timeout: float) -> List[float]:
    """Open ``streams`` streams (one connection each), then all of them append one value at a time, each sending its
    next value when its forecast arrives, until ``appends`` appends were made in all; latencies in ms."""
    values = _series(appends + streams)
    remaining = [appends]
    latencies: List[float] = []

    async def open_one() -> tuple:
        conn = await _Connection.open(port)
        status, body = await conn.request("POST", "/v1/streams", b"{}")
        assert status == 201, body
        return conn, f"/v1/streams/{json.loads(body)['id']}"

    async def run(k: int, conn: "_Connection", path: str) -> None:
        try:
            i = k
            while remaining[0] > 0:
                remaining[0] -= 1
                payload = b'{"values": [%r]}' % float(values[i % len(values)])
                t0 = time.perf_counter()
                status, body = await conn.request("POST", path + "/observations", payload)
                latencies.append((time.perf_counter() - t0) * 1e3)
                if status != 200:
                    raise RuntimeError(f"append answered {status}: {body[:200]!r}")
                i += streams
            await conn.request("DELETE", path)
        finally:
            conn.close()

    async def all_streams() -> None:
        opened = await asyncio.gather(*(open_one() for _ in range(streams)))  # every stream open, then all start
        await asyncio.gather(*(run(k, conn, path) for k, (conn, path) in enumerate(opened)))

    await asyncio.wait_for(all_streams(), timeout)
    return latencies


def _server_case(case: Dict, repeats: int, threads: int) -> Dict:
    batched = case["impl"] == "server_batched"
    cmd = [sys.executable, "-m", "tsattn.runtime.cli", case["export"], "--host", "127.0.0.1", "--port", "0",
           "--device", "cpu", "--threads", "1", "--max-batch", str(STREAMS if batched else 1),
           "--batch-window-ms", str(case["window_ms"] if batched else 0)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tempfile.NamedTemporaryFile("w+", prefix="tsattn-serve-", suffix=".log")  # a file: the pipe cannot fill up
    server = subprocess.Popen(cmd, stderr=log, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            match = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", Path(log.name).read_text())
            if match:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tsattn-serve did not start: {Path(log.name).read_text()}")
            time.sleep(0.1)
        port = int(match.group(1))
        asyncio.run(_drive(port, STREAMS, 200, case["timeout"]))  # warm-up: sessions, allocator, code paths
        t0 = time.perf_counter()
        latencies = asyncio.run(_drive(port, STREAMS, APPENDS, case["timeout"]))
        wall = time.perf_counter() - t0
    except asyncio.TimeoutError:
        raise SystemExit(f"{case['impl']}: {APPENDS} appends did not finish within {case['timeout']} s") from None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    latencies.sort()
    return {"impl": case["impl"], "streams": STREAMS, "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "appends_per_s": len(latencies) / wall}


def run_case(case: Dict, repeats: int) -> Dict:
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    if "context" in case:
        return _stream_case(case, repeats, threads)
    if "batch" in case:
        return _batch_case(case, repeats, threads)
    if "values" in case:
        return _memory_case(case, repeats, threads)
    return _server_case(case, repeats, threads)


# ---------------------------------------------------------------------------------------------------- the driver


def _ratios(rows: List[Dict]) -> List[str]:
    ms = {(r["impl"], r.get("context")): r.get("ms") for r in rows}
    lines = []
    for c, target in ((512, 10), (2048, 30), (128, None)):
        if ms.get(("recompute", c)) and ms.get(("cached_step", c)):
            ratio = ms[("recompute", c)] / ms[("cached_step", c)]
            lines.append(f"recompute / cached_step at context {c}: {ratio:.1f}x"
                         + (f" (target >= {target}: {'met' if ratio >= target else 'NOT met'})" if target else ""))
    if ms.get(("eager", None)) and ms.get(("ort", None)):
        ratio = ms[("eager", None)] / ms[("ort", None)]
        lines.append(f"eager / ort (batch {BATCH}): {ratio:.2f}x (target >= 1.3: {'met' if ratio >= 1.3 else 'NOT met'})")
    if ms.get(("torchscript", None)) and ms.get(("ort", None)):
        lines.append(f"torchscript / ort (batch {BATCH}): {ms[('torchscript', None)] / ms[('ort', None)]:.2f}x")
    aps = {r["impl"]: r.get("appends_per_s") for r in rows}
    if aps.get("server_batched") and aps.get("server_unbatched"):
        ratio = aps["server_batched"] / aps["server_unbatched"]
        lines.append(f"server_batched / server_unbatched appends/s: {ratio:.2f}x "
                     f"(target >= 2: {'met' if ratio >= 2 else 'NOT met'})")
    return lines


def _driver(argv: List[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json")
    parser.add_argument("--only", choices=("stream", "batch", "server", "memory"))
    parser.add_argument("--exporter", default="dynamo", choices=("dynamo", "legacy"))
    parser.add_argument("--export", help="reuse an export of the bench's reference model (max_context 2048)")
    parser.add_argument("--batch-length", type=int, default=96)
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--server-timeout", type=float, default=300.0)
    known, rest = parser.parse_known_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tsattn-bench-runtime-"))
    try:
        export_dir = known.export
        if export_dir is None:
            export_dir = str(tmp / "reference")
            _export(Path(export_dir), known.exporter)
        kind = {"stream": "context", "batch": "batch", "server": "streams", "memory": "values"}.get(known.only)
        for case in CASES:
            case.update(export=export_dir, length=known.batch_length, window_ms=known.batch_window_ms,
                        timeout=known.server_timeout)
        cases = [c for c in CASES if kind is None or kind in c]
        out = known.json or str(tmp / "rows.json")

        def add_arguments(p):  # the driver's own options, parsed above; listed here for --help
            p.add_argument("--only", choices=("stream", "batch", "server", "memory"), help="run one group of cases")
            p.add_argument("--exporter", help="ONNX exporter of the bench's export (default dynamo)")
            p.add_argument("--export", help="reuse an export of the bench model (d_model 128, 4 layers, 4 heads, "
                                            "max_context 2048, both formats) instead of exporting")
            p.add_argument("--batch-length", help="values per series of the batch forecast (default 96)")
            p.add_argument("--batch-window-ms", help="the batched server's --batch-window-ms (default 2)")
            p.add_argument("--server-timeout", help="seconds for the 2,000 appends of a server case (default 300)")

        code = main(__doc__.splitlines()[0], cases, run_case, COLUMNS, argv=rest + ["--json", out],
                    default_repeats=5, add_arguments=add_arguments)
        rows = json.loads(Path(out).read_text())
        for line in _ratios(rows):
            print(line)
        return code
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if "--case" in sys.argv:
        sys.exit(main(__doc__.splitlines()[0], CASES, run_case, COLUMNS, default_repeats=5))
    sys.exit(_driver(sys.argv[1:]))
