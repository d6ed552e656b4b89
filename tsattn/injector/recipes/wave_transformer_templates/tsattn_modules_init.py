# tsattn-inject wave_transformer: this package holds tsattn's modules (installed verbatim from tsattn/modules).
"""tsattn's modules for Wave-Transformer, added by ``tsattn-inject``.

``wave_ahs`` (AdaptiveHarmonicSelector, HarmonicSparsificationLoss), ``wave_fcl`` (FrequencyMask,
FrequencyCurriculumScheduler), ``wave_pcca`` (PhaseCoherentAttention), ``wave_mrwp`` (MultiResolutionWavePyramid)
and ``wcmha`` (DecayBias): whichever features were injected. They are separate from the repository's own
``wave_transformer.enhancements`` package, which has classes of the same names; both can be imported.
Each module needs only torch and the standard library.
"""
