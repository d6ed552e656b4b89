"""Seed 002's models: cached vs recomputed generation, and MoE vs a dense FFN (issue #11's figures).

    python bench/models.py [--json PATH] [--only generate|moe] [--repeats 3]

Generation rows {"impl": "cached"|"recompute", "attention": "mha"|"gqa"|"mqa", "steps": 256, "ms", "cache_mb"}:
``AutoregressiveTransformerModel.generate`` of 256 values after a 64-step prompt, batch 8, embed_dim 128,
ffn_latent_dim 512, 4 layers, 8 heads (gqa: 2 groups), input_dim = output_dim = 1; "cached" uses the stateful KV
cache (one new position per step), "recompute" runs the full forward over the whole sequence at every step.
cache_mb is the bytes of the key/value cache after the last step (0 for recompute), measured from the tensors.

MoE rows {"impl": "moe_top1"|"moe_top2"|"dense_ffn", "tokens": 4096, "ms"}: one forward of 4096 tokens (batch 8 x
512) of width 128 through ``MOE`` with 8 experts of latent 512 and capacity 640 (1.25 x tokens / experts), or the
dense ``FFN`` of latent 512.

float32, no grad, each case in its own process (bench/harness.py), median of --repeats after a warm-up; --threads
(default 2) sets torch's threads. The README's table was taken with --threads 1 (it says why).
"""

from __future__ import annotations

import os
import sys
from typing import Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

ATTENTIONS = ["mha", "gqa", "mqa"]
STEPS, PROMPT, BATCH = 256, 64, 8
TOKENS = 4096
CASES = ([{"impl": impl, "attention": a, "steps": STEPS} for a in ATTENTIONS for impl in ("cached", "recompute")]
         + [{"impl": impl, "tokens": TOKENS} for impl in ("moe_top1", "moe_top2", "dense_ffn")])


def run_case(case: Dict, repeats: int) -> Dict:
    import torch

    from tsattn.models import FFN, MOE, AutoregressiveTransformerModel

    torch.manual_seed(0)
    impl = case["impl"]
    if impl in ("cached", "recompute"):
        model = AutoregressiveTransformerModel(
            input_dim=1, embed_dim=128, ffn_latent_dim=512, num_layers=4, num_heads=8, output_dim=1,
            apply_causal_mask=True, max_seq_len=PROMPT + STEPS, attention_type=case["attention"], num_groups=2,
            use_kv_cache=impl == "cached").eval()
        prompt = torch.randn(BATCH, PROMPT, 1)
        with torch.no_grad():
            ms = harness.median_ms(lambda: model.generate(prompt, case["steps"]), repeats)
        return {**case, "ms": round(ms, 1), "cache_mb": round(model.cache_nbytes() / 2**20, 3)}
    if impl in ("moe_top1", "moe_top2", "dense_ffn"):
        x = torch.randn(8, case["tokens"] // 8, 128)
        if impl == "dense_ffn":
            layer = FFN(128, 512).eval()
        else:
            layer = MOE(128, 512, num_experts=8, capacity=640, alpha=0.01, topk=int(impl[-1])).eval()
        with torch.no_grad():
            ms = harness.median_ms(lambda: layer(x), max(repeats, 5))
        return {**case, "ms": round(ms, 2)}
    raise SystemExit(f"unknown impl {impl!r}")


def _add_arguments(parser) -> None:
    parser.add_argument("--only", choices=["generate", "moe"], help="run one group of cases")


def _select(case: Dict, args) -> bool:
    if args.only == "generate":
        return "steps" in case
    if args.only == "moe":
        return "tokens" in case
    return True


if __name__ == "__main__":
    sys.exit(harness.main(__doc__.splitlines()[0], CASES, run_case,
                          ["impl", "attention", "steps", "tokens", "ms", "cache_mb"],
                          select=_select, add_arguments=_add_arguments))
