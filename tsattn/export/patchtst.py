"""Export spec of PatchTST (yuqinie98/PatchTST, ``PatchTST_supervised``) patched with the ``wcmha`` recipe, i.e. the
Powerformer authors' model (``tsattn-export --target PatchTST --feature wcmha``).

The graph ``model`` is stateless (no ``cache``): PatchTST forecasts a whole window at once, channel by channel
(channel-independent patches), so a runtime calls it once per window (``predict``)::

    input   x         float32 (batch, seq_len, enc_in)    the last seq_len values of every channel, raw units
    output  forecast  float32 (batch, pred_len, enc_in)   ``models.PatchTST.Model(configs)(x)``, as PatchTST's
                                                          exp_main.py forecasts

**What is exported.** ``models/PatchTST.py``'s ``Model`` as the clone builds it from its run_longExp.py
arguments (``configs``), in eval mode: the target's own code, decay masks included (each layer's mask is a
constant of the graph: the patch count is fixed by ``seq_len``, ``patch_len``, ``stride`` and ``padding_patch``).
``batch`` is dynamic; ``seq_len``, ``pred_len`` and ``enc_in`` are fixed by the weights and the configuration.
The dynamo exporter (the default) is the one that works: torch's legacy exporter fails on ``Tensor.unfold``
(the patching), so the spec refuses ``--exporter legacy``.

**Weights.** Without ``--checkpoint`` every weight is random (drawn under ``--seed``; with ``train_attn_decay`` the
decay scales start where the authors start them) and the manifest says so (``source.weights``). With
``--checkpoint`` (run_longExp.py saves ``model.state_dict()`` to ``checkpoints/<setting>/checkpoint.pth``, also
an unpatched PatchTST's: its state dict loads as it is), the model is built the same way and the state dict loaded
strictly with ``torch.load(weights_only=True)``. The checkpoint holds no configuration, and some arguments leave
no trace in the weights' shapes: ``CHECKPOINT_KEYS`` must be given (``--config`` / ``--set``), and the run's
``attn_decay_type`` / ``attn_decay_scale`` too when they differ from the injected defaults (the patched
``models/PatchTST.py`` falls back to those).

Options (``--config JSON`` / ``--set KEY=VALUE``): see ``PatchTSTExportConfig``.
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
from tsattn.export.target_base import TargetExport, check_option_names
from tsattn.export.targets import TargetError, target_code

KIND = "patchtst"
FEATURE = "wcmha"
SUBTREE = "PatchTST_supervised"

CHECKPOINT_KEYS = ("seq_len", "pred_len", "n_heads")
"""What a PatchTST checkpoint's shapes cannot tell, needed with ``--checkpoint``: the window and horizon (the
shapes would refuse most wrong values, but say nothing of which is which) and ``n_heads`` (any divisor of
d_model fits the same weights)."""


@dataclass
class PatchTSTExportConfig:
    """PatchTST's model arguments, with run_longExp.py's names (the defaults: the authors' ETTh1 script,
    ``scripts/PatchTST/etth1.sh`` of both repositories, for 7 channels).

    attn_decay_type, attn_decay_scale, train_attn_decay: the injected flags (None: the patched
    ``models/PatchTST.py``'s fallbacks, the injected defaults). padding_patch: ``"end"`` or None.
    res_attention: ``Model(configs, res_attention=...)`` (PatchTST's default True; run_longExp.py does not set it).
    """

    enc_in: int = 7
    seq_len: int = 336
    pred_len: int = 96
    e_layers: int = 3
    n_heads: int = 4
    d_model: int = 16
    d_ff: int = 128
    dropout: float = 0.3
    fc_dropout: float = 0.3
    head_dropout: float = 0.0
    individual: int = 0
    patch_len: int = 16
    stride: int = 8
    padding_patch: Optional[str] = "end"
    revin: int = 1
    affine: int = 0
    subtract_last: int = 0
    decomposition: int = 0
    kernel_size: int = 25
    attn_decay_type: Optional[str] = None
    attn_decay_scale: Optional[float] = None
    train_attn_decay: bool = False
    res_attention: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any], with_checkpoint: bool) -> "PatchTSTExportConfig":
        """Validate ``options`` (unknown keys, types, ranges); ``TargetError`` naming the key."""
        check_option_names(cls, options, "PatchTST", with_checkpoint, CHECKPOINT_KEYS)
        config = cls(**dict(options))
        for name in ("enc_in", "seq_len", "pred_len", "e_layers", "n_heads", "d_model", "d_ff", "patch_len", "stride",
                     "kernel_size"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TargetError(f"PatchTST option {name} must be a positive integer; got {value!r}")
        for name in ("individual", "revin", "affine", "subtract_last", "decomposition"):
            if getattr(config, name) not in (0, 1) or isinstance(getattr(config, name), float):
                raise TargetError(f"PatchTST option {name} must be 0 or 1; got {getattr(config, name)!r}")
        for name in ("dropout", "fc_dropout", "head_dropout"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise TargetError(f"PatchTST option {name} must be a number in [0, 1); got {value!r}")
        if config.padding_patch not in ("end", None):
            raise TargetError(f"PatchTST option padding_patch must be \"end\" or null; got {config.padding_patch!r}")
        if config.d_model % config.n_heads:
            raise TargetError(f"PatchTST option d_model ({config.d_model}) must be divisible by n_heads "
                              f"({config.n_heads})")
        if config.patch_len > config.seq_len:
            raise TargetError(f"PatchTST option patch_len ({config.patch_len}) exceeds seq_len ({config.seq_len})")
        if config.decomposition and config.kernel_size % 2 == 0:
            raise TargetError(f"PatchTST option kernel_size must be odd with decomposition (its moving average keeps "
                              f"the length only then); got {config.kernel_size}")
        if config.attn_decay_scale is not None:
            scale = config.attn_decay_scale
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise TargetError(f"PatchTST option attn_decay_scale must be a finite number; got {scale!r}")
        for name in ("train_attn_decay", "res_attention"):
            if not isinstance(getattr(config, name), bool):
                raise TargetError(f"PatchTST option {name} must be true or false; got {getattr(config, name)!r}")
        return config

    def configs(self) -> types.SimpleNamespace:
        """The ``configs`` namespace ``models.PatchTST.Model(configs)`` reads (as run_longExp.py builds it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "res_attention"}
        for name in ("attn_decay_type", "attn_decay_scale"):
            if out[name] is None:  # the patched models/PatchTST.py's getattr fallback: the injected default
                del out[name]
        return types.SimpleNamespace(**out)

    @property
    def patch_num(self) -> int:
        return (self.seq_len - self.patch_len) // self.stride + 1 + (self.padding_patch == "end")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def patchtst_spec(config: PatchTSTExportConfig) -> ExportSpec:
    """The graph ``model``: x (batch, seq_len, enc_in) -> forecast (batch, pred_len, enc_in)."""
    from tsattn.export.task import StepTensor, Task

    shape_in = ("batch", config.seq_len, config.enc_in)
    shape_out = ("batch", config.pred_len, config.enc_in)
    example = distinct_sizes(["batch"], avoid={config.seq_len, config.pred_len, config.enc_in})
    parity = tuple({"batch": b} for b in (1, 2, 5, 9) if b != example["batch"])[:3]
    return ExportSpec(
        name="patchtst-wcmha",
        unsupported_exporters={"legacy": "torch's legacy ONNX exporter cannot export PatchTST's patching "
                                         "(Tensor.unfold: \"input size not accessible\" after the end padding, "
                                         "a MatMul shape error without it)"},
        inputs=(TensorSpec("x", "float32", shape_in),),
        outputs=(TensorSpec("forecast", "float32", shape_out),),
        example_sizes=example,
        parity_sizes=parity,
        task=Task("forecast", (StepTensor("x", 1),), (StepTensor("forecast", 1),), answer="last",
                  horizon=config.pred_len, time_dim="time", client={
                      "cache": "none: PatchTST forecasts a whole window per call (no KV cache)",
                      "layout": ["batch", "time", "channels"],
                      "context": config.seq_len,
                      "channels": config.enc_in,
                      "normalisation": ("raw units in and out: the graph normalises each channel over its window "
                                        "(RevIN) and restores the scale" if config.revin else
                                        "none: the model was configured without RevIN (revin=0); feed what it was "
                                        "trained on"),
                  }),
    )


def _decay_layers(model: nn.Module) -> List[nn.Module]:
    """The attentions that carry the recipe's decay: modules with a ``PowerformerDecay`` as ``attn_decay``."""
    return [m for m in model.modules() if type(getattr(m, "attn_decay", None)).__name__ == "PowerformerDecay"]


class PatchTSTExport(TargetExport):
    """PatchTST patched with ``wcmha``: config = defaults < the options (``build``).

    Raises ``TargetError`` (not patched, bad options, the target's code fails), ``CheckpointRefused``,
    ``FileNotFoundError``.
    """

    kind = KIND
    random_weights = "not a trained model; pass --checkpoint for a run_longExp.py checkpoint"

    def build(self) -> Exportable:
        from tsattn.examples import imports_from

        target, checkpoint = self.target, self.checkpoint
        config = PatchTSTExportConfig.from_options(self.fields, with_checkpoint=checkpoint is not None)
        where = target.root / SUBTREE
        with target_code(f"importing models.PatchTST from {where}", target.root), imports_from(where) as load:
            load("layers.PatchTST_backbone")  # first: models.PatchTST imports it, one copy of the package
            module = load("models.PatchTST")
        with target_code(f"building models.PatchTST.Model from {where}", target.root):
            torch.manual_seed(self.seed)
            model = module.Model(config.configs(), res_attention=config.res_attention)
        model = model.float()  # as PatchTST's exp_main.py: Model(args).float() (the Butterworth masks' cast)
        if self.state is not None:
            self.load_weights(model)
        model.eval()

        layers = _decay_layers(model)
        if not layers:
            raise TargetError(f"target patchtst ({target.root}): the model built from {SUBTREE}/models/PatchTST.py "
                              f"has no Powerformer decay in its attention (layers/PatchTST_backbone.py's "
                              f"_ScaledDotProductAttention builds no attn_decay). Re-run `tsattn-inject --target "
                              f"{target.root} --feature {self.feature}`")
        decays = [m.attn_decay for m in layers]
        decay = {
            "type": sorted({d.decay_type for d in decays}),
            "scale": [round(float(d.scale.detach()) if d.train_attn_decay else d.scale_value, 6) for d in decays],
            "trained_scale": decays[0].train_attn_decay,
            "layers": len(decays),
            "res_attention": config.res_attention,
            "patch_num": config.patch_num,
            "note": "their 'none' is PatchTST's bidirectional attention (no mask)",
        }

        probe = torch.randn(2, config.seq_len, config.enc_in, generator=torch.Generator().manual_seed(self.seed))
        with target_code("running PatchTST's forward", target.root), torch.no_grad(), quiet():
            out = model(probe)
        expected = (2, config.pred_len, config.enc_in)
        if tuple(out.shape) != expected or not torch.isfinite(out).all():
            raise TargetError(f"PatchTST's forward returned {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}) "
                              f"for x of shape {tuple(probe.shape)}; expected finite {expected}")

        source = self.source(model=f"{SUBTREE}/models/PatchTST.Model", config=config.to_dict(), decay=decay)
        return Exportable(model, patchtst_spec(config), source)


build_patchtst_export = PatchTSTExport.export
