"""Self-contained attention templates: each file imports torch and the standard library only.

The injector copies these files verbatim into target repositories, so a module here never imports another
tsattn module.
"""

from .wcmha import DECAY_TYPES, DecayBias, GroupedQueryAttention, WCMHA, decay_values, decayed_attention, dense_bias

__all__ = [
    "DECAY_TYPES",
    "DecayBias",
    "GroupedQueryAttention",
    "WCMHA",
    "decay_values",
    "decayed_attention",
    "dense_bias",
]
