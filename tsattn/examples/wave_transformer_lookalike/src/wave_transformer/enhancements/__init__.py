"""Stands for upstream's own ``wave_transformer.enhancements`` package, which defines classes with the names of
tsattn's templates. tsattn-inject installs its templates elsewhere (``wave_transformer/tsattn_modules``), so this
package stays untouched and both can be imported side by side."""


class AdaptiveHarmonicSelector:
    origin = "wave_transformer.enhancements"


class FrequencyCurriculumScheduler:
    origin = "wave_transformer.enhancements"


class FrequencyMask:
    origin = "wave_transformer.enhancements"


class PhaseCoherentAttention:
    origin = "wave_transformer.enhancements"


class MultiResolutionWavePyramid:
    origin = "wave_transformer.enhancements"
