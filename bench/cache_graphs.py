"""Cache-graph layouts for streaming decode, measured in ONNX Runtime (CPU): the evidence behind the export's choice.

Reference forecaster, d_model 128, 4 layers, 4 heads, max_context 2048, batch 1. Layouts:

    one_graph       one graph, past caches of any length (0 = a prefill): what tsattn-export writes
    prefill_graph   a separate prefill graph without past inputs (its decode graph would be one_graph's)
    fixed_capacity  static shapes: caches of a fixed capacity (= context here) used as a ring buffer, plus a
                    position input; every step rewrites and attends over the whole capacity

Per case (an exporter and a context; its own process, bench/harness.py): ``*_step_ms``, one new observation on
top of ``context`` cached positions; ``*_prefill_ms``, ``context`` observations on an empty cache (also the cost
of recomputing without a cache); ``export_s`` and the node count of one_graph. The layouts are timed in
interleaved rounds within the case's process, so that load from elsewhere hits them alike; medians.

    python bench/cache_graphs.py --json out.json [--exporters dynamo,legacy]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import main, median_ms  # noqa: E402

CONTEXTS = (128, 512, 2048)
CASES = [{"exporter": e, "context": c} for e in ("dynamo", "legacy") for c in CONTEXTS]
COLUMNS = ("exporter", "context", "one_graph_step_ms", "fixed_capacity_step_ms", "one_graph_prefill_ms",
           "prefill_graph_prefill_ms", "export_s", "nodes")


def _ring_module(model):
    """Fixed-capacity decode step: ``forward(values (B, 1), position (B,), *caches (B, Hkv, C, D))``. Slot
    ``position % C`` takes the new key/value; slot j holds the position ``(slot - j) mod C`` steps back."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Ring(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, values, position, *caches):
            m = self.m
            capacity = caches[0].shape[2]
            h = m.embed(((values - m.loc) / m.scale).unsqueeze(-1))  # (B, 1, d_model)
            slots = torch.arange(capacity, dtype=torch.int64)
            cap = slots[-1:] + 1  # capacity as a tensor: the dynamo exporter cannot take tensor % SymInt
            slot = position % cap  # (B,)
            write = (slots[None, :] == slot[:, None])[:, None, :, None]  # (B, 1, C, 1)
            dt = (slot[:, None] - slots[None, :]) % cap  # (B, C): distance of each slot's position
            filled = dt <= position[:, None]
            presents = []
            for i, block in enumerate(m.blocks):
                a, x = block.attn, block.norm1(h)
                b = x.shape[0]
                q = a.q_proj(x).view(b, 1, a.n_heads, a.head_dim).transpose(1, 2)
                k = a.k_proj(x).view(b, 1, a.n_kv_heads, a.head_dim).transpose(1, 2)
                v = a.v_proj(x).view(b, 1, a.n_kv_heads, a.head_dim).transpose(1, 2)
                keys = torch.where(write, k, caches[2 * i])
                vals = torch.where(write, v, caches[2 * i + 1])
                bias = a.decay(dt.to(values.dtype)).masked_fill(~filled[None], float("-inf"))  # (1|H, B, C)
                bias = bias.permute(1, 0, 2).unsqueeze(2)  # (B, 1|H, 1, C)
                rep = a.n_heads // a.n_kv_heads
                y = F.scaled_dot_product_attention(q, keys.repeat_interleave(rep, 1), vals.repeat_interleave(rep, 1),
                                                   attn_mask=bias)
                h = h + a.out_proj(y.transpose(1, 2).reshape(b, 1, a.d_model))
                h = h + block.mlp(block.norm2(h))
                presents += [keys, vals]
            return (m.head(m.norm(h)) * m.scale + m.loc,) + tuple(presents)

    return Ring(model).eval()


def _check_ring() -> float:
    """The fixed-capacity step (capacity C) equals the model's own cached steps with max_context C - 1."""
    import torch

    from tsattn.models.reference import ReferenceConfig, build_reference

    capacity = 10
    model = build_reference(ReferenceConfig(d_model=32, n_layers=2, max_context=capacity - 1), seed=0)
    ring = _ring_module(model)
    x = torch.randn(2, 30)
    caches = tuple(torch.zeros(2, model.config.kv_heads, capacity, model.config.head_dim) for _ in range(4))
    got = []
    with torch.no_grad():
        for t in range(30):
            out = ring(x[:, t : t + 1], torch.tensor([t, t]), *caches)
            got.append(out[0])
            caches = out[1:]
        err = (torch.cat(got, 1) - model(x)[0]).abs().max().item()
    if err > 1e-5:
        raise AssertionError(f"fixed-capacity step differs from the model by {err:.3g}")
    return err


def _graphs(exporter: str):
    """(name, module, spec) of the three layouts, built on one reference model (max_context 2048)."""
    import torch

    from tsattn.export.manifest import TensorSpec
    from tsattn.export.models import build_reference_export
    from tsattn.export.spec import ExportSpec, distinct_sizes

    built = build_reference_export({"max_context": 2048}, None, 0)
    spec, cache = built.spec, built.spec.cache

    class NoPast(torch.nn.Module):  # the prefill graph: no past inputs, empty caches made inside the graph
        def __init__(self, flat):
            super().__init__()
            self.flat = flat

        def forward(self, values):
            empty = values.new_zeros(values.shape[0], cache.kv_heads, 0, cache.head_dim)
            return self.flat(values, *([empty] * (2 * cache.layers)))

    prefill = ExportSpec("prefill", spec.inputs, tuple(spec.outputs) + tuple(cache.present_specs()),
                         example_sizes=distinct_sizes(["batch", "seq"], avoid=spec.fixed_dims),
                         parity_sizes=spec.parity_sizes)
    shape = ("batch", cache.kv_heads, "capacity", cache.head_dim)
    ring = ExportSpec(
        "ring", (TensorSpec("values", "float32", ("batch", 1)), TensorSpec("position", "int64", ("batch",)),
                 *(TensorSpec(n, "float32", shape) for n in cache.past_names())),
        (TensorSpec("forecast", "float32", ("batch", 1, 24)),
         *(TensorSpec(n, "float32", shape) for n in cache.present_names())),
        example_sizes=distinct_sizes(["batch", "capacity"], avoid=spec.fixed_dims + [1]),
        parity_sizes=spec.parity_sizes)
    return cache, [("one_graph", built.module, spec), ("prefill_graph", NoPast(built.module).eval(), prefill),
                   ("fixed_capacity", _ring_module(built.module.model), ring)]


def run_case(p: Dict, repeats: int) -> Dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from tsattn.export.exporter import DEFAULT_OPSET, export_onnx

    _check_ring()
    cache, graphs = _graphs(p["exporter"])
    sessions, row = {}, dict(p)
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, spec in graphs:
            example = spec.example_inputs(spec.example_sizes)
            if name == "fixed_capacity":
                example = (example[0], torch.tensor([11, 40, 2, 7, 5])[: spec.example_sizes["batch"]]) + example[2:]
            path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            with torch.no_grad():
                export_onnx(module, example, spec, path, DEFAULT_OPSET, p["exporter"])
            if name == "one_graph":
                row["export_s"] = time.perf_counter() - t0
                row["nodes"] = len(onnx.load(str(path)).graph.node)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ctx = p["context"]
    at_ctx = {n: rng.standard_normal((1, cache.kv_heads, ctx, cache.head_dim)).astype(np.float32)
              for n in cache.past_names()}
    empty = {n: np.zeros((1, cache.kv_heads, 0, cache.head_dim), np.float32) for n in cache.past_names()}
    one = rng.standard_normal((1, 1)).astype(np.float32)
    window = rng.standard_normal((1, ctx)).astype(np.float32)
    position = np.array([ctx + 5], dtype=np.int64)
    calls = {
        "one_graph_step_ms": lambda: sessions["one_graph"].run(None, {"values": one, **at_ctx}),
        "fixed_capacity_step_ms": lambda: sessions["fixed_capacity"].run(None, {"values": one, "position": position,
                                                                                **at_ctx}),
        "one_graph_prefill_ms": lambda: sessions["one_graph"].run(None, {"values": window, **empty}),
        "prefill_graph_prefill_ms": lambda: sessions["prefill_graph"].run(None, {"values": window}),
    }
    # interleaved rounds, so that a noisy neighbour slows every layout alike; medians
    samples = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            n = 20 if "step" in key else 1
            samples[key].append(median_ms(fn, n))
    row.update({k: float(np.median(v)) for k, v in samples.items()})
    return row


def _add(parser):
    parser.add_argument("--exporters", default="dynamo,legacy", help="comma-separated: dynamo, legacy")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main(__doc__.splitlines()[0], CASES, run_case, COLUMNS, default_repeats=5,
                          select=lambda c, a: c["exporter"] in a.exporters.split(","), add_arguments=_add))
