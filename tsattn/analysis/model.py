"""Seed 004's forecasting transformer, with the attention chosen: ``standard`` or ``wcmha``.

    x (B, L) --per-window standardisation--> Linear(1, d_model) + sinusoidal positions --> dropout
      --> n_layers x [post-norm encoder layer: x = norm1(x + drop(attn(x))); x = norm2(x + drop(ff(x)))]
      --> flatten (B, L * d_model) --> Linear(L * d_model, horizon) --> undo the standardisation --> (B, horizon)

Seed 004's fixed hyper-parameters are the defaults of ``ModelConfig``: d_model 64, 4 heads, 2 layers,
feed-forward 256 (ReLU), dropout 0.1, input 100, horizon 20; the loss is the MSE. Dropout 0.1 acts where
``nn.TransformerEncoderLayer`` puts it (embedding, both residual branches, inside the feed-forward) except on the
attention weights (``attention_dropout`` 0 by default): on CPU, attention dropout forces SDPA's unfused path,
which measured 3.4x the cost of the fused attention (forward + backward), about 45% of a training step, and the
default run has to fit in 10 minutes on 2 cores. Both attentions are ``tsattn.modules`` classes with identical
parameters, so the two models start from the same weights for a given seed:

    standard   GroupedQueryAttention(d_model, n_heads, decay="none"): plain softmax attention, causal
    wcmha      WCMHA(d_model, n_heads, alpha=alpha): the same plus Powerformer's bias -alpha * log(dt + 1)

Why ``standard`` is causal (seed 004 used a bidirectional ``nn.TransformerEncoder``): WCMHA is causal by
definition, so a bidirectional baseline would differ in two ways at once (mask and decay) and the comparison
would not isolate the decay. A lag is also only defined one way under a causal mask, so the fitted exponent of
mean weight against lag means the same thing for both models; with a bidirectional map, half of every row's
mass would sit at negative lags. The model still sees the whole window: the flattened head reads every
position, and the last position attends to all of them.

Per-window standardisation (RevIN without affine parameters) makes the non-stationary series (random walk,
trends, jumps) learnable with one model; the loss and the reported MSE are in the units the caller gives
(``tsattn.analysis.experiment`` standardises each series with its training split's mean and std).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List

import torch
from torch import Tensor, nn

from tsattn.modules import WCMHA, GroupedQueryAttention

ATTENTIONS = ("standard", "wcmha")


@dataclass(frozen=True)
class ModelConfig:
    """Seed 004's model; ``alpha`` is WCMHA's power-law exponent (Powerformer's default 1.0);
    ``attention_dropout`` is the dropout on the attention weights (see the module docstring)."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    input_len: int = 100
    horizon: int = 20
    alpha: float = 1.0
    attention_dropout: float = 0.0

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def make_attention(attention: str, config: ModelConfig) -> GroupedQueryAttention:
    """The attention module named ``attention`` (one of ``ATTENTIONS``); both are causal."""
    if attention == "standard":
        return GroupedQueryAttention(config.d_model, config.n_heads, decay="none", dropout=config.attention_dropout)
    if attention == "wcmha":
        return WCMHA(config.d_model, config.n_heads, alpha=config.alpha, dropout=config.attention_dropout)
    raise ValueError(f"attention must be one of {ATTENTIONS}; got {attention!r}")


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """The Transformer's fixed positional encoding, (length, d_model)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


class EncoderLayer(nn.Module):
    """Post-norm encoder layer (``nn.TransformerEncoderLayer``'s default order) around a tsattn attention."""

    def __init__(self, attn: GroupedQueryAttention, d_ff: int, dropout: float) -> None:
        super().__init__()
        d_model = attn.d_model
        self.attn = attn
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d_model) -> (B, L, d_model)
        x = self.norm1(x + self.drop1(self.attn(x)[0]))
        return self.norm2(x + self.drop2(self.ff(x)))


class Forecaster(nn.Module):
    """``forward(x)``: x (B, input_len) -> forecast (B, horizon). ``attention_maps(x)``: the softmax weights of
    every layer, a list of (B, n_heads, input_len, input_len) tensors, as the eval-mode forward uses them."""

    def __init__(self, attention: str, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}; got {attention!r}")
        self.attention = attention
        self.config = config
        c = config
        self.embed = nn.Linear(1, c.d_model)
        self.register_buffer("positions", sinusoidal_positions(c.input_len, c.d_model), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(make_attention(attention, c), c.d_ff, c.dropout) for _ in range(c.n_layers)
        )
        self.head = nn.Linear(c.input_len * c.d_model, c.horizon)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.config.input_len:
            raise ValueError(f"x must have shape (batch, {self.config.input_len}); got {tuple(x.shape)}")

    def _normalise(self, x: Tensor):
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, unbiased=False) + 1e-5
        return (x - mean) / std, mean, std

    def _embed(self, z: Tensor) -> Tensor:  # (B, L) -> (B, L, d_model)
        return self.drop(self.embed(z.unsqueeze(-1)) + self.positions)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        z, mean, std = self._normalise(x)
        h = self._embed(z)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.flatten(1)) * std + mean

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> List[Tensor]:
        """Each layer's dense softmax weights (B, H, L, L) via ``attention_weights``, in eval mode."""
        self._check(x)
        was_training = self.training
        self.eval()
        try:
            h = self._embed(self._normalise(x)[0])
            maps = []
            for layer in self.layers:
                maps.append(layer.attn.attention_weights(h))
                h = layer(h)
            return maps
        finally:
            self.train(was_training)
