"""Export specs of seed 002's causal models (``tsattn-export --model autoregressive|encoder_decoder``).

``autoregressive``: ``AutoregressiveTransformerModel``'s decode step (``tsattn.models.DecodeStepGraph``), one graph
``model`` for the prefill (an empty past) and every later step::

    input   x                          float32 (batch, seq, input_dim)     the new time steps
    input   start_pos                  int64   ()                          sliding only: the first new step's position
    input   past_key_values.{i}.key/.value  float32 (batch, kv_heads, past, head_dim)
    output  y                          float32 (batch, seq, output_dim)    the model's output at each new step
    output  present.{i}.key/.value     float32 (batch, kv_heads, present, head_dim)

``encoder_decoder``: ``EncoderDecoder`` as two graphs, ``encoder`` (``EncoderGraph``: source (batch, src_len,
input_dim) -> encoder_output and the decoder layers' cross-attention keys and values ``cross_key_values.{i}.*``,
run once per source) and ``model`` (``DecoderStepGraph``: target steps, the cross keys and values, the decoder's
self-attention cache -> y, present). The manifest's task (kind ``seq2seq``) says which encoder outputs feed which
step inputs: a stream opens with its source, the encoder runs once, and its outputs feed every decoder step.

Context. ``expanding_context`` true (the default): every step sees every earlier one, positions are computed (no
table), so the cache grows without bound (``max_context`` null; the runtime's ``max_cache_bytes`` bounds memory).
``expanding_context`` false (or ``--max-context N``: a window of N cached positions, ``max_seq_len = N + 1``): the
seed's sliding window, the cache keeps ``max_seq_len - 1`` positions and slides, and the graph takes ``start_pos``
(the task's ``position`` input, fed by the runtime with the stream's step count).

Options (``--set KEY=VALUE``): ``Seed002ExportConfig``'s fields: the models' keyword arguments (``input_dim``,
``embed_dim``, ``ffn_latent_dim``, ``num_layers`` / ``num_encoder_layers`` and ``num_decoder_layers``,
``num_heads``, ``output_dim``, ``max_seq_len``, ``attention_type`` (mha, mqa, gqa), ``num_groups``), the WCMHA
decay of the (decoder) self-attention (``decay``, ``alpha``, ... as ``tsattn.models.attention.DECAY_KWARGS``), MoE
(``use_moe``, ``num_experts``, ``capacity``, ``topk``, ``moe_alpha``; a capacity counts the tokens of one call, so
step-by-step decoding equals one forward only while no expert overflows: the export's stepwise check refuses
otherwise) and ``expanding_context``. ``--checkpoint``: a state dict of the model (or ``{"state_dict", "config"}``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from tsattn.export.checkpoint import load_checkpoint, load_weights, split_checkpoint
from tsattn.export.manifest import CacheSpec, TensorSpec, sha256_file
from tsattn.export.spec import Exportable, ExportSpec, StepwiseCheck, distinct_sizes, step_tensors
from tsattn.export.task import EncoderTask, StepTensor, Task

STEPWISE = (5, 1, 1, 3, 1, 2, 1)


@dataclass
class Seed002ExportConfig:
    """The model the export builds (see the module docstring); ``kind`` is ``autoregressive`` or
    ``encoder_decoder`` (set by the model entry)."""

    kind: str = "autoregressive"
    input_dim: int = 3
    embed_dim: int = 32
    ffn_latent_dim: int = 64
    num_layers: int = 2
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    output_dim: int = 3
    max_seq_len: int = 64
    attention_type: str = "gqa"
    num_groups: Optional[int] = None
    expanding_context: bool = True
    use_moe: bool = False
    num_experts: Optional[int] = None
    capacity: Optional[int] = None
    topk: int = 1
    moe_alpha: float = 0.01
    decay: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, kind: str, options: Mapping[str, Any]) -> "Seed002ExportConfig":
        """Validate ``options``: unknown keys and bad values raise ``ValueError`` naming them."""
        from tsattn.models.attention import DECAY_KWARGS

        options = dict(options)
        if "max_context" in options:  # --max-context N: a sliding window of N cached positions
            window = options.pop("max_context")
            if window is None:
                options.setdefault("expanding_context", True)
            else:
                if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                    raise ValueError(f"max_context must be a positive integer or none; got {window!r}")
                options.update(expanding_context=False, max_seq_len=window + 1)
        decay = {k: options.pop(k) for k in list(options) if k in DECAY_KWARGS}
        names = {f.name for f in dataclasses.fields(cls)} - {"kind", "decay"}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown {kind} model option(s) {unknown}; known: "
                             f"{sorted(names | set(DECAY_KWARGS) | {'max_context'})}")
        config = cls(kind=kind, decay=decay, **options)
        if not isinstance(config.expanding_context, bool):
            raise ValueError(f"expanding_context must be true or false; got {config.expanding_context!r}")
        if not config.expanding_context and config.max_seq_len < 3:
            raise ValueError("a sliding window (expanding_context false) needs max_seq_len >= 3")
        return config

    def ffn(self):
        from tsattn.models import FFNConfig

        if not self.use_moe:
            return None
        return FFNConfig(self.embed_dim, self.ffn_latent_dim, use_moe=True, num_experts=self.num_experts,
                         capacity=self.capacity, alpha=self.moe_alpha, topk=self.topk)

    def build(self):
        from tsattn.models import AutoregressiveTransformerModel, EncoderDecoder

        common = dict(input_dim=self.input_dim, embed_dim=self.embed_dim, ffn_latent_dim=self.ffn_latent_dim,
                      num_heads=self.num_heads, output_dim=self.output_dim, max_seq_len=self.max_seq_len,
                      attention_type=self.attention_type, num_groups=self.num_groups, ffn_config=self.ffn(),
                      **self.decay)
        if self.kind == "autoregressive":
            return AutoregressiveTransformerModel(num_layers=self.num_layers, **common)
        return EncoderDecoder(num_encoder_layers=self.num_encoder_layers, num_decoder_layers=self.num_decoder_layers,
                              **common)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _cache(model, config: Seed002ExportConfig) -> CacheSpec:
    layers = model.layers if config.kind == "autoregressive" else model.decoder_layers
    att = layers[0].attention if config.kind == "autoregressive" else layers[0].self_attention
    window = None if config.expanding_context else config.max_seq_len - 1
    return CacheSpec(layers=len(layers), kv_heads=att.num_kv_heads, head_dim=att.head_dim, max_context=window)


def seed002_specs(model, config: Seed002ExportConfig) -> Tuple[ExportSpec, Optional[ExportSpec]]:
    """The step graph's spec (``model``) and, for the encoder-decoder, the encoder's (``encoder``)."""
    cache = _cache(model, config)
    sliding = not config.expanding_context
    seq2seq = config.kind == "encoder_decoder"
    step_in = TensorSpec("target" if seq2seq else "x", "float32", ("batch", "seq", config.input_dim))
    inputs = [step_in]
    position = TensorSpec("start_pos", "int64", ()) if sliding else None
    if position is not None:
        inputs.append(position)
    cross = []
    if seq2seq:
        cross = [TensorSpec(f"cross_key_values.{i}.{part}", "float32", ("batch", cache.kv_heads, "src_len",
                                                                            cache.head_dim))
                 for i in range(cache.layers) for part in ("key", "value")]
        inputs += cross
    outputs = (TensorSpec("y", "float32", ("batch", "seq", config.output_dim)),)
    fixed = {config.input_dim, config.output_dim, cache.kv_heads, cache.head_dim, config.embed_dim}
    dims = ["batch", "seq", "past"] + (["src_len"] if seq2seq else [])
    example = distinct_sizes(dims, avoid=fixed)
    reach = cache.max_context or 17
    parity = [{"batch": 1, "seq": 1, "past": 0}, {"batch": 2, "seq": 1, "past": reach},
              {"batch": 4, "seq": 11, "past": 0}, {"batch": 2, "seq": 6, "past": max(reach - 2, 2)}]
    for k, p in enumerate(parity):
        if seq2seq:
            p["src_len"] = (1, 9, 4, 13)[k]

    def make_inputs(sizes: Mapping[str, int], g: torch.Generator) -> Tuple[Tensor, ...]:
        b, n, p = sizes["batch"], sizes["seq"], sizes["past"]
        out = [torch.randn(b, n, config.input_dim, generator=g)]
        if sliding:
            out.append(torch.tensor(p + 3, dtype=torch.int64))  # any absolute position at or after the past
        if seq2seq:
            out += [torch.randn(b, cache.kv_heads, sizes["src_len"], cache.head_dim, generator=g) for _ in cross]
        out += [torch.randn(shape, generator=g) for shape in cache.shapes(b, p)]
        return tuple(out)

    if seq2seq:
        enc = TensorSpec("source", "float32", ("batch", "src_len", config.input_dim))
        encoder = ExportSpec(
            name="encoder_decoder", graph="encoder", inputs=(enc,),
            outputs=(TensorSpec("encoder_output", "float32", ("batch", "src_len", config.embed_dim)),
                     *[TensorSpec(t.name, t.dtype, t.shape) for t in cross]),
            example_sizes=distinct_sizes(["batch", "src_len"], avoid=fixed),
            parity_sizes=({"batch": 1, "src_len": 1}, {"batch": 3, "src_len": 9}), exporter="legacy")
        task = Task("seq2seq", step_tensors([step_in]), step_tensors(outputs), horizon=1,
                    position="start_pos" if sliding else None,
                    encoder=EncoderTask("encoder", (StepTensor("source", 1),), tuple((t.name, t.name) for t in cross)),
                    client=_client(config))
    else:
        encoder = None
        task = Task("sequence", step_tensors([step_in]), step_tensors(outputs), horizon=1,
                    position="start_pos" if sliding else None, client=_client(config))
    spec = ExportSpec(
        name=config.kind,
        inputs=tuple(inputs),
        outputs=outputs,
        cache=cache,
        example_sizes=example,
        parity_sizes=tuple(parity),
        dim_min={"past": 0},
        stepwise=StepwiseCheck("seq", STEPWISE, position="start_pos" if sliding else None),
        make_inputs=make_inputs,
        exporter="legacy",
        task=task,
    )
    return spec, encoder


def _client(config: Seed002ExportConfig) -> Dict[str, Any]:
    return {
        "model": "tsattn.models." + ("AutoregressiveTransformerModel" if config.kind == "autoregressive"
                                     else "EncoderDecoder"),
        "prediction": "y at step t is the model's output at t (trained as the next step's value, seed 002)",
        "context": "expanding: every step sees every earlier one; the cache grows" if config.expanding_context else
                   f"sliding: a query sees itself and {config.max_seq_len - 1} earlier positions; the cache slides",
        "normalisation": "none in the graph",
    }


def build_seed002_export(kind: str, options: Mapping[str, Any], checkpoint: Optional[Path],
                         seed: Optional[int]) -> Exportable:
    """``kind``: ``autoregressive`` or ``encoder_decoder``; config = defaults < the checkpoint's < ``options``."""
    from tsattn.models import DecodeStepGraph, DecoderStepGraph, EncoderGraph

    fields: Dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        state, ckpt_config = split_checkpoint(load_checkpoint(checkpoint), checkpoint)
        fields.update(ckpt_config or {})
    fields.update(options)
    config = Seed002ExportConfig.from_options(kind, fields)
    seed = 0 if seed is None else int(seed)
    torch.manual_seed(seed)
    model = config.build().eval()
    if state is not None:
        load_weights(model, state, checkpoint)
    spec, encoder_spec = seed002_specs(model, config)
    if kind == "autoregressive":
        module, extra = DecodeStepGraph(model, config.expanding_context), ()
    else:
        module, extra = DecoderStepGraph(model, config.expanding_context), ((EncoderGraph(model).eval(), encoder_spec),)
    source = {
        "kind": "model",
        "model": kind,
        "config": config.to_dict(),
        "seed": None if checkpoint is not None else seed,
        "weights": "checkpoint" if checkpoint is not None else f"random (seed {seed}): not a trained model",
        "checkpoint": None if checkpoint is None else {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
    }
    return Exportable(module.eval(), spec, source, extra)

