"""Phase-Coherent Attention (PCCA) for wave representations, and the rotary grouped-query attention it extends.

Self-contained template: torch, the standard library and the sibling template ``wcmha`` only.

``RotaryAttention`` is ``wcmha.GroupedQueryAttention`` (MHA / MQA / GQA, decay bias, KV cache, ``max_context``)
in the calling convention of Wave-Transformer's blocks, ``attn(x, causal, attention_mask)``, with an optional rotary
embedding (RoPE, consecutive pairs of channels rotated, base 10000; Wave-Transformer's YaRN at scale 1) and a
padding mask. ``PhaseCoherentAttention`` adds a phase-coherence term to its scores:

    scores[b, h, i, j] = alpha * q_i . k_j / sqrt(head_dim) + beta * C[b, i, j] / phase_temp + bias_h(i - j)

where ``bias`` is the causal mask plus the optional WCMHA decay, and C is read from the wave channels of the input
``x`` (B, S, 3H) = [frequencies | amplitudes | phases] of H harmonics:

    cosine   C = mean_h cos(phi_ih - phi_jh)                                  in [-1, 1]
    complex  C = |sum_h a_ih a_jh exp(i (phi_ih - phi_jh))| / (|a_i| |a_j|)   in [0, 1] (amplitude-weighted)

Both are computed from (S, 2H) feature matrices with matmuls, never an (S, S, H) tensor. With ``beta = 0`` and
``alpha = 1`` PCCA is exactly the standard attention of ``RotaryAttention``.

Positions: keys are cached before rotation and rotated on every call with positions 0 .. Lk - 1, the queries
with Lk - Lq .. Lk - 1. RoPE only sees differences of positions, so this equals absolute positions, and stays
exact when ``max_context`` slides the cache.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .wcmha import GroupedQueryAttention, decayed_attention, dense_bias, dense_weights, is_exporting

COHERENCE_MODES = ("cosine", "complex")


class RotaryEmbedding(nn.Module):
    """RoPE on consecutive channel pairs: (x_2i, x_2i+1) rotated by the angle pos * base ** (-2i / head_dim).

    ``forward(x, positions)``: x (..., L, head_dim), positions (L,) -> same shape as x.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"the rotary embedding needs an even head_dim (d_model / n_heads); got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # angles in at least float32
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=dtype, device=x.device) / self.head_dim)
        angles = positions.to(dtype)[:, None] * inv_freq[None, :]  # (L, D/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class RotaryAttention(GroupedQueryAttention):
    """``GroupedQueryAttention`` with RoPE, a per-call ``causal`` flag and a padding mask.

    Args (beyond ``GroupedQueryAttention``'s, whose ``decay``/``alpha``/... add the WCMHA decay; default none):
        use_rotary: apply RoPE to queries and keys. rotary_base: its base.
    Projections have no bias by default (as in Wave-Transformer).

    ``forward(x, causal=True, attention_mask=None, past=None, use_cache=False)``
        x: (B, L, d_model). attention_mask: (B, P + L), 1 for keys to attend, 0 for padding. past: (key, value),
        each (B, n_kv_heads, P, head_dim), keys unrotated. Returns y (B, L, d_model), or ``(y, present)`` when
        use_cache, present trimmed to ``window`` like ``GroupedQueryAttention``'s. ``causal=False`` attends both
        ways (the decay, if any, applied to |distance|; max_context ignored).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: Optional[int] = None, use_rotary: bool = True,
                 rotary_base: float = 10000.0, bias: bool = False, **kwargs) -> None:
        kwargs.pop("causal", None)  # causal is a forward argument here; the decay bias is built causal
        super().__init__(d_model, n_heads, n_kv_heads=n_kv_heads, bias=bias, causal=True, **kwargs)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if use_rotary else None

    def _qkv(self, x: Tensor, past) -> Tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._project(x, None if past is None else (past[0], past[1]))  # k, v: (B, Hkv, Lk, D)
        return q, k, v

    def _rotate(self, q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
        if self.rotary is None:
            return q, k
        lq, lk = q.shape[2], k.shape[2]
        pos = torch.arange(lk, device=q.device)
        return self.rotary(q, pos[lk - lq :]), self.rotary(k, pos)

    def _mask(self, lq: int, lk: int, causal: bool, attention_mask: Optional[Tensor], dtype: torch.dtype,
              device: torch.device) -> Tensor:
        """Additive mask (B|1, H|1, Lq, Lk): causal / decay bias, -inf on padded keys."""
        if causal:
            mask = dense_bias(self.decay, lq, lk, self.max_context, dtype, device)  # (1, H|1, Lq, Lk)
        else:
            q_pos = torch.arange(lq, device=device) + (lk - lq)
            dt = (q_pos[:, None] - torch.arange(lk, device=device)[None, :]).abs()
            mask = self.decay(dt.to(torch.promote_types(dtype, torch.float32))).to(dtype).unsqueeze(0)
        if attention_mask is not None:
            keep = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Lk)
            mask = mask.masked_fill(~keep, float("-inf"))
        return mask

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        groups = self.n_heads // self.n_kv_heads
        exporting = is_exporting()
        if exporting and groups != 1:  # exporters see plain attention: repeat the kv heads explicitly
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=groups != 1 and not exporting,
        )

    def _output(self, y: Tensor) -> Tensor:
        b, _, l, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, l, self.n_heads * self.head_dim))

    def forward(self, x: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None, past=None,
                use_cache: bool = False):
        q, k, v = self._qkv(x, past)
        qr, kr = self._rotate(q, k)
        if attention_mask is None and causal:
            y = decayed_attention(qr, kr, v, self.decay, window=self.max_context, block_size=self.block_size,
                                  dropout_p=self.dropout if self.training else 0.0,
                                  kv_groups=self.n_heads // self.n_kv_heads)
        else:
            y = self._attend(qr, kr, v, self._mask(q.shape[2], k.shape[2], causal, attention_mask, q.dtype, q.device))
        y = self._output(y)
        return (y, self._present(k, v)) if use_cache else y

    @torch.no_grad()
    def attention_weights(self, x: Tensor, past=None, causal: bool = True,
                          attention_mask: Optional[Tensor] = None) -> Tensor:
        """The softmax weights of the forward pass, densely: (B, H, L, P + L). For inspection and tests."""
        q, k, _ = self._qkv(x, past)
        q, k = self._rotate(q, k)
        return dense_weights(q, k, self._mask(q.shape[2], k.shape[2], causal, attention_mask, q.dtype, q.device))


def phase_coherence(wave_q: Tensor, wave_k: Tensor, mode: str) -> Tensor:
    """Coherence (B, Lq, Lk) between positions, from their amplitude and phase channels.

    wave_q: (B, Lq, 2H), wave_k: (B, Lk, 2H), each ``[amplitudes | phases]``. mode: one of ``COHERENCE_MODES``.
    """
    h = wave_q.shape[-1] // 2
    aq, pq = wave_q[..., :h], wave_q[..., h:]
    ak, pk = wave_k[..., :h], wave_k[..., h:]
    if mode == "cosine":  # mean_h cos(pq - pk) = (cos pq . cos pk + sin pq . sin pk) / H
        fq = torch.cat([pq.cos(), pq.sin()], dim=-1)
        fk = torch.cat([pk.cos(), pk.sin()], dim=-1)
        return fq @ fk.transpose(-1, -2) / h
    # complex: z = a exp(i phi); |z_q . conj(z_k)| / (|a_q| |a_k|)
    uq, vq = aq * pq.cos(), aq * pq.sin()
    uk, vk = ak * pk.cos(), ak * pk.sin()
    re = uq @ uk.transpose(-1, -2) + vq @ vk.transpose(-1, -2)
    im = vq @ uk.transpose(-1, -2) - uq @ vk.transpose(-1, -2)
    norm = aq.norm(dim=-1)[:, :, None] * ak.norm(dim=-1)[:, None, :]
    return torch.sqrt(re * re + im * im + 1e-20) / norm.clamp_min(1e-12)


class PhaseCoherentAttention(RotaryAttention):
    """Attention whose scores blend q.k with the phase coherence of the positions (see the module docstring).

    Args (the seed's names first):
        d_model: must be 3 * num_harmonics. num_harmonics: H.
        n_heads_q: query heads. n_heads_kv: key/value heads (default n_heads_q); must divide n_heads_q.
        dropout_p: attention dropout while training. use_yarn: apply RoPE.
        use_flash: accepted for Wave-Transformer's signature; attention always runs through torch's
            ``scaled_dot_product_attention`` (which picks its own kernels); ``flash_attn`` is never imported.
        phase_coherence_mode: ``"cosine"`` or ``"complex"``. phase_temp: divides the coherence, > 0.
        learnable_blend: alpha and beta are parameters (else buffers). blend_alpha, blend_beta: their initial values.
        decay, decay_alpha, cutoff, max_context, learnable_decay, per_head_decay, butterworth_order: an optional
            WCMHA decay bias and cache window (see ``wcmha.DecayBias``; ``decay_alpha`` is its ``alpha``).
        bias: projections with bias. rotary_base: RoPE base.

    ``forward(x, causal=True, attention_mask=None, past=None, use_cache=False)``: as ``RotaryAttention``; the
    cache is ``(key, value, wave)`` with wave (B, P, 2H) the amplitude and phase channels of the cached positions.

    Raises ``ValueError`` naming the argument for inconsistent sizes or unknown modes.
    """

    def __init__(
        self,
        d_model: int,
        num_harmonics: int,
        n_heads_q: int,
        n_heads_kv: Optional[int] = None,
        dropout_p: float = 0.0,
        use_yarn: bool = True,
        use_flash: bool = False,
        phase_coherence_mode: str = "cosine",
        phase_temp: float = 1.0,
        learnable_blend: bool = True,
        blend_alpha: float = 1.0,
        blend_beta: float = 0.5,
        decay: str = "none",
        decay_alpha: float = 1.0,
        cutoff: Optional[int] = None,
        max_context: Optional[int] = None,
        learnable_decay: bool = False,
        per_head_decay: bool = False,
        butterworth_order: int = 1,
        bias: bool = False,
        rotary_base: float = 10000.0,
    ) -> None:
        if isinstance(num_harmonics, bool) or int(num_harmonics) != num_harmonics or num_harmonics < 1:
            raise ValueError(f"num_harmonics must be a positive integer; got {num_harmonics!r}")
        if d_model != 3 * num_harmonics:
            raise ValueError(f"d_model must be 3 * num_harmonics = {3 * num_harmonics} (frequencies, amplitudes, "
                             f"phases); got {d_model!r}")
        if phase_coherence_mode not in COHERENCE_MODES:
            raise ValueError(f"phase_coherence_mode must be one of {COHERENCE_MODES}; got {phase_coherence_mode!r}")
        phase_temp = float(phase_temp)
        if not (math.isfinite(phase_temp) and phase_temp > 0):
            raise ValueError(f"phase_temp must be a finite number > 0; got {phase_temp!r}")
        super().__init__(
            d_model, n_heads_q, n_kv_heads=n_heads_kv, use_rotary=use_yarn, rotary_base=rotary_base, bias=bias,
            decay=decay, alpha=decay_alpha, learnable_alpha=learnable_decay, per_head_alpha=per_head_decay,
            butterworth_order=butterworth_order, cutoff=cutoff, max_context=max_context, dropout=dropout_p,
        )
        self.num_harmonics = int(num_harmonics)
        self.phase_coherence_mode = phase_coherence_mode
        self.phase_temp = phase_temp
        self.use_flash = bool(use_flash)
        blend = (torch.tensor(float(blend_alpha)), torch.tensor(float(blend_beta)))
        if learnable_blend:
            self.alpha, self.beta = nn.Parameter(blend[0]), nn.Parameter(blend[1])
        else:
            self.register_buffer("alpha", blend[0])
            self.register_buffer("beta", blend[1])

    def _scores_parts(self, x: Tensor, past, causal: bool, attention_mask: Optional[Tensor]):
        q, k, v = self._qkv(x, past)
        wave = x[..., self.num_harmonics :]  # (B, L, 2H): amplitudes, phases
        wave_k = wave if past is None else torch.cat([past[2].to(wave.dtype), wave], dim=1)  # (B, Lk, 2H)
        qr, kr = self._rotate(q, k)
        coherence = phase_coherence(wave, wave_k, self.phase_coherence_mode)  # (B, Lq, Lk)
        mask = self._mask(q.shape[2], k.shape[2], causal, attention_mask, q.dtype, q.device)
        mask = mask + (self.beta.to(q.dtype) / self.phase_temp) * coherence.unsqueeze(1)  # (B, H|1, Lq, Lk)
        return qr * self.alpha.to(q.dtype), kr, v, k, wave_k, mask

    def forward(self, x: Tensor, causal: bool = True, attention_mask: Optional[Tensor] = None, past=None,
                use_cache: bool = False):
        q, kr, v, k, wave_k, mask = self._scores_parts(x, past, causal, attention_mask)
        y = self._output(self._attend(q, kr, v, mask))
        if not use_cache:
            return y
        key, value = self._present(k, v)
        return y, (key, value, wave_k[:, wave_k.shape[1] - key.shape[2] :])

    @torch.no_grad()
    def attention_weights(self, x: Tensor, past=None, causal: bool = True,
                          attention_mask: Optional[Tensor] = None) -> Tensor:
        q, kr, _, _, _, mask = self._scores_parts(x, past, causal, attention_mask)
        return dense_weights(q, kr, mask)

    def extra_repr(self) -> str:
        return (f"num_harmonics={self.num_harmonics}, mode={self.phase_coherence_mode!r}, "
                f"phase_temp={self.phase_temp}, rotary={self.rotary is not None}")
