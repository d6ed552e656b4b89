# tsattn-inject hephaestus: generated file. Re-run tsattn-inject to update it, or `tsattn-inject --revert` to remove it.
"""Efficient attention for long sequences in Hephaestus' time-series transformer (the attention optimisation guide).

    EfficientTimeSeriesTransformer(config, d_model=64, n_heads=4, attention_type="flash", attention_kwargs=None,
                                   n_layers=4)
        A ``TimeSeriesTransformer`` whose blocks use ``attention_type``: a drop-in for a ``TimeSeriesDecoder``'s
        ``time_series_transformer``, or an encoder (same forward, same parameter names).
        ``TimeSeriesTransformer``, ``TimeSeriesDecoder`` and ``TabularDecoder`` take the same three arguments
        (``n_layers=4, attention_type="standard", attention_kwargs=None``: today's model by default).

    benchmark_attention_mechanisms(seq_lengths=(256, ..., 4096), n_columns=20, d_model=64, n_heads=8,
                                   batch_size=16, device=None, methods=None, repeats=3)
        Forward time and peak memory of each attention on random (batch, n_columns, L, d_model) inputs:
        ``results[seq_len][method] = {"time_ms", "memory_mb", "successful"[, "error"]}``; methods default to the
        types this repository enables, each with the guide's configuration (wcmha: its defaults).

Attention types (``models.ENABLED_ATTENTION_TYPES`` lists the ones this repository enables) and their
``attention_kwargs`` (all take ``dropout`` and ``causal``; see ``efficient_attention.py``):

    standard     Hephaestus' MultiHeadAttention4D computation (same parameters, initialisation and outputs)
    local        window_size=256 (the w most recent positions), block_size, decay keywords
    sparse       stride=4, local_window=32 (local window plus every stride-th key), block_size
    featurewise  share_weights=True (False: one projection set per column; then n_columns=config.n_columns)
    chunked      chunk_size=256, overlap=32, decay keywords
    flash        none: F.scaled_dot_product_attention (fused kernels on GPU), equal to standard
    wcmha        decay="powerlaw", alpha=1.0 (Powerformer's weighted causal attention), cutoff, block_size

Every type is causal (as MultiHeadAttention4D is), keeps the call ``(query, key, value, mask=None) -> (output,
weights or None)`` and the projection names, so a checkpoint of the unpatched model loads into any type but
featurewise with share_weights=False. Every type also takes a KV cache (``past=``), which ``tsattn-export`` uses
for its decode-step graph.
"""

from hephaestus.timeseries_models.models import ENABLED_ATTENTION_TYPES, TimeSeriesTransformer
from tsattn.modules.efficient_attention import benchmark_attention_mechanisms as benchmark_attention_modules


class EfficientTimeSeriesTransformer(TimeSeriesTransformer):
    """``TimeSeriesTransformer`` with ``attention_type`` (default ``"flash"``) in every block; ``attention_kwargs``
    are that type's keywords (e.g. ``{"window_size": 256}`` for local). Raises ValueError for a type this
    repository does not enable, or a keyword the type does not take."""

    def __init__(self, config, d_model=64, n_heads=4, attention_type="flash", attention_kwargs=None, n_layers=4):
        super().__init__(config, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                         attention_type=attention_type, attention_kwargs=attention_kwargs)


def benchmark_attention_mechanisms(seq_lengths=(256, 512, 1024, 2048, 4096), n_columns=20, d_model=64, n_heads=8,
                                   batch_size=16, device=None, methods=None, repeats=3):
    """The guide's benchmark (see the module docstring); ``methods`` default to the enabled types."""
    if methods is None:
        methods = list(ENABLED_ATTENTION_TYPES)
    return benchmark_attention_modules(seq_lengths=seq_lengths, n_columns=n_columns, d_model=d_model,
                                       n_heads=n_heads, batch_size=batch_size, device=device, methods=methods,
                                       repeats=repeats)
