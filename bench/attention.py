"""WCMHA on long inputs vs causal SDPA and the naive dense bias (issue #2's figures).

    python bench/attention.py [--json PATH] [--lengths 1024,4096,16384] [--repeats 3]

Batch 1, 4 heads, head dim 32, float32, 2 threads; each case in its own process (peak RSS is the process's).
impl names: sdpa_causal (F.scaled_dot_product_attention(is_causal=True)), wcmha_dense_bias (SDPA with a dense
L x L float bias, the naive way), wcmha (powerlaw, alpha=1, no cutoff), wcmha_cutoff256 (the same with cutoff=256).
Rows: {"impl", "L", "ms", "peak_mb"}.
"""

from __future__ import annotations

import os
import sys
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

IMPLS = ["sdpa_causal", "wcmha_dense_bias", "wcmha", "wcmha_cutoff256"]
LENGTHS = [1024, 4096, 16384]


def run_case(case: Dict, repeats: int) -> Dict:
    import torch
    import torch.nn.functional as F

    from tsattn.modules import DecayBias, decayed_attention, dense_bias

    impl, length = case["impl"], case["L"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, length, 32, generator=g) for _ in range(3))
    if impl == "sdpa_causal":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    elif impl == "wcmha_dense_bias":
        bias = DecayBias("powerlaw", 1.0)
        fn = lambda: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=dense_bias(bias, length, length, None, q.dtype, q.device))
    elif impl == "wcmha":
        bias = DecayBias("powerlaw", 1.0)
        fn = lambda: decayed_attention(q, k, v, bias)  # noqa: E731
    elif impl == "wcmha_cutoff256":
        bias = DecayBias("powerlaw", 1.0, cutoff=256)
        fn = lambda: decayed_attention(q, k, v, bias)  # noqa: E731
    else:
        raise SystemExit(f"unknown impl {impl!r}; valid: {IMPLS}")
    with torch.no_grad():
        ms = harness.median_ms(fn, repeats)
    return {"impl": impl, "L": length, "ms": round(ms, 2), "peak_mb": round(harness.peak_rss_mb(), 1)}


def _add_arguments(parser):
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated L values")


def _select(case, args):
    return case["L"] in {int(x) for x in args.lengths.split(",")}


if __name__ == "__main__":
    sys.exit(harness.main(__doc__.splitlines()[0], [{"impl": i, "L": n} for n in LENGTHS for i in IMPLS],
                          run_case, ["impl", "L", "ms", "peak_mb"], select=_select, add_arguments=_add_arguments))
