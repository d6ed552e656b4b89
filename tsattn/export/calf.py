"""Export spec of CALF (Hank0626/CALF) patched with the ``wcmha`` recipe (``tsattn-export --target CALF
--feature wcmha``).

The graph ``model`` is stateless (no ``cache`` in the manifest): CALF's GPT-2 runs over variates, one token per
channel, so there is no sequence to extend step by step; a runtime calls it once per window (``predict``)::

    input   x              float32 (batch, seq_len, channels)   the last seq_len values of every channel, raw units
    output  forecast       float32 (batch, pred_len, channels)  CALF's ``outputs_time``
    output  forecast_text  float32 (batch, pred_len, channels)  CALF's ``outputs_text`` (only with text_branch=true)

**What is exported, and why.** ``Model.forward`` returns a dict; CALF's own validation and test loops
(``exp/exp_long_term_forecasting.py``) forecast with ``outputs['outputs_time']``, the time branch, whose GPT-2 is
the one the recipe gives WCMHA. ``outputs_text`` (the text branch, untouched by the recipe) and the intermediate
features feed CALF's training losses only. The exported module is CALF's own ``forward`` with the dict reduced to
those outputs (``CALFForecast``), so the graph is the target's code, not a re-implementation of it; the exporters
drop the text branch from the graph when only ``outputs_time`` is exported, but it still runs while tracing.
Upstream's text-branch ``AccustumGPT2Model`` re-implements ``GPT2Model.forward`` of transformers 4.30 and fails
with transformers >= 5: export upstream CALF in CALF's own environment (it pins transformers 4.30.1).

**Dynamic and fixed dims.** ``batch`` is dynamic. ``channels`` is dynamic by default (any count up to the
GPT-2's ``n_positions``: one position per channel); ``--set enc_in=N`` fixes it. Upstream's ``Encoder_PCA``
runs ``nn.TransformerEncoder`` over channels, and torch's legacy ONNX exporter bakes ``nn.MultiheadAttention``'s
sequence length into a Reshape: with ``--exporter legacy`` upstream CALF needs ``enc_in`` (parity fails otherwise,
exit 3); the default dynamo exporter keeps channels dynamic. With ``text_branch=true`` upstream CALF needs
``enc_in`` with either exporter: its transformers-4.30 text GPT-2 makes torch.export guard channels != n_positions
(a contiguity check on a slice of an n_positions-sized tensor, most likely its causal-mask buffer), torch.export
fails, and the exporter's fallback capture specialises batch (exit 3). ``seq_len`` and ``pred_len`` are fixed by
the weights (``Encoder_PCA``'s input layer and ``out_layer``).

**Weights.** Without ``--checkpoint`` every weight is random, and the manifest says so (``source.weights``): the
GPT-2s come from ``GPT2Config`` (``from_pretrained('gpt2')`` is replaced, as in the tests, by
``tsattn.examples.offline_gpt2``: nothing is downloaded), CALF's own layers are initialised under ``--seed``, and
LoRA's B matrices are drawn from N(0, 0.02^2) instead of peft's zeros so that the adapters are not a no-op. With
``--checkpoint`` (CALF saves ``model.state_dict()`` to ``checkpoints/<setting>/checkpoint.pth``), the model is
built the same way and the state dict loaded strictly, with ``torch.load(weights_only=True)``. CALF stores no
config in its checkpoints: the run's values of ``CHECKPOINT_KEYS`` must be given (``--config`` / ``--set``), and
``gpt2`` defaults to the architecture of the ``gpt2`` checkpoint CALF loads.

**LoRA.** peft's LoRA on the time branch's ``c_attn`` is merged by default (``merge_and_unload``: W + scale * B A):
the graph is then plain GPT-2 with WCMHA, without the adapters' two extra matmuls per layer; the builder measures
the merged model against the unmerged one (``source.lora.max_abs_diff_vs_unmerged``, refused above 1e-4).
``--set merge_lora=false`` exports the peft-wrapped model as it is; both pass the same parity checks.

Options (``--config JSON`` / ``--set KEY=VALUE``): see ``CALFExportConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from tsattn.export.checkpoint import load_checkpoint
from tsattn.export.exporter import _quiet as quiet
from tsattn.export.manifest import TensorSpec, sha256_file
from tsattn.export.spec import Exportable, ExportSpec, distinct_sizes
from tsattn.export.task import StepTensor, Task
from tsattn.export.target_base import TargetExport, check_option_names
from tsattn.export.targets import TargetError, target_code

KIND = "calf"
FEATURE = "wcmha"

CHECKPOINT_KEYS = ("seq_len", "pred_len", "gpt_layers", "r", "lora_alpha")
"""What CALF's ``run.py`` takes on its command line and its checkpoints do not hold, needed with ``--checkpoint``:
the state dict's shapes would refuse a wrong seq_len, pred_len, gpt_layers or r, but a wrong ``lora_alpha`` (the
LoRA scale) would pass silently. Also give ``powerformer_decay``/``powerformer_alpha`` if the run passed
``--powerformer_decay`` other than the injected default (the decay type is not in the state dict)."""

GPT2_PRESETS: Dict[str, Dict[str, Any]] = {
    # small enough to build, export and check in seconds; n_embd divisible by 12 (upstream Encoder_PCA's heads)
    "tiny": {"n_embd": 48, "n_head": 4, "n_positions": 64, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 0},
    # the architecture of the 'gpt2' checkpoint CALF loads (GPT2Config's defaults)
    "gpt2": {"n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257, "bos_token_id": 50256,
             "eos_token_id": 50256},
}
LORA_B_STD = 0.02
MERGE_TOL = 1e-4
WORD_EMBEDDING_WORDS = 500  # upstream's pca.py keeps 500 components: word embedding (d_model, 500)


@dataclass
class CALFExportConfig:
    """CALF's model arguments (the names of its ``run.py``) and the export's own options.

    seq_len, pred_len, gpt_layers, r, lora_alpha, lora_dropout, d_model, task_name, enc_in: CALF's ``configs``
    (``d_model`` defaults to the GPT-2's ``n_embd``, which it must equal; ``task_name`` is a forecast task;
    ``enc_in`` fixes the channel count, None keeps it dynamic). powerformer_alpha, powerformer_decay: the
    injected flags (None: the injected defaults, which the patched ``models/CALF.py`` falls back to).
    word_embedding_path: the text branch's word embedding (upstream ``wte_pca_500.pt`` re-saved as a tensor;
    loaded with ``weights_only=True``); None: a random (d_model, 500) one, which changes nothing in
    ``outputs_time``. gpt2: ``"tiny"``, ``"gpt2"`` or a dict of ``GPT2Config`` fields over ``"tiny"`` (default
    ``"tiny"``, ``"gpt2"`` with a checkpoint). merge_lora: merge LoRA into ``c_attn`` before export.
    text_branch: also export ``outputs_text`` as ``forecast_text``.
    """

    seq_len: int = 24
    pred_len: int = 8
    gpt_layers: int = 2
    r: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    d_model: Optional[int] = None
    task_name: str = "long_term_forecast"
    enc_in: Optional[int] = None
    powerformer_alpha: Optional[float] = None
    powerformer_decay: Optional[str] = None
    word_embedding_path: Optional[str] = None
    gpt2: Any = None
    merge_lora: bool = True
    text_branch: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any], with_checkpoint: bool) -> "CALFExportConfig":
        """Validate ``options`` (unknown keys, types, ranges); ``TargetError`` naming the key."""
        check_option_names(cls, options, "CALF", with_checkpoint, CHECKPOINT_KEYS)
        config = cls(**dict(options))
        if config.gpt2 is None:
            config.gpt2 = "gpt2" if with_checkpoint else "tiny"
        for name in ("seq_len", "pred_len", "gpt_layers", "r", "d_model", "enc_in"):
            value = getattr(config, name)
            if value is None and name in ("d_model", "enc_in"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TargetError(f"CALF option {name} must be a positive integer; got {value!r}")
        for name in ("lora_alpha", "lora_dropout"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise TargetError(f"CALF option {name} must be a number >= 0; got {value!r}")
        if config.task_name not in ("long_term_forecast", "short_term_forecast"):
            raise TargetError(f"CALF option task_name: only the forecast tasks (long_term_forecast, "
                              f"short_term_forecast) are exported; got {config.task_name!r}")
        for name in ("merge_lora", "text_branch"):
            if not isinstance(getattr(config, name), bool):
                raise TargetError(f"CALF option {name} must be true or false; got {getattr(config, name)!r}")
        config.d_model = int(config.gpt2_config()["n_embd"])  # validates gpt2 and d_model
        return config

    def gpt2_config(self) -> Dict[str, Any]:
        """The ``GPT2Config`` fields the offline GPT-2 is built with (``n_layer`` = ``gpt_layers``: CALF keeps
        that many blocks of the loaded model anyway)."""
        from transformers import GPT2Config

        if isinstance(self.gpt2, str):
            if self.gpt2 not in GPT2_PRESETS:
                raise TargetError(f"CALF option gpt2: {self.gpt2!r} is not one of {sorted(GPT2_PRESETS)} or a dict")
            fields = dict(GPT2_PRESETS[self.gpt2])
        elif isinstance(self.gpt2, Mapping):
            known = set(GPT2Config().to_dict())
            bad = sorted(k for k in self.gpt2 if k not in known or k == "n_layer")
            if bad:
                raise TargetError(f"CALF option gpt2: {bad} are not GPT2Config fields it takes (n_layer is "
                                  f"gpt_layers)")
            fields = {**GPT2_PRESETS["tiny"], **self.gpt2}
        else:
            raise TargetError(f"CALF option gpt2 must be 'tiny', 'gpt2' or a JSON object; got {self.gpt2!r}")
        fields["n_layer"] = self.gpt_layers
        if self.d_model is not None and self.d_model != fields["n_embd"]:
            raise TargetError(f"CALF option d_model ({self.d_model}) must equal the GPT-2's n_embd "
                              f"({fields['n_embd']}): CALF feeds d_model-wide tokens to GPT-2 as inputs_embeds")
        if fields["n_embd"] % fields["n_head"]:
            raise TargetError(f"CALF option gpt2: n_embd {fields['n_embd']} is not divisible by n_head "
                              f"{fields['n_head']}")
        if self.enc_in is not None and self.enc_in > fields["n_positions"]:
            raise TargetError(f"CALF option enc_in ({self.enc_in}) exceeds the GPT-2's n_positions "
                              f"({fields['n_positions']}): CALF gives each channel one GPT-2 position")
        return fields

    @property
    def width(self) -> int:
        return int(self.gpt2_config()["n_embd"])

    def calf_configs(self, word_embedding_path: str) -> types.SimpleNamespace:
        """The ``configs`` namespace ``models.CALF.Model(configs, device)`` reads (as CALF's run.py builds it)."""
        configs = dict(task_name=self.task_name, seq_len=self.seq_len, pred_len=self.pred_len, d_model=self.width,
                       gpt_layers=self.gpt_layers, r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                       enc_in=self.enc_in, word_embedding_path=word_embedding_path)
        for name in ("powerformer_alpha", "powerformer_decay"):
            if getattr(self, name) is not None:  # else the patched CALF.py's getattr default: the injected one
                configs[name] = getattr(self, name)
        return types.SimpleNamespace(**configs)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class CALFForecast(nn.Module):
    """CALF's ``forward`` reduced to the exported outputs: ``forward(x (B, seq_len, M))`` returns
    ``model(x)[key]`` (B, pred_len, M) for each of ``keys`` (a tensor for one key, a tuple for several).

    Wrap the model before its first forward. Upstream's ``Encoder_PCA`` (``model.in_layer``) keeps its word
    embedding as a plain attribute that its forward replaces by a copy repeated to the batch, re-repeating only
    when the batch changes: a trace would then see a constant of the traced batch and a Python comparison with
    it, and the dynamo exporter specialises ``batch`` (observed on upstream CALF: "input 'x' dim 0 ('batch') was
    specialised to 3"). So every call first puts back the 2-D original: each call, eager or traced, takes the
    ``repeat(B, 1, 1)`` path, which gives the same values and keeps ``batch`` symbolic.
    """

    def __init__(self, model: nn.Module, keys: Tuple[str, ...] = ("outputs_time",)) -> None:
        super().__init__()
        self.model = model
        self.keys = tuple(keys)
        cached = getattr(getattr(model, "in_layer", None), "word_embedding", None)
        if isinstance(cached, torch.Tensor) and cached.dim() != 2:
            raise ValueError("CALFForecast: wrap the model before its first forward (in_layer.word_embedding is "
                             "already repeated to a batch)")
        self._word_embedding = cached if isinstance(cached, torch.Tensor) else None

    def forward(self, x: torch.Tensor):
        if self._word_embedding is not None:
            self.model.in_layer.word_embedding = self._word_embedding
        out = self.model(x)
        if len(self.keys) == 1:
            return out[self.keys[0]]
        return tuple(out[k] for k in self.keys)


def calf_spec(config: CALFExportConfig, n_positions: int) -> ExportSpec:
    """The graph ``model``: x (batch, seq_len, channels) -> forecast (batch, pred_len, channels)[, forecast_text]."""
    channels = config.enc_in if config.enc_in is not None else "channels"
    shape_in = ("batch", config.seq_len, channels)
    shape_out = ("batch", config.pred_len, channels)
    outputs = [TensorSpec("forecast", "float32", shape_out)]
    if config.text_branch:
        outputs.append(TensorSpec("forecast_text", "float32", shape_out))
    fixed = {config.seq_len, config.pred_len} | ({config.enc_in} if config.enc_in is not None else set())
    dims = ["batch"] if config.enc_in is not None else ["batch", "channels"]
    example = distinct_sizes(dims, avoid=fixed)
    if example.get("channels", 0) > n_positions:
        raise TargetError(f"the GPT-2's n_positions ({n_positions}) is too small to trace channels at "
                          f"{example['channels']}; use a larger gpt2 n_positions or --set enc_in=N")
    if config.enc_in is not None:
        parity = ({"batch": 1}, {"batch": 2}, {"batch": 5})
    else:  # one channel, a few, more, and the most the GPT-2 takes (capped at 128 to stay cheap)
        parity = ({"batch": 1, "channels": 1}, {"batch": 2, "channels": min(2, n_positions)},
                  {"batch": 4, "channels": min(n_positions, 16)}, {"batch": 1, "channels": min(n_positions, 128)})
    parity = tuple(p for p in parity if any(p[d] != example[d] for d in dims))
    exported = {"forecast": "CALF's outputs_time: the time branch (GPT-2 with WCMHA), what CALF forecasts with"}
    if config.text_branch:
        exported["forecast_text"] = "CALF's outputs_text: the text branch (its GPT-2 is unchanged by the recipe)"
    return ExportSpec(
        name="calf-wcmha",
        inputs=(TensorSpec("x", "float32", shape_in),),
        outputs=tuple(outputs),
        example_sizes=example,
        parity_sizes=parity,
        dim_max={} if config.enc_in is not None else {"channels": n_positions},
        torchscript_freeze=True,
        task=Task("forecast", (StepTensor("x", 1),), tuple(StepTensor(t.name, 1) for t in outputs), answer="last",
                  horizon=config.pred_len, time_dim="time", client={
                      "cache": "none: CALF's GPT-2 runs over channels (one token per channel), each call sees a "
                               "whole window",
                      "layout": ["batch", "time", "channels"],
                      "context": config.seq_len,
                      "channels": config.enc_in,
                      "max_channels": n_positions,
                      "outputs": exported,
                      "normalisation": "raw units in and out: the graph normalises each channel over its window "
                                       "(CALF's mean/std instance normalisation) and restores the scale",
                  }),
    )


# ------------------------------------------------------------------------------------------------- the builder


def _transformers_hint(exc: BaseException, where: str) -> str:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major >= 5 and "GPT2_arch" in where:
        return (f"Upstream CALF's AccustumGPT2Model (models/GPT2_arch.py) re-implements GPT2Model.forward of "
                f"transformers 4.30 and fails with transformers {transformers.__version__}; its text branch runs "
                f"inside CALF's forward even though only outputs_time is exported. Run tsattn-export in CALF's own "
                f"environment (CALF pins transformers 4.30.1)")
    return ""


def _stack_versions() -> Dict[str, Optional[str]]:
    """Versions of the target's own stack (the manifest's ``versions`` covers tsattn, torch and ONNX)."""
    import importlib.metadata as metadata

    out: Dict[str, Optional[str]] = {}
    for name in ("transformers", "peft", "einops"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _time_branch_attention(model: nn.Module) -> List[nn.Module]:
    """The WCMHA attentions of the time branch (``model.gpt2``): modules with a ``DecayBias`` as ``decay``."""
    gpt2 = getattr(model, "gpt2", None)
    if gpt2 is None:
        return []
    return [m for m in gpt2.modules() if type(m).__name__ == "PowerformerGPT2Attention" and hasattr(m, "decay")]


def _word_embedding(config: CALFExportConfig, tmp: Path, seed: int) -> Tuple[str, Dict[str, Any]]:
    """A path for CALF's ``torch.load(configs.word_embedding_path)``: the user's file (loaded here with
    ``weights_only=True`` and re-saved as a tensor) or a random (d_model, 500) tensor."""
    path = tmp / "word_embedding.pt"
    if config.word_embedding_path is None:
        g = torch.Generator().manual_seed(seed)
        torch.save(torch.randn(config.width, WORD_EMBEDDING_WORDS, generator=g), path)
        return str(path), {"path": None, "random": True,
                           "note": "random: only the text branch reads it; outputs_time does not depend on it"}
    given = Path(config.word_embedding_path)
    if not given.is_file():
        raise FileNotFoundError(f"word_embedding_path {given}: no such file")
    value = load_checkpoint(given)
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise TargetError(f"word_embedding_path {given}: expected a (d_model, words) tensor; got "
                          f"{type(value).__name__}") from None
    if tensor.dim() != 2 or tensor.shape[0] != config.width:
        raise TargetError(f"word_embedding_path {given}: shape {tuple(tensor.shape)}; CALF needs (d_model="
                          f"{config.width}, words)")
    torch.save(tensor, path)
    return str(path), {"path": str(given), "sha256": sha256_file(given), "random": False}


class CALFExport(TargetExport):
    """CALF patched with a feature: config = defaults < the checkpoint's config < the options (``build``).

    Raises ``TargetError`` (not patched, bad options, the target's code fails), ``CheckpointRefused``,
    ``FileNotFoundError``.
    """

    kind = KIND
    random_weights = (f"not a trained model; GPT-2 built from GPT2Config (nothing downloaded), LoRA B ~ N(0, "
                      f"{LORA_B_STD}^2); pass --checkpoint for CALF's trained weights")

    def build(self) -> Exportable:
        from tsattn.examples import offline_gpt2

        target, feature, seed, state, checkpoint = self.target, self.feature, self.seed, self.state, self.checkpoint
        config = CALFExportConfig.from_options(self.fields, with_checkpoint=checkpoint is not None)
        gpt2 = config.gpt2_config()
        if config.text_branch and checkpoint is not None and config.word_embedding_path is None:
            raise TargetError("text_branch with --checkpoint: the text branch reads the run's word embedding, which "
                              "CALF does not save in its checkpoints; give its word_embedding_path")

        module = target.import_module("models.CALF")
        with tempfile.TemporaryDirectory(prefix="tsattn-calf-") as tmp:
            word_path, word_info = _word_embedding(config, Path(tmp), seed)
            configs = config.calf_configs(word_path)
            with target_code(f"building models.CALF.Model from {target.root}", target.root, _transformers_hint):
                with offline_gpt2(seed=seed, **gpt2), quiet():
                    torch.manual_seed(seed)
                    model = module.Model(configs, "cpu")
        if state is not None:
            self.load_weights(model)
        else:  # peft starts B at zero: LoRA would be a no-op; random weights mean random adapters too
            g = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * LORA_B_STD)
        model.eval()

        attentions = _time_branch_attention(model)
        if not attentions:
            raise TargetError(f"target calf ({target.root}): the model built from models/CALF.py has no WCMHA "
                              f"attention in its time branch (self.gpt2): models/CALF.py does not wrap it with "
                              f"PowerformerAccustumGPT2Model.from_gpt2. Re-run `tsattn-inject --target {target.root} "
                              f"--feature {feature}`")
        wcmha = {"decay": sorted({a.decay.decay for a in attentions}),
                 "alpha": [round(float(a.decay.alpha.detach().float().mean()), 6) for a in attentions],
                 "layers": len(attentions)}

        keys = ("outputs_time", "outputs_text") if config.text_branch else ("outputs_time",)
        probe_sizes = {"batch": 2, "channels": config.enc_in or 3}
        probe = torch.randn(2, config.seq_len, probe_sizes["channels"], generator=torch.Generator().manual_seed(seed))
        exported = CALFForecast(model, keys).eval()  # before any forward: see its docstring
        with target_code("running CALF's forward", target.root, _transformers_hint), torch.no_grad(), quiet():
            before = exported(probe)
        before = before if isinstance(before, tuple) else (before,)
        expected = (2, config.pred_len, probe_sizes["channels"])
        if any(tuple(t.shape) != expected for t in before):
            raise TargetError(f"CALF's forward returned {[tuple(t.shape) for t in before]} for x of shape "
                              f"{tuple(probe.shape)}; expected {expected} (batch, pred_len, channels)")

        peft_model = getattr(model, "gpt2", None)
        lora = {"r": config.r, "lora_alpha": config.lora_alpha, "merged": False,
                "wrapper": type(peft_model).__name__}
        if config.merge_lora:
            if not hasattr(peft_model, "merge_and_unload"):
                raise TargetError(f"CALF's time branch is a {type(peft_model).__name__}, not a peft model: nothing "
                                  f"to merge; pass --set merge_lora=false")
            with target_code("merging LoRA into the time branch", target.root), quiet():
                model.gpt2 = peft_model.merge_and_unload()
            with torch.no_grad():
                after = exported(probe)
            after = after if isinstance(after, tuple) else (after,)
            diff = max(float((a - b).abs().max()) for a, b in zip(after, before))
            if not diff <= MERGE_TOL:
                raise TargetError(f"merging LoRA changed CALF's forecast by {diff:.3g} > {MERGE_TOL}; "
                                  f"export the wrapped model with --set merge_lora=false")
            lora.update(merged=True, max_abs_diff_vs_unmerged=diff, at=probe_sizes)

        spec = calf_spec(config, int(gpt2["n_positions"]))
        source = self.source(
            model="models.CALF.Model",
            exported=list(keys),
            config=config.to_dict(),
            gpt2={"config": gpt2, "pretrained": False,
                  "how": "from_pretrained('gpt2') replaced by GPT2Config(...) with random weights "
                         "(tsattn.examples.offline_gpt2)" + ("; every weight then loaded from the checkpoint"
                                                            if checkpoint is not None else "")},
            lora=lora,
            wcmha=wcmha,
            word_embedding=word_info,
            stack=_stack_versions(),
        )
        return Exportable(exported, spec, source)


build_calf_export = CALFExport.export
