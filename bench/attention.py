"""WCMHA on long inputs vs causal SDPA and the naive dense bias: forward (issue #2) and training (issue #21).

    python bench/attention.py [--mode forward|train|all] [--json PATH] [--lengths 1024,4096,16384] [--repeats 9]

Batch 1, 4 heads, head dim 32, float32, 2 threads; each case in its own process (peak RSS is the process's).
``--mode forward`` (default) times the forward alone under ``torch.no_grad()``; ``--mode train`` the forward and
backward of the attention (q, k, v and a learnable alpha requiring grad, ``y.backward(g)`` with a fixed g).
impl names: sdpa_causal (F.scaled_dot_product_attention(is_causal=True)), wcmha_dense_bias (SDPA with a dense
L x L float bias, the naive way; forward only), wcmha (powerlaw, alpha=1, fixed, no cutoff), wcmha_cutoff256 (the
same with cutoff=256), wcmha_learnable (learnable scalar alpha, the authors' --train_attn_decay),
wcmha_per_head (learnable alpha per head).
Rows: {"mode", "impl", "L", "ms", "peak_mb", "x_time", "x_mem"}; x_time and x_mem are the ratios to sdpa_causal
of the same mode and L in the same run.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

IMPLS = {
    "forward": ["sdpa_causal", "wcmha_dense_bias", "wcmha", "wcmha_cutoff256"],
    "train": ["sdpa_causal", "wcmha", "wcmha_learnable", "wcmha_per_head", "wcmha_cutoff256"],
}
LENGTHS = [1024, 4096, 16384]
_DECAYS = {  # impl -> DecayBias keyword arguments
    "wcmha": {}, "wcmha_cutoff256": {"cutoff": 256}, "wcmha_learnable": {"learnable_alpha": True},
    "wcmha_per_head": {"learnable_alpha": True, "per_head_alpha": True},
}


def run_case(case: Dict, repeats: int) -> Dict:
    import torch
    import torch.nn.functional as F

    from tsattn.modules import DecayBias, decayed_attention, dense_bias

    mode, impl, length = case["mode"], case["impl"], case["L"]
    if impl not in IMPLS[mode]:
        raise SystemExit(f"unknown impl {impl!r} for mode {mode!r}; valid: {IMPLS[mode]}")
    g = torch.Generator().manual_seed(0)
    train = mode == "train"
    q, k, v = (torch.randn(1, 4, length, 32, generator=g).requires_grad_(train) for _ in range(3))
    if impl == "sdpa_causal":
        attend = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    elif impl == "wcmha_dense_bias":
        bias = DecayBias("powerlaw", 1.0)
        attend = lambda: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=dense_bias(bias, length, length, None, q.dtype, q.device))
    else:
        bias = DecayBias("powerlaw", 1.0, n_heads=4, **_DECAYS[impl])
        attend = lambda: decayed_attention(q, k, v, bias)  # noqa: E731
    if train:
        grad = torch.randn(1, 4, length, 32, generator=g)
        leaves = [q, k, v] + [p for p in (getattr(locals().get("bias"), "alpha", None),) if p is not None]

        def fn():
            attend().backward(grad)
            for t in leaves:
                t.grad = None

        ms = harness.median_ms(fn, repeats)
    else:
        with torch.no_grad():
            ms = harness.median_ms(attend, repeats)
    return {"mode": mode, "impl": impl, "L": length, "ms": round(ms, 2), "peak_mb": round(harness.peak_rss_mb(), 1)}


def add_ratios(rows: List[Dict]) -> List[Dict]:
    """x_time, x_mem: each row's ms and peak_mb over sdpa_causal's of the same mode and L (same run)."""
    base = {(r["mode"], r["L"]): r for r in rows if r["impl"] == "sdpa_causal"}
    for r in rows:
        b = base.get((r["mode"], r["L"]))
        if b is not None:
            r["x_time"] = round(r["ms"] / b["ms"], 3)
            r["x_mem"] = round(r["peak_mb"] / b["peak_mb"], 3)
    return rows


def _add_arguments(parser):
    parser.add_argument("--mode", choices=["forward", "train", "all"], default="forward",
                        help="forward (no grad), train (forward + backward) or both (default forward)")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated L values")


def _select(case, args):
    return case["L"] in {int(x) for x in args.lengths.split(",")} and args.mode in ("all", case["mode"])


CASES = [{"mode": m, "impl": i, "L": n} for m in IMPLS for n in LENGTHS for i in IMPLS[m]]

if __name__ == "__main__":
    # 9 timed runs per case, not the harness's 3: on two cores a median of 3 swings by a third between runs of
    # the same code (measured for the forward at L=4096 on an idle machine: 1.27x and 1.39x of SDPA with 3,
    # 1.00x and 1.04x with 11)
    sys.exit(harness.main(__doc__.splitlines()[0], CASES, run_case,
                          ["mode", "impl", "L", "ms", "peak_mb", "x_time", "x_mem"], select=_select,
                          add_arguments=_add_arguments, finish=add_ratios, default_repeats=9))
