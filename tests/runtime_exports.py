"""Small exports for the runtime, server and Triton tests (legacy exporter, ONNX only: about a second each)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from tsattn.export.exporter import export
from tsattn.export.manifest import TensorSpec
from tsattn.export.models import MODELS
from tsattn.export.spec import Exportable, ExportSpec, distinct_sizes
from tsattn.models.reference import ReferenceForecaster

# the tiny reference forecaster: 2 layers, 4 query / 2 kv heads of dim 8, horizon 5, a 16-position window
TINY = {"d_model": 32, "n_layers": 2, "n_kv_heads": 2, "horizon": 5, "max_context": 16}


def reference_export(out: Path, **options) -> Tuple[Path, ReferenceForecaster]:
    """Export the reference forecaster (``TINY`` updated by ``options``, seed 0) to ``out``; returns the directory
    and the eager model the export was made from."""
    exportable = MODELS["reference"].build(dict(TINY, **options), None, 0)
    export(exportable, out, formats=["onnx"], exporter="legacy")
    return out, exportable.module.model


class WindowForecaster(nn.Module):
    """A cache-less forecaster shaped like CALF's export: x (batch, 16, 3) -> y (batch, 4, 3), a linear map over
    time per channel plus a channel mix."""

    def __init__(self) -> None:
        super().__init__()
        self.time = nn.Linear(16, 4)
        self.mix = nn.Linear(3, 3)

    def forward(self, x):
        return self.mix(self.time(x.transpose(1, 2)).transpose(1, 2))


def cacheless_export(out: Path) -> Tuple[Path, nn.Module]:
    torch.manual_seed(0)
    module = WindowForecaster().eval()
    spec = ExportSpec("window", (TensorSpec("x", "float32", ("batch", 16, 3)),),
                      (TensorSpec("y", "float32", ("batch", 4, 3)),),
                      example_sizes=distinct_sizes(["batch"], avoid=(16, 3, 4)),
                      parity_sizes=({"batch": 1}, {"batch": 2}), exporter="legacy",
                      task={"kind": "forecast", "input": "x", "output": "y"})
    export(Exportable(module, spec, {"kind": "test"}), out, formats=["onnx"])
    return out, module


def copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------- streams in uneven chunks

CHUNKS = (1, 3, 1, 7, 2, 5)  # the sizes of successive appends, cycled


def chunk_sizes(total: int) -> List[int]:
    """Uneven chunk sizes (``CHUNKS`` cycled) that add up to ``total``."""
    sizes, k = [], 0
    while sum(sizes) < total:
        sizes.append(min(CHUNKS[k % len(CHUNKS)], total - sum(sizes)))
        k += 1
    return sizes


def _time_axes(manifest, side: str) -> Dict[str, int]:
    """Step tensor name -> its time axis in a one-row stream's arrays (no batch axis)."""
    return {t.name: t.time_axis - 1 for t in getattr(manifest.task, side)}


def stream_in_chunks(runtime, inputs: Dict[str, np.ndarray], open_inputs: Optional[Dict[str, Any]] = None
                     ) -> Dict[str, np.ndarray]:
    """Feed ``inputs`` (one stream's step inputs, no batch axis) to a new stream of ``runtime`` in uneven chunks;
    the step outputs of every chunk, concatenated along their time axes."""
    axes_in, axes_out = _time_axes(runtime.manifest, "inputs"), _time_axes(runtime.manifest, "outputs")
    total = next(iter(inputs.values())).shape[axes_in[next(iter(inputs))]]
    s = runtime.open_stream(inputs=open_inputs) if open_inputs is not None else runtime.open_stream()
    pieces: Dict[str, List[np.ndarray]] = {n: [] for n in axes_out}
    start = 0
    for n in chunk_sizes(total):
        chunk = {k: np.take(v, range(start, start + n), axis=axes_in[k]) for k, v in inputs.items()}
        out = runtime.append(s, chunk)
        for k, v in out.items():
            assert v.shape[axes_out[k]] == n, (k, v.shape, n)
            pieces[k].append(v)
        start += n
    runtime.close(s)
    return {k: np.concatenate(v, axis=axes_out[k]) for k, v in pieces.items()}


def http_stream_in_chunks(client, manifest, inputs: Dict[str, np.ndarray],
                          open_inputs: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """``stream_in_chunks`` through the HTTP app (a Starlette TestClient): POST /v1/streams, then
    POST /v1/streams/{id}/observations with {"inputs": ...} per chunk."""
    axes_in, axes_out = _time_axes(manifest, "inputs"), _time_axes(manifest, "outputs")
    total = next(iter(inputs.values())).shape[axes_in[next(iter(inputs))]]
    body = {} if open_inputs is None else {"inputs": {k: np.asarray(v).tolist() for k, v in open_inputs.items()}}
    r = client.post("/v1/streams", json=body)
    assert r.status_code == 201, r.text
    stream = r.json()["id"]
    pieces: Dict[str, List[np.ndarray]] = {n: [] for n in axes_out}
    start, observed = 0, 0
    for n in chunk_sizes(total):
        chunk = {k: np.take(v, range(start, start + n), axis=axes_in[k]).tolist() for k, v in inputs.items()}
        r = client.post(f"/v1/streams/{stream}/observations", json={"inputs": chunk})
        assert r.status_code == 200, r.text
        answer = r.json()
        observed += n
        assert answer["observed"] == observed and answer["id"] == stream
        for k, v in answer["outputs"].items():
            pieces[k].append(np.asarray(v, dtype=np.float32))
        start += n
    assert client.delete(f"/v1/streams/{stream}").status_code == 204
    return {k: np.concatenate(v, axis=axes_out[k]) for k, v in pieces.items()}


def hephaestus_export(root: Path) -> Path:
    """The Hephaestus look-alike injected with ``efficient`` and exported with local attention (window 3): a
    ``sequence`` task with two step inputs and outputs, time on axis 2, and a cache that does not slide (1024
    absolute positions). About 10 s."""
    from tsattn.examples import lookalike_repo
    from tsattn.export import cli
    from tsattn.injector import engine

    patched = lookalike_repo("hephaestus_lookalike", root / "patched")
    engine.inject(patched, "efficient", patch_out=root / "efficient.patch")
    out = root / "hephaestus"
    assert cli.main(["--target", str(patched), "--feature", "efficient", "--out", str(out), "--set",
                     "attention_type=local", "--set", 'attention_kwargs={"window_size": 3}']) == 0
    return out


def hephaestus_steps(n: int, rows: int = 1, seed: int = 0) -> Dict[str, np.ndarray]:
    """n time steps of the look-alike's 3 numeric and 1 categorical column (token ids tok0..tok3), graph layout
    (rows, columns, n)."""
    rng = np.random.default_rng(seed)
    return {"numeric_inputs": rng.normal(size=(rows, 3, n)).astype(np.float32),
            "categorical_inputs": rng.integers(8, 12, size=(rows, 1, n)).astype(np.float32)}


def wave_export(root: Path) -> Path:
    """The Wave-Transformer look-alike injected with ``wcmha`` and exported with random weights (vocabulary 40): a
    ``causal_lm`` task, int64 token ids in, logits out, a cache that does not slide (64 positions). About 15 s."""
    from tsattn.examples import lookalike_repo
    from tsattn.export import cli
    from tsattn.injector import engine

    patched = lookalike_repo("wave_transformer_lookalike", root / "Wave-Transformer")
    engine.inject(patched, "wcmha", patch_out=root / "wcmha.patch")
    out = root / "wave"
    assert cli.main(["--target", str(patched), "--feature", "wcmha", "--set", "vocab_size=40", "--exporter", "legacy",
                     "--out", str(out)]) == 0
    return out
