"""Independent float64 references for the attention tests.

Written from the definitions (the Powerformer authors' ``Causal_local_masks.py`` for the decays, textbook
softmax attention for the rest) without importing tsattn, so that a shared bug cannot hide.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch


def upstream_decay(decay: str, alpha: float, dt: np.ndarray, order: int = 1) -> np.ndarray:
    """The decay of the Powerformer authors' masks at non-negative integer distances ``dt`` (float64)."""
    dt = np.asarray(dt, dtype=np.float64)
    if decay == "none":
        return np.zeros_like(dt)
    if decay == "powerlaw":  # log((dt + 1) ** -|alpha|)
        return np.log((dt + 1.0) ** (-abs(alpha)))
    if decay == "simpowerlaw":  # -(|dt| ** alpha)
        return -(np.abs(dt) ** alpha)
    if decay == "step":
        return np.where(np.abs(dt) > int(alpha), -np.inf, 0.0)
    if decay == "butterworth":
        import scipy.interpolate
        import scipy.signal

        b, a = scipy.signal.butter(order, 0.8, "lowpass", analog=False)
        w, h = scipy.signal.freqz(b, a)
        t = alpha * w / 2
        interp = scipy.interpolate.interp1d(t, 5 * np.log(np.abs(h)))
        out = np.full(dt.shape, -np.inf)
        for i in range(int(t[-1]) + 1):
            out[dt == i] = interp(i)
        return out
    raise AssertionError(decay)


def reference_bias(
    decay: str,
    alphas,
    lq: int,
    lk: int,
    order: int = 1,
    cutoff: Optional[int] = None,
    causal: bool = True,
) -> torch.Tensor:
    """(H, lq, lk) float64 bias for queries at positions lk - lq .. lk - 1 and keys 0 .. lk - 1."""
    alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    qpos = np.arange(lq) + (lk - lq)
    dt = (qpos[:, None] - np.arange(lk)[None, :]).astype(np.float64)
    dist = np.abs(dt)
    out = []
    for a in alphas:
        bias = upstream_decay(decay, float(a), dist, order)
        if causal:
            bias = np.where(dt < 0, -np.inf, bias)
        if cutoff is not None:
            bias = np.where(dist > cutoff, -np.inf, bias)
        out.append(bias)
    return torch.from_numpy(np.stack(out))


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v in float64. q: (B, H, Lq, D); k, v: (B, H, Lk, D); bias broadcastable."""
    q, k, v, bias = (t.to(torch.float64) for t in (q, k, v, bias))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return torch.softmax(scores, dim=-1) @ v


def reference_module(m, x: torch.Tensor, bias: torch.Tensor, past=None) -> torch.Tensor:
    """A tsattn GroupedQueryAttention's forward recomputed in float64 from its weights and an explicit bias.

    Only the module's parameters are read (projections); the attention itself is ``reference_attention``.
    """
    x = x.to(torch.float64)
    b, l, _ = x.shape
    h, hkv, d = m.n_heads, m.n_kv_heads, m.head_dim

    def lin(layer, t):
        y = t @ layer.weight.to(torch.float64).T
        return y if layer.bias is None else y + layer.bias.to(torch.float64)

    q = lin(m.q_proj, x).view(b, l, h, d).transpose(1, 2)
    k = lin(m.k_proj, x).view(b, l, hkv, d).transpose(1, 2)
    v = lin(m.v_proj, x).view(b, l, hkv, d).transpose(1, 2)
    if past is not None:
        k = torch.cat([past[0].to(torch.float64), k], 2)
        v = torch.cat([past[1].to(torch.float64), v], 2)
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    y = reference_attention(q, k, v, bias).transpose(1, 2).reshape(b, l, h * d)
    return lin(m.out_proj, y)


def reference_allowed(
    length: int,
    causal: bool = True,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    chunk_size: Optional[int] = None,
    overlap: int = 0,
) -> torch.Tensor:
    """(L, L) bool, True where query i sees key j, built from the patterns' pictures rather than their formulas.

    window: a band of diagonals (the w-1 below the main one; non-causal also the w-1 above); stride: plus the
    columns 0, stride, 2 * stride, ...; chunk_size: diagonal blocks of that size, each widened by ``overlap``
    columns to its left; causal: the lower triangle.
    """
    ones = np.ones((length, length), dtype=bool)
    allowed = ones.copy()
    if window is not None:
        band = np.tril(ones, window - 1) & np.triu(ones, -(window - 1))
        if stride is not None:
            band[:, ::stride] = True
        allowed &= band
    if chunk_size is not None:
        blocks = np.zeros((length, length), dtype=bool)
        for start in range(0, length, chunk_size):
            blocks[start : start + chunk_size, max(0, start - overlap) : start + chunk_size] = True
        allowed &= blocks
    if causal:
        allowed &= np.tril(ones)
    return torch.from_numpy(allowed)


def reference_module_4d(m, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        bias: torch.Tensor) -> torch.Tensor:
    """An efficient_attention module's forward recomputed in float64 from its projections and an explicit bias.

    query, key, value: (B, C, L, d) or (B, L, d). bias: additive (-inf = masked), broadcastable to (B, H, L, L)
    and the same for every column. Per-column projections (``q_proj[c]``, featurewise without shared weights) are
    used when the module has them. Differentiable in the inputs and, for a float64 module, in its parameters.
    """
    flat = query.dim() == 3
    if flat:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    b, c, length, d = query.shape
    h, hd = m.n_heads, m.head_dim

    def lin(layer, t):
        return t.to(torch.float64) @ layer.weight.to(torch.float64).T + layer.bias.to(torch.float64)

    def pick(proj, col):
        return proj[col] if isinstance(proj, torch.nn.ModuleList) else proj

    outs = []
    for col in range(c):
        q, k, v = (lin(pick(p, col), x[:, col]).view(b, length, h, hd).transpose(1, 2)
                   for p, x in ((m.q_proj, query), (m.k_proj, key), (m.v_proj, value)))
        y = reference_attention(q, k, v, bias).transpose(1, 2).reshape(b, length, d)
        outs.append(lin(pick(m.out_proj, col), y))
    out = torch.stack(outs, dim=1)
    return out.squeeze(1) if flat else out
