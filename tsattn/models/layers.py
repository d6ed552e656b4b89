"""Positional encoding and the post-norm encoder / decoder layers of seed 002's models."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .attention import CrossAttention, KVCache, get_attention, kv_heads_of
from .configs import FFNConfig
from .moe import FFN, MOE


def sinusoidal_encoding(positions: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal position embeddings (Vaswani et al.): positions (L,) -> (L, dim) of ``dtype``.

    ``PE[p, 2i] = sin(p / 10000^(2i/dim))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/dim))``. Computed, not tabulated, so
    any position works (the sliding cache keeps absolute positions past ``max_seq_len``).
    """
    dtype = torch.promote_types(dtype, torch.float32)
    half = (dim + 1) // 2
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=dtype) * (-2.0 * math.log(10000.0) / dim))
    angles = positions.to(dtype).unsqueeze(1) * freq.unsqueeze(0)  # (L, half)
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(-1, 2 * half)[:, :dim]


def add_positions(h: Tensor, start_pos: Union[int, Tensor]) -> Tensor:
    """h (B, L, E) plus the sinusoidal embeddings of positions start_pos .. start_pos + L - 1."""
    positions = torch.arange(h.shape[1], device=h.device) + start_pos
    return h + sinusoidal_encoding(positions, h.shape[2], h.dtype).to(h.dtype)


def resolve_ffn_config(embed_dim: int, ffn_latent_dim: int, ffn_config: Optional[FFNConfig]) -> FFNConfig:
    """The layer's FFNConfig: ``ffn_config`` checked against the model's sizes, or a dense one.

    Raises ``ValueError`` naming ``ffn_config.embed_dim`` / ``ffn_config.latent_dim`` when they disagree with the
    model's ``embed_dim`` / ``ffn_latent_dim``.
    """
    if ffn_config is None:
        return FFNConfig(embed_dim, ffn_latent_dim)
    if not isinstance(ffn_config, FFNConfig):
        raise ValueError(f"ffn_config must be an FFNConfig or None; got {type(ffn_config).__name__}")
    if ffn_config.embed_dim != embed_dim:
        raise ValueError(f"ffn_config.embed_dim ({ffn_config.embed_dim}) must equal embed_dim ({embed_dim})")
    if ffn_config.latent_dim != ffn_latent_dim:
        raise ValueError(f"ffn_config.latent_dim ({ffn_config.latent_dim}) must equal ffn_latent_dim "
                         f"({ffn_latent_dim})")
    return ffn_config


def build_ffn(config: FFNConfig) -> nn.Module:
    """``MOE`` when ``config.use_moe``, else the dense ``FFN``."""
    if config.use_moe:
        return MOE(config.embed_dim, config.latent_dim, config.num_experts, config.capacity, config.alpha,
                   config.topk)
    return FFN(config.embed_dim, config.latent_dim)


def _feed_forward(ffn: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    if isinstance(ffn, MOE):
        return ffn(x)
    return ffn(x), x.new_zeros(())


class TransformerEncoderLayer(nn.Module):
    """Post-norm layer: ``x = LN(x + attention(x)); x = LN(x + ffn(x))``.

    Args: embed_dim, num_heads, ffn_latent_dim, attention_type ("mha", "mqa", "gqa"), num_groups (GQA),
    apply_causal_mask, ffn_config (``FFNConfig``; None: a dense FFN of ``ffn_latent_dim``), and the WCMHA decay
    options of ``SelfAttention`` (``decay=..., alpha=...``).

    ``forward(x, past=None, window=None) -> (y, present, aux_loss)``: x (B, L, E) after the positions of
    ``past`` ((key, value), each (B, kv_heads, P, head_dim)); ``window``: earlier positions a query sees (None:
    all). aux_loss: the MoE load-balancing loss (0 without MoE).
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_latent_dim: int, attention_type: str = "mha",
                 num_groups: Optional[int] = None, apply_causal_mask: bool = False,
                 ffn_config: Optional[FFNConfig] = None, **decay) -> None:
        super().__init__()
        self.attention = get_attention(attention_type, embed_dim, num_heads, num_groups, apply_causal_mask, **decay)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = build_ffn(resolve_ffn_config(embed_dim, ffn_latent_dim, ffn_config))
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, past: Optional[KVCache] = None,
                window: Optional[int] = None) -> Tuple[Tensor, KVCache, Tensor]:
        a, present = self.attention.step(x, past, window)
        x = self.norm1(x + a)
        f, aux = _feed_forward(self.ffn, x)
        return self.norm2(x + f), present, aux


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: causal self-attention, cross-attention to the encoder, FFN, each + residual + LN.

    Arguments as ``TransformerEncoderLayer`` (``apply_causal_mask`` defaults to True); the cross-attention has the
    same number of key/value heads as the self-attention.

    ``forward(x, cross_kv, past=None, window=None) -> (y, present, aux_loss)``: ``cross_kv`` is
    ``cross_attention.key_values(encoder_output)``, computed once per encoder output.
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_latent_dim: int, attention_type: str = "mha",
                 num_groups: Optional[int] = None, apply_causal_mask: bool = True,
                 ffn_config: Optional[FFNConfig] = None, **decay) -> None:
        super().__init__()
        self.self_attention = get_attention(attention_type, embed_dim, num_heads, num_groups, apply_causal_mask,
                                            **decay)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attention = CrossAttention(embed_dim, num_heads, kv_heads_of(attention_type, num_heads, num_groups))
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = build_ffn(resolve_ffn_config(embed_dim, ffn_latent_dim, ffn_config))
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, cross_kv: KVCache, past: Optional[KVCache] = None,
                window: Optional[int] = None) -> Tuple[Tensor, KVCache, Tensor]:
        a, present = self.self_attention.step(x, past, window)
        x = self.norm1(x + a)
        x = self.norm2(x + self.cross_attention(x, cross_kv))
        f, aux = _feed_forward(self.ffn, x)
        return self.norm3(x + f), present, aux
