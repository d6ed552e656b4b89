"""Efficient attentions for long sequences (the Hephaestus attention optimisation guide), in 3D and 4D layouts.

Self-contained template: torch and the standard library, plus the sibling template ``wcmha`` (relative import).

Every module has the interface of Hephaestus' ``MultiHeadAttention4D``:

    forward(query, key, value, mask=None) -> (output, attn_weights or None)
    query, key, value: (B, C, L, d_model) (4D: batch, n_columns, seq_len, d_model) or (B, L, d_model) (3D)
    output: the same shape as query

Attention runs over L for each column on its own; the projections ``q_proj, k_proj, v_proj, out_proj`` (one
``nn.Linear(d_model, d_model)`` each, Xavier-uniform weights and zero biases, created in that order) are shared by
all columns, so every type built under the same seed has the same weights, and a Hephaestus checkpoint loads into
any of them (``featurewise`` with ``share_weights=False`` excepted). Attention is causal by default; ``causal=False``
lets every query see keys on both sides.

Which keys query position i sees (j a key position, dt = i - j; causal adds j <= i everywhere):

    standard, flash, featurewise   every key
    local(window_size=w)           |dt| < w: causal, the w most recent positions including i itself
    sparse(stride=s, local_window=w)  |dt| < w, or j % s == 0 (keys 0, s, 2s, ... are global)
    chunked(chunk_size=c, overlap=o)  c * (i // c) - o <= j < c * (i // c + 1): the query's own chunk and the o
                                   positions before it
    wcmha(decay, alpha, ...)       every key, scores biased by the WCMHA decay of dt (``wcmha.DecayBias``)

``local`` and ``chunked`` also take the WCMHA decay (``decay``, ``alpha``, ``cutoff``, ...): local + decay is
Powerformer with a cutoff. ``mask`` is Hephaestus' extra mask: (L, L) or (B, L, L), bool (True = masked out) or
float (added to the scores); it applies on top of the pattern. A row left with no key gives NaN in ``standard``
(as in Hephaestus) and zeros in the SDPA-based types.

``local``, ``sparse``, ``chunked`` (and ``wcmha`` with a mask) evaluate blocks of queries against only the keys the
block can see, through the fused ``F.scaled_dot_product_attention`` with a block-sized mask: no L x L tensor is
built, memory is O(L * keys per query). Exported graphs (tracing, torch.export, ONNX) take one dense mask with
symbolic shapes instead, because a loop over blocks would be unrolled for one length.

KV cache (causal modules, every type): ``forward(query, key, value, mask, past=(key, value))`` takes the keys and
values of the P positions before this call, each (B, n_heads * n_columns, P, head_dim) -- one kv head per (head,
column) pair, index h * n_columns + c -- and returns ``(output, present)`` with this call's positions appended.
Patterns and decays are evaluated at true positions (query i of the call is position P + i), so a step with the
cache equals one forward over all positions for every type: nothing slides, the cache keeps every position
(``local``'s window and ``chunked``'s chunks only mask it). The cached path is one dense (L, P + L) mask.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .wcmha import DecayBias, decayed_attention, is_exporting

ATTENTION_TYPES = ("standard", "local", "sparse", "featurewise", "chunked", "flash", "wcmha")
COMMON_KWARGS = ("dropout", "causal")
DECAY_KWARGS = ("decay", "alpha", "learnable_alpha", "per_head_alpha", "butterworth_order", "cutoff")
# The guide's keyword names per type (plus COMMON_KWARGS); make_attention rejects anything else.
ATTENTION_KWARGS: Dict[str, Tuple[str, ...]] = {
    "standard": (),
    "local": ("window_size", "block_size") + DECAY_KWARGS,
    "sparse": ("stride", "local_window", "block_size"),
    "featurewise": ("share_weights", "n_columns"),
    "chunked": ("chunk_size", "overlap") + DECAY_KWARGS,
    "flash": (),
    "wcmha": DECAY_KWARGS + ("block_size",),
}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


class AttentionPattern:
    """Which keys each query sees, from positions alone (see the module docstring for the definitions).

    Args: causal (j <= i); window (|i - j| < window, None: no limit); stride (keys j % stride == 0 seen whatever
    the window; needs a window); chunk_size, overlap (c * (i // c) - overlap <= j < c * (i // c + 1)).
    """

    def __init__(self, causal: bool = True, window: Optional[int] = None, stride: Optional[int] = None,
                 chunk_size: Optional[int] = None, overlap: int = 0) -> None:
        self.causal = bool(causal)
        self.window = None if window is None else _check_int("window", window, 1)
        self.stride = None if stride is None else _check_int("stride", stride, 1)
        self.chunk_size = None if chunk_size is None else _check_int("chunk_size", chunk_size, 1)
        self.overlap = _check_int("overlap", overlap, 0)
        if self.stride is not None and self.window is None:
            raise ValueError("stride needs a window (sparse attention: stride and local_window)")

    def narrowed(self, window: int) -> "AttentionPattern":
        """The same pattern with the window limited to ``window`` (a decay's cutoff); not for strided patterns."""
        win = window if self.window is None else min(self.window, window)
        return AttentionPattern(self.causal, win, None, self.chunk_size, self.overlap)

    def allowed(self, i: Tensor, j: Tensor) -> Tensor:
        """Bool tensor, True where query position ``i`` sees key position ``j`` (int64, broadcast together)."""
        dt = i - j
        ok = dt >= 0 if self.causal else torch.ones_like(dt, dtype=torch.bool)
        if self.window is not None:
            near = dt.abs() < self.window
            if self.stride is not None:
                near = near | (torch.remainder(j, self.stride) == 0)
            ok = ok & near
        if self.chunk_size is not None:
            start = torch.div(i, self.chunk_size, rounding_mode="floor") * self.chunk_size
            ok = ok & (j >= start - self.overlap) & (j < start + self.chunk_size)
        return ok

    def covers_all(self, length: int) -> bool:
        """True when, at this length, the pattern is plain (causal) attention."""
        return (self.window is None or self.window >= length) and (self.chunk_size is None or self.chunk_size >= length)

    def step(self, block_size: int) -> int:
        """Queries per block: one chunk, or ``block_size``."""
        return self.chunk_size if self.chunk_size is not None else block_size

    def block_key(self, s: int, e: int, segments: List[Tuple[int, int, int]]) -> Tuple:
        """Blocks with equal keys have equal masks (and decay biases): the mask depends on positions only through
        dt = i - j, j mod stride and i mod chunk_size, so the key is the block's segments relative to s plus s
        modulo those."""
        return (e - s, tuple((lo - s, hi - s, st) for lo, hi, st in segments), s % (self.stride or 1),
                s % (self.chunk_size or 1))

    def key_segments(self, s: int, e: int, length: int) -> List[Tuple[int, int, int]]:
        """Key positions the queries [s, e) may see, as slices (start, stop, step) in increasing position order."""
        lo, hi = 0, (e if self.causal else length)
        if self.window is not None:
            lo = max(0, s - self.window + 1)
            if not self.causal:
                hi = min(length, e + self.window - 1)
        if self.chunk_size is not None:
            c = self.chunk_size
            lo = max(lo, (s // c) * c - self.overlap)
            hi = min(hi, ((e - 1) // c + 1) * c)
        segments = [(lo, hi, 1)]
        if self.stride is not None:
            st = self.stride
            if lo > 0:
                segments.insert(0, (0, lo, st))
            after = -(-hi // st) * st
            if not self.causal and after < length:
                segments.append((after, length, st))
        return segments


def _extra_mask(mask: Optional[Tensor], length: int, keys: Optional[int] = None) -> Optional[Tensor]:
    """Hephaestus' extra mask, (L, L) or (B, L, L), as (B|1, 1, L, L); raises ValueError naming ``mask``.

    ``keys``: the number of keys when it differs from the number of queries ``length`` (a KV cache: the mask is
    then (L, P + L) or (B, L, P + L)).
    """
    if mask is None:
        return None
    keys = length if keys is None else keys
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must be (L, L) or (batch, L, L); got shape {tuple(mask.shape)}")
    if not is_exporting() and tuple(mask.shape[-2:]) != (length, keys):
        raise ValueError(f"mask must end in (queries, keys) = ({length}, {keys}); got shape {tuple(mask.shape)}")
    return mask.unsqueeze(0).unsqueeze(0) if mask.dim() == 2 else mask.unsqueeze(1)


def _block_mask(pattern: AttentionPattern, qpos: Tensor, kpos: Tensor, bias: Optional[DecayBias],
                extra: Optional[Tensor], n_columns: int, dtype: torch.dtype) -> Tensor:
    """Additive mask for queries at ``qpos`` (nq,) and keys at ``kpos`` (nk,): (B|1, H*C|1, nq, nk), -inf masked.

    ``extra``: the extra mask restricted to these queries and keys, (B|1, 1, nq, nk), bool or float.
    """
    allowed = pattern.allowed(qpos[:, None], kpos[None, :])  # (nq, nk)
    neg_inf = torch.full((), float("-inf"), dtype=dtype, device=qpos.device)
    if bias is None:
        m = torch.where(allowed, torch.zeros((), dtype=dtype, device=qpos.device), neg_inf)[None, None]
    else:
        dt = (qpos[:, None] - kpos[None, :]).to(torch.promote_types(dtype, torch.float32))
        hb = bias(dt).to(dtype)  # (H|1, nq, nk)
        hb = torch.where(allowed, hb, neg_inf)
        if bias.per_head_alpha and n_columns > 1:  # (H, ..): heads-major like the queries, group h * C + c
            hb = hb.repeat_interleave(n_columns, dim=0)
        m = hb.unsqueeze(0)
    return m if extra is None else _with_extra(m, extra)


def _with_extra(m: Tensor, extra: Tensor) -> Tensor:
    """The additive mask ``m`` with the extra mask applied: bool True -> -inf, float added; broadcast together."""
    if extra.dtype == torch.bool:
        return m.masked_fill(extra, float("-inf"))
    return m + extra.to(m.dtype)


_GROUP_ELEMENTS = 1 << 20  # output elements per call on a run of blocks: about 4 MB of float32


def _windows(x: Tensor, start: int, n: int, size: int, step: int) -> Tensor:
    """``n`` windows of ``size`` positions of a contiguous x (B, G, L, D), the first at ``start``, ``step`` apart:
    one (possibly overlapping) view of shape (B * G, n, size, D)."""
    bg, length, d = x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
    return x.as_strided((bg, n, size, d), (length * d, step * d, d, 1), x.storage_offset() + start * d)


def pattern_attention(q: Tensor, k: Tensor, v: Tensor, pattern: AttentionPattern, bias: Optional[DecayBias] = None,
                      mask: Optional[Tensor] = None, block_size: int = 256, dropout_p: float = 0.0) -> Tensor:
    """Attention restricted to ``pattern`` (and ``bias``, ``mask``), blockwise. q, k, v: (B, H, C, L, D) -> same.

    ``bias``: a ``DecayBias`` evaluated at the true distances (its ``causal`` should match the pattern's); its
    window (cutoff) narrows the keys visited. ``mask``: Hephaestus' extra mask, (L, L) or (B, L, L), bool (True =
    masked out) or float (added). Eager: for each block of queries (one chunk, or ``block_size`` queries) only the
    keys of ``pattern.key_segments`` are gathered (slices, views where contiguous) and handed to
    ``F.scaled_dot_product_attention`` with a block-sized mask; runs of interior blocks, which share their mask,
    go in one call on overlapping views. Exporting: one dense (.., L, L) mask.
    """
    b, h, c, length, d = q.shape
    qf, kf, vf = (t.reshape(b, h * c, length, d) for t in (q, k, v))  # (B, H*C, L, D), views when contiguous
    extra = _extra_mask(mask, length)  # (B|1, 1, L, L)
    if bias is not None and bias.window is not None and pattern.stride is None:
        pattern = pattern.narrowed(bias.window + 1)
    if is_exporting():
        pos = torch.arange(length, device=q.device)
        dense = _block_mask(pattern, pos, pos, bias, extra, c, q.dtype)  # (B|1, H*C|1, L, L)
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=dense, dropout_p=dropout_p)
        return out.view(b, h, c, length, d)
    trivial = bias is None or (bias.is_trivial and bias.causal == pattern.causal)
    if extra is None and trivial and pattern.covers_all(length):
        out = F.scaled_dot_product_attention(qf, kf, vf, dropout_p=dropout_p, is_causal=pattern.causal)
        return out.view(b, h, c, length, d)
    out = _blocked_attention(qf.contiguous(), kf.contiguous(), vf.contiguous(), pattern, bias, extra, c, block_size,
                             dropout_p)
    return out.view(b, h, c, length, d)


def _blocked_attention(qf: Tensor, kf: Tensor, vf: Tensor, pattern: AttentionPattern, bias: Optional[DecayBias],
                       extra: Optional[Tensor], n_columns: int, block_size: int, dropout_p: float) -> Tensor:
    """The eager path of ``pattern_attention``: qf, kf, vf contiguous (B, H*C, L, D); extra (B|1, 1, L, L)."""
    b, g, length, d = qf.shape
    out = torch.empty_like(qf)
    step = pattern.step(block_size)
    blocks = []  # (s, e, key segments, block key)
    for s in range(0, length, step):
        e = min(s + step, length)
        segments = pattern.key_segments(s, e, length)
        blocks.append((s, e, segments, pattern.block_key(s, e, segments)))
    mask_key, block_mask = None, None  # the last block mask: consecutive interior blocks share it
    i = 0
    while i < len(blocks):
        s, e, segments, key = blocks[i]
        if key != mask_key:
            kpos = torch.cat([torch.arange(lo, hi, st, device=qf.device) for lo, hi, st in segments])
            qpos = torch.arange(s, e, device=qf.device)
            block_mask = _block_mask(pattern, qpos, kpos, bias, None, n_columns, qf.dtype)  # (1, H*C|1, nq, nk)
            mask_key = key
        # Blocks with the same key and one key range are a run: their queries and keys are windows `step` apart,
        # evaluated in one call on overlapping views (nothing copied but the output).
        n = 1
        if extra is None and len(segments) == 1:
            limit = max(1, _GROUP_ELEMENTS // (b * g * (e - s) * d))
            while n < limit and i + n < len(blocks) and blocks[i + n][3] == key:
                n += 1
        i += n
        if n > 1:
            lo, hi, _ = segments[0]
            run_mask = block_mask
            if run_mask.shape[1] > 1:  # per-head bias: (1, H*C, nq, nk) -> (B*H*C, 1, nq, nk)
                run_mask = run_mask.expand(b, -1, -1, -1).reshape(-1, 1, e - s, hi - lo)
            y = F.scaled_dot_product_attention(_windows(qf, s, n, e - s, step), _windows(kf, lo, n, hi - lo, step),
                                               _windows(vf, lo, n, hi - lo, step), attn_mask=run_mask,
                                               dropout_p=dropout_p)  # (B*H*C, n, nq, D)
            _windows(out, s, n, e - s, step).copy_(y)
            continue
        if len(segments) == 1:
            lo, hi, _ = segments[0]
            kb, vb = kf[:, :, lo:hi], vf[:, :, lo:hi]
            eb = None if extra is None else extra[..., s:e, lo:hi]
        else:
            kb = torch.cat([kf[:, :, lo:hi:st] for lo, hi, st in segments], dim=2)
            vb = torch.cat([vf[:, :, lo:hi:st] for lo, hi, st in segments], dim=2)
            eb = None if extra is None else torch.cat([extra[..., s:e, lo:hi:st] for lo, hi, st in segments], -1)
        mask_b = block_mask if eb is None else _with_extra(block_mask, eb)  # (B|1, H*C|1, nq, nk)
        out[:, :, s:e] = F.scaled_dot_product_attention(qf[:, :, s:e], kb, vb, attn_mask=mask_b, dropout_p=dropout_p)
    return out


class _Attention4D(nn.Module):
    """Shared part: the projections, the 3D/4D layouts and the forward pass; subclasses define ``attend``."""

    attention_type = ""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = True) -> None:
        super().__init__()
        _check_int("n_heads", n_heads, 1)
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model!r}) must be a positive multiple of n_heads ({n_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.d_model = self.embed_dim = d_model  # embed_dim, num_heads: Hephaestus' names
        self.n_heads = self.num_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = bool(causal)
        # which keys a query sees, and the decay bias: subclasses narrow them; the KV-cache path reads both
        self.pattern = AttentionPattern(self.causal)
        self.decay: Optional[DecayBias] = None
        self._build_projections()
        self.dropout = nn.Dropout(dropout)
        self._init_projections()

    def _build_projections(self) -> None:
        self.q_proj = nn.Linear(self.d_model, self.d_model)
        self.k_proj = nn.Linear(self.d_model, self.d_model)
        self.v_proj = nn.Linear(self.d_model, self.d_model)
        self.out_proj = nn.Linear(self.d_model, self.d_model)

    def _init_projections(self) -> None:
        # Hephaestus' MultiHeadAttention4D: Xavier-uniform weights and zero biases, in the order q, k, v, out.
        for layer in self._linears():
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.0)

    def _linears(self) -> List[nn.Linear]:
        return [self.q_proj, self.k_proj, self.v_proj, self.out_proj]

    @property
    def dropout_p(self) -> float:
        return self.dropout.p if self.training else 0.0

    def _split(self, x: Tensor, proj: nn.Module) -> Tensor:
        # (B, C, L, d_model) -> (B, H, C, L, D)
        b, c, l, _ = x.shape
        y = proj(x.reshape(-1, self.d_model)).reshape(b, c, l, self.n_heads, self.head_dim)
        return y.permute(0, 3, 1, 2, 4)

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(B, C, L, d_model) each -> q, k, v of shape (B, H, C, L, D)."""
        return self._split(query, self.q_proj), self._split(key, self.k_proj), self._split(value, self.v_proj)

    def merge(self, context: Tensor) -> Tensor:
        """(B, H, C, L, D) -> out_proj of the concatenated heads, (B, C, L, d_model)."""
        b, _, c, l, _ = context.shape
        context = context.permute(0, 2, 3, 1, 4).reshape(b, c, l, self.d_model)
        return self.out_proj(context.reshape(-1, self.d_model)).reshape(b, c, l, self.d_model)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """The attention core on projected heads: q, k, v (B, H, C, L, D) -> ((B, H, C, L, D), weights or None)."""
        raise NotImplementedError

    def attend_cached(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                      past: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """Attention of the new positions over the cache and themselves (the KV-cache path of ``forward``).

        q, k, v: (B, H, C, L, D), the L new positions; past: (key, value), each (B, H * C, P, D), the P positions
        before them (P may be 0). Returns the context (B, H, C, L, D) and present = (key, value), each
        (B, H * C, P + L, D). Query i is at position P + i: the pattern and the decay see true positions, so
        every type gives what one forward over all P + L positions gives at these queries. One dense
        (L, P + L) mask, evaluated by ``F.scaled_dot_product_attention``. Raises ValueError without ``causal``
        (earlier outputs would depend on later keys) or for a past of the wrong shape.
        """
        if not self.causal:
            raise ValueError("past (a KV cache) needs causal attention; this module was built with causal=False")
        b, h, c, length, d = q.shape
        past_key, past_value = past
        if not is_exporting():
            for name, t in (("key", past_key), ("value", past_value)):
                if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (b, h * c, d) \
                        or t.shape[2] != past_key.shape[2] or t.dtype != q.dtype:
                    raise ValueError(f"past {name} must be (batch, n_heads * n_columns, past, head_dim) = ({b}, "
                                     f"{h * c}, P, {d}) of dtype {q.dtype}, like the key; got {tuple(t.shape)} "
                                     f"{t.dtype}")
        key = torch.cat([past_key, k.reshape(b, h * c, length, d)], dim=2)  # (B, H*C, P+L, D)
        value = torch.cat([past_value, v.reshape(b, h * c, length, d)], dim=2)
        total = key.shape[2]
        kpos = torch.arange(total, device=q.device)
        qpos = kpos[total - length:]
        extra = _extra_mask(mask, length, total)  # (B|1, 1, L, P+L)
        bias = _block_mask(self.pattern, qpos, kpos, self.decay, extra, c, q.dtype)  # (B|1, H*C|1, L, P+L)
        out = F.scaled_dot_product_attention(q.reshape(b, h * c, length, d), key, value, attn_mask=bias,
                                             dropout_p=self.dropout_p)
        return out.view(b, h, c, length, d), (key, value)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor] = None,
                past: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Any]:
        """query, key, value: (B, C, L, d_model) or (B, L, d_model), all the same shape; mask: (L, L) or (B, L, L).

        Returns (output of query's shape, attention weights (B, H, C, L, L) / (B, H, L, L) or None).

        ``past`` (a KV cache; causal modules only): (key, value) of the P positions before these L, each
        (B, n_heads * n_columns, P, head_dim) -- the cache convention's (batch, kv_heads, length, head_dim) with
        one kv head per (head, column) pair, index h * n_columns + c (a 3D input is one column). Returns
        (output, present) instead, present = the cache with these positions appended (P + L); a mask is then
        (L, P + L) or (B, L, P + L). Outputs equal one forward over all P + L positions (``attend_cached``).
        Raises ValueError for inputs of another rank, mismatched shapes or a bad mask.
        """
        if query.dim() not in (3, 4):
            raise ValueError("query must be (batch, L, d_model) or (batch, n_columns, L, d_model); "
                             f"got {tuple(query.shape)}")
        if not is_exporting() and (key.shape != query.shape or value.shape != query.shape):
            raise ValueError(f"query, key and value must have the same shape; got {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        flat = query.dim() == 3
        if flat:  # (B, L, d) is one column
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        q, k, v = self.project(query, key, value)
        if past is not None:
            context, present = self.attend_cached(q, k, v, mask, past)
            out = self.merge(context)
            return (out.squeeze(1) if flat else out), present
        context, weights = self.attend(q, k, v, mask)
        out = self.merge(context)
        if flat:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(2)
        return out, weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A checkpoint saved without this module's decay (Hephaestus' MultiHeadAttention4D, or a type without
        # one) loads: the decay keeps its configured values.
        if self.decay is not None:
            for name, tensor in self.decay.state_dict().items():
                state_dict.setdefault(prefix + "decay." + name, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}"


class StandardAttention(_Attention4D):
    """Dense attention, Hephaestus' ``MultiHeadAttention4D`` step for step (same parameters, initialisation, mask
    handling, dropout on the weights); returns the weights (B, H, C, L, L). Memory O(C * L^2)."""

    attention_type = "standard"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        length = q.shape[3]
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, C, L, L)
        if self.causal:
            scores = scores + torch.triu(torch.ones(length, length, device=scores.device) * float("-inf"), diagonal=1)
        extra = _extra_mask(mask, length)  # (B|1, 1, L, L)
        if extra is not None:
            extra = extra.unsqueeze(2)  # (B|1, 1, 1, L, L)
            scores = scores.masked_fill(extra, float("-inf")) if extra.dtype == torch.bool else scores + extra
        weights = self.dropout(F.softmax(scores, dim=-1))
        return torch.matmul(weights, v), weights


class FlashAttention(_Attention4D):
    """``F.scaled_dot_product_attention`` over all columns at once (fused kernels where the device has them)."""

    attention_type = "flash"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        return pattern_attention(q, k, v, AttentionPattern(self.causal), mask=mask, dropout_p=self.dropout_p), None


class LocalAttention(_Attention4D):
    """Sliding-window attention: a query sees the ``window_size`` most recent positions including itself
    (non-causal: |i - j| < window_size). Blockwise (``block_size`` queries at a time): memory and time
    O(L * window_size). With ``decay`` (and ``alpha``, ``cutoff``, ... as in ``wcmha.DecayBias``) the scores get the
    WCMHA bias: Powerformer with a cutoff."""

    attention_type = "local"

    def __init__(self, d_model: int, n_heads: int, window_size: int = 256, dropout: float = 0.0, causal: bool = True,
                 block_size: int = 64, decay: Optional[str] = None, **decay_kwargs) -> None:
        super().__init__(d_model, n_heads, dropout, causal)
        self.window_size = _check_int("window_size", window_size, 1)
        self.block_size = _check_int("block_size", block_size, 1)
        self.pattern = AttentionPattern(self.causal, window=self.window_size)
        self.decay = _decay_bias(decay, n_heads, self.causal, decay_kwargs)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        return pattern_attention(q, k, v, self.pattern, self.decay, mask, self.block_size, self.dropout_p), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, block_size={self.block_size}"


class SparseAttention(_Attention4D):
    """Local window plus strided global keys: a query sees the ``local_window`` most recent positions including
    itself (non-causal: |i - j| < local_window) and every key j with j % stride == 0 (causal: j <= i).
    Blockwise: memory O(L * (local_window + L / stride))."""

    attention_type = "sparse"

    def __init__(self, d_model: int, n_heads: int, stride: int = 4, local_window: int = 32, dropout: float = 0.0,
                 causal: bool = True, block_size: int = 256) -> None:
        super().__init__(d_model, n_heads, dropout, causal)
        self.stride = _check_int("stride", stride, 1)
        self.local_window = _check_int("local_window", local_window, 1)
        self.block_size = _check_int("block_size", block_size, 1)
        self.pattern = AttentionPattern(self.causal, window=self.local_window, stride=self.stride)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        return pattern_attention(q, k, v, self.pattern, None, mask, self.block_size, self.dropout_p), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, local_window={self.local_window}"


class ChunkedAttention(_Attention4D):
    """Chunks of ``chunk_size`` positions, each also seeing the ``overlap`` positions before it: query i sees keys
    c * (i // c) - overlap <= j < c * (i // c + 1) (and j <= i when causal). One chunk per block: memory
    O(C * chunk_size * (chunk_size + overlap)). Takes the WCMHA decay like ``LocalAttention``."""

    attention_type = "chunked"

    def __init__(self, d_model: int, n_heads: int, chunk_size: int = 256, overlap: int = 32, dropout: float = 0.0,
                 causal: bool = True, decay: Optional[str] = None, **decay_kwargs) -> None:
        super().__init__(d_model, n_heads, dropout, causal)
        self.chunk_size = _check_int("chunk_size", chunk_size, 1)
        self.overlap = _check_int("overlap", overlap, 0)
        self.pattern = AttentionPattern(self.causal, chunk_size=self.chunk_size, overlap=self.overlap)
        self.decay = _decay_bias(decay, n_heads, self.causal, decay_kwargs)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        return pattern_attention(q, k, v, self.pattern, self.decay, mask, self.chunk_size, self.dropout_p), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}, overlap={self.overlap}"


class WeightedCausalAttention(_Attention4D):
    """Powerformer's WCMHA in the 4D interface: every key, scores biased by ``DecayBias(decay, alpha, ...)`` (default
    powerlaw, alpha 1; alpha 0 is standard causal attention). Without a mask it runs ``wcmha.decayed_attention``
    (blockwise Toeplitz bias); with one, the blockwise ``pattern_attention``."""

    attention_type = "wcmha"

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = True, decay: str = "powerlaw",
                 alpha: float = 1.0, block_size: int = 1024, **decay_kwargs) -> None:
        super().__init__(d_model, n_heads, dropout, causal)
        self.block_size = _check_int("block_size", block_size, 1)
        self.pattern = AttentionPattern(self.causal)
        self.decay = _decay_bias(decay, n_heads, self.causal, dict(decay_kwargs, alpha=alpha))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        if mask is not None:
            return pattern_attention(q, k, v, self.pattern, self.decay, mask, self.block_size, self.dropout_p), None
        b, h, c, length, d = q.shape
        # (B, H, C, L, D) -> (B * C, H, L, D): columns are batch entries for the per-head bias
        q2, k2, v2 = (t.transpose(1, 2).reshape(b * c, h, length, d) for t in (q, k, v))
        y = decayed_attention(q2, k2, v2, self.decay, block_size=self.block_size, dropout_p=self.dropout_p,
                              kv_groups=1)
        return y.view(b, c, h, length, d).transpose(1, 2), None


class FeaturewiseAttention(_Attention4D):
    """Each column attended on its own, one column at a time (memory O(L^2) for the mask case, O(L) otherwise).

    ``share_weights=True``: one projection set for all columns (the result equals ``standard``/``flash``).
    ``share_weights=False``: one set per column, ``q_proj[c]`` ...; needs ``n_columns``, and the input must have
    that many columns (a 3D input is one column). Raises ValueError otherwise.
    """

    attention_type = "featurewise"

    def __init__(self, d_model: int, n_heads: int, share_weights: bool = True, n_columns: Optional[int] = None,
                 dropout: float = 0.0, causal: bool = True) -> None:
        if not isinstance(share_weights, bool):
            raise ValueError(f"share_weights must be True or False; got {share_weights!r}")
        if not share_weights and n_columns is None:
            raise ValueError("featurewise attention with share_weights=False needs n_columns (one projection set "
                             "per column)")
        self.share_weights = share_weights
        self.n_columns = None if n_columns is None else _check_int("n_columns", n_columns, 1)
        super().__init__(d_model, n_heads, dropout, causal)

    def _build_projections(self) -> None:
        if self.share_weights:
            return super()._build_projections()
        n, d = self.n_columns, self.d_model
        self.q_proj = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])
        self.k_proj = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])
        self.v_proj = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])
        self.out_proj = nn.ModuleList([nn.Linear(d, d) for _ in range(n)])

    def _linears(self) -> List[nn.Linear]:
        if self.share_weights:
            return super()._linears()
        return [m for group in (self.q_proj, self.k_proj, self.v_proj, self.out_proj) for m in group]

    def _check_columns(self, n: int) -> None:
        if not self.share_weights and not is_exporting() and n != self.n_columns:
            raise ValueError(f"featurewise attention with share_weights=False was built for n_columns="
                             f"{self.n_columns}; got an input with {n} column(s)")

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if self.share_weights:
            return super().project(query, key, value)
        self._check_columns(query.shape[1])
        return tuple(  # type: ignore[return-value]
            torch.cat([self._split(x[:, i : i + 1], proj[i]) for i in range(self.n_columns)], dim=2)
            for x, proj in ((query, self.q_proj), (key, self.k_proj), (value, self.v_proj))
        )

    def merge(self, context: Tensor) -> Tensor:
        if self.share_weights:
            return super().merge(context)
        b, _, c, l, _ = context.shape
        self._check_columns(c)
        context = context.permute(0, 2, 3, 1, 4).reshape(b, c, l, self.d_model)
        return torch.stack([self.out_proj[i](context[:, i]) for i in range(c)], dim=1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        pattern = AttentionPattern(self.causal)
        out = torch.empty_like(q)
        for i in range(q.shape[2]):  # (B, H, 1, L, D) per column
            col = slice(i, i + 1)
            out[:, :, col] = pattern_attention(q[:, :, col], k[:, :, col], v[:, :, col], pattern, mask=mask,
                                               dropout_p=self.dropout_p)
        return out, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, share_weights={self.share_weights}, n_columns={self.n_columns}"


def _decay_bias(decay: Optional[str], n_heads: int, causal: bool, kwargs: Dict) -> Optional[DecayBias]:
    unknown = sorted(set(kwargs) - set(DECAY_KWARGS))
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown}; valid decay keywords: {list(DECAY_KWARGS)}")
    if decay is None:
        if kwargs:
            raise ValueError(f"{sorted(kwargs)} given without decay; pass decay= (one of the WCMHA decays)")
        return None
    return DecayBias(decay, n_heads=n_heads, causal=causal, **kwargs)


_CLASSES = {
    "standard": StandardAttention,
    "local": LocalAttention,
    "sparse": SparseAttention,
    "featurewise": FeaturewiseAttention,
    "chunked": ChunkedAttention,
    "flash": FlashAttention,
    "wcmha": WeightedCausalAttention,
}


def make_attention(attention_type: str, d_model: int, n_heads: int, **attention_kwargs) -> nn.Module:
    """Build the attention ``attention_type`` (one of ``ATTENTION_TYPES``) with the guide's keyword names.

    Keywords per type (all also take ``dropout`` and ``causal``): local: window_size, block_size, decay keywords;
    sparse: stride, local_window, block_size; featurewise: share_weights, n_columns; chunked: chunk_size, overlap,
    decay keywords; wcmha: decay keywords, block_size; standard, flash: none. Decay keywords: ``DECAY_KWARGS``.
    Raises ValueError listing the valid types, or the valid keywords of the type, for anything else.
    """
    if attention_type not in _CLASSES:
        raise ValueError(f"unknown attention_type {attention_type!r}; valid types: {list(ATTENTION_TYPES)}")
    valid = COMMON_KWARGS + ATTENTION_KWARGS[attention_type]
    unknown = sorted(set(attention_kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown} for attention_type={attention_type!r}; valid keywords: "
                         f"{sorted(valid)}")
    return _CLASSES[attention_type](d_model, n_heads, **attention_kwargs)


# The guide's example configuration of each type, used by benchmark_attention_mechanisms.
BENCHMARK_KWARGS: Dict[str, Dict] = {
    "standard": {},
    "local": {"window_size": 256},
    "sparse": {"stride": 4, "local_window": 32},
    "featurewise": {"share_weights": True},
    "chunked": {"chunk_size": 256, "overlap": 32},
    "flash": {},
}


def _peak_allocated_mb(fn, device: torch.device) -> Optional[float]:
    """Peak bytes torch allocates while ``fn()`` runs, above what was allocated before, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the profiler's allocation events (every allocation through
    torch's CPU allocator, kernel scratch included, counted until freed).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # a torch whose profiler results look different: no figure rather than a wrong one
        return None
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def benchmark_attention_mechanisms(
    seq_lengths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    n_columns: int = 20,
    d_model: int = 64,
    n_heads: int = 8,
    batch_size: int = 16,
    device: Optional[str] = None,
    methods: Optional[Sequence[str]] = None,
    repeats: int = 3,
) -> Dict[int, Dict[str, Dict]]:
    """Time and memory of each attention's forward pass (module, projections included, no grad) on random
    (batch_size, n_columns, L, d_model) inputs: ``results[seq_len][method] = {"time_ms", "memory_mb",
    "successful"}``, the guide's API.

    methods: default ``BENCHMARK_KWARGS``'s types, each with the guide's configuration. time_ms: median of
    ``repeats`` runs after a warm-up. memory_mb: peak memory torch allocates during one forward, above what was
    allocated before it (inputs and weights excluded, the output included): CUDA max_memory_allocated; on CPU the
    profiler's allocation events (None where this torch's profiler gives none). A failure (out of memory, an
    unknown method, ...) gives successful=False, None for time_ms and memory_mb, and the message under "error";
    the other methods still run. device: default "cuda" when available, else "cpu"; an unavailable CUDA device
    raises ValueError.
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here (use device='cpu')")
    chosen = list(methods) if methods is not None else list(BENCHMARK_KWARGS)
    results: Dict[int, Dict[str, Dict]] = {}
    for length in seq_lengths:
        results[length] = {}
        for method in chosen:
            try:
                module = make_attention(method, d_model=d_model, n_heads=n_heads,
                                        **BENCHMARK_KWARGS.get(method, {})).to(dev).eval()
                x = torch.randn(batch_size, n_columns, length, d_model, device=dev)

                def run() -> None:
                    with torch.no_grad():
                        module(x, x, x)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)

                run()  # warm-up
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    times.append((time.perf_counter() - t0) * 1e3)
                memory = _peak_allocated_mb(run, dev)
                results[length][method] = {"time_ms": statistics.median(times), "memory_mb": memory,
                                           "successful": True}
            except Exception as err:  # out of memory, kernel limits, a bad method: recorded, the others still run
                results[length][method] = {"time_ms": None, "memory_mb": None, "successful": False,
                                           "error": f"{type(err).__name__}: {err}"}
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return results
