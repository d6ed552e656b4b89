"""Independent float64 references for seed 002's models (tsattn.models), written from the definitions.

Only the models' parameters are read (detached: references carry no gradient); every computation (sinusoidal
positions, layer norm, attention with an explicit mask, the MoE routing with a per-token loop) is written out
here, with no import of tsattn.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from reference import reference_attention, reference_bias

F64 = torch.float64


def sinusoid(positions, dim: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)); float64 (len(positions), dim)."""
    pe = np.zeros((len(positions), dim))
    for r, p in enumerate(positions):
        for c in range(dim):
            angle = p / 10000 ** ((c - c % 2) / dim)
            pe[r, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return torch.from_numpy(pe)


def linear(layer, x):
    y = x @ layer.weight.detach().to(F64).T
    return y if layer.bias is None else y + layer.bias.detach().to(F64)


def layer_norm(ln, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight.detach().to(F64) + ln.bias.detach().to(F64)


def self_attention(sa, x, window: Optional[int]):
    """A tsattn.models SelfAttention on the whole x: causal/decay/window as an explicit (H|1, L, L) bias."""
    m = sa.attn  # its GroupedQueryAttention: projections and decay
    b, l, _ = x.shape
    h, hkv, d = m.n_heads, m.n_kv_heads, m.head_dim
    q = linear(m.q_proj, x).view(b, l, h, d).transpose(1, 2)
    k = linear(m.k_proj, x).view(b, l, hkv, d).transpose(1, 2).repeat_interleave(h // hkv, 1)
    v = linear(m.v_proj, x).view(b, l, hkv, d).transpose(1, 2).repeat_interleave(h // hkv, 1)
    dec = m.decay
    cutoffs = [c for c in (dec.cutoff, window) if c is not None]
    alphas = np.atleast_1d(dec.alpha.detach().double().numpy())
    bias = reference_bias(dec.decay, alphas, l, l, dec.butterworth_order, min(cutoffs) if cutoffs else None,
                          dec.causal)
    y = reference_attention(q, k, v, bias).transpose(1, 2).reshape(b, l, h * d)
    return linear(m.out_proj, y)


def cross_attention(ca, x, memory):
    b, lt, _ = x.shape
    ls = memory.shape[1]
    h, hkv, d = ca.num_heads, ca.num_kv_heads, ca.head_dim
    q = linear(ca.q_proj, x).view(b, lt, h, d).transpose(1, 2)
    k = linear(ca.k_proj, memory).view(b, ls, hkv, d).transpose(1, 2).repeat_interleave(h // hkv, 1)
    v = linear(ca.v_proj, memory).view(b, ls, hkv, d).transpose(1, 2).repeat_interleave(h // hkv, 1)
    y = reference_attention(q, k, v, torch.zeros(1, lt, ls, dtype=F64)).transpose(1, 2).reshape(b, lt, h * d)
    return linear(ca.out_proj, y)


def dense_ffn(ffn, x):
    return linear(ffn.fc2, torch.relu(linear(ffn.fc1, x)))


def moe(m, x):
    """MOE by a per-token loop: top-k, renormalised weights, first-come capacity in token order, overflow expert.

    Returns (output, aux_loss, overflowed) where overflowed counts the (token, choice) pairs over capacity.
    """
    shape = x.shape
    xs = x.reshape(-1, shape[-1])
    t, e, k = xs.shape[0], m.num_experts, m.topk
    cap = math.inf if m.capacity is None else m.capacity
    probs = torch.softmax(linear(m.router, xs), -1)
    counts = [0] * e
    chosen_counts = [0] * e
    overflowed = 0
    out = torch.zeros_like(xs)
    w1, b1, w2, b2 = (p.detach().to(F64) for p in (m.w1, m.b1, m.w2, m.b2))
    for i in range(t):
        order = sorted(range(e), key=lambda j: -float(probs[i, j]))[:k]
        total = sum(float(probs[i, j]) for j in order)
        for j in order:
            weight = probs[i, j] / total
            chosen_counts[j] += 1
            if counts[j] < cap:
                counts[j] += 1
                out[i] += weight * (torch.relu(xs[i] @ w1[j] + b1[j]) @ w2[j] + b2[j])
            else:
                overflowed += 1
                out[i] += weight * dense_ffn(m.overflow, xs[i])
    f = torch.tensor(chosen_counts, dtype=F64) / (t * k)
    aux = m.alpha * e * (f * probs.mean(0)).sum()
    return out.view(shape), aux, overflowed


def feed_forward(ffn, x):
    if hasattr(ffn, "router"):
        y, aux, _ = moe(ffn, x)
        return y, aux
    return dense_ffn(ffn, x), torch.zeros((), dtype=F64)


def encoder_layer(layer, h, window):
    h = layer_norm(layer.norm1, h + self_attention(layer.attention, h, window))
    f, aux = feed_forward(layer.ffn, h)
    return layer_norm(layer.norm2, h + f), aux


def stack(model, x, window: Optional[int]):
    """Input projection + positions 0.. + encoder layers of TransformerModel / AutoregressiveTransformerModel."""
    x = x.to(F64)
    h = linear(model.input_proj, x) + sinusoid(range(x.shape[1]), model.embed_dim)
    aux = torch.zeros((), dtype=F64)
    for layer in model.layers:
        h, a = encoder_layer(layer, h, window)
        aux = aux + a
    return h, aux


def autoregressive(model, x, window: Optional[int] = None):
    """(output (B, L, out), aux) of an AutoregressiveTransformerModel; window: earlier positions a query sees."""
    h, aux = stack(model, x, window)
    return linear(model.output_proj, h), aux


def regression(model, x, window: Optional[int] = None):
    h, aux = stack(model, x, window)
    if window is not None:
        h = h[:, -(window + 1):]
    return linear(model.output_proj, h.mean(1)), aux


def encoder_decoder(model, source, target, window: Optional[int] = None):
    source, target = source.to(F64), target.to(F64)
    h = linear(model.encoder_input_proj, source) + sinusoid(range(source.shape[1]), model.embed_dim)
    aux = torch.zeros((), dtype=F64)
    for layer in model.encoder_layers:
        h, a = encoder_layer(layer, h, None)
        aux = aux + a
    memory = h
    h = linear(model.decoder_input_proj, target) + sinusoid(range(target.shape[1]), model.embed_dim)
    for layer in model.decoder_layers:
        h = layer_norm(layer.norm1, h + self_attention(layer.self_attention, h, window))
        h = layer_norm(layer.norm2, h + cross_attention(layer.cross_attention, h, memory))
        f, a = feed_forward(layer.ffn, h)
        h = layer_norm(layer.norm3, h + f)
        aux = aux + a
    return linear(model.output_proj, h), aux
