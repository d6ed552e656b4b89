"""Multi-Resolution Wave Pyramid (MRWP): process bands of harmonics with their own transformers, then fuse.

Self-contained template: torch, the standard library and the sibling templates ``wave_pcca`` / ``wcmha`` only.

A wave representation is ``(B, S, 3H)`` = [frequencies | amplitudes | phases] of H harmonics (harmonic 0 the
lowest). ``band_boundaries`` (fractions, strictly increasing in (0, 1)) cut the harmonics into contiguous bands

    cuts = [0, round(b_1 H), ..., round(b_n H), H],   band i = harmonics cuts[i] .. cuts[i+1] - 1

which partition them exactly (no overlap, no gap; an empty band is an error). Band i is itself a wave
representation (B, S, 3 h_i) of its harmonics, and is processed by

    z_i = RMSNorm(blocks_i(in_i(band_i)))        in_i: 3 h_i -> d_i, band_num_layers[i] parallel blocks of width d_i
                                                 (RMSNorm -> rotary GQA attention + SwiGLU -> residual)

with d_i the smallest multiple of n_heads_q (of 2 n_heads_q with RoPE) that holds 3 h_i. Cross-band attention (if
enabled) lets the bands of each position attend to each other (the band axis, not time: causality is kept).
Adaptive fusion maps every band back to its own channels and adds the result to the input:

    w   = num_bands * softmax(gate(x))           (B, S, num_bands); gate starts at 0, so w starts at 1
    out = x + merge_i(w_i * out_i(z_i))          out_i: d_i -> 3 h_i, merged back into band i's channels

so the output keeps the input's shape and residual stream, and can be inserted between any two layers.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .wave_pcca import RotaryAttention


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class SwiGLU(nn.Module):
    """w2(dropout(silu(w1 x) * w3 x)), no biases."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(F.silu(self.w1(x)) * self.w3(x)))


class BandBlock(nn.Module):
    """Parallel block: x + dropout(attn(norm x) + ffn(norm x)), attention ``RotaryAttention``."""

    def __init__(self, d_model: int, n_heads_q: int, n_heads_kv: int, d_ff: int, dropout: float, use_rotary: bool) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.attn = RotaryAttention(d_model, n_heads_q, n_kv_heads=n_heads_kv, use_rotary=use_rotary, dropout=dropout)
        self.ffn = SwiGLU(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None) -> Tensor:
        h = self.norm(x)
        return x + self.dropout(self.attn(h, causal, attention_mask) + self.ffn(h))


class BandProcessor(nn.Module):
    """in_proj (3 h -> d) -> ``num_layers`` BandBlocks -> RMSNorm. forward(band, causal, mask) -> (B, S, d)."""

    def __init__(self, band_width: int, d_model: int, num_layers: int, n_heads_q: int, n_heads_kv: int,
                 d_ff_multi: int, dropout: float, use_rotary: bool) -> None:
        super().__init__()
        self.in_proj = nn.Linear(band_width, d_model)
        self.blocks = nn.ModuleList(
            BandBlock(d_model, n_heads_q, n_heads_kv, d_model * d_ff_multi, dropout, use_rotary) for _ in range(num_layers)
        )
        self.norm = RMSNorm(d_model)

    def forward(self, band: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None) -> Tensor:
        z = self.in_proj(band)
        for block in self.blocks:
            z = block(z, causal, attention_mask)
        return self.norm(z)


class CrossBandAttention(nn.Module):
    """At each position, every band attends to all bands. forward(list of (B, S, d_i)) -> list of the same shapes.

    Band i enters through Linear(d_i -> width) and its result comes back through Linear(width -> d_i), added to z_i.
    """

    def __init__(self, band_dims: Sequence[int], width: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = width // n_heads
        self.dropout = dropout
        self.q_in = nn.ModuleList(nn.Linear(d, width, bias=False) for d in band_dims)
        self.k_in = nn.ModuleList(nn.Linear(d, width, bias=False) for d in band_dims)
        self.v_in = nn.ModuleList(nn.Linear(d, width, bias=False) for d in band_dims)
        self.out = nn.ModuleList(nn.Linear(width, d, bias=False) for d in band_dims)

    def forward(self, z: List[Tensor]) -> List[Tensor]:
        b, s, _ = z[0].shape
        n = len(z)

        def heads(projs: nn.ModuleList) -> Tensor:  # (B * S, heads, N, head_dim)
            t = torch.stack([p(zi) for p, zi in zip(projs, z)], dim=2)  # (B, S, N, width)
            return t.reshape(b * s, n, self.n_heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q_in), heads(self.k_in), heads(self.v_in),
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, s, n, self.n_heads * self.head_dim)
        return [zi + out(y[:, :, i]) for i, (zi, out) in enumerate(zip(z, self.out))]


def band_ranges(num_harmonics: int, band_boundaries: Sequence[float]) -> List[Tuple[int, int]]:
    """The (start, end) harmonic ranges of the bands; raises ValueError naming band_boundaries if one is empty."""
    bounds = [float(b) for b in band_boundaries]
    if any(not 0.0 < b < 1.0 for b in bounds) or any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])):
        raise ValueError(f"band_boundaries must be strictly increasing fractions in (0, 1); got {list(band_boundaries)!r}")
    cuts = [0] + [int(round(b * num_harmonics)) for b in bounds] + [num_harmonics]
    if any(c2 <= c1 for c1, c2 in zip(cuts, cuts[1:])):
        raise ValueError(f"band_boundaries {list(band_boundaries)!r} give an empty band with num_harmonics="
                         f"{num_harmonics} (harmonic cuts {cuts}); use fewer or wider bands")
    return list(zip(cuts[:-1], cuts[1:]))


class MultiResolutionWavePyramid(nn.Module):
    """Bands of harmonics processed at their own depth, optionally cross-attended, fused back (module docstring).

    Args:
        num_harmonics: H (input width 3H). band_boundaries: fractions cutting the harmonics into bands.
        band_num_layers: blocks per band (>= 0 each; default 2 per band); one entry per band.
        n_heads_q, n_heads_kv: heads of the band attention (n_heads_kv default n_heads_q, must divide it).
        d_ff_multi: SwiGLU width multiplier. dropout: in the blocks and the cross-band attention.
        use_cross_band_attn: let the bands of a position attend to each other.
        use_yarn: RoPE in the band attention. use_flash: accepted for Wave-Transformer's signature; attention
            always runs through torch's ``scaled_dot_product_attention``.

    ``forward(wave_repr, causal=True, attention_mask=None) -> (B, S, 3H)``; attention_mask (B, S), 1 = keep.
    ``split(x) -> list of (B, S, 3 h_i)`` and ``merge(list) -> (B, S, 3H)`` are exact inverses; ``band_ranges``
    lists the bands' (start, end) harmonics.

    Raises ``ValueError`` naming the argument for inconsistent sizes or boundaries.
    """

    def __init__(
        self,
        num_harmonics: int,
        band_boundaries: Sequence[float] = (0.2, 0.6),
        band_num_layers: Optional[Sequence[int]] = None,
        n_heads_q: int = 8,
        n_heads_kv: Optional[int] = None,
        d_ff_multi: int = 4,
        dropout: float = 0.0,
        use_cross_band_attn: bool = True,
        use_yarn: bool = True,
        use_flash: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_harmonics, bool) or int(num_harmonics) != num_harmonics or num_harmonics < 1:
            raise ValueError(f"num_harmonics must be a positive integer; got {num_harmonics!r}")
        h = int(num_harmonics)
        ranges = band_ranges(h, band_boundaries)
        n = len(ranges)
        layers = [2] * n if band_num_layers is None else list(band_num_layers)
        if len(layers) != n or any(isinstance(x, bool) or int(x) != x or x < 0 for x in layers):
            raise ValueError(f"band_num_layers must be {n} non-negative integers (one per band of "
                             f"band_boundaries={list(band_boundaries)!r}); got {band_num_layers!r}")
        if isinstance(n_heads_q, bool) or int(n_heads_q) != n_heads_q or n_heads_q < 1:
            raise ValueError(f"n_heads_q must be a positive integer; got {n_heads_q!r}")
        n_heads_kv = n_heads_q if n_heads_kv is None else n_heads_kv
        if isinstance(n_heads_kv, bool) or int(n_heads_kv) != n_heads_kv or n_heads_kv < 1 or n_heads_q % n_heads_kv:
            raise ValueError(f"n_heads_kv ({n_heads_kv!r}) must be a positive integer dividing n_heads_q ({n_heads_q})")
        if isinstance(d_ff_multi, bool) or int(d_ff_multi) != d_ff_multi or d_ff_multi < 1:
            raise ValueError(f"d_ff_multi must be a positive integer; got {d_ff_multi!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")

        self.num_harmonics = h
        self.band_ranges = ranges
        self.band_boundaries = [float(b) for b in band_boundaries]
        self.band_num_layers = [int(x) for x in layers]
        self.use_cross_band_attn = bool(use_cross_band_attn) and n > 1
        self.use_flash = bool(use_flash)
        unit = n_heads_q * (2 if use_yarn else 1)
        self.band_dims = [unit * math.ceil(3 * (e - s) / unit) for s, e in ranges]
        self.processors = nn.ModuleList(
            BandProcessor(3 * (e - s), d, nl, n_heads_q, n_heads_kv, d_ff_multi, dropout, use_yarn)
            for (s, e), d, nl in zip(ranges, self.band_dims, self.band_num_layers)
        )
        self.cross_band = (CrossBandAttention(self.band_dims, max(self.band_dims), n_heads_q, dropout)
                           if self.use_cross_band_attn else None)
        self.gate = nn.Linear(3 * h, n)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.out_projs = nn.ModuleList(nn.Linear(d, 3 * (e - s)) for (s, e), d in zip(ranges, self.band_dims))

    def split(self, x: Tensor) -> List[Tensor]:
        """(B, S, 3H) -> [(B, S, 3 h_i)], each band laid out like a wave representation of its harmonics."""
        b, s, _ = x.shape
        x = x.reshape(b, s, 3, self.num_harmonics)
        return [x[..., lo:hi].reshape(b, s, 3 * (hi - lo)) for lo, hi in self.band_ranges]

    def merge(self, bands: List[Tensor]) -> Tensor:
        """The inverse of ``split``."""
        b, s, _ = bands[0].shape
        parts = [band.reshape(b, s, 3, hi - lo) for band, (lo, hi) in zip(bands, self.band_ranges)]
        return torch.cat(parts, dim=-1).reshape(b, s, 3 * self.num_harmonics)

    def forward(self, wave_repr: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None) -> Tensor:
        if wave_repr.shape[-1] != 3 * self.num_harmonics:
            raise ValueError(f"wave_repr's last dimension must be 3 * num_harmonics = {3 * self.num_harmonics}; "
                             f"got {wave_repr.shape[-1]}")
        z = [proc(band, causal, attention_mask) for proc, band in zip(self.processors, self.split(wave_repr))]
        if self.cross_band is not None:
            z = self.cross_band(z)
        w = len(z) * torch.softmax(self.gate(wave_repr), dim=-1)  # (B, S, num_bands)
        updates = [out(zi) * w[..., i : i + 1] for i, (out, zi) in enumerate(zip(self.out_projs, z))]
        return wave_repr + self.merge(updates)

    def extra_repr(self) -> str:
        return (f"num_harmonics={self.num_harmonics}, band_ranges={self.band_ranges}, "
                f"band_num_layers={self.band_num_layers}, band_dims={self.band_dims}")
