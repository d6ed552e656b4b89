"""Export spec of thuml/Time-Series-Library patched with the ``wcmha`` recipe (``tsattn-export --target
Time-Series-Library --feature wcmha --set model=PatchTST``; also ``Transformer`` and ``iTransformer``).

One stateless forecast graph ``model`` per export, the long-term-forecast path of the chosen model, exactly as
Time-Series-Library's ``exp/exp_long_term_forecasting.py`` calls it (``features='M'``, time features of
``embed='timeF'``)::

    PatchTST      x (batch, seq_len, enc_in)                                              -> forecast
    iTransformer  x, x_mark (batch, seq_len, marks)                                       -> forecast
    Transformer   x, x_mark, y_mark (batch, label_len + pred_len, marks)                  -> forecast
    forecast      float32 (batch, pred_len, enc_in): ``model(...)[:, -pred_len:, :]``

``marks`` is the number of time features of ``freq`` (``h``: 4, as upstream's ``TimeFeatureEmbedding``). PatchTST
ignores the time features, so its graph has no mark input. The Transformer's decoder input is built inside the
graph as the experiment builds it: the last ``label_len`` steps of ``x`` followed by ``pred_len`` zeros.

**Exporters.** The default dynamo exporter exports all three; torch's legacy exporter cannot export PatchTST's
``Tensor.unfold`` with a dynamic batch, so ``--exporter legacy`` is refused for it (``UNSUPPORTED``).

**Dynamic and fixed dims.** ``batch`` is dynamic; every other dim is fixed by the weights or by the decay, whose
mask is built for the token count (time steps, patches or variates plus time features) and cached per shape.

**Weights.** Without ``--checkpoint`` every weight is random (under ``--seed``) and the manifest says so. With
``--checkpoint`` (Time-Series-Library saves ``model.state_dict()`` to ``checkpoints/<setting>/checkpoint.pth``)
the state dict is loaded strictly; its checkpoints hold no config, so the run's ``CHECKPOINT_KEYS`` must be given
(``--set``), and its decay flags too: the decay type and scale are not in the state dict (only a trained scale
is). Without a decay the model is upstream's, bit for bit.

Options (``--config JSON`` / ``--set KEY=VALUE``): see ``TSLExportConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from tsattn.export.exporter import _quiet as quiet
from tsattn.export.manifest import TensorSpec
from tsattn.export.spec import Exportable, ExportSpec, distinct_sizes
from tsattn.export.task import StepTensor, Task
from tsattn.export.target_base import TargetExport, check_option_names
from tsattn.export.targets import TargetError, target_code

KIND = "time_series_library"
FEATURE = "wcmha"
MODELS = ("PatchTST", "iTransformer", "Transformer")
MARK_INPUTS = {"PatchTST": (), "iTransformer": ("x_mark",), "Transformer": ("x_mark", "y_mark")}
TOKENS = {"PatchTST": "patches of each variate's window", "iTransformer": "variates and time features",
          "Transformer": "time steps (encoder and decoder self-attention; cross-attention has no decay)"}
FREQ_MARKS = {"h": 4, "t": 5, "s": 6, "m": 1, "a": 1, "w": 2, "d": 3, "b": 3}
"""Time features per ``freq`` with ``embed='timeF'`` (upstream's ``TimeFeatureEmbedding``)."""
UNSUPPORTED = {"PatchTST": {"legacy": "PatchTST patches its window with Tensor.unfold after a ReplicationPad1d, "
                                        "which torch's legacy ONNX exporter cannot export with a dynamic batch "
                                        "('ONNX export of operator Unfold, input size not accessible')"}}
"""Exporters that cannot export a model faithfully (measured on upstream 4e938a1 and the look-alike)."""
CHECKPOINT_KEYS = ("model", "seq_len", "label_len", "pred_len", "enc_in", "d_model", "n_heads", "e_layers",
                   "d_layers", "d_ff", "freq")
"""What a checkpoint's shapes depend on or a wrong value would pass silently (``n_heads``, ``freq``)."""


@dataclass
class TSLExportConfig:
    """Time-Series-Library's run.py arguments the three models read (its names; ``c_out = dec_in = enc_in``,
    ``features='M'``) and the injected decay flags. ``model``: PatchTST, iTransformer or Transformer.
    ``attn_decay_type`` (default powerlaw), ``attn_decay_scale`` (1.0), ``train_attn_decay``: as run.py's flags;
    None or ``none`` exports upstream's attention."""

    model: str = "PatchTST"
    seq_len: int = 48
    label_len: int = 24
    pred_len: int = 24
    enc_in: int = 5
    d_model: int = 32
    n_heads: int = 4
    e_layers: int = 2
    d_layers: int = 1
    d_ff: int = 64
    factor: int = 1
    dropout: float = 0.1
    activation: str = "gelu"
    freq: str = "h"
    attn_decay_type: Optional[str] = "powerlaw"
    attn_decay_scale: float = 1.0
    train_attn_decay: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any], with_checkpoint: bool) -> "TSLExportConfig":
        """Validate ``options`` (unknown keys, types, ranges); ``TargetError`` naming the key."""
        check_option_names(cls, options, "Time-Series-Library", with_checkpoint, CHECKPOINT_KEYS,
                           also=" and its --attn_decay_type/--attn_decay_scale")
        config = cls(**dict(options))
        if config.model not in MODELS:
            raise TargetError(f"Time-Series-Library option model: {config.model!r} is not one of "
                              f"{', '.join(MODELS)} (the exported forecast graphs)")
        for name in ("seq_len", "label_len", "pred_len", "enc_in", "d_model", "n_heads", "e_layers", "d_layers",
                     "d_ff", "factor"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TargetError(f"Time-Series-Library option {name} must be a positive integer; got {value!r}")
        if config.d_model % config.n_heads:
            raise TargetError(f"Time-Series-Library option d_model ({config.d_model}) must be divisible by n_heads "
                              f"({config.n_heads})")
        if config.label_len > config.seq_len:
            raise TargetError(f"Time-Series-Library option label_len ({config.label_len}) exceeds seq_len "
                              f"({config.seq_len}): the decoder's start tokens are the window's last steps")
        if config.freq not in FREQ_MARKS:
            raise TargetError(f"Time-Series-Library option freq: {config.freq!r} is not one of "
                              f"{', '.join(FREQ_MARKS)}")
        value = config.dropout
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise TargetError(f"Time-Series-Library option dropout must be a number in [0, 1); got {value!r}")
        value = config.attn_decay_scale
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TargetError(f"Time-Series-Library option attn_decay_scale must be a finite number; got {value!r}")
        if not isinstance(config.train_attn_decay, bool):
            raise TargetError(f"Time-Series-Library option train_attn_decay must be true or false; got "
                              f"{config.train_attn_decay!r}")
        if config.attn_decay_type is not None and not isinstance(config.attn_decay_type, str):
            raise TargetError(f"Time-Series-Library option attn_decay_type must be a name or null; got "
                              f"{config.attn_decay_type!r}")
        return config

    @property
    def marks(self) -> int:
        return FREQ_MARKS[self.freq]

    @property
    def decayed(self) -> bool:
        return self.attn_decay_type is not None and self.attn_decay_type.strip().lower() != "none"

    def tsl_configs(self) -> types.SimpleNamespace:
        """The ``configs`` namespace ``models.<model>.Model(configs)`` reads, as run.py builds it."""
        fields = self.to_dict()
        fields.update(task_name="long_term_forecast", dec_in=self.enc_in, c_out=self.enc_in, embed="timeF",
                      features="M", output_attention=False, use_norm=1)
        return types.SimpleNamespace(**fields)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class TSLForecast(nn.Module):
    """The long-term-forecast call of ``exp/exp_long_term_forecasting.py`` for one model: ``forward(x[, x_mark[,
    y_mark]])`` returns ``model(x, x_mark, x_dec, y_mark)[:, -pred_len:, :]`` (``features='M'``), with ``x_dec``
    the last ``label_len`` steps of ``x`` then ``pred_len`` zeros (the Transformer's decoder input)."""

    def __init__(self, model: nn.Module, name: str, label_len: int, pred_len: int) -> None:
        super().__init__()
        self.model, self.name = model, name
        self.label_len, self.pred_len = int(label_len), int(pred_len)

    def forward(self, x: torch.Tensor, x_mark: Optional[torch.Tensor] = None,
                y_mark: Optional[torch.Tensor] = None) -> torch.Tensor:
        x_dec = None
        if self.name == "Transformer":
            zeros = x.new_zeros(x.shape[0], self.pred_len, x.shape[2])
            x_dec = torch.cat([x[:, x.shape[1] - self.label_len:, :], zeros], dim=1)
        out = self.model(x, x_mark, x_dec, y_mark)
        return out[:, -self.pred_len:, :]


def tsl_spec(config: TSLExportConfig) -> ExportSpec:
    """The graph ``model`` of ``config.model`` (inputs as in the module docstring; batch dynamic)."""
    shapes = {"x": ("batch", config.seq_len, config.enc_in), "x_mark": ("batch", config.seq_len, config.marks),
              "y_mark": ("batch", config.label_len + config.pred_len, config.marks)}
    names = ("x",) + MARK_INPUTS[config.model]
    inputs = tuple(TensorSpec(n, "float32", shapes[n]) for n in names)
    outputs = (TensorSpec("forecast", "float32", ("batch", config.pred_len, config.enc_in)),)
    fixed = {d for t in inputs + outputs for d in t.shape if isinstance(d, int)}
    example = distinct_sizes(["batch"], avoid=fixed)
    parity = tuple({"batch": b} for b in (1, 2, 5, 8) if b != example["batch"])[:3]
    return ExportSpec(
        name=f"time-series-library-{config.model.lower()}-wcmha",
        inputs=inputs,
        outputs=outputs,
        example_sizes=example,
        parity_sizes=parity,
        unsupported_exporters=UNSUPPORTED.get(config.model, {}),
        task=Task("forecast", tuple(StepTensor(n, 1) for n in names), (StepTensor("forecast", 1),), answer="last",
                  horizon=config.pred_len, time_dim="time", client={
                      "cache": "none: one call per window (Time-Series-Library's long-term forecast)",
                      "layout": ["batch", "time", "channels"],
                      "context": config.seq_len,
                      "channels": config.enc_in,
                      "time_features": {"freq": config.freq, "count": config.marks, "embed": "timeF",
                                        "inputs": list(MARK_INPUTS[config.model])},
                      "label_len": config.label_len if config.model == "Transformer" else None,
                      "tokens": TOKENS[config.model],
                      "normalisation": ("raw units in and out: the model normalises each channel over its window"
                                        if config.model != "Transformer" else
                                        "as trained: Time-Series-Library's data loader standardises the data "
                                        "(scale=True); the Transformer does not normalise inside"),
                  }),
    )


def _attentions(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "FullAttention"]


class TSLExport(TargetExport):
    """Time-Series-Library patched with ``wcmha``: config = defaults < the options (``build``)."""

    kind = KIND
    random_weights = "not a trained model; pass --checkpoint for Time-Series-Library's trained weights"

    def build(self) -> Exportable:
        target, feature, seed, checkpoint = self.target, self.feature, self.seed, self.checkpoint
        config = TSLExportConfig.from_options(self.fields, with_checkpoint=checkpoint is not None)
        module = target.import_module(f"models.{config.model}")
        with target_code(f"building models.{config.model}.Model from {target.root}", target.root), quiet():
            torch.manual_seed(seed)
            model = module.Model(config.tsl_configs())
        self.load_weights(model)
        model.eval()
        attentions = _attentions(model)
        missing = [a for a in attentions if not hasattr(a, "attn_decay")]
        if not attentions or missing:
            raise TargetError(f"target {KIND} ({target.root}): models/{config.model}.py builds "
                              f"{len(attentions)} FullAttention, {len(missing)} of them without the decay: "
                              f"layers/SelfAttention_Family.py is not patched. Re-run `tsattn-inject --target "
                              f"{target.root} --feature {feature}`")
        active = [a for a in attentions if a.attn_decay.is_active]
        if config.decayed and not active:
            raise TargetError(f"target {KIND} ({target.root}): models/{config.model}.py passes no "
                              f"attn_decay_type to its FullAttention self-attention. Re-run `tsattn-inject --target "
                              f"{target.root} --feature {feature}`")
        decay = {"attn_decay_type": config.attn_decay_type, "attn_decay_scale": config.attn_decay_scale,
                 "train_attn_decay": config.train_attn_decay, "decayed_attentions": len(active),
                 "attentions": len(attentions), "tokens": TOKENS[config.model],
                 "decays": sorted({repr(a.attn_decay) for a in active})}

        exported = TSLForecast(model, config.model, config.label_len, config.pred_len).eval()
        spec = tsl_spec(config)
        probe = spec.example_inputs({"batch": 2}, seed=seed)
        with target_code(f"running models.{config.model}'s forecast", target.root), torch.no_grad(), quiet():
            out = exported(*probe)
        expected = (2, config.pred_len, config.enc_in)
        if tuple(out.shape) != expected:
            raise TargetError(f"models/{config.model}.py forecast {tuple(out.shape)} for a batch of 2; expected "
                              f"{expected} (batch, pred_len, enc_in)")
        source = self.source(model=f"models.{config.model}.Model", exported=["forecast"], config=config.to_dict(),
                             wcmha=decay)
        return Exportable(exported, spec, source)


build_tsl_export = TSLExport.export
