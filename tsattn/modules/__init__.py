"""Self-contained attention templates: torch and the standard library only.

The injector copies these files verbatim into target repositories, so a template never imports tsattn. A template
may import a sibling template, and then only relatively (``from .wcmha import DecayBias``): the injector installs
a template together with the templates it imports, in the same package of the target, and rewrites the relative
module name when the recipe renames a file.
"""

from .wcmha import (
    DECAY_TYPES, DecayBias, GroupedQueryAttention, WCMHA, decay_values, decayed_attention, dense_bias, dense_weights,
    trim_cache,
)
from .powerformer_decay import (
    DECAY_TYPES as POWERFORMER_DECAY_TYPES, TRAINABLE_DECAY_TYPES as POWERFORMER_TRAINABLE_DECAY_TYPES, PowerformerDecay,
    check_decay_options, decay_mask, normalize_decay_type,
)
from .wave_ahs import AdaptiveHarmonicSelector, HarmonicSparsificationLoss
from .wave_fcl import CURRICULUM_MODES, FrequencyCurriculumScheduler, FrequencyMask
from .wave_mrwp import MultiResolutionWavePyramid
from .wave_pcca import COHERENCE_MODES, PhaseCoherentAttention, RotaryAttention, RotaryEmbedding, phase_coherence
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
    "dense_weights",
    "trim_cache",
    # the Powerformer authors' decay masks (PatchTST / Time-Series-Library recipes, issues #19/#20)
    "POWERFORMER_DECAY_TYPES",
    "POWERFORMER_TRAINABLE_DECAY_TYPES",
    "PowerformerDecay",
    "check_decay_options",
    "decay_mask",
    "normalize_decay_type",
    # Wave-Transformer enhancements (issue #6)
    "AdaptiveHarmonicSelector",
    "HarmonicSparsificationLoss",
    "CURRICULUM_MODES",
    "FrequencyCurriculumScheduler",
    "FrequencyMask",
    "COHERENCE_MODES",
    "PhaseCoherentAttention",
    "RotaryAttention",
    "RotaryEmbedding",
    "phase_coherence",
    "MultiResolutionWavePyramid",
    # efficient attentions, Hephaestus guide (issue #3)
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
