"""Export spec of Wave-Transformer (Maximilian-Winter/Wave-Transformer) patched with a ``wave_transformer`` recipe:
its ``WaveTransformer`` with a token encoder and decoder, as a decode-step graph with a KV cache
(``tsattn-export --target Wave-Transformer --feature enhancements|ahs|fcl|pcca|mrwp|wcmha``).

One graph ``model`` serves a prefill (an empty past) and every later step, as for the reference model::

    input   token_ids                  int64   (batch, seq)        the new tokens (the encoder's keyword, input_name)
    input   past_key_values.{i}.{part} float32 (batch, heads_i, past, dim_i)      one entry per cache tensor
    output  logits                     float32 (batch, seq, vocab)  WaveTransformer's output (its decoder's)
    output  present.{i}.{part}         float32 (batch, heads_i, past + seq, dim_i)

``logits[:, t]`` scores the token at t + 1 (a causal language model: the decoder's output at t).

**What is cached.** A ``WaveTransformer`` mixes positions in its attentions only: every other module (the
encoders shipped with upstream and the look-alike, the blocks' SwiGLU and norms, the decoder's MLP, MRWP's bands'
MLPs, its cross-band attention and gate, which work within one position) acts on each position alone. So the
cache has one *slot* per attention call, in call order, each holding what that call needs of the past:

- ``MultiQueryFlashAttention`` (upstream's, in the blocks and in ``WaveToTokenDecoder``; with ``wcmha`` its decay
  bias): ``key`` and ``value`` (batch, n_heads_kv, length, d_head), keys rotated by its YaRN table at their
  absolute positions;
- ``PhaseCoherentAttention`` (``use_pcca``) and MRWP's ``RotaryAttention`` (the recipe's templates, which take a
  cache: ``past=``, ``use_cache=True``): ``key``, ``value`` (unrotated; RoPE sees only position differences), and
  for PCCA ``wave`` (batch, 1, length, 2H), the amplitude and phase channels its coherence term reads. The pyramid
  is one module run after every ``pyramid_interval``-th block: each run is a slot set of its own (its input
  differs each time);
- ``AdaptiveHarmonicSelector`` (``use_ahs``): its importance looks at the last ``context_size`` positions through
  a causal convolution, so its slot ``context`` (batch, 1, length, 3H) holds its past inputs (the step reads the
  last ``context_size - 1``).

FCL masks harmonics while training only (the export is eval), and dropout is off. Every cache tensor has the
stream's length (a template attention with a window, e.g. PCCA with a ``step`` decay, keeps only its window; the
adapter pads the rest with zeros, which that window masks), so a runtime handles them all alike; their shapes
differ, so the manifest's cache lists every tensor (``cache.tensors``, ``CacheSpec.tensors``).

**Positions are absolute.** ``MultiQueryFlashAttention`` rotates queries and keys with YaRN tables of
``max_seq_len`` positions (the blocks' and the decoder's own): the cache never slides (``cache.sliding`` false),
``max_context`` is the shortest table, and a stream holds at most that many tokens, then must be restarted (the
eager model fails beyond the table as well). Sliding would drop keys that one forward over the whole sequence
attends to, so no flag combination slides.

**Which flag combinations export.** All of them (``use_ahs``, ``use_fcl``, ``use_pcca``, ``use_mrwp`` with or
without cross-band attention, ``use_wcmha`` with any decay, and together), with ``causal=True``, no padding mask,
and ``use_flash=False`` (the export builds the manual attention path: flash_attn computes the same attention in
half precision on CUDA only, and takes no cache; a checkpoint trained with ``use_flash=True`` is built with False
and the manifest says so). The builder proves each export exact before it is written: the cached model with an
empty cache equals the untouched ``WaveTransformer`` (``source.cache_check``), and step-by-step decoding equals
one forward (``source.stepwise_check``, eager; the export's parity repeats it in ONNX Runtime and TorchScript).
Both exporters work (``dynamo``, the default: about 20 s for the tiny model on a loaded machine; ``legacy``: about
3 s, the tests' choice).
A user encoder or decoder that mixes positions in a way tsattn does not cache (a convolution over time, an
``nn.MultiheadAttention``, absolute position embeddings) fails that check and is refused (exit 2, naming the
suspects).

**What runs.** The exported module is ``WaveTransformer.forward`` (the target's code: its encoder call,
``to_representation``, FCL and AHS hooks, blocks, pyramid, ``norm_f``, decoder) with adapters installed in place
of the modules above (``CachedWaveTransformer``). The template attentions and AHS are called as they are, with a
cache or with the cached context in front; ``MultiQueryFlashAttention``, which takes no cache, is evaluated by the
adapter from the module's own projections, YaRN module (its tables read from position P), decay bias and scale,
following its manual path; the empty-cache check compares that against the module's own forward.

**Encoder and decoder.** ``WaveTransformer(wave_encoder, wave_decoder, ...)`` takes them as arguments; upstream's
``WaveTransformer.load(dir, encoder_cls, decoder_cls)`` likewise. Options ``encoder`` / ``decoder`` name the
classes as ``module:Class`` (imported with the clone's ``src/`` and root first on ``sys.path``, so upstream's
``wave_transformer.language_modelling.token_decoder:WaveToTokenDecoder`` or a module of your own) or
``path/to/file.py:Class`` (a file relative to the clone or absolute); defaults: the repository's
``TokenToWaveEncoder`` and ``WaveToTokenDecoder``. They are built with ``vocab_size``, ``num_harmonics`` (and
``use_flash=False``) where their ``__init__`` takes them, plus ``encoder_kwargs`` / ``decoder_kwargs``. The
encoder is called as WaveTransformer calls it, ``encoder(attention_mask=None, **{input_name: token_ids})``, and
must return a wave (``to_representation()``). At b33e609 upstream's own encoders do not run (a TypeError, and
``TokenToWaveEncoderSlim`` needs flash_attn): write a small one (see the README).

**Weights.** Without ``--checkpoint`` they are random (``--seed``) and the config a tiny one (``WaveExportConfig``);
the feature's flags are on (``enhancements``: use_ahs, use_fcl, use_pcca, use_mrwp). ``--checkpoint`` takes the
directory ``WaveTransformer.save()`` writes (``transformer_config.json`` and ``transformer_state_dict.pt``, whose
state dict holds the encoder's and decoder's weights too; ``encoder_config.json`` / ``decoder_config.json`` give
their constructor arguments, as their ``load`` does; upstream's ``WaveToTokenDecoder.save()`` omits
``max_seq_len``, so the length of the checkpoint's YaRN tables supplies it, ``source.inferred_from_checkpoint``) or
a single state-dict file (then the config comes from ``--set``); weights load with ``torch.load(weights_only=True)``
and strictly.

Options (``--config JSON`` / ``--set KEY=VALUE``): see ``WaveExportConfig``; any other key is an argument of the
patched ``WaveTransformer.__init__`` (e.g. ``use_pcca``, ``pcca_mode``, ``wcmha_decay``, ``transformer_num_layers``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsattn.export.checkpoint import CheckpointRefused, load_checkpoint, split_checkpoint
from tsattn.export.exporter import _quiet as quiet
from tsattn.export.manifest import CacheSpec, CacheTensor, TensorSpec
from tsattn.export.spec import Exportable, ExportSpec, FlatCache, StepwiseCheck, distinct_sizes, step_tensors
from tsattn.export.task import Task
from tsattn.export.target_base import TargetExport
from tsattn.export.targets import TargetError, target_code
from tsattn.modules.wcmha import dense_weights

KIND = "wave_transformer"
FEATURE_FLAGS: Dict[str, Tuple[str, ...]] = {
    "enhancements": ("use_ahs", "use_fcl", "use_pcca", "use_mrwp"),
    "ahs": ("use_ahs",), "fcl": ("use_fcl",), "pcca": ("use_pcca",), "mrwp": ("use_mrwp",), "wcmha": ("use_wcmha",),
}
MODEL_MODULE = "wave_transformer.core.wave_transformer"
DEFAULT_ENCODER = "wave_transformer.language_modelling.token_encoder:TokenToWaveEncoder"
DEFAULT_DECODER = "wave_transformer.language_modelling.token_decoder:WaveToTokenDecoder"
TINY_MODEL = {"num_harmonics": 8, "transformer_num_layers": 2, "transformer_num_heads": 4, "transformer_heads_kv": 2,
              "transformer_d_ff_multi": 2, "max_seq_len": 64, "dropout": 0.0}
"""The WaveTransformer arguments of the default (random-weight) export: d_model 24, two blocks."""
TINY_MRWP = {"pyramid_interval": 2, "mrwp_band_num_layers": [1, 1, 1]}
"""... and with use_mrwp: the pyramid once, after the second block, one layer per band (3 bands at 8 harmonics)."""
CHECK_TOL = 1e-5  # the cached model with an empty cache against the untouched one; eager stepwise decoding
MIN_CONTEXT = 16  # the parity and stepwise checks need this many positions
STEPWISE = (5, 1, 1, 3, 1, 2, 1)
CHECKPOINT_FILES = ("transformer_config.json", "transformer_state_dict.pt")
SUSPECTS = (nn.MultiheadAttention, nn.RNNBase, nn.Conv1d, nn.Conv2d)


@dataclass
class WaveExportConfig:
    """The export's own options; every other key is a ``WaveTransformer.__init__`` argument (``model``).

    vocab_size: the tokenizer's size, given to the encoder and decoder (where they take ``vocab_size``).
    encoder, decoder: ``module:Class`` or ``file.py:Class`` (see the module docstring). encoder_kwargs,
    decoder_kwargs: more constructor arguments (with a checkpoint directory: over its encoder_config.json /
    decoder_config.json). input_name: the encoder's keyword for the token ids (WaveTransformer calls
    ``wave_encoder(attention_mask=..., **encoder_input)``), also the graph input's name.
    model: WaveTransformer's arguments (default ``TINY_MODEL`` without a checkpoint, the checkpoint's
    transformer_config.json with one), updated by the option keys that are not the fields above.
    """

    vocab_size: Optional[int] = None
    encoder: str = DEFAULT_ENCODER
    decoder: str = DEFAULT_DECODER
    encoder_kwargs: Dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: Dict[str, Any] = field(default_factory=dict)
    input_name: str = "token_ids"
    model: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], base_model: Mapping[str, Any]) -> "WaveExportConfig":
        """Split ``options`` into the export's fields and WaveTransformer arguments (over ``base_model``);
        ``TargetError`` naming a bad key or value."""
        own = {f.name for f in dataclasses.fields(cls)} - {"model"}
        config = cls(**{k: v for k, v in options.items() if k in own})
        config.model = dict(base_model)
        config.model.update({k: v for k, v in options.items() if k not in own})
        if "model" in options:
            raise TargetError("Wave-Transformer option 'model': give WaveTransformer's arguments as keys of their own "
                              "(e.g. --set use_pcca=true)")
        for name in ("encoder", "decoder"):
            value = getattr(config, name)
            if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
                raise TargetError(f"Wave-Transformer option {name} must be 'module:Class' or 'path/file.py:Class'; "
                                  f"got {value!r}")
        for name in ("encoder_kwargs", "decoder_kwargs"):
            if not isinstance(getattr(config, name), dict):
                raise TargetError(f"Wave-Transformer option {name} must be a JSON object; got "
                                  f"{getattr(config, name)!r}")
        if not isinstance(config.input_name, str) or not config.input_name.isidentifier():
            raise TargetError(f"Wave-Transformer option input_name must be a keyword name; got {config.input_name!r}")
        if config.vocab_size is not None and (isinstance(config.vocab_size, bool) or not isinstance(
                config.vocab_size, int) or config.vocab_size < 2):
            raise TargetError(f"Wave-Transformer option vocab_size must be an integer >= 2; got {config.vocab_size!r}")
        for name in ("causal", "attention_mask", "wave_encoder", "wave_decoder"):
            if name in config.model:
                raise TargetError(f"Wave-Transformer option {name!r} is not a model option: the export builds the "
                                  f"encoder and decoder itself and decodes causally without padding")
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------- the adapters


class _Slots:
    """The cache slots of one ``CachedWaveTransformer`` call: each adapter, when the model calls it, takes the
    next slot's past (``take``) and gives its present (``give``), in call order. With ``past`` None (``record``)
    every slot starts empty and the adapters met are listed in ``order``: the cache's layout."""

    def __init__(self) -> None:
        self.past: Optional[Sequence[Tuple[Tensor, ...]]] = None
        self.present: List[Tuple[Tensor, ...]] = []
        self.order: List["_Adapter"] = []
        self.active = False

    def begin(self, past: Optional[Sequence[Tuple[Tensor, ...]]]) -> None:
        self.past, self.present, self.order, self.active = past, [], [], True

    def end(self) -> Tuple[Tuple[Tensor, ...], ...]:
        if self.past is not None and len(self.present) != len(self.past):
            raise RuntimeError(f"the model used {len(self.present)} cache slots; the cache has {len(self.past)}")
        present = tuple(self.present)
        self.past, self.present, self.active = None, [], False
        return present

    def take(self, adapter: "_Adapter", like: Tensor) -> Tuple[Tensor, ...]:
        if not self.active:
            raise RuntimeError(f"{type(adapter).__name__} runs inside CachedWaveTransformer.forward only")
        i = len(self.present)
        if self.past is None:
            self.order.append(adapter)
            return tuple(like.new_zeros(like.shape[0], h, 0, d) for h, d in adapter.shapes)
        if i >= len(self.past):
            raise RuntimeError(f"the model calls more cached modules than the cache has slots ({len(self.past)})")
        past = tuple(self.past[i])
        if len(past) != len(adapter.parts):
            raise RuntimeError(f"cache slot {i} has {len(past)} tensors; {adapter.path} needs {adapter.parts}")
        return past

    def give(self, present: Tuple[Tensor, ...]) -> None:
        self.present.append(tuple(present))


class _Adapter(nn.Module):
    """A module of the model given a cache slot: ``parts`` (tensor names) and ``shapes`` ((heads, dim) each)."""

    parts: Tuple[str, ...] = ()

    def __init__(self, module: nn.Module, slots: _Slots, path: str) -> None:
        super().__init__()
        self.module = module
        self.path = path
        self.__dict__["slots"] = slots  # shared, not a submodule

    @property
    def shapes(self) -> Tuple[Tuple[int, int], ...]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"module": self.path, "class": type(self.module).__name__, "parts": list(self.parts),
                "shapes": [list(s) for s in self.shapes]}


def _pad_front(t: Tensor, length: Tensor) -> Tensor:
    """``t`` (B, H, n, D) with zero positions in front up to ``length`` (>= n) positions."""
    return F.pad(t, (0, 0, length - t.shape[2], 0))


class _CachedMultiQuery(_Adapter):
    """Upstream's ``MultiQueryFlashAttention`` with a cache: its manual path (``use_flash`` off) at positions
    P .. P + L - 1 over the P cached keys and the L new ones, from the module's own projections, YaRN module (its
    ``cos``/``sin`` tables read from row P), decay bias (``wcmha``) and scale. The cache holds rotated keys."""

    parts = ("key", "value")

    def __init__(self, module: nn.Module, slots: _Slots, path: str) -> None:
        super().__init__(module, slots, path)
        for name in ("q_proj", "kv_proj", "out_proj", "n_heads_q", "n_heads_kv", "d_head", "scale", "use_yarn"):
            if not hasattr(module, name):
                raise TargetError(f"{path} ({type(module).__name__}) has no attribute {name!r}: not the "
                                  f"MultiQueryFlashAttention this export adapts")
        rope = getattr(module, "yarn_rope", None) if module.use_yarn else None
        if module.use_yarn and not all(isinstance(getattr(rope, b, None), Tensor) for b in ("cos", "sin")):
            raise TargetError(f"{path}.yarn_rope has no cos/sin tables: not the YaRN module this export adapts")
        self.positions = None if rope is None else int(rope.cos.shape[0])

    @property
    def shapes(self) -> Tuple[Tuple[int, int], ...]:
        return ((int(self.module.n_heads_kv), int(self.module.d_head)),) * 2

    def _rotate(self, q: Tensor, k: Tensor, offset) -> Tuple[Tensor, Tensor]:
        rope = self.module.yarn_rope
        cos, sin = rope._buffers["cos"], rope._buffers["sin"]
        rope._buffers["cos"], rope._buffers["sin"] = cos[offset:], sin[offset:]  # rows P.. for this call
        try:
            return rope(q, k)
        finally:
            rope._buffers["cos"], rope._buffers["sin"] = cos, sin

    def forward(self, x: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is not None or not causal:
            raise ValueError(f"{self.path}: cached decoding is causal and without a padding mask")
        a = self.module
        past_k, past_v = self.slots.take(self, x)
        b, n, _ = x.shape
        p = past_k.shape[2]
        if self.positions is not None and not torch.jit.is_tracing() and p + n > self.positions:
            raise ValueError(f"{self.path}: positions up to {p + n} exceed its YaRN table of {self.positions} "
                             f"(max_seq_len); restart the stream")
        q = a.q_proj(x).reshape(b, n, a.n_heads_q, a.d_head)
        kv = a.kv_proj(x).reshape(b, n, 2, a.n_heads_kv, a.d_head)
        k, v = kv.unbind(2)
        if a.use_yarn:
            q, k = self._rotate(q, k, p)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, D)
        k = torch.cat([past_k.to(k.dtype), k], dim=2)  # (B, Hkv, P + L, D)
        v = torch.cat([past_v.to(v.dtype), v], dim=2)
        self.slots.give((k, v))
        repeat = a.n_heads_q // a.n_heads_kv
        vr = v.repeat_interleave(repeat, dim=1) if repeat > 1 else v
        pos = torch.arange(k.shape[2], device=x.device, dtype=torch.promote_types(q.dtype, torch.float32))
        dt = pos[p:][:, None] - pos[None, :]  # query position minus key position, (L, P + L)
        decay = getattr(a, "decay_bias", None)
        mask = decay(dt) if decay is not None else torch.zeros_like(dt)
        mask = mask.masked_fill(dt < 0, float("-inf")).to(q.dtype)
        out = torch.matmul(dense_weights(q, k, mask, scale=a.scale), vr)  # (B, H, L, D)
        return a.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class _CachedTemplateAttention(_Adapter):
    """tsattn's ``RotaryAttention`` / ``PhaseCoherentAttention`` (MRWP's bands, ``use_pcca``) called with their own
    cache (``past=``, ``use_cache=True``); PCCA's wave state is kept as (B, 1, length, 2H)."""

    def __init__(self, module: nn.Module, slots: _Slots, path: str) -> None:
        super().__init__(module, slots, path)
        self.wave = hasattr(module, "phase_coherence_mode")
        self.parts = ("key", "value", "wave") if self.wave else ("key", "value")
        self.windowed = getattr(module, "window", None) is not None  # it trims its cache to the window

    @property
    def shapes(self) -> Tuple[Tuple[int, int], ...]:
        kv = ((int(self.module.n_kv_heads), int(self.module.head_dim)),) * 2
        return kv + (((1, 2 * int(self.module.num_harmonics)),) if self.wave else ())

    def forward(self, x: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is not None or not causal:
            raise ValueError(f"{self.path}: cached decoding is causal and without a padding mask")
        past = self.slots.take(self, x)
        wave = None
        if self.wave:  # the amplitude and phase channels of every position, as PCCA keeps them before trimming
            wave = torch.cat([past[2][:, 0].to(x.dtype), x[..., int(self.module.num_harmonics):]], dim=1)
            past = (past[0], past[1], past[2][:, 0])
        y, present = self.module(x, causal, None, past=past, use_cache=True)
        key, value = present[0], present[1]
        if self.windowed:  # zeros in front of what the window kept: the window masks those positions
            length = past[0].shape[2] + x.shape[1]
            key, value = _pad_front(key, length), _pad_front(value, length)
        self.slots.give((key, value) + ((wave.unsqueeze(1),) if self.wave else ()))
        return y


class _CachedHarmonicSelector(_Adapter):
    """tsattn's ``AdaptiveHarmonicSelector``: its causal context convolution reads the last ``context_size - 1``
    inputs before the new ones, kept as the slot's ``context`` (B, 1, length, 3H)."""

    parts = ("context",)

    @property
    def shapes(self) -> Tuple[Tuple[int, int], ...]:
        return ((1, int(self.module.d_model)),)

    def forward(self, x: Tensor, return_stats: bool = False):
        if return_stats:
            raise ValueError(f"{self.path}: the export does not return AHS stats")
        (past,) = self.slots.take(self, x)
        history = past[:, 0].to(x.dtype)  # (B, P, 3H)
        keep = int(self.module.context_size) - 1
        context = history[:, -keep:] if keep > 0 else history[:, :0]  # the last min(P, keep) inputs
        y = self.module(torch.cat([context, x], dim=1))[:, context.shape[1]:]
        self.slots.give((torch.cat([past.to(x.dtype), x.unsqueeze(1)], dim=2),))
        return y


def _adapter_class(module: nn.Module):
    name = type(module).__name__
    if name == "MultiQueryFlashAttention":
        return _CachedMultiQuery
    if name in ("PhaseCoherentAttention", "RotaryAttention"):
        params = inspect.signature(module.forward).parameters
        if "past" in params and "use_cache" in params:
            return _CachedTemplateAttention
    if name == "AdaptiveHarmonicSelector":
        return _CachedHarmonicSelector
    return None


def install_adapters(model: nn.Module, slots: _Slots, prefix: str = "") -> List[_Adapter]:
    """Replace, in place, every module of ``model`` that mixes positions and that tsattn caches by its adapter
    (see the module docstring); returns the adapters in module order."""
    found: List[_Adapter] = []
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        cls = _adapter_class(child)
        if cls is not None:
            adapter = cls(child, slots, path)
            setattr(model, name, adapter)
            found.append(adapter)
        else:
            found += install_adapters(child, slots, path + ".")
    return found


class CachedWaveTransformer(nn.Module):
    """A patched ``WaveTransformer`` decoding with a cache (see the module docstring).

    ``forward(token_ids, past) -> (logits, present)``: token_ids (B, L) the new tokens; ``past`` one tuple of
    tensors per slot (``layout()``), each (B, heads, P, dim), P = 0 for a new stream; ``present`` the same with the
    L new positions. Wraps ``model`` in place (use a copy to keep the original).
    """

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.__dict__["slots"] = _Slots()
        self.adapters = install_adapters(model, self.slots)

    def run(self, token_ids: Tensor, past: Optional[Sequence[Tuple[Tensor, ...]]]):
        self.slots.begin(past)
        try:
            logits = self.model({self.input_name: token_ids}, causal=True)
            present = self.slots.end()
        finally:
            self.slots.active = False
        if isinstance(logits, (tuple, list)):
            raise TargetError("WaveTransformer.forward returned a tuple; the export needs the decoder's logits alone")
        return logits, present

    def forward(self, token_ids: Tensor, past: Sequence[Tuple[Tensor, ...]]):
        return self.run(token_ids, past)

    def layout(self, token_ids: Tensor) -> Tuple[List[_Adapter], Tensor]:
        """The slots a call makes (adapters in call order: one per attention call) and its logits, from a call on
        an empty cache."""
        logits, _ = self.run(token_ids, None)
        return list(self.slots.order), logits


# ---------------------------------------------------------------------------------------------------- the spec


def wave_spec(input_name: str, vocab_in: int, vocab_out: int, slots: Sequence[_Adapter],
              max_context: int) -> ExportSpec:
    """The graph ``model``: new tokens and the caches in, their logits and the caches out."""
    tensors = tuple(CacheTensor(i, part, f"past_key_values.{i}.{part}", f"present.{i}.{part}", h, d)
                    for i, slot in enumerate(slots) for part, (h, d) in zip(slot.parts, slot.shapes))
    cache = CacheSpec(layers=len(slots), kv_heads=None, head_dim=None, max_context=max_context, sliding=False,
                      tensors=tensors)
    inputs = (TensorSpec(input_name, "int64", ("batch", "seq")),)
    outputs = (TensorSpec("logits", "float32", ("batch", "seq", vocab_out)),)
    fixed = {vocab_out} | {t.heads for t in tensors} | {t.dim for t in tensors}
    example = distinct_sizes(["batch", "seq", "past"], avoid=fixed)

    def make_inputs(sizes: Mapping[str, int], g: torch.Generator) -> Tuple[Tensor, ...]:
        b, n, p = sizes["batch"], sizes["seq"], sizes["past"]
        ids = torch.randint(0, vocab_in, (b, n), generator=g, dtype=torch.int64)
        return (ids,) + tuple(torch.randn(shape, generator=g) for shape in cache.shapes(b, p))

    reach = min(17, max_context - 2)
    calls: Dict[str, int] = {}
    described = []
    for i, slot in enumerate(slots):  # a module run several times (MRWP's pyramid) has a slot per run
        calls[slot.path] = calls.get(slot.path, 0) + 1
        described.append(dict(slot.describe(), slot=i, call=calls[slot.path]))
    return ExportSpec(
        name="wave-transformer",
        inputs=inputs,
        outputs=outputs,
        cache=cache,
        example_sizes=example,
        # a new stream's first token, a step after a long past, a prefill, a chunk after a past
        parity_sizes=({"batch": 1, "seq": 1, "past": 0}, {"batch": 2, "seq": 1, "past": reach},
                      {"batch": 4, "seq": 11, "past": 0}, {"batch": 2, "seq": 6, "past": 9}),
        dim_min={"past": 0},
        dim_max={"seq": max_context, "past": max_context - 1},
        stepwise=StepwiseCheck("seq", STEPWISE),
        make_inputs=make_inputs,
        task=Task("causal_lm", step_tensors(inputs), step_tensors(outputs), horizon=1, client={
            "vocab_size": vocab_out,
            "input_ranges": {input_name: [0, vocab_in - 1]},
            "prediction": "logits[:, t] score the token at t + 1 (WaveTransformer's decoder output at t)",
            "positions": f"absolute: a stream holds at most {max_context} tokens (the shortest YaRN table), then "
                         "restart it; the cache does not slide",
            "cache_slots": described,
        }),
    )


# ------------------------------------------------------------------------------------------------- the builder


def _read_checkpoint(path: Path) -> Tuple[Dict[str, Tensor], Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """(state dict, transformer config, encoder config, decoder config) of a ``WaveTransformer.save()`` directory
    or a state-dict file (configs empty). Raises ``CheckpointRefused`` / ``FileNotFoundError``."""
    path = Path(path)
    configs: List[Dict[str, Any]] = []
    if path.is_dir():
        missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"--checkpoint {path}: a WaveTransformer.save() directory holds "
                                    f"{', '.join(CHECKPOINT_FILES)}; missing {', '.join(missing)}")
        for name in ("transformer_config.json", "encoder_config.json", "decoder_config.json"):
            file = path / name
            try:
                data = json.loads(file.read_text()) if file.is_file() else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointRefused(f"checkpoint {file} refused: unreadable JSON ({exc})") from None
            if not isinstance(data, dict):
                raise CheckpointRefused(f"checkpoint {file} refused: expected a JSON object")
            configs.append(data)
        weights = path / "transformer_state_dict.pt"
    else:
        configs = [{}, {}, {}]
        weights = path
    obj = load_checkpoint(weights)
    if isinstance(obj, Mapping) and isinstance(obj.get("transformer_state_dict"), Mapping):
        obj = obj["transformer_state_dict"]
    state, config = split_checkpoint(obj, weights)
    if config:
        configs[0] = {**config, **configs[0]}
    return state, configs[0], configs[1], configs[2]


def _accepts(cls: type) -> Tuple[set, bool]:
    params = inspect.signature(cls.__init__).parameters
    return set(params) - {"self"}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _kwargs(cls: type, defaults: Mapping[str, Any], given: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """``defaults`` the class takes, then ``given`` (each must be an argument of ``cls.__init__``)."""
    names, var = _accepts(cls)
    unknown = sorted(k for k in given if k not in names and not var)
    if unknown:
        raise TargetError(f"{what} {cls.__name__}.__init__ takes no argument(s) {unknown}; it takes "
                          f"{sorted(names)}")
    out = {k: v for k, v in defaults.items() if k in names or var}
    out.update(given)
    return out


def _table_length(state: Optional[Mapping[str, Tensor]], prefix: str) -> Optional[int]:
    """The length of the YaRN tables under ``prefix`` in a checkpoint (one length for all, else None): the
    ``max_seq_len`` they were built with, which upstream's ``WaveToTokenDecoder.save()`` does not record."""
    if state is None:
        return None
    lengths = {int(v.shape[0]) for k, v in state.items() if k.startswith(prefix) and k.endswith("yarn_rope.cos")}
    return lengths.pop() if len(lengths) == 1 else None


def _class(load, spec: str, root: Path, what: str) -> type:
    module_name, class_name = spec.split(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        module_name = str(path if path.is_absolute() else root / path)
    module = load(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TargetError(f"{what} {spec!r}: {module_name} defines no nn.Module class {class_name!r}")
    return cls


def _hint(exc: BaseException, where: str) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name == "flash_attn":
        return "flash_attn is imported when use_flash is true; the export builds use_flash=False (check the class)"
    if isinstance(exc, ModuleNotFoundError):
        return (f"the repository imports {exc.name!r}: install it (upstream's core/wave.py imports seaborn and "
                f"matplotlib; HEAD's core/transformer.py imports a missing `memory` package: delete those imports)")
    return ""


def _suspects(model: nn.Module) -> List[str]:
    return sorted({f"{name} ({type(m).__name__})" for name, m in model.named_modules()
                   if isinstance(m, SUSPECTS) and "ahs" not in name.split(".")})


class WaveExport(TargetExport):
    """Wave-Transformer patched with a feature: its WaveTransformer with a KV cache (``build``). A checkpoint is a
    ``WaveTransformer.save()`` directory or a state-dict file (``_read_checkpoint``); its transformer config is the
    base the options update (``WaveExportConfig.from_options``).

    Raises ``TargetError`` (not patched, bad options, the target's code fails, the cached model differs from the
    model), ``CheckpointRefused``, ``FileNotFoundError``.
    """

    kind = KIND
    random_weights = ("not a trained model, a tiny config; pass --checkpoint (a WaveTransformer.save() directory) "
                      "for trained weights")

    ckpt_model: Mapping[str, Any] = {}  # the checkpoint's transformer, encoder and decoder configs (read-only)
    enc_config: Mapping[str, Any] = {}
    dec_config: Mapping[str, Any] = {}

    def read_checkpoint(self, path: Path):
        state, self.ckpt_model, self.enc_config, self.dec_config = _read_checkpoint(path)
        return state, None  # the checkpoint's config is the model's base, not options

    def checkpoint_file(self) -> Optional[Path]:
        path = self.checkpoint
        return path / "transformer_state_dict.pt" if path is not None and path.is_dir() else path

    def build(self) -> Exportable:
        from tsattn.examples import imports_from
        from tsattn.export.exporter import _stepwise, eager_runner

        target, feature, seed, state, checkpoint = self.target, self.feature, self.seed, self.state, self.checkpoint
        base_model: Dict[str, Any] = dict(self.ckpt_model or TINY_MODEL)
        enc_config, dec_config = dict(self.enc_config), dict(self.dec_config)
        config = WaveExportConfig.from_options(self.fields, base_model)
        if checkpoint is None:  # random weights: the feature's flags on, unless the options say otherwise
            if feature not in FEATURE_FLAGS:
                raise TargetError(f"feature {feature!r} has a recipe but no WaveTransformer flags in "
                                  f"tsattn.export.wave.FEATURE_FLAGS (known: {sorted(FEATURE_FLAGS)})")
            for flag in FEATURE_FLAGS[feature]:
                config.model.setdefault(flag, True)
            if config.model.get("use_mrwp"):
                for k, v in TINY_MRWP.items():
                    config.model.setdefault(k, v)
        flash = {"model": bool(config.model.get("use_flash", True))}
        config.model["use_flash"] = False

        src = target.root / "src"
        importing = f"importing WaveTransformer and its encoder/decoder from {target.root}"
        with imports_from(src, target.root) as load, target_code(importing, target.root, _hint):
            model_cls = getattr(load(MODEL_MODULE), "WaveTransformer")
            enc_cls = _class(load, config.encoder, target.root, "encoder")
            dec_cls = _class(load, config.decoder, target.root, "decoder")
        names, _ = _accepts(model_cls)
        unknown = sorted(set(config.model) - names)
        if unknown:
            missing_flags = [k for k in unknown if k.startswith("use_")]
            raise TargetError(f"{', '.join(unknown)}: not argument(s) of WaveTransformer.__init__ in {target.root}"
                              + (f" (is it patched with the feature of {missing_flags}? run `tsattn-inject --target "
                                 f"{target.root} --feature ...`)" if missing_flags else "")
                              + f"; it takes {sorted(names - {'wave_encoder', 'wave_decoder'})}")
        h = config.model.get("num_harmonics", inspect.signature(model_cls.__init__).parameters["num_harmonics"].default)
        vocab = config.vocab_size or enc_config.get("vocab_size") or dec_config.get("vocab_size") or 40
        inferred: Dict[str, int] = {}
        for what, cls, saved, prefix in (("encoder", enc_cls, enc_config, "wave_encoder."),
                                         ("decoder", dec_cls, dec_config, "wave_decoder.")):
            given = config.encoder_kwargs if what == "encoder" else config.decoder_kwargs
            length = _table_length(state, prefix)
            if length is not None and "max_seq_len" not in saved and "max_seq_len" not in given \
                    and "max_seq_len" in _accepts(cls)[0]:
                saved["max_seq_len"] = inferred[f"{what}.max_seq_len"] = length  # upstream's save() omits it
        enc_kwargs = _kwargs(enc_cls, {"vocab_size": vocab, "num_harmonics": h},
                             {**enc_config, **config.encoder_kwargs}, "encoder")
        dec_kwargs = _kwargs(dec_cls, {"vocab_size": vocab, "num_harmonics": h},
                             {**dec_config, **config.decoder_kwargs}, "decoder")
        if "use_flash" in _accepts(dec_cls)[0] or "use_flash" in dec_kwargs:
            flash["decoder"] = bool(dec_kwargs.get("use_flash", False))
            dec_kwargs["use_flash"] = False

        with target_code(f"building WaveTransformer from {target.root}", target.root, _hint), quiet():
            torch.manual_seed(seed)
            encoder = enc_cls(**enc_kwargs)
            decoder = dec_cls(**dec_kwargs)
            model = model_cls(encoder, decoder, **config.model)
        self.load_weights(model)
        model.eval()

        cached = CachedWaveTransformer(copy.deepcopy(model), config.input_name).eval()
        embeddings = [m for m in encoder.modules() if isinstance(m, nn.Embedding)]
        vocab_in = int(embeddings[0].num_embeddings) if embeddings else int(vocab)
        probe = torch.randint(0, vocab_in, (2, 7), generator=torch.Generator().manual_seed(seed + 11))
        with target_code("running WaveTransformer's forward", target.root, _hint), torch.no_grad(), quiet():
            want = model({config.input_name: probe}, causal=True)
            slots, got = cached.layout(probe)
        if not isinstance(want, Tensor) or want.dim() != 3:
            raise TargetError(f"WaveTransformer's forward returned {type(want).__name__}"
                              f"{tuple(want.shape) if isinstance(want, Tensor) else ''}; the export needs logits "
                              f"(batch, seq, vocab) from the decoder")
        if not slots:
            raise TargetError("the model calls no attention tsattn can cache (MultiQueryFlashAttention, "
                              "PhaseCoherentAttention, RotaryAttention): nothing to export as a decode step")
        diff = float((got - want).abs().max())
        if not diff <= CHECK_TOL:
            raise TargetError(f"the cached WaveTransformer differs from {target.root}'s own forward by {diff:.3g} > "
                              f"{CHECK_TOL} with an empty cache: a MultiQueryFlashAttention whose manual path differs "
                              f"from upstream's b33e609 (q/kv projections, YaRN, scale, causal mask, decay bias)?")
        tables = [s.positions for s in slots if isinstance(s, _CachedMultiQuery) and s.positions is not None]
        max_context = min(tables) if tables else int(getattr(model, "max_seq_len",
                                                             config.model.get("max_seq_len", 512)))
        if max_context < MIN_CONTEXT:
            raise TargetError(f"max_seq_len {max_context} is too short to export and check (at least {MIN_CONTEXT})")
        spec = wave_spec(config.input_name, vocab_in, int(want.shape[-1]), slots, max_context)
        exported = FlatCache(cached, n_inputs=1, layers=len(slots), parts=[len(s.parts) for s in slots]).eval()

        eager = eager_runner(exported)
        with target_code("decoding step by step with the cache", target.root, _hint), quiet():
            rows = _stepwise(spec, eager, eager, "eager")
        worst = max((r["max_abs_err"] for r in rows if r["max_abs_err"] is not None), default=math.inf)
        if not all(r["ok"] for r in rows) or not worst <= CHECK_TOL:
            suspects = _suspects(model)
            raise TargetError(f"step-by-step decoding with the cache differs from one forward by {worst:.3g} (tol "
                              f"{CHECK_TOL}): the model mixes positions somewhere tsattn does not cache"
                              + (f"; suspects: {', '.join(suspects)}" if suspects else
                                 " (an encoder or decoder with absolute position embeddings?)")
                              + ". Cached: MultiQueryFlashAttention, PhaseCoherentAttention, RotaryAttention, "
                                "AdaptiveHarmonicSelector")

        flags = {k: v for k, v in config.model.items() if k.startswith(("use_", "ahs_", "fcl_", "pcca_", "mrwp_",
                                                                           "pyramid_", "wcmha_"))}
        source = self.source(
            model=f"{MODEL_MODULE}.WaveTransformer",
            encoder={"class": config.encoder, "kwargs": enc_kwargs},
            decoder={"class": config.decoder, "kwargs": dec_kwargs},
            exported=["logits"],
            config=config.to_dict(),
            flags=flags,
            use_flash={"built": False, "configured": flash,
                       "note": "the export builds the manual attention path; flash_attn (CUDA, half precision) "
                               "computes the same attention"},
            cache_check={"max_abs_diff_vs_model": diff, "tol": CHECK_TOL, "sizes": {"batch": 2, "seq": 7}},
            stepwise_check={"max_abs_err": worst, "tol": CHECK_TOL, "steps": list(STEPWISE)},
            max_positions=max_context,
            inferred_from_checkpoint=inferred,
        )
        return Exportable(exported, spec, source)


build_wave_export = WaveExport.export
