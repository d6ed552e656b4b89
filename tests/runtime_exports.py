"""Small exports for the runtime, server and Triton tests (legacy exporter, ONNX only: about a second each)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Tuple

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
