"""Real servers for the protocol tests: ``tsattn-serve`` in a subprocess on 127.0.0.1 (port 0, read back from its
log), and the client code that drives it and Triton alike (``tritonclient.http``)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

V2_DTYPES = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("int64"): "INT64",
             np.dtype("int32"): "INT32", np.dtype("bool"): "BOOL"}


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@contextlib.contextmanager
def tsattn_serve(export_dir: Path, *args: str, env: Optional[Dict[str, str]] = None,
                 timeout: float = 90) -> Iterator[str]:
    """``tsattn-serve EXPORT --port 0 --device cpu ARGS`` in a subprocess; yields ``127.0.0.1:PORT``."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "tsattn.runtime.cli", str(export_dir), "--port", "0",
                             "--device", "cpu", *args], stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError("tsattn-serve exited before serving")
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        yield f"127.0.0.1:{match.group(1)}"
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()


# ---------------------------------------------------------------------------------------------------- the client
# The client code of the tests: the same function against tsattn-serve and against tritonserver.


def infer_inputs(arrays: Dict[str, np.ndarray], binary: bool):
    import tritonclient.http as httpclient

    inputs = []
    for name, array in arrays.items():
        t = httpclient.InferInput(name, list(array.shape), V2_DTYPES[array.dtype])
        t.set_data_from_numpy(array, binary_data=binary)
        inputs.append(t)
    return inputs


def stream_sequence(client, model: str, chunks: Sequence[Dict[str, np.ndarray]], sequence_id: int,
                    outputs: Sequence[str], binary: bool = True, headers=None) -> List[Dict[str, np.ndarray]]:
    """Send ``chunks`` (graph inputs, batch first) as one sequence: START on the first request, END on the last;
    returns each request's outputs."""
    import tritonclient.http as httpclient

    answers = []
    for i, chunk in enumerate(chunks):
        result = client.infer(model, infer_inputs(chunk, binary),
                              outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs],
                              sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(chunks) - 1,
                              headers=dict(headers or {}))  # infer adds its own headers to the dict
        answers.append({n: result.as_numpy(n) for n in outputs})
    return answers
