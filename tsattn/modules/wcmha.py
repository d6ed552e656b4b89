"""Powerformer's Weighted Causal Multihead Attention (WCMHA) with MHA / MQA / GQA heads and a KV cache.

Self-contained template: it imports torch and the standard library only, because tsattn copies it verbatim
into target repositories.

    scores[b, h, i, j] = q_i . k_j / sqrt(head_dim) + bias_h(dt),   dt = pos(query i) - pos(key j)
    bias_h(dt) = -inf where dt < 0 (causal), -inf where dt > window, else decay_h(dt)

Decays, as in the Powerformer authors' ``Causal_local_masks.py`` (``alpha`` is their ``attn_decay_scale``):

    powerlaw     -alpha * log(dt + 1)                       (the default; alpha >= 0)
    simpowerlaw  -(dt ** alpha), added to the similarity scores (the paper's SPL; alpha >= 0)
    butterworth  5 * log|H(w)| of a digital Butterworth low-pass (order 1 or 2, cutoff 0.8 Nyquist), sampled at
                 w = 2 dt / alpha on scipy.signal.freqz's 512-point grid and linearly interpolated; dt beyond the
                 grid (about alpha * pi / 2) is masked. alpha is a time scale > 0.
    step         0 for dt <= alpha, masked beyond (alpha is a width >= 1)
    none         0: plain causal attention

``cutoff`` (and ``max_context``) mask dt > window, so a query sees at most ``window + 1`` keys. Evaluation is
blockwise for long inputs: for each block of queries the bias is a Toeplitz matrix, taken as an ``as_strided``
view of one vector of decays over keys in reversed order (computed once per call), and handed to the fused
kernel of ``F.scaled_dot_product_attention``. No L x L bias is ever materialised, and with a window only the keys
inside it are visited, so the cost is O(L * window).

Training keeps that memory: on CPU the blocks run on the fused kernel directly, which also returns each row's
log-sum-exp, and a custom backward saves only q, k, v, the output and the log-sum-exp and recomputes each block's
probabilities (FlashAttention-2), the gradient of a learnable alpha included (see ``_BlockedDecayedAttention``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECAY_TYPES = ("powerlaw", "simpowerlaw", "butterworth", "step", "none")
_DECAY_ALIASES = {"butter1": ("butterworth", 1), "butter2": ("butterworth", 2), "causal": ("none", None)}
_FREQZ_POINTS = 512  # scipy.signal.freqz's default worN, which the authors' Butterworth mask samples
_BUTTER_CUTOFF = 0.8  # the authors' Butterworth cutoff, as a fraction of Nyquist
_DENSE_MAX_QUERIES = 16  # up to this many queries (and block_size), decayed_attention uses a dense bias

KVCache = Tuple[Tensor, Tensor]  # (key, value), each (batch, n_kv_heads, length, head_dim)


def is_exporting() -> bool:
    """True under torch.jit tracing/scripting, torch.export / dynamo and the ONNX exporters.

    Exported graphs use the dense path, whose shapes are symbolic; the blocked path is a Python loop over the
    sequence length and would be unrolled for one length.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    for name in ("is_exporting", "is_compiling"):
        check = getattr(compiler, name, None)
        if check is not None and check():
            return True
    return bool(torch.onnx.is_in_onnx_export())


def _butterworth_log_gain(w: Tensor, order: int) -> Tensor:
    """5 * log|H(e^{jw})| of scipy's ``butter(order, 0.8)`` (bilinear transform, so |H|^2 has a closed form)."""
    ratio = torch.tan(w / 2) / math.tan(math.pi * _BUTTER_CUTOFF / 2)
    return -2.5 * torch.log1p(ratio.pow(2 * order))


def decay_values(dt: Tensor, decay: str, alpha: Tensor, butterworth_order: int = 1) -> Tensor:
    """The decay term for non-negative distances ``dt`` (no causal or window masking).

    ``dt``: float tensor of integer values >= 0, any shape S. ``alpha``: scalar or (H, 1, ..., 1) broadcastable
    against ``dt``. Returns the broadcast of both shapes; ``-inf`` where the decay itself masks (``step``,
    ``butterworth`` beyond its grid).
    """
    if decay == "powerlaw":
        return -alpha * torch.log1p(dt)
    if decay == "simpowerlaw":
        return -torch.pow(dt, alpha)
    if decay == "step":
        zero = torch.zeros((), dtype=dt.dtype, device=dt.device)
        return torch.where(dt <= torch.floor(alpha), zero, torch.full_like(zero, float("-inf")))
    if decay == "butterworth":
        step = math.pi / _FREQZ_POINTS  # freqz grid: w_k = k * pi / 512, k = 0 .. 511
        pos = (2.0 * dt / alpha) / step  # grid coordinate of w = 2 dt / alpha
        k0 = torch.floor(pos).clamp(max=_FREQZ_POINTS - 1)
        k1 = (k0 + 1).clamp(max=_FREQZ_POINTS - 1)
        frac = pos - k0
        g0 = _butterworth_log_gain(k0 * step, butterworth_order)
        g1 = _butterworth_log_gain(k1 * step, butterworth_order)
        value = g0 + (g1 - g0) * frac
        return torch.where(pos <= _FREQZ_POINTS - 1, value, torch.full_like(value, float("-inf")))
    # "none"
    return torch.zeros_like(dt) + torch.zeros_like(alpha)


class DecayBias(nn.Module):
    """The WCMHA bias as a function of query-key distance.

    Args:
        decay: one of ``DECAY_TYPES`` (aliases ``butter1``/``butter2`` and ``causal`` are accepted).
        alpha: the decay scale (see the module docstring); ``alpha=0`` with ``powerlaw`` is plain causal.
        n_heads: number of attention heads (used by ``per_head_alpha``).
        learnable_alpha: make alpha an ``nn.Parameter`` (``powerlaw`` and ``simpowerlaw`` only).
        per_head_alpha: one alpha per head, shape (n_heads,), instead of a scalar.
        butterworth_order: 1 or 2.
        cutoff: mask distances greater than this (None: no cutoff).
        causal: mask dt < 0. With ``causal=False`` the decay is applied to |dt| (a symmetric, non-causal bias).

    ``forward(dt)`` takes integer-valued float distances of shape (Lq, Lk) and returns the bias of shape
    (H, Lq, Lk), H = n_heads if per_head_alpha else 1; masked entries are ``-inf``.

    Raises ``ValueError`` naming the argument for an unknown decay, a negative or out-of-range alpha, a
    learnable alpha on a decay that has none to learn, or a bad order/cutoff.
    """

    def __init__(
        self,
        decay: str = "powerlaw",
        alpha: float = 1.0,
        n_heads: int = 1,
        learnable_alpha: bool = False,
        per_head_alpha: bool = False,
        butterworth_order: int = 1,
        cutoff: Optional[int] = None,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(decay, str):
            raise ValueError(f"decay must be a string, one of {DECAY_TYPES}; got {decay!r}")
        name = decay.lower()
        if name in _DECAY_ALIASES:
            name, order = _DECAY_ALIASES[name]
            butterworth_order = order if order is not None else butterworth_order
        if name not in DECAY_TYPES:
            raise ValueError(f"decay must be one of {DECAY_TYPES} (or butter1, butter2, causal); got {decay!r}")
        if butterworth_order not in (1, 2):
            raise ValueError(f"butterworth_order must be 1 or 2; got {butterworth_order!r}")
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite; got {alpha!r}")
        if name in ("powerlaw", "simpowerlaw") and alpha < 0:
            raise ValueError(f"alpha must be >= 0 for decay={name!r} (the decay is -alpha*...); got {alpha}")
        if name == "step" and alpha < 1:
            raise ValueError(f"alpha is the step width and must be >= 1 for decay='step'; got {alpha}")
        if name == "butterworth" and alpha <= 0:
            raise ValueError(f"alpha is the time scale and must be > 0 for decay='butterworth'; got {alpha}")
        if learnable_alpha and name not in ("powerlaw", "simpowerlaw"):
            raise ValueError(f"learnable_alpha is only supported for powerlaw and simpowerlaw, not decay={name!r}")
        if cutoff is not None and (isinstance(cutoff, bool) or int(cutoff) != cutoff or cutoff < 0):
            raise ValueError(f"cutoff must be a non-negative integer or None; got {cutoff!r}")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1; got {n_heads!r}")

        self.decay = name
        self.butterworth_order = int(butterworth_order)
        self.cutoff = None if cutoff is None else int(cutoff)
        self.causal = bool(causal)
        self.learnable_alpha = bool(learnable_alpha)
        self.per_head_alpha = bool(per_head_alpha)
        self.n_heads = int(n_heads)
        init = torch.full((n_heads,) if per_head_alpha else (), alpha, dtype=torch.float32)
        if learnable_alpha:
            self.alpha = nn.Parameter(init)
        else:
            self.register_buffer("alpha", init)

        self._refresh_static()

    def _refresh_static(self) -> None:
        # Python-side facts about alpha, computed once (and again after load_state_dict) so that forward never
        # branches on tensor data, which tracing and torch.export cannot follow.
        alpha_max = float(self.alpha.detach().max())
        bounds = [] if self.cutoff is None else [self.cutoff]
        if self.decay == "step":
            bounds.append(int(math.floor(alpha_max)))
        elif self.decay == "butterworth":
            # freqz's last grid point, w = pi * 511 / 512, sits at dt = alpha * w / 2.
            bounds.append(int(alpha_max * math.pi * (_FREQZ_POINTS - 1) / (2 * _FREQZ_POINTS)))
        self._window: Optional[int] = min(bounds) if bounds else None
        zero_powerlaw = self.decay == "powerlaw" and bool((self.alpha.detach() == 0).all())
        self._trivial = self.cutoff is None and not self.learnable_alpha and (self.decay == "none" or zero_powerlaw)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_static()

    @property
    def window(self) -> Optional[int]:
        """Largest distance that can get a finite bias (None: unbounded)."""
        return self._window

    @property
    def is_trivial(self) -> bool:
        """True when the bias is exactly the causal mask (decay none, or powerlaw with a fixed alpha of 0)."""
        return self._trivial

    def forward(self, dt: Tensor) -> Tensor:
        alpha = self.alpha.to(dt.dtype)
        alpha = alpha.view(-1, *([1] * dt.dim()))  # (H|1, 1, ..): per head, or one for all heads
        return self._masked(dt, alpha)

    def _masked(self, dt: Tensor, alpha: Tensor) -> Tensor:
        # The bias at distances dt for an explicit alpha broadcastable against (H|1, *dt.shape).
        dist = dt if self.causal else dt.abs()
        bias = decay_values(dist.clamp(min=0), self.decay, alpha, self.butterworth_order)
        if bias.dim() == dt.dim():
            bias = bias.unsqueeze(0)
        masked = dist < 0
        if self.cutoff is not None:
            masked = masked | (dist > self.cutoff)
        return bias.masked_fill(masked, float("-inf"))

    def extra_repr(self) -> str:
        alpha = self.alpha.tolist()
        return (
            f"decay={self.decay!r}, alpha={alpha}, learnable_alpha={self.learnable_alpha}, cutoff={self.cutoff}, "
            f"causal={self.causal}" + (f", butterworth_order={self.butterworth_order}" if self.decay == "butterworth" else "")
        )


def _expand_kv(x: Tensor, groups: int) -> Tensor:
    # (B, Hkv, L, D) -> (B, Hkv * groups, L, D): each kv head shared by `groups` consecutive query heads
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def decayed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: DecayBias,
    window: Optional[int] = None,
    block_size: int = 1024,
    dropout_p: float = 0.0,
    kv_groups: Optional[int] = None,
) -> Tensor:
    """Attention with the WCMHA bias; queries are the last Lq of the Lk positions (a KV cache precedes them).

    q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D) with H == Hkv * kv_groups and Lk >= Lq. Returns (B, H, Lq, D).
    ``kv_groups`` (query heads per kv head) is read from the shapes when None; modules pass it as a Python int
    so that tracing records no shape comparison.
    ``window`` further limits the distances a query sees (dt > window masked), on top of ``bias.window``.
    Eager evaluation is blockwise: ``block_size`` queries at a time, the bias an ``as_strided`` Toeplitz view
    (never an Lq x Lk tensor); with a window, blocks of about the window's size visit only the keys inside it, so
    that the cost is O(L * window). Exported graphs (tracing, torch.export, ONNX) use one dense bias of shape
    (1, H|1, Lq, Lk) instead, whose shapes stay symbolic; so do eager calls with at most min(16, block_size)
    queries (decode steps), where the dense bias is O(Lk). In eager mode a trivial bias (causal only) goes straight
    to SDPA: ``is_causal`` when Lq == Lk, no mask for a single query.

    Gradients: every input, ``bias.alpha`` included when it is a parameter. On CPU without dropout the blockwise
    path has its own backward that stores O(Lq) per head (no probabilities) and gives exact gradients of q, k, v
    and alpha (scalar or per head); elsewhere (CUDA, attention dropout) autograd runs through the per-block SDPA
    calls. Double backward is not supported on the blockwise CPU path.
    """
    lq, lk = q.shape[2], k.shape[2]
    groups = q.shape[1] // k.shape[1] if kv_groups is None else kv_groups
    limits = [w for w in (window, bias.window) if w is not None]
    win = min(limits) if limits else None
    exporting = is_exporting()
    if exporting:  # exporters see plain attention: repeat the kv heads explicitly
        k, v = _expand_kv(k, groups), _expand_kv(v, groups)
    gqa = groups != 1 and not exporting
    # Causal-only bias with a window that cuts nothing: SDPA's own kernels. These shortcuts depend on this call's
    # shapes, so exported graphs must not bake them in (a graph traced without a past would then ignore one, as
    # is_causal aligns its mask top-left); they always take the dense bias.
    if not exporting and bias.is_trivial and bias.causal and (win is None or lk - 1 <= win):
        if lq == lk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
        if lq == 1:  # one query after every key: nothing to mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=gqa)
    if not exporting and lq > min(_DENSE_MAX_QUERIES, block_size):
        return _blocked_attention(q, k, v, bias, win, block_size, dropout_p, gqa)
    # Exports, and a few queries (decode steps): one dense (1, H|1, Lq, Lk) bias. For Lq this small it costs
    # O(Lk), whereas the blocked path would copy (flip) the whole key/value cache on every call.
    mask = dense_bias(bias, lq, lk, win, q.dtype, q.device)  # (1, H|1, Lq, Lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


def _bias_dtype(dtype: torch.dtype) -> torch.dtype:
    # Distances and decays in at least float32: half precision cannot even hold every integer distance > 2048.
    return torch.promote_types(dtype, torch.float32)


def dense_bias(bias: DecayBias, lq: int, lk: int, window: Optional[int], dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """The full bias of ``lq`` queries that are the last of ``lk`` positions: (1, H|1, Lq, Lk), ``-inf`` masked.

    4-D because SDPA's fused CPU kernel handles 3-D masks through a much slower path.
    """
    q_pos = torch.arange(lq, device=device) + (lk - lq)
    dt = (q_pos[:, None] - torch.arange(lk, device=device)[None, :]).to(_bias_dtype(dtype))  # (Lq, Lk)
    mask = bias(dt)
    if window is not None:
        mask = mask.masked_fill(dt.abs() > window, float("-inf"))
    return mask.to(dtype).unsqueeze(0)


def dense_weights(q: Tensor, k: Tensor, mask: Optional[Tensor], scale: Optional[float] = None) -> Tensor:
    """``softmax(q k^T * scale + mask)``: attention weights, densely, for the paths that must return them
    (inspection, ``output_attentions``, padding masks) and for exports.

    q: (B, H, Lq, D); k: (B, Hkv, Lk, D), Hkv dividing H (each kv head serves H / Hkv consecutive query heads);
    mask: None or an additive bias broadcastable to (B, H, Lq, Lk), ``-inf`` where masked; scale: default
    1 / sqrt(D). Returns (B, H, Lq, Lk); multiply by the values (repeated likewise) for the output.
    """
    k = _expand_kv(k, q.shape[1] // k.shape[1])
    scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def trim_cache(cache: KVCache, keep: Optional[int]) -> KVCache:
    """The last ``keep`` positions of a (key, value) cache (None: all of them; 0: none)."""
    k, v = cache
    if keep is None:
        return k, v
    if keep == 0:  # k[:, :, -0:] would be everything
        return k[:, :, :0], v[:, :, :0]
    return k[:, :, -keep:], v[:, :, -keep:]


def _bias_line(bias: DecayBias, dt: Tensor, alpha: Tensor, win: Optional[int]) -> Tensor:
    """The bias at the 1-D distances ``dt`` (n,) with ``alpha`` shaped (H|1, 1) or (H|1, n): (H|1, n), ``-inf``
    where masked (causal, cutoff, ``win``)."""
    line = bias._masked(dt, alpha)
    if win is not None:
        line = line.masked_fill(dt.abs() > win, float("-inf"))
    return line


Part = Tuple[int, int, int, int]  # (qs, qe, ks, ke): queries [qs, qe) and keys [ks, ke)
_SUB_ROWS = 256  # queries per part on the causal diagonal of the split schedule


class _Schedule:
    """The blocks of one blockwise call and the bias along every distance they meet, as one vector ``line``.

    Queries go ``block`` at a time, [s, e) at absolute positions p0 + s .. (p0 = Lk - Lq: a cache precedes them),
    each block in parts (queries [qs, qe) of the block and some of its keys [ks, ke)). Keys are taken in reversed
    order, which makes the bias a Toeplitz matrix in the order of the kernel's rows and columns: query r and
    reversed key c are dt = r + c + off apart, off = p0 + qs - ke + 1, so a part's bias is an ``as_strided`` view
    with strides (1, 1) of ``line``, the decays at distances dmin .. dmax (about Lk + block of them, ``-inf`` where
    masked), computed once per call. The kernel reads that view from cache; no bias tile is materialised.

    Causal attention without a window splits each block longer than ``_SUB_ROWS`` so that little of the masked
    half of the causal diagonal is computed: for each ``_SUB_ROWS`` queries of the block, the block's keys up to
    them (their causal corner masked by the ``-inf`` of negative distances in ``line``); then the keys before the
    block, for all its queries (one part, nothing masked). The two parts of a row are merged through their
    log-sum-exps, once per block. Otherwise (a window, non-causal, a short block) one part per block: the keys
    the block may see.
    """

    def __init__(self, lq: int, lk: int, causal: bool, win: Optional[int], block: int) -> None:
        if win is not None:  # keys per block are block + window: keep the block near the window's size
            block = min(block, max(win, 64))
        p0 = lk - lq
        self.lk, self.p0 = lk, p0
        self.spans: List[Tuple[int, int, List[Part]]] = []
        for s in range(0, lq, block):
            e = min(s + block, lq)
            if causal and win is None and e - s > _SUB_ROWS:
                # the sub-rows first, so that the keys before the block merge into all its rows at once
                parts = [(qs, min(qs + _SUB_ROWS, e), p0 + s, p0 + min(qs + _SUB_ROWS, e))
                         for qs in range(s, e, _SUB_ROWS)]
                parts += [(s, e, 0, p0 + s)] if p0 + s > 0 else []
            else:
                ks = 0 if win is None else max(0, p0 + s - win)
                ke = p0 + e if causal else (lk if win is None else min(lk, p0 + e + win))
                parts = [(s, e, ks, ke)]
            self.spans.append((s, e, parts))
        offs = [(p0 + qs - ke + 1, qe - qs, ke - ks) for _, _, parts in self.spans for qs, qe, ks, ke in parts]
        self.dmin = min(off for off, _, _ in offs)
        self.dmax = max(off + nq + nk - 2 for off, nq, nk in offs)

    def distances(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.arange(self.dmin, self.dmax + 1, device=device, dtype=_bias_dtype(dtype))  # (n,)

    def masks(self, line: Tensor) -> "_BlockMasks":
        return _BlockMasks(self, line)

    def keys(self, k_rev: Tensor, part: Part) -> Tensor:
        """A part's keys (or values), in reversed order, as a view of the reversed ones."""
        _, _, ks, ke = part
        return k_rev[:, :, self.lk - ke : self.lk - ks]


class _BlockMasks:
    """The (1, H|1, nq, nk) bias of each part of a ``_Schedule``: a view of one ``line`` (H|1, n), contiguous."""

    def __init__(self, sched: _Schedule, line: Tensor) -> None:
        self.sched, self.line = sched, line

    def __call__(self, part: Part) -> Tensor:
        qs, qe, ks, ke = part
        line, sched = self.line, self.sched
        start = sched.p0 + qs - ke + 1 - sched.dmin
        # 4-D on purpose: SDPA's fused CPU kernel takes a 3-D mask through a much slower path (measured 4x).
        return line.as_strided((1, line.shape[0], qe - qs, ke - ks), (line.numel(), line.shape[1], 1, 1),
                               line.storage_offset() + start)


def _flash_cpu_ops():
    # The fused CPU kernel behind F.scaled_dot_product_attention, called directly because it also returns the row
    # log-sum-exp (and its backward takes it); None where this torch build lacks it.
    try:
        return (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    except (AttributeError, RuntimeError):
        return None


_FLASH_CPU = _flash_cpu_ops()


def _decay_derivative_line(bias: DecayBias, dt: Tensor, alpha: Tensor, win: Optional[int]) -> Tensor:
    """d line / d alpha, elementwise: (H|1, n); 0 where the line is masked. Autograd on the 1-D line only."""
    with torch.enable_grad():
        a = alpha.detach().to(dt.dtype).reshape(-1, 1).expand(-1, dt.shape[0]).clone().requires_grad_(True)
        line = _bias_line(bias, dt, a, win)
        (grad,) = torch.autograd.grad(line, a, torch.ones_like(line), allow_unused=True)
    if grad is None:
        return torch.zeros_like(a)
    return torch.where(torch.isfinite(line) & torch.isfinite(grad), grad, torch.zeros_like(grad)).detach()


def _flash_blocks(sched: _Schedule, masks: _BlockMasks, q: Tensor, k_rev: Tensor, v_rev: Tensor) -> Tuple[Tensor, Tensor]:
    """Output (B, H, Lq, D) and row log-sum-exp (B, H, Lq) of the blockwise attention on the fused CPU kernel.

    A row's parts (disjoint sets of keys) are merged on the fly: lse = logaddexp(lse_a, lse_b),
    out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
    """
    forward_op = _FLASH_CPU[0]
    out, lse = torch.empty_like(q), None
    for s, _, parts in sched.spans:
        covered = s  # rows [s, covered) of this block have a part already (parts come in that order)
        for part in parts:
            qs, qe = part[0], part[1]
            o, l = forward_op(q[:, :, qs:qe], sched.keys(k_rev, part), sched.keys(v_rev, part), 0.0, False,
                              attn_mask=masks(part))
            if lse is None:
                lse = l.new_empty(q.shape[:3])
            if qs >= covered:  # the first part of these rows
                out[:, :, qs:qe], lse[:, :, qs:qe] = o, l
                covered = qe
                continue
            prev = lse[:, :, qs:qe]
            new = torch.logaddexp(prev, l)
            # exp(prev - new) out + exp(l - new) o, the two weights summing to one
            out[:, :, qs:qe] = torch.lerp(out[:, :, qs:qe], o, torch.exp(l - new).unsqueeze(-1).to(o.dtype))
            lse[:, :, qs:qe] = new
    return out, lse


class _BlockedDecayedAttention(torch.autograd.Function):
    """Blockwise decayed attention on the fused CPU kernel, with a backward that keeps the forward's memory.

    Saved: q, the reversed k and v, the output and the row log-sum-exp (B, H, Lq), nothing of size Lq x Lk. The
    backward recomputes each block's probabilities from the log-sum-exp (the FlashAttention-2 backward, the
    kernel's own, given the whole row's output and log-sum-exp, so a block split in parts stays exact) for dq,
    dk, dv. The decay's gradient comes from the same blocks: with g = d bias / d alpha,

        d O_i / d alpha = sum_j P_ij g_ij v_j - (sum_j P_ij g_ij) O_i = s exp(lse'_i - lse_i) (O'_i - O_i),

    where O' and lse' are the attention and log-sum-exp under the tilted bias ``bias + log1p(g / s)`` (s scales g
    so that 1 + g / s > 0; s = -1 for decays that only fall as alpha grows, powerlaw and simpowerlaw). That is one
    more fused forward per block part, summed over parts, and d alpha = sum_i dO_i . d O_i / d alpha (per head,
    or summed over heads for one alpha).
    """

    @staticmethod
    def forward(ctx, q, k, v, alpha, bias, win, block):
        sched = _Schedule(q.shape[2], k.shape[2], bias.causal, win, block)
        dt = sched.distances(q.device, q.dtype)
        line = _bias_line(bias, dt, alpha.detach().to(dt.dtype).reshape(-1, 1), win).to(q.dtype).contiguous()
        k_rev, v_rev = k.flip(2), v.flip(2)
        out, lse = _flash_blocks(sched, sched.masks(line), q, k_rev, v_rev)
        ctx.save_for_backward(q, k_rev, v_rev, out, lse, alpha)
        ctx.bias, ctx.win, ctx.sched, ctx.line, ctx.dt = bias, win, sched, line, dt
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_rev, v_rev, out, lse, alpha = ctx.saved_tensors
        sched, line, lk = ctx.sched, ctx.line, k_rev.shape[2]
        forward_op, backward_op = _FLASH_CPU
        masks = sched.masks(line)
        dq, dk_rev, dv_rev = torch.zeros_like(q), torch.zeros_like(k_rev), torch.zeros_like(v_rev)
        need_alpha = ctx.needs_input_grad[3]
        if need_alpha:
            g = _decay_derivative_line(ctx.bias, ctx.dt, alpha, ctx.win)  # (H|1, n)
            ones = torch.ones_like(g[:, :1])
            scale = torch.where((g <= 0).all(dim=1, keepdim=True), -ones,
                                torch.where((g >= 0).all(dim=1, keepdim=True), ones,
                                            2 * (-g).amax(dim=1, keepdim=True)))  # (H|1, 1): 1 + g / s > 0
            tilted = sched.masks((line + torch.log1p(g / scale).to(line.dtype)).contiguous())
            d_alpha = torch.zeros(q.shape[1], dtype=_bias_dtype(q.dtype), device=q.device)
        for _, _, parts in sched.spans:
            for part in parts:
                qs, qe, ks, ke = part
                qb, ob, lb, gb = q[:, :, qs:qe], out[:, :, qs:qe], lse[:, :, qs:qe], grad_out[:, :, qs:qe]
                kb, vb = sched.keys(k_rev, part), sched.keys(v_rev, part)
                gq, gk, gv = backward_op(gb, qb, kb, vb, ob, lb, 0.0, False, attn_mask=masks(part))
                dq[:, :, qs:qe] += gq
                dk_rev[:, :, lk - ke : lk - ks] += gk
                dv_rev[:, :, lk - ke : lk - ks] += gv
                if need_alpha:
                    o2, l2 = forward_op(qb, kb, vb, 0.0, False, attn_mask=tilted(part))
                    weight = torch.exp((l2 - lb).to(d_alpha.dtype))  # (B, H, nq)
                    d_alpha += (weight * (gb * (o2 - ob)).sum(-1).to(d_alpha.dtype)).sum(dim=(0, 2))
        grad_alpha = None
        if need_alpha:
            per_head = d_alpha * scale.reshape(-1).to(d_alpha.dtype)  # (H,); the scale broadcasts when H|1 is 1
            grad_alpha = (per_head if alpha.dim() else per_head.sum()).reshape(alpha.shape).to(alpha.dtype)
        return dq, dk_rev.flip(2), dv_rev.flip(2), grad_alpha, None, None, None


def _blocked_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: DecayBias, win: Optional[int], block: int, dropout_p: float, gqa: bool
) -> Tensor:
    if _FLASH_CPU is not None and q.device.type == "cpu" and dropout_p == 0.0:
        return _BlockedDecayedAttention.apply(q, k, v, bias.alpha, bias, win, block)
    # Elsewhere (CUDA, attention dropout): per-block SDPA calls under autograd, on one part per block.
    lk = k.shape[2]
    sched = _Schedule(q.shape[2], lk, bias.causal, win if win is not None else lk, block)
    dt = sched.distances(q.device, q.dtype)
    line = _bias_line(bias, dt, bias.alpha.to(dt.dtype).reshape(-1, 1), win).to(q.dtype).contiguous()
    masks = sched.masks(line)
    k_rev, v_rev = k.flip(2), v.flip(2)
    outs = []
    for _, _, (part,) in sched.spans:
        outs.append(F.scaled_dot_product_attention(
            q[:, :, part[0] : part[1]], sched.keys(k_rev, part), sched.keys(v_rev, part), attn_mask=masks(part),
            dropout_p=dropout_p, enable_gqa=gqa,
        ))
    return torch.cat(outs, dim=2)


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``n_kv_heads`` key/value heads (1: MQA, n_heads: MHA), a decay bias and a KV cache.

    Args:
        d_model: model width; must be divisible by ``n_heads``.
        n_heads: query heads. n_kv_heads: key/value heads (default n_heads); must divide ``n_heads``.
        decay, alpha, learnable_alpha, per_head_alpha, butterworth_order, cutoff, causal: see ``DecayBias``
            (the default here is ``decay="none"``: standard causal attention).
        max_context: keep at most this many past positions in the cache (a sliding window). Attention then sees
            at most ``max_context`` earlier positions, in a full forward too, so step-by-step decoding with the
            cache equals one full forward. Distances stay true distances.
        dropout: attention dropout while training. bias: use biases in the projections.
        block_size: queries per block of the eager, blockwise evaluation (see ``decayed_attention``).

    ``step(x, past=None, window=None) -> (y, present)``: ``forward`` with a per-call ``window`` (on top of
    ``max_context``) and, as ``past``, optionally a cache object filled in place (see ``step``); the one
    implementation that ``tsattn.models`` adapts.

    ``forward(x, past=None) -> (y, present)``
        x: (B, L, d_model); past: None or (key, value), each (B, n_kv_heads, P, head_dim).
        y: (B, L, d_model); present: (key, value) of the past and new positions, trimmed to the window, each
        (B, n_kv_heads, min(P + L, window), head_dim). The new positions continue from P.

    Raises ``ValueError`` naming the argument for inconsistent sizes (and see ``DecayBias``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: Optional[int] = None,
        decay: str = "none",
        alpha: float = 1.0,
        learnable_alpha: bool = False,
        per_head_alpha: bool = False,
        butterworth_order: int = 1,
        cutoff: Optional[int] = None,
        max_context: Optional[int] = None,
        causal: bool = True,
        dropout: float = 0.0,
        bias: bool = True,
        block_size: int = 1024,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1; got {n_heads!r}")
        if d_model < 1 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must be >= 1 and divide n_heads ({n_heads})")
        if max_context is not None and (isinstance(max_context, bool) or int(max_context) != max_context or max_context < 1):
            raise ValueError(f"max_context must be a positive integer or None; got {max_context!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.max_context = None if max_context is None else int(max_context)
        self.block_size = int(block_size)
        self.dropout = float(dropout)
        self.decay = DecayBias(decay, alpha, n_heads, learnable_alpha, per_head_alpha, butterworth_order, cutoff, causal)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    @property
    def window(self) -> Optional[int]:
        """Largest query-key distance attended (None: unbounded); the cache keeps this many positions."""
        limits = [w for w in (self.max_context, self.decay.window) if w is not None]
        return min(limits) if limits else None

    def _project(self, x: Tensor, past: Optional[KVCache]) -> Tuple[Tensor, Tensor, Tensor]:
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(x).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)  # (B, Hkv, P + L, D)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        return q, k, v

    def _present(self, k: Tensor, v: Tensor) -> KVCache:
        return trim_cache((k, v), self.window)

    def call_window(self, window: Optional[int] = None) -> Optional[int]:
        """The largest distance a ``step`` with ``window`` lets a query see: window and max_context combined."""
        limits = [w for w in (window, self.max_context) if w is not None]
        return min(limits) if limits else None

    def kept_length(self, window: Optional[int] = None) -> Optional[int]:
        """Past positions a ``step`` with ``window`` keeps in its present (None: all of them)."""
        limits = [w for w in (self.call_window(window), self.decay.window) if w is not None]
        return min(limits) if limits else None

    def step(self, x: Tensor, past=None, window: Optional[int] = None):
        """One call of the attention: ``forward`` with a per-call ``window`` and an optional in-place cache.

        x: (B, L, d_model), the L positions after the P of ``past``. ``past``: None, ``(key, value)`` (each
        (B, n_kv_heads, P, head_dim)), or a cache object with ``append(k, v) -> (key, value)`` (the new positions
        added after the cached ones, all of them returned) and ``trim(keep)`` (forget all but the last ``keep``;
        None keeps all), which is filled in place and returned as the present. ``window``: a query sees at most
        this many earlier positions, on top of ``max_context`` (None: max_context alone).
        Returns ``(y (B, L, d_model), present)``: present the past and new keys/values trimmed to
        ``kept_length(window)``, or the cache object itself.
        """
        q, k, v = self._project(x, None)
        stateful = past is not None and not isinstance(past, (tuple, list))
        if stateful:
            k, v = past.append(k, v)  # (B, Hkv, P + L, D)
        elif past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)  # (B, Hkv, P + L, D)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        y = decayed_attention(
            q, k, v, self.decay, window=self.call_window(window), block_size=self.block_size,
            dropout_p=self.dropout if self.training else 0.0, kv_groups=self.n_heads // self.n_kv_heads,
        )  # (B, H, L, D)
        b, _, l, _ = y.shape
        y = self.out_proj(y.transpose(1, 2).reshape(b, l, self.n_heads * self.head_dim))
        if stateful:
            past.trim(self.kept_length(window))
            return y, past
        return y, trim_cache((k, v), self.kept_length(window))

    def forward(self, x: Tensor, past: Optional[KVCache] = None) -> Tuple[Tensor, KVCache]:
        return self.step(x, past)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, past: Optional[KVCache] = None) -> Tensor:
        """The softmax weights the forward pass uses, densely: (B, H, L, P + L). For inspection and analysis."""
        q, k, _ = self._project(x, past)
        return dense_weights(q, k, dense_bias(self.decay, q.shape[2], k.shape[2], self.window, q.dtype, q.device))


class WCMHA(GroupedQueryAttention):
    """Powerformer's Weighted Causal Multihead Attention: ``GroupedQueryAttention`` with ``decay="powerlaw"``.

    ``WCMHA(d_model, n_heads, alpha=1.0)`` is the paper's default; every argument of ``GroupedQueryAttention``
    applies (``n_kv_heads`` for GQA/MQA, ``cutoff``, ``max_context``, ``learnable_alpha``, ...).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: Optional[int] = None, decay: str = "powerlaw",
                 alpha: float = 1.0, **kwargs) -> None:
        super().__init__(d_model, n_heads, n_kv_heads=n_kv_heads, decay=decay, alpha=alpha, **kwargs)
