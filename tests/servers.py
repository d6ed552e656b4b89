"""Real servers for the protocol tests: ``tsattn-serve`` in a subprocess on 127.0.0.1 (port 0, read back from its
log), ``tritonserver`` where one is installed, and the client code that drives both alike
(``tritonclient.http``)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

V2_DTYPES = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("int64"): "INT64",
             np.dtype("int32"): "INT32", np.dtype("bool"): "BOOL"}


def stop(proc: subprocess.Popen, timeout: float = 15) -> Optional[int]:
    """SIGTERM, then SIGKILL if it does not stop in time; the exit status after SIGTERM (None: it was killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
            return None
    return proc.returncode


class Served(NamedTuple):
    http: str  # 127.0.0.1:PORT
    grpc: Optional[str]  # 127.0.0.1:PORT with --grpc-port, else None


@contextlib.contextmanager
def tsattn_serve(export_dir: Path, *args: str, env: Optional[Dict[str, str]] = None,
                 timeout: float = 90) -> Iterator[Served]:
    """``tsattn-serve EXPORT --port 0 --device cpu ARGS`` in a subprocess; yields its addresses."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "tsattn.runtime.cli", str(export_dir), "--port", "0",
                             "--device", "cpu", *args], stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + timeout
        line, grpc = "", None
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("tsattn-serve exited before serving")
            found = re.search(r"gRPC .* on 127\.0\.0\.1:(\d+)", line)
            if found:
                grpc = f"127.0.0.1:{found.group(1)}"
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        yield Served(f"127.0.0.1:{match.group(1)}", grpc)
    except BaseException:
        stop(proc)
        raise
    finally:
        if proc.poll() is None:  # the body passed: SIGTERM stops it cleanly (HTTP and gRPC alike), exit 0
            status = stop(proc)
            assert status == 0, f"tsattn-serve did not stop cleanly on SIGTERM (exit status {status})"
        if proc.stderr is not None:
            proc.stderr.close()


# ---------------------------------------------------------------------------------------------------- the client
# The client code of the tests: the same function against tsattn-serve and against tritonserver.


def split_steps(arrays: Dict[str, np.ndarray], sizes: Sequence[int], axis: int = 1) -> List[Dict[str, np.ndarray]]:
    """Consecutive pieces of ``sizes`` steps of every array along its time ``axis`` (graph layout, batch first)."""
    pieces, start = [], 0
    for n in sizes:
        pieces.append({k: np.take(v, range(start, start + n), axis=axis) for k, v in arrays.items()})
        start += n
    return pieces


def _protocol(client):
    """tritonclient.http or tritonclient.grpc, whichever ``client`` is from."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def infer_inputs(arrays: Dict[str, np.ndarray], binary: bool, protocol=None):
    """InferInputs of tritonclient.http (``binary``: Triton's binary tensor extension, else JSON) or of
    tritonclient.grpc (``protocol``; always raw contents)."""
    import tritonclient.http as httpclient

    protocol = protocol or httpclient
    inputs = []
    for name, array in arrays.items():
        t = protocol.InferInput(name, list(array.shape), V2_DTYPES[array.dtype])
        if protocol is httpclient:
            t.set_data_from_numpy(array, binary_data=binary)
        else:
            t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


def stream_sequence(client, model: str, chunks: Sequence[Dict[str, np.ndarray]], sequence_id: int,
                    outputs: Sequence[str], binary: bool = True, headers=None) -> List[Dict[str, np.ndarray]]:
    """Send ``chunks`` (graph inputs, batch first) as one sequence: START on the first request, END on the last;
    returns each request's outputs. ``client``: a tritonclient.http or tritonclient.grpc client."""
    protocol = _protocol(client)
    answers = []
    for i, chunk in enumerate(chunks):
        wanted = [protocol.InferRequestedOutput(n, **({"binary_data": binary} if protocol.__name__.endswith("http")
                                                      else {})) for n in outputs]
        result = client.infer(model, infer_inputs(chunk, binary, protocol), outputs=wanted, sequence_id=sequence_id,
                              sequence_start=i == 0, sequence_end=i == len(chunks) - 1,
                              headers=dict(headers or {}))  # infer adds its own headers to the dict
        answers.append({n: result.as_numpy(n) for n in outputs})
    return answers


# ---------------------------------------------------------------------------------------------------- tritonserver

TRITON_ENV = "TSATTN_TRITONSERVER"  # a Triton install: a directory with bin/tritonserver and backends/python/


def triton_install() -> Tuple[Optional[Path], str]:
    """Where a tritonserver with the Python backend is (``$TSATTN_TRITONSERVER``, the ``nvidia-pytriton`` wheel's
    copy, or ``tritonserver`` on PATH), or None and why not."""
    candidates = []
    if os.environ.get(TRITON_ENV):
        candidates.append(Path(os.environ[TRITON_ENV]))
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (nor its dependencies)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "tritonserver")
    found = shutil.which("tritonserver")
    if found:
        candidates.append(Path(found).resolve().parent.parent)
    for root in candidates:
        if (root / "bin" / "tritonserver").is_file() and (root / "backends" / "python").is_dir():
            return root, ""
    return None, (f"no tritonserver with the Python backend: set ${TRITON_ENV} to a Triton directory, or "
                  f"`pip install --no-deps nvidia-pytriton` (it ships tritonserver 2.51); looked at "
                  f"{[str(c) for c in candidates] or 'nothing'}")


def python_backend_dir(root: Path, into: Path) -> Tuple[Optional[Path], str]:
    """A backend directory whose Python backend runs this interpreter's Python: the nvidia-pytriton wheel keeps
    one stub per Python version (python_backend_stubs/X.Y) and copies the right one in at start; a Triton image
    has its stub in place. Returns (directory, "") or (None, why not)."""
    source = root / "backends" / "python"
    stub = source / "triton_python_backend_stub"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not stub.is_file():
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        return None, f"{root}: no Python backend stub for Python {version}"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None, (f"this Python ({sys.executable}) has no shared libpython for the stub to embed; give the "
                      f"entry a virtual environment instead (--triton-python-env)")
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != stub.name:
            (python / f.name).symlink_to(f)
    (python / stub.name).symlink_to(stub)
    return into, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tritonserver(root: Path, backends: Path, repo: Path, log: Path, timeout: float = 120) -> Iterator[str]:
    """``tritonserver`` on 127.0.0.1 (HTTP only, a free port; gRPC and metrics off) serving ``repo``, its log in
    ``log``; yields ``127.0.0.1:PORT`` once the server is ready, stops it (SIGTERM) after. The stub embeds this
    interpreter's libpython (``LD_LIBRARY_PATH``), so it sees this interpreter's numpy and onnxruntime."""
    import tritonclient.http as httpclient

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [sysconfig.get_config_var("LIBDIR"),
                                                           env.get("LD_LIBRARY_PATH")]))
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(root / "bin" / "tritonserver"), f"--model-repository={repo}",
                                 f"--backend-directory={backends}", "--http-address=127.0.0.1",
                                 f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
                                 "--exit-timeout-secs=5", "--log-verbose=0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"127.0.0.1:{port}"
    try:
        client = httpclient.InferenceServerClient(url)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({proc.returncode}); its log:\n{log.read_text()[-4000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {timeout:g} s; its log:\n{log.read_text()[-4000:]}")
            time.sleep(0.25)
        client.close()
        yield url
    finally:
        stop(proc, timeout=20)
