"""Self-contained attention templates: torch and the standard library only.

The injector copies these files verbatim into target repositories, so a template never imports tsattn. A template
may import a sibling template, and then only relatively (``from .wcmha import DecayBias``): the injector installs
a template together with the templates it imports, in the same package of the target, and rewrites the relative
module name when the recipe renames a file.
"""

from .wcmha import DECAY_TYPES, DecayBias, GroupedQueryAttention, WCMHA, decay_values, decayed_attention, dense_bias
from .efficient_attention import (
    ATTENTION_KWARGS,
    ATTENTION_TYPES,
    AttentionPattern,
    ChunkedAttention,
    FeaturewiseAttention,
    FlashAttention,
    LocalAttention,
    SparseAttention,
    StandardAttention,
    WeightedCausalAttention,
    benchmark_attention_mechanisms,
    make_attention,
    pattern_attention,
)

__all__ = [
    "DECAY_TYPES",
    "DecayBias",
    "GroupedQueryAttention",
    "WCMHA",
    "decay_values",
    "decayed_attention",
    "dense_bias",
    "ATTENTION_KWARGS",
    "ATTENTION_TYPES",
    "AttentionPattern",
    "ChunkedAttention",
    "FeaturewiseAttention",
    "FlashAttention",
    "LocalAttention",
    "SparseAttention",
    "StandardAttention",
    "WeightedCausalAttention",
    "benchmark_attention_mechanisms",
    "make_attention",
    "pattern_attention",
]
