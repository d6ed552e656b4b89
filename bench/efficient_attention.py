"""Efficient attentions on long inputs in Hephaestus' 4D layout vs dense causal SDPA and a dense band mask (issue #3).

    python bench/efficient_attention.py [--json PATH] [--lengths 1024,4096,16384] [--impls local256,...] [--repeats 3]

4D layout: batch 1, n_columns 8, 4 heads, head dim 32 (d_model 128), float32, 2 threads; each case in its own
process (peak RSS is the process's). What is timed is the attention core: each module's ``attend(q, k, v)`` on
given head-split q, k, v of shape (1, 4, 8, L, 32) (projections excluded, the same for every impl), no grad.
impl names:
  dense_causal        FlashAttention.attend: F.scaled_dot_product_attention(is_causal=True) over all columns
  dense_masked_local  the naive local attention: SDPA with a dense L x L band mask of width 256, built per call
  local256            LocalAttention(window_size=256): blockwise, keys inside the window only
  sparse              SparseAttention(stride=4, local_window=32), the guide's configuration
  chunked             ChunkedAttention(chunk_size=256, overlap=32), the guide's configuration
  featurewise         FeaturewiseAttention(share_weights=True): causal SDPA one column at a time
Rows: {"impl", "L", "ms", "peak_mb"}.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

IMPLS = ["dense_causal", "dense_masked_local", "local256", "sparse", "chunked", "featurewise"]
LENGTHS = [1024, 4096, 16384]
BATCH, COLUMNS, HEADS, HEAD_DIM, WINDOW = 1, 8, 4, 32, 256


def run_case(case: Dict, repeats: int) -> Dict:
    import torch
    import torch.nn.functional as F

    from tsattn.modules import (ChunkedAttention, FeaturewiseAttention, FlashAttention, LocalAttention,
                                SparseAttention)

    impl, length = case["impl"], case["L"]
    d_model = HEADS * HEAD_DIM
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, COLUMNS, length, HEAD_DIM, generator=g) for _ in range(3))
    if impl == "dense_causal":
        m = FlashAttention(d_model, HEADS)
        fn = lambda: m.attend(q, k, v)  # noqa: E731
    elif impl == "dense_masked_local":
        shape = (BATCH, HEADS * COLUMNS, length, HEAD_DIM)

        def fn():
            pos = torch.arange(length)
            dt = pos[:, None] - pos[None, :]
            band = (dt >= 0) & (dt < WINDOW)  # (L, L), True = attend
            return F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape), attn_mask=band)
    elif impl == "local256":
        m = LocalAttention(d_model, HEADS, window_size=WINDOW)
        fn = lambda: m.attend(q, k, v)  # noqa: E731
    elif impl == "sparse":
        m = SparseAttention(d_model, HEADS, stride=4, local_window=32)
        fn = lambda: m.attend(q, k, v)  # noqa: E731
    elif impl == "chunked":
        m = ChunkedAttention(d_model, HEADS, chunk_size=256, overlap=32)
        fn = lambda: m.attend(q, k, v)  # noqa: E731
    elif impl == "featurewise":
        m = FeaturewiseAttention(d_model, HEADS, share_weights=True)
        fn = lambda: m.attend(q, k, v)  # noqa: E731
    else:
        raise SystemExit(f"unknown impl {impl!r}; valid: {IMPLS}")
    with torch.no_grad():
        ms = harness.median_ms(fn, repeats)
    return {"impl": impl, "L": length, "ms": round(ms, 2), "peak_mb": round(harness.peak_rss_mb(), 1)}


def _impl_list(text):
    impls = text.split(",")
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown impl(s) {unknown}; valid: {IMPLS}")
    return impls


def _add_arguments(parser):
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated L values")
    parser.add_argument("--impls", type=_impl_list, default=IMPLS, help="comma-separated impl names (default: all)")


def _select(case, args):
    return case["L"] in {int(x) for x in args.lengths.split(",")} and case["impl"] in args.impls


if __name__ == "__main__":
    sys.exit(harness.main(__doc__.splitlines()[0], [{"impl": i, "L": n} for n in LENGTHS for i in IMPLS],
                          run_case, ["impl", "L", "ms", "peak_mb"], select=_select, add_arguments=_add_arguments))
