"""Export specs of the bundled models (``tsattn-export --model NAME``): a registry of builders.

Adding a model: write ``build_x(options, checkpoint, seed) -> Exportable`` (build the module from options and the
checkpoint, describe its graph with an ``ExportSpec``) and register it in ``MODELS``. The loop, the parity checks
and the manifest are shared (``tsattn.export.exporter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from tsattn.export.checkpoint import CheckpointRefused, load_checkpoint, load_weights, split_checkpoint
from tsattn.export.manifest import CacheSpec, TensorSpec, sha256_file
from tsattn.export.spec import Exportable, ExportSpec, FlatCache, StepwiseCheck, distinct_sizes, step_tensors
from tsattn.export.task import Task

Builder = Callable[[Mapping[str, Any], Optional[Path], Optional[int]], Exportable]


@dataclass(frozen=True)
class ModelEntry:
    """A bundled model: ``build(options, checkpoint_path, seed) -> Exportable``; options are the model's config
    fields (``--set KEY=VALUE``, ``--max-context``); ``seed`` draws random weights when there is no checkpoint."""

    name: str
    description: str
    build: Builder


def reference_spec(config, window: Optional[int]) -> ExportSpec:
    """The reference forecaster's graph ``model``: one graph for prefill and decode (an empty past is a prefill).

    inputs  values (batch, seq) float32, raw units; past_key_values.{i}.key/.value (batch, kv_heads, past, head_dim)
    outputs forecast (batch, seq, horizon); present.{i}.key/.value (batch, kv_heads, present, head_dim),
            present = min(past + seq, window)
    ``window``: what the caches keep, the attention's ``window`` (max_context, or less when the decay itself
    masks beyond some distance, e.g. ``step`` or ``butterworth``); None: unbounded.
    """
    cache = CacheSpec(layers=config.n_layers, kv_heads=config.kv_heads, head_dim=config.head_dim,
                      max_context=window)
    inputs = (TensorSpec("values", "float32", ("batch", "seq")),)
    outputs = (TensorSpec("forecast", "float32", ("batch", "seq", config.horizon)),)
    fixed = {config.kv_heads, config.head_dim, config.horizon}
    reach = window or 64
    # parity: a new stream's first value, a steady-state decode at a full window, a prefill, a chunk that slides
    parity = ({"batch": 1, "seq": 1, "past": 0}, {"batch": 2, "seq": 1, "past": reach},
              {"batch": 4, "seq": 11, "past": 0}, {"batch": 2, "seq": 6, "past": max(reach - 2, 2)})
    if window is not None:  # prefill to just below the window, then steps that cross it
        lengths = (max(window - 3, 1),) + (1,) * 6 + (3,) + (1,) * 3
    else:
        lengths = (5,) + (1,) * 6 + (3,) + (1,) * 3
    return ExportSpec(
        name="reference",
        inputs=inputs,
        outputs=outputs,
        cache=cache,
        example_sizes=distinct_sizes(["batch", "seq", "past"], avoid=fixed),
        parity_sizes=parity,
        dim_min={"past": 0},
        stepwise=StepwiseCheck("seq", lengths),
        task=Task("streaming_forecast", step_tensors(inputs), step_tensors(outputs), answer="last",
                  horizon=config.horizon, client={
                      "normalisation": "values and forecasts are raw units; the graph applies (x - loc) / scale and "
                                       "its inverse with fixed loc/scale",
                      "loc": float(config.loc),
                      "scale": float(config.scale),
                      "channels": "univariate; a C-channel series is C rows of the batch (channel-independent)",
                  }),
    )


def build_reference_export(options: Mapping[str, Any], checkpoint: Optional[Path], seed: Optional[int]) -> Exportable:
    """The reference forecaster: config = defaults < the checkpoint's config < ``options``."""
    from tsattn.models.reference import ReferenceConfig, ReferenceForecaster, build_reference as random_model

    fields: Dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        state, ckpt_config = split_checkpoint(load_checkpoint(checkpoint), checkpoint)
        if ckpt_config:
            try:  # its own config, checked (types, bounded sizes) before any model is built
                ReferenceConfig.from_dict(ckpt_config)
            except (TypeError, ValueError) as exc:
                raise CheckpointRefused(f"checkpoint {checkpoint} refused: its config is not a reference "
                                        f"forecaster's: {exc}") from None
        fields.update(ckpt_config or {})
    fields.update(options)
    config = ReferenceConfig.from_dict(fields)
    if state is not None:
        model = ReferenceForecaster(config).eval()
        load_weights(model, state, checkpoint)
    else:
        model = random_model(config, seed=seed)
    source = {
        "kind": "reference",
        "config": config.to_dict(),
        "seed": None if checkpoint is not None else seed,
        "checkpoint": None if checkpoint is None else {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "weights": "checkpoint" if checkpoint is not None else (
            f"random (seed {seed}): not a trained model; pass --checkpoint for trained weights"),
    }
    spec = reference_spec(config, model.blocks[0].attn.window)
    return Exportable(FlatCache(model, n_inputs=1, layers=config.n_layers).eval(), spec, source)


def _seed002(kind: str) -> Builder:
    def build(options: Mapping[str, Any], checkpoint: Optional[Path], seed: Optional[int]) -> Exportable:
        from tsattn.export.seed002 import build_seed002_export

        return build_seed002_export(kind, options, checkpoint, seed)
    return build


MODELS: Dict[str, ModelEntry] = {
    "reference": ModelEntry("reference", "causal streaming forecaster on WCMHA with a KV cache "
                                         "(tsattn.models.reference)", build_reference_export),
    "autoregressive": ModelEntry("autoregressive", "seed 002's AutoregressiveTransformerModel as a decode step "
                                                   "with a KV cache (tsattn.export.seed002)", _seed002("autoregressive")),
    "encoder_decoder": ModelEntry("encoder_decoder", "seed 002's EncoderDecoder: an encoder graph run once per "
                                                     "source and a decoder step with a KV cache (tsattn.export.seed002)",
                                  _seed002("encoder_decoder")),
}
