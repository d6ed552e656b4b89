"""Flat-tensor views of the models' stateless forms, ready for ``torch.jit.trace`` and ``torch.onnx.export``.

Each wrapper is an ``nn.Module`` whose ``forward`` takes and returns tensors only, in the order of its ``spec``
(input names, output names, dynamic axes). Cache tensors follow the common convention (issue 7):

    past_key_values.{i}.key / .value   inputs   (batch, kv_heads, past_length, head_dim)
    present.{i}.key / .value           outputs  (batch, kv_heads, present_length, head_dim)
    cross_key_values.{i}.key / .value  encoder-decoder cross-attention keys/values, (batch, kv_heads, src_len,
                                       head_dim): outputs of the encoder graph, inputs of the decode-step graph
                                       (a name chosen here: the convention covers self-attention caches only)
    start_pos                          int64 scalar, sliding graphs only: absolute position of the step's first
                                       input (an expanding graph takes it from the past's length, as
                                       tsattn.export's CacheSpec(sliding=False) expects)

Dynamic axes: batch, seq, src_len, and past / present for the cache lengths (CacheSpec's defaults). A decode step
with an empty past (length 0) is the prefill. No hidden state: the caller carries the caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from torch import Tensor, nn

from .transformer import AutoregressiveTransformerModel, EncoderDecoder, TransformerModel


@dataclass(frozen=True)
class GraphSpec:
    """Names and dynamic axes of a wrapper's flat inputs and outputs (``torch.onnx.export`` keywords)."""

    input_names: Tuple[str, ...]
    output_names: Tuple[str, ...]
    dynamic_axes: Dict[str, Dict[int, str]] = field(default_factory=dict)


def cache_names(prefix: str, layers: int) -> List[str]:
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` for every layer, in that order."""
    return [f"{prefix}.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def _pairs(flat: Tuple[Tensor, ...]) -> Tuple[Tuple[Tensor, Tensor], ...]:
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def _flat(pairs) -> Tuple[Tensor, ...]:
    return tuple(t for pair in pairs for t in pair)


class ForwardGraph(nn.Module):
    """The uncached forward of any of the three models (the stateful cache is never used).

    TransformerModel: ``forward(x) -> y`` (B, output_dim); AutoregressiveTransformerModel: ``forward(x) -> y``
    (B, L, output_dim); EncoderDecoder: ``forward(source, target) -> y`` (B, Lt, output_dim).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, (TransformerModel, AutoregressiveTransformerModel, EncoderDecoder)):
            raise ValueError(f"model must be one of seed 002's models; got {type(model).__name__}")
        self.model = model
        seq = {0: "batch", 1: "seq"}
        if isinstance(model, EncoderDecoder):
            self.spec = GraphSpec(("source", "target"), ("y",),
                                  {"source": {0: "batch", 1: "src_len"}, "target": seq, "y": seq})
        elif isinstance(model, TransformerModel):
            self.spec = GraphSpec(("x",), ("y",), {"x": seq, "y": {0: "batch"}})
        else:
            self.spec = GraphSpec(("x",), ("y",), {"x": seq, "y": seq})

    def forward(self, *inputs: Tensor) -> Tensor:
        m = self.model
        if isinstance(m, EncoderDecoder):
            source, target = inputs
            return m.decode_step(target, m.cross_key_values(m.encode(source)))[0]
        if isinstance(m, TransformerModel):
            return m.predict(inputs[0])
        return m.step(inputs[0])[0]


def _split_start(expanding_context: bool, rest: Tuple[Tensor, ...]):
    return (None, rest) if expanding_context else (rest[0], rest[1:])


class DecodeStepGraph(nn.Module):
    """AutoregressiveTransformerModel's ``step``: ``forward(x, [start_pos,] *past) -> (y, *present)``.

    ``past``: ``past_key_values.{i}.key/.value`` for every layer. ``expanding_context=False`` gives the sliding
    cache (presents trimmed to max_seq_len - 1 positions) and the ``start_pos`` input.
    """

    def __init__(self, model: AutoregressiveTransformerModel, expanding_context: bool = True) -> None:
        super().__init__()
        if not isinstance(model, AutoregressiveTransformerModel):
            raise ValueError(f"model must be an AutoregressiveTransformerModel; got {type(model).__name__}")
        self.model, self.expanding_context = model, expanding_context
        past, present = cache_names("past_key_values", len(model.layers)), cache_names("present", len(model.layers))
        axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
        axes.update({n: {0: "batch", 2: "past"} for n in past})
        axes.update({n: {0: "batch", 2: "present"} for n in present})
        start = () if expanding_context else ("start_pos",)
        self.spec = GraphSpec(("x", *start, *past), ("y", *present), axes)

    def forward(self, x: Tensor, *rest: Tensor) -> Tuple[Tensor, ...]:
        start_pos, past = _split_start(self.expanding_context, rest)
        y, present = self.model.step(x, _pairs(past), start_pos, self.expanding_context)
        return (y, *_flat(present))


class EncoderGraph(nn.Module):
    """EncoderDecoder's encoder and cross-attention projections: ``forward(source) -> (encoder_output, *cross)``.

    ``cross``: ``cross_key_values.{i}.key/.value`` for every decoder layer, computed once per source.
    """

    def __init__(self, model: EncoderDecoder) -> None:
        super().__init__()
        if not isinstance(model, EncoderDecoder):
            raise ValueError(f"model must be an EncoderDecoder; got {type(model).__name__}")
        self.model = model
        cross = cache_names("cross_key_values", len(model.decoder_layers))
        axes = {"source": {0: "batch", 1: "src_len"}, "encoder_output": {0: "batch", 1: "src_len"}}
        axes.update({n: {0: "batch", 2: "src_len"} for n in cross})
        self.spec = GraphSpec(("source",), ("encoder_output", *cross), axes)

    def forward(self, source: Tensor) -> Tuple[Tensor, ...]:
        memory = self.model.encode(source)
        return (memory, *_flat(self.model.cross_key_values(memory)))


class DecoderStepGraph(nn.Module):
    """EncoderDecoder's ``decode_step``: ``forward(target, [start_pos,] *cross, *past) -> (y, *present)``
    (``start_pos`` with ``expanding_context=False`` only)."""

    def __init__(self, model: EncoderDecoder, expanding_context: bool = True) -> None:
        super().__init__()
        if not isinstance(model, EncoderDecoder):
            raise ValueError(f"model must be an EncoderDecoder; got {type(model).__name__}")
        self.model, self.expanding_context = model, expanding_context
        n = len(model.decoder_layers)
        cross, past, present = (cache_names(p, n) for p in ("cross_key_values", "past_key_values", "present"))
        axes = {"target": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
        axes.update({c: {0: "batch", 2: "src_len"} for c in cross})
        axes.update({p: {0: "batch", 2: "past"} for p in past})
        axes.update({p: {0: "batch", 2: "present"} for p in present})
        start = () if expanding_context else ("start_pos",)
        self.spec = GraphSpec(("target", *start, *cross, *past), ("y", *present), axes)
        self._layers = n

    def forward(self, target: Tensor, *rest: Tensor) -> Tuple[Tensor, ...]:
        start_pos, caches = _split_start(self.expanding_context, rest)
        cross, past = _pairs(caches[: 2 * self._layers]), _pairs(caches[2 * self._layers:])
        y, present = self.model.decode_step(target, cross, past, start_pos, self.expanding_context)
        return (y, *_flat(present))
