"""Attention-map analysis (seed 004): how the input distribution shapes learned attention, standard vs WCMHA.

    tsattn.analysis.generators   the nine synthetic series of seed 004, and co2 / sunspots from statsmodels
    tsattn.analysis.model        seed 004's forecaster with ``standard`` or ``wcmha`` attention, map extraction
    tsattn.analysis.metrics      entropy, Gini, concentration, pattern strengths, power-law lag exponent
    tsattn.analysis.experiment   windows, training, one run's maps and metrics
    tsattn.analysis.plots        the figures (matplotlib, Agg)
    tsattn.analysis.cli          ``tsattn-analyze`` / ``tsattn analyze``
"""

from tsattn.analysis.generators import GENERATORS, REAL_SERIES, SERIES_NAMES, make_series
from tsattn.analysis.metrics import head_metrics, model_metrics
from tsattn.analysis.model import ATTENTIONS, Forecaster, ModelConfig

__all__ = [
    "ATTENTIONS",
    "Forecaster",
    "GENERATORS",
    "ModelConfig",
    "REAL_SERIES",
    "SERIES_NAMES",
    "head_metrics",
    "make_series",
    "model_metrics",
]
