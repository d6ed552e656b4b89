"""Seed 002's attention names (MHA, MQA, GQA, the factory, cross-attention) on ``tsattn.modules``.

Every self-attention here is a ``tsattn.modules.GroupedQueryAttention`` driven through its own ``step`` (projections,
decay bias, ``decayed_attention``, cache trim and window: one implementation), so any WCMHA decay (``decay="powerlaw", alpha=...``) combines with MHA, MQA and GQA.
Two forms:

- functional, ``step(x, past=None, window=None) -> (y, present)``: no hidden state; the models and exported
  graphs use it. ``past``/``present`` are ``(key, value)``, each (batch, kv_heads, length, head_dim).
- seed 002's stateful form, ``forward(query, key=None, value=None, expanding_context=True) -> y``: with
  ``use_kv_cache=True`` the module keeps its own cache between calls (``reset_cache()`` clears it).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsattn.modules import DecayBias, GroupedQueryAttention, decayed_attention

KVCache = Tuple[Tensor, Tensor]  # (key, value), each (batch, kv_heads, length, head_dim)

ATTENTION_TYPES = ("mha", "mqa", "gqa")
# keyword arguments passed through to GroupedQueryAttention (the WCMHA decay and the blocked evaluation)
DECAY_KWARGS = ("decay", "alpha", "learnable_alpha", "per_head_alpha", "butterworth_order", "cutoff", "block_size")


def create_causal_mask(seq_len: int, device: Optional[torch.device] = None) -> Tensor:
    """(seq_len, seq_len) bool, lower triangular: True where query i may attend to key j (j <= i)."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``softmax(query key^T / sqrt(d) [masked]) value``; query (..., Lq, d), key/value (..., Lk, d) -> (..., Lq, d).

    ``mask``: bool, True where attention is allowed (``create_causal_mask``), or a float bias added to the
    scores; broadcastable to (..., Lq, Lk). A query row with every key masked gives NaN.
    """
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


class KVBuffer:
    """A stateful key/value cache filled in place: what the stateful forms keep between calls.

    Storage is (B, kv_heads, capacity, head_dim); ``append`` writes the new positions after the cached ones and
    returns views of both, ``trim(keep)`` forgets all but the last ``keep``. When the storage is full the live
    positions move to a new one of twice the needed size, so an append costs O(new positions) amortised instead of
    the O(cache) copy of ``torch.cat``. While autograd records (new keys that require grad) it concatenates
    instead, so that training through the cache keeps its gradients. ``view()`` is the cache as a (key, value) pair of
    (B, kv_heads, length, head_dim) views, or None when empty.
    """

    def __init__(self) -> None:
        self._k: Optional[Tensor] = None
        self._v: Optional[Tensor] = None
        self._start = self._end = 0

    @property
    def length(self) -> int:
        return self._end - self._start

    def view(self) -> Optional[KVCache]:
        if self._k is None:
            return None
        return self._k[:, :, self._start:self._end], self._v[:, :, self._start:self._end]

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        n = k.shape[2]
        if self._k is not None and (self._k.shape[0] != k.shape[0] or self._k.shape[1] != k.shape[1]):
            raise ValueError(f"the cached sequence has batch {self._k.shape[0]} and {self._k.shape[1]} kv heads; "
                             f"got {tuple(k.shape)}: call reset_cache() to start another")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # autograd saved the earlier views for backward: never write into them, concatenate instead
            old = self.view()
            self._k = k if old is None else torch.cat([old[0], k], dim=2)
            self._v = v if old is None else torch.cat([old[1], v], dim=2)
            self._start, self._end = 0, self._k.shape[2]
            return self.view()
        if self._k is None or self._end + n > self._k.shape[2]:
            live = self.length
            shape = (k.shape[0], k.shape[1], max(2 * (live + n), 64), k.shape[3])
            new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            if live:
                new_k[:, :, :live] = self._k[:, :, self._start:self._end]
                new_v[:, :, :live] = self._v[:, :, self._start:self._end]
            self._k, self._v, self._start, self._end = new_k, new_v, 0, live
        self._k[:, :, self._end:self._end + n] = k
        self._v[:, :, self._end:self._end + n] = v
        self._end += n
        return self.view()

    def trim(self, keep: Optional[int]) -> None:
        if keep is not None:
            self._start = max(self._start, self._end - keep)


class SelfAttention(nn.Module):
    """Self-attention with ``num_kv_heads`` key/value heads on ``tsattn.modules.GroupedQueryAttention``.

    Args:
        embed_dim: model width, a multiple of ``num_heads``. num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads`` (num_heads: MHA, 1: MQA, else GQA).
        apply_causal_mask: a query attends to itself and earlier positions only.
        use_kv_cache: the stateful ``forward`` keeps a cache between calls. The cached result equals the full
            forward with ``apply_causal_mask``; without it a call's queries see every cached position and every
            position of the call, but outputs already returned are not revised (the models refuse that case).
        max_seq_len: the sliding window of ``expanding_context=False`` (a query sees itself and at most
            max_seq_len - 1 earlier positions).
        decay, alpha, learnable_alpha, per_head_alpha, butterworth_order, cutoff, block_size: passed to
            ``GroupedQueryAttention`` (default ``decay="none"``; ``"powerlaw"`` with ``alpha`` is WCMHA).

    ``step(x, past=None, window=None) -> (y, present)`` (functional): x (B, L, E) are the L positions after the
    P of ``past`` (each (B, kv_heads, P, head_dim)); ``window``: a query sees at most this many earlier positions
    (None: all). y (B, L, E); present: past and new keys/values, trimmed to what a later query can see. A
    ``KVBuffer`` as ``past`` is appended to in place and returned as ``present`` (the stateful forms).

    ``forward(query, key=None, value=None, expanding_context=True) -> y`` (seed 002): self-attention of
    ``query`` (``key``/``value`` may be given only as the same tensor, as in ``attn(x, x, x)``). With
    ``use_kv_cache`` the new positions continue the module's cache; ``expanding_context=False`` slides it to the
    last ``max_seq_len`` positions (and applies that window without a cache too).

    Raises ``ValueError`` naming the argument for inconsistent sizes, and ``TypeError`` for unknown keywords.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 apply_causal_mask: bool = False, use_kv_cache: bool = False, max_seq_len: Optional[int] = None,
                 **decay) -> None:
        super().__init__()
        unknown = sorted(set(decay) - set(DECAY_KWARGS))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}; attention options are {list(DECAY_KWARGS)}")
        _check_positive("num_heads", num_heads)
        _check_positive("embed_dim", embed_dim)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_positive("num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
        if max_seq_len is not None:
            _check_positive("max_seq_len", max_seq_len)
        self.attn = GroupedQueryAttention(embed_dim, num_heads, num_kv_heads, causal=apply_causal_mask, **decay)
        self.embed_dim = embed_dim
        self.apply_causal_mask = bool(apply_causal_mask)
        self.use_kv_cache = bool(use_kv_cache)
        self.max_seq_len = max_seq_len
        self._cache = KVBuffer()

    @property
    def num_heads(self) -> int:
        return self.attn.n_heads

    @property
    def num_kv_heads(self) -> int:
        return self.attn.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.attn.head_dim

    def kept_length(self, window: Optional[int]) -> Optional[int]:
        """Positions a ``present`` keeps for a given ``window`` (None: all of them)."""
        return self.attn.kept_length(window)

    def step(self, x: Tensor, past: Union[KVCache, KVBuffer, None] = None,
             window: Optional[int] = None) -> Tuple[Tensor, Union[KVCache, KVBuffer]]:
        return self.attn.step(x, past, window)  # a KVBuffer is appended to in place (the stateful forms)

    def window_for(self, expanding_context: bool) -> Optional[int]:
        """The ``window`` of ``step`` that a stateful call with ``expanding_context`` uses."""
        if expanding_context:
            return None
        if self.max_seq_len is None:
            raise ValueError("expanding_context=False needs max_seq_len (the sliding window); it is None")
        return self.max_seq_len - 1

    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                expanding_context: bool = True) -> Tensor:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("key and value must be the query tensor itself (self-attention, as in attn(x, x, x)); "
                             "use CrossAttention to attend to another sequence")
        window = self.window_for(expanding_context)
        if not self.use_kv_cache:
            return self.step(query, None, window)[0]
        return self.step(query, self._cache, window)[0]

    def reset_cache(self) -> None:
        """Forget the cached positions (the stateful form's next call starts a new sequence)."""
        self._cache = KVBuffer()

    @property
    def cache(self) -> Optional[KVCache]:
        """The stateful form's cache (key, value), each (B, kv_heads, length, head_dim), or None."""
        return self._cache.view()


class MultiHeadAttention(SelfAttention):
    """Seed 002's MHA: ``SelfAttention`` with as many key/value heads as query heads."""

    def __init__(self, embed_dim: int, num_heads: int, apply_causal_mask: bool = False, use_kv_cache: bool = False,
                 max_seq_len: Optional[int] = None, **decay) -> None:
        super().__init__(embed_dim, num_heads, num_heads, apply_causal_mask, use_kv_cache, max_seq_len, **decay)


class MultiQueryAttention(SelfAttention):
    """Seed 002's MQA: ``SelfAttention`` with one key/value head shared by every query head."""

    def __init__(self, embed_dim: int, num_heads: int, apply_causal_mask: bool = False, use_kv_cache: bool = False,
                 max_seq_len: Optional[int] = None, **decay) -> None:
        super().__init__(embed_dim, num_heads, 1, apply_causal_mask, use_kv_cache, max_seq_len, **decay)


def default_groups(num_heads: int) -> int:
    """GQA's default number of key/value groups: num_heads // 2 (1 for a single head)."""
    return max(1, num_heads // 2)


class GroupQueryAttention(SelfAttention):
    """Seed 002's GQA: ``num_groups`` key/value heads (default num_heads // 2), each shared by
    num_heads / num_groups consecutive query heads (1: MQA, num_heads: MHA)."""

    def __init__(self, embed_dim: int, num_heads: int, num_groups: Optional[int] = None,
                 apply_causal_mask: bool = False, use_kv_cache: bool = False, max_seq_len: Optional[int] = None,
                 **decay) -> None:
        _check_positive("num_heads", num_heads)
        num_groups = default_groups(num_heads) if num_groups is None else num_groups
        _check_positive("num_groups", num_groups)
        if num_heads % num_groups:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_groups ({num_groups})")
        super().__init__(embed_dim, num_heads, num_groups, apply_causal_mask, use_kv_cache, max_seq_len, **decay)
        self.num_groups = num_groups


def kv_heads_of(attention_type: str, num_heads: int, num_groups: Optional[int] = None) -> int:
    """Key/value heads of ``attention_type`` ("mha": num_heads, "mqa": 1, "gqa": num_groups or num_heads // 2).

    Raises ``ValueError`` naming ``attention_type`` or ``num_groups``.
    """
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}; got {attention_type!r}")
    _check_positive("num_heads", num_heads)
    if attention_type == "mha":
        return num_heads
    if attention_type == "mqa":
        return 1
    groups = default_groups(num_heads) if num_groups is None else num_groups
    _check_positive("num_groups", groups)
    if num_heads % groups:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_groups ({groups})")
    return groups


def get_attention(attention_type: str, embed_dim: int, num_heads: int, num_groups: Optional[int] = None,
                  apply_causal_mask: bool = False, use_kv_cache: bool = False, **kwargs) -> SelfAttention:
    """Seed 002's attention factory: "mha", "mqa" or "gqa" (``num_groups`` is read for "gqa" only, default
    num_heads // 2). ``kwargs``: ``max_seq_len`` and the WCMHA decay options of ``SelfAttention``
    (``decay="powerlaw", alpha=1.0``, ...), which combine with any of the three.

    Raises ``ValueError`` naming the argument (unknown type, embed_dim not divisible by num_heads, num_heads not
    divisible by num_groups).
    """
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}; got {attention_type!r}")
    if attention_type == "mha":
        return MultiHeadAttention(embed_dim, num_heads, apply_causal_mask, use_kv_cache, **kwargs)
    if attention_type == "mqa":
        return MultiQueryAttention(embed_dim, num_heads, apply_causal_mask, use_kv_cache, **kwargs)
    return GroupQueryAttention(embed_dim, num_heads, num_groups, apply_causal_mask, use_kv_cache, **kwargs)


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention with ``num_kv_heads`` key/value heads (no mask, no decay).

    ``key_values(encoder_output) -> (key, value)``, each (B, kv_heads, Ls, head_dim): computed once per encoder
    output. ``forward(x, key_values) -> y``: x (B, Lt, E) attends to every encoder position; y (B, Lt, E).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None) -> None:
        super().__init__()
        _check_positive("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.bias = DecayBias("none", causal=False)  # plain softmax attention through decayed_attention

    def key_values(self, encoder_output: Tensor) -> KVCache:
        b, l, _ = encoder_output.shape
        k = self.k_proj(encoder_output).view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(encoder_output).view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, key_values: KVCache) -> Tensor:
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lt, D)
        y = decayed_attention(q, key_values[0], key_values[1], self.bias,
                              kv_groups=self.num_heads // self.num_kv_heads)
        return self.out_proj(y.transpose(1, 2).reshape(b, l, self.embed_dim))
