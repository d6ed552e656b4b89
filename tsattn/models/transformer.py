"""Seed 002's three models on ``tsattn.modules``: pooled regression, autoregressive, encoder-decoder.

Layout (all post-norm, see ``layers.py``)::

    TransformerModel               x (B, L, input_dim) -> Linear -> + positions -> N encoder layers
                                   -> mean over positions -> Linear -> (B, output_dim)
    AutoregressiveTransformerModel the same, causal, without pooling -> (B, L, output_dim)
    EncoderDecoder                 encode: source -> Linear -> + positions -> N encoder layers (bidirectional)
                                   decode: target -> Linear -> + positions -> M decoder layers (causal self-attention,
                                   cross-attention to the encoder output) -> Linear -> (B, Lt, output_dim)

Positions. Sinusoidal embeddings of absolute positions, computed rather than tabulated: position t is t whether
a sequence arrives whole or step by step, and positions continue past ``max_seq_len``.

Context. ``expanding_context=True`` (default): every query sees all earlier positions. ``expanding_context=False``:
a sliding window of ``max_seq_len`` positions: at every layer a query sees itself and at most max_seq_len - 1
earlier positions, with or without a cache, and the cache keeps only those. Positions stay absolute. The cached
step-by-step output therefore equals the uncached windowed forward exactly; for a one-layer model that is the
same as recomputing over the last ``max_seq_len`` inputs at their positions. With more layers a position's keys
depend, through the lower layers, on up to num_layers * (max_seq_len - 1) earlier inputs (as in Mistral's sliding
window), so no per-layer KV cache can equal a recompute over the last max_seq_len inputs alone; that is why the
window, not the recompute, is the definition. The mode is per call: a sliding call after expanding ones sees
only its window and leaves only the window in the cache (the equalities hold for a stream kept in one mode).

Two cache forms:

- seed 002's stateful form (``use_kv_cache=True``): ``model(x_new)`` continues the cached sequence (the input
  holds the new positions only; ``reset_cache()`` starts a new one); ``EncoderDecoder.decode(target, ...)`` takes
  the whole target so far, computes only the positions not cached yet, and returns every position's output: the
  uncached decode's result, as long as each target extends the one before. Decoder cross-attention keys/values are
  computed once per encoder output (a different encoder output tensor restarts the decoder cache).
- the explicit form for export and runtimes: ``step`` / ``decode_step`` take ``past`` and return ``present``
  (one ``(key, value)`` per layer, each (batch, kv_heads, length, head_dim)), no hidden state.

Models with MoE expose ``aux_loss``: the summed load-balancing losses of the last call (0 without MoE), for a
training loop to add to its loss.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .attention import KVBuffer, KVCache, _check_positive, kv_heads_of
from .configs import FFNConfig
from .layers import TransformerDecoderLayer, TransformerEncoderLayer, add_positions

Caches = Tuple[KVCache, ...]  # one (key, value) per layer


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        _check_positive(name, value)


def _check_cache_args(use_kv_cache: bool, apply_causal_mask: bool) -> None:
    if use_kv_cache and not apply_causal_mask:
        raise ValueError("use_kv_cache=True needs apply_causal_mask=True: without the causal mask earlier positions "
                         "depend on later ones and a cache cannot reproduce the full forward")


def _check_past(past: Optional[Sequence[KVCache]], layers: int) -> None:
    if past is not None and len(past) != layers:
        raise ValueError(f"past must hold {layers} (key, value) pairs, one per layer; got {len(past)}")


def _views(caches) -> Optional[Caches]:
    """(key, value) pairs of a tuple of per-layer caches (``KVBuffer``s or pairs); None when nothing is cached."""
    if caches is None:
        return None
    pairs = tuple(c.view() if isinstance(c, KVBuffer) else c for c in caches)
    return None if any(p is None for p in pairs) else pairs


def _nbytes(caches) -> int:
    pairs = _views(caches)
    return 0 if pairs is None else sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)


def _start_position(past: Optional[Sequence[KVCache]], start_pos, expanding_context: bool):
    """The absolute position of the first new input: ``start_pos``, or the past's length when that is right."""
    if start_pos is not None:
        return start_pos
    if past is None:
        return 0
    if not expanding_context:
        raise ValueError("start_pos is required with a past and expanding_context=False: a slid cache's "
                         "length is not the position of the next input")
    return past[0][0].shape[2]


class _CachedStack(nn.Module):
    """Input projection, positions and a stack of ``TransformerEncoderLayer``s; state of the stateful cache."""

    def __init__(self, input_dim: int, embed_dim: int, ffn_latent_dim: int, num_layers: int, num_heads: int,
                 output_dim: int, apply_causal_mask: bool, max_seq_len: int, attention_type: str,
                 ffn_config: Optional[FFNConfig], use_kv_cache: bool, num_groups: Optional[int], decay) -> None:
        super().__init__()
        _check_sizes(input_dim=input_dim, embed_dim=embed_dim, ffn_latent_dim=ffn_latent_dim, num_layers=num_layers,
                     num_heads=num_heads, output_dim=output_dim, max_seq_len=max_seq_len)
        _check_cache_args(use_kv_cache, apply_causal_mask)
        self.input_dim, self.embed_dim, self.output_dim = input_dim, embed_dim, output_dim
        self.max_seq_len = max_seq_len
        self.apply_causal_mask = bool(apply_causal_mask)
        self.use_kv_cache = bool(use_kv_cache)
        self.input_proj = nn.Linear(input_dim, embed_dim)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dim, num_heads, ffn_latent_dim, attention_type, num_groups,
                                    apply_causal_mask, ffn_config, **decay) for _ in range(num_layers))
        self.output_proj = nn.Linear(embed_dim, output_dim)
        self.aux_loss: Tensor = torch.zeros(())
        self.reset_cache()

    def reset_cache(self) -> None:
        """Forget the stateful cache: the next call starts a new sequence at position 0."""
        self._past = tuple(KVBuffer() for _ in self.layers)
        self._seen = 0

    @property
    def cache(self) -> Optional[Caches]:
        """The stateful cache: one (key, value) per layer, each (B, kv_heads, length, head_dim), or None."""
        return _views(self._past)

    def cache_nbytes(self) -> int:
        """Bytes of the cached keys and values (the positions held; the storage grows ahead by up to 2x)."""
        return _nbytes(self._past)

    def empty_cache(self, batch: int, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Caches:
        """Zero-length caches, each (batch, kv_heads, 0, head_dim): a stream before its first position."""
        att = self.layers[0].attention
        shape = (batch, att.num_kv_heads, 0, att.head_dim)
        return tuple((torch.zeros(shape, dtype=dtype, device=device),) * 2 for _ in self.layers)

    def _window(self, expanding_context: bool) -> Optional[int]:
        return None if expanding_context else self.max_seq_len - 1

    def _run(self, x: Tensor, past: Optional[Sequence[KVCache]], start_pos: Union[int, Tensor],
             window: Optional[int]) -> Tuple[Tensor, Caches, Tensor]:
        """x (B, L, input_dim) at positions start_pos.. -> final hidden (B, L, E), presents, summed aux loss."""
        _check_past(past, len(self.layers))
        h = add_positions(self.input_proj(x), start_pos)
        presents: List[KVCache] = []
        aux = h.new_zeros(())
        for i, layer in enumerate(self.layers):
            h, present, a = layer(h, None if past is None else past[i], window)
            presents.append(present)
            aux = aux + a
        return h, tuple(presents), aux


class TransformerModel(_CachedStack):
    """Seed 002's regression model: (B, L, input_dim) -> (B, output_dim), mean-pooled over positions.

    Keywords as seed 002 (``input_dim, embed_dim, ffn_latent_dim, num_layers, num_heads, output_dim,
    apply_causal_mask, max_seq_len, attention_type, ffn_config, use_kv_cache, num_groups``) plus the WCMHA decay
    options of ``SelfAttention`` (``decay="powerlaw", alpha=1.0``, ...).

    ``forward(x, expanding_context=True)``: the pooled prediction (``predict(x)``: the same, never cached). With
    ``expanding_context=False`` attention sees a window of ``max_seq_len`` positions and the pooling averages the
    last ``max_seq_len`` positions. With ``use_kv_cache`` (needs ``apply_causal_mask``) x holds the new positions
    and the prediction pools every position of the context so far (the final hidden states are kept with the
    keys and values).

    Raises ``ValueError`` naming the argument for bad sizes (see also ``get_attention`` and ``FFNConfig``).
    """

    def __init__(self, input_dim: int, embed_dim: int, ffn_latent_dim: int, num_layers: int, num_heads: int,
                 output_dim: int, apply_causal_mask: bool = False, max_seq_len: int = 512,
                 attention_type: str = "mha", ffn_config: Optional[FFNConfig] = None, use_kv_cache: bool = False,
                 num_groups: Optional[int] = None, **decay) -> None:
        super().__init__(input_dim, embed_dim, ffn_latent_dim, num_layers, num_heads, output_dim, apply_causal_mask,
                         max_seq_len, attention_type, ffn_config, use_kv_cache, num_groups, decay)

    def reset_cache(self) -> None:
        super().reset_cache()
        self._hidden: Optional[Tensor] = None

    def predict(self, x: Tensor, expanding_context: bool = True) -> Tensor:
        """The uncached forward of the whole x, whatever ``use_kv_cache`` says (stateless; what exports trace)."""
        h, _, aux = self._run(x, None, 0, self._window(expanding_context))
        self.aux_loss = aux
        hidden = h if expanding_context else h[:, -self.max_seq_len:]
        return self.output_proj(hidden.mean(dim=1))

    def forward(self, x: Tensor, expanding_context: bool = True) -> Tensor:
        if not self.use_kv_cache:
            return self.predict(x, expanding_context)
        window = self._window(expanding_context)
        h, self._past, aux = self._run(x, self._past, self._seen, window)
        self._seen += x.shape[1]
        hidden = h if self._hidden is None else torch.cat([self._hidden, h], dim=1)
        if not expanding_context:
            hidden = hidden[:, -self.max_seq_len:]
        self._hidden = hidden
        self.aux_loss = aux
        return self.output_proj(hidden.mean(dim=1))


class AutoregressiveTransformerModel(_CachedStack):
    """Seed 002's autoregressive model: (B, L, input_dim) -> (B, L, output_dim), causal.

    Keywords as ``TransformerModel`` (``apply_causal_mask`` defaults to True).

    ``forward(x, expanding_context=True) -> y``: without a cache, the full forward of x. With ``use_kv_cache``
    (stateful), x holds the positions after those already cached and y their outputs; ``reset_cache()`` starts a
    new sequence.
    ``generate_next_token(x, expanding_context=True)``: ``forward(x)[:, -1:]``, (B, 1, output_dim).
    ``generate(prompt, steps, expanding_context=True)``: feeds each output back as the next input (needs
    input_dim == output_dim); with ``use_kv_cache`` one new position per step (the cache is reset first), without
    it the whole sequence is recomputed each step. Returns (B, steps, output_dim).

    Explicit cache (export, runtimes): ``step(x, past=None, start_pos=None, expanding_context=True) -> (y, present)``
    with ``past``/``present`` one (key, value) per layer, each (B, kv_heads, length, head_dim); ``start_pos`` is
    the absolute position of x's first row (default: the past's length; required for a slid cache).
    """

    def __init__(self, input_dim: int, embed_dim: int, ffn_latent_dim: int, num_layers: int, num_heads: int,
                 output_dim: int, apply_causal_mask: bool = True, max_seq_len: int = 512,
                 attention_type: str = "mha", ffn_config: Optional[FFNConfig] = None, use_kv_cache: bool = False,
                 num_groups: Optional[int] = None, **decay) -> None:
        super().__init__(input_dim, embed_dim, ffn_latent_dim, num_layers, num_heads, output_dim, apply_causal_mask,
                         max_seq_len, attention_type, ffn_config, use_kv_cache, num_groups, decay)

    def forward(self, x: Tensor, expanding_context: bool = True) -> Tensor:
        window = self._window(expanding_context)
        if not self.use_kv_cache:
            h, _, aux = self._run(x, None, 0, window)
        else:
            h, self._past, aux = self._run(x, self._past, self._seen, window)
            self._seen += x.shape[1]
        self.aux_loss = aux
        return self.output_proj(h)

    def step(self, x: Tensor, past: Optional[Sequence[KVCache]] = None, start_pos: Union[int, Tensor, None] = None,
             expanding_context: bool = True) -> Tuple[Tensor, Caches]:
        h, present, aux = self._run(x, past, _start_position(past, start_pos, expanding_context),
                                    self._window(expanding_context))
        self.aux_loss = aux
        return self.output_proj(h), present

    def generate_next_token(self, x: Tensor, expanding_context: bool = True) -> Tensor:
        return self.forward(x, expanding_context)[:, -1:]

    def generate(self, prompt: Tensor, steps: int, expanding_context: bool = True) -> Tensor:
        if self.input_dim != self.output_dim:
            raise ValueError(f"generate feeds outputs back as inputs: output_dim ({self.output_dim}) must equal "
                             f"input_dim ({self.input_dim})")
        _check_positive("steps", steps)
        outs: List[Tensor] = []
        if self.use_kv_cache:
            self.reset_cache()
            nxt = self.generate_next_token(prompt, expanding_context)
            outs.append(nxt)
            for _ in range(steps - 1):
                nxt = self.generate_next_token(nxt, expanding_context)
                outs.append(nxt)
        else:
            seq = prompt
            for _ in range(steps):
                nxt = self.generate_next_token(seq, expanding_context)
                outs.append(nxt)
                seq = torch.cat([seq, nxt], dim=1)
        return torch.cat(outs, dim=1)


class EncoderDecoder(nn.Module):
    """Seed 002's encoder-decoder: source (B, Ls, input_dim), target (B, Lt, input_dim) -> (B, Lt, output_dim).

    Keywords as seed 002 (``input_dim, embed_dim, ffn_latent_dim, num_encoder_layers, num_decoder_layers,
    num_heads, output_dim, apply_causal_mask`` (the decoder's self-attention), ``max_seq_len, attention_type,
    ffn_config, use_kv_cache, num_groups``) plus the WCMHA decay options (decoder self-attention only).

    ``encode(source, expanding_context=True) -> (B, Ls, E)``: bidirectional, never cached (every output depends on
    every source position); ``expanding_context`` is accepted for seed 002's signature and ignored.
    ``decode(target, encoder_output, expanding_context=True) -> (B, Lt, output_dim)``: teacher-forced decoding of
    the whole target. With ``use_kv_cache``, positions already cached are not recomputed (target must extend the
    cached target, as in seed 002's generation loop); cross-attention keys/values are computed once per encoder
    output tensor, and a different encoder output restarts the cache. ``forward(source, target)``:
    ``decode(target, encode(source))``.

    Explicit cache (export, runtimes): ``cross_key_values(encoder_output)`` -> one (key, value) per decoder layer,
    each (B, kv_heads, Ls, head_dim); ``decode_step(target, cross_kv, past=None, start_pos=None,
    expanding_context=True) -> (y, present)``: target holds the positions after ``past``.
    """

    def __init__(self, input_dim: int, embed_dim: int, ffn_latent_dim: int, num_encoder_layers: int,
                 num_decoder_layers: int, num_heads: int, output_dim: int, apply_causal_mask: bool = True,
                 max_seq_len: int = 512, attention_type: str = "mha", ffn_config: Optional[FFNConfig] = None,
                 use_kv_cache: bool = False, num_groups: Optional[int] = None, **decay) -> None:
        super().__init__()
        _check_sizes(input_dim=input_dim, embed_dim=embed_dim, ffn_latent_dim=ffn_latent_dim,
                     num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
                     num_heads=num_heads, output_dim=output_dim, max_seq_len=max_seq_len)
        _check_cache_args(use_kv_cache, apply_causal_mask)
        kv_heads_of(attention_type, num_heads, num_groups)  # argument checks first, naming the seed's arguments
        self.input_dim, self.embed_dim, self.output_dim = input_dim, embed_dim, output_dim
        self.max_seq_len = max_seq_len
        self.apply_causal_mask = bool(apply_causal_mask)
        self.use_kv_cache = bool(use_kv_cache)
        self.encoder_input_proj = nn.Linear(input_dim, embed_dim)
        self.encoder_layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dim, num_heads, ffn_latent_dim, attention_type, num_groups, False,
                                    ffn_config) for _ in range(num_encoder_layers))
        self.decoder_input_proj = nn.Linear(input_dim, embed_dim)
        self.decoder_layers = nn.ModuleList(
            TransformerDecoderLayer(embed_dim, num_heads, ffn_latent_dim, attention_type, num_groups,
                                    apply_causal_mask, ffn_config, **decay) for _ in range(num_decoder_layers))
        self.output_proj = nn.Linear(embed_dim, output_dim)
        self._encoder_aux: Tensor = torch.zeros(())
        self._decoder_aux: Tensor = torch.zeros(())
        self.reset_cache()

    @property
    def aux_loss(self) -> Tensor:
        """Summed MoE load-balancing losses of the last ``encode`` and the last ``decode`` (0 without MoE)."""
        return self._encoder_aux + self._decoder_aux

    def reset_cache(self) -> None:
        """Forget the decoder's cache (self-attention, cross-attention keys/values and the outputs so far)."""
        self._past = tuple(KVBuffer() for _ in self.decoder_layers)
        self._cross: Optional[Caches] = None
        self._memory: Optional[Tensor] = None
        self._memory_version = -1
        self._outputs: Optional[Tensor] = None
        self._seen = 0

    @property
    def cache(self) -> Optional[Caches]:
        """The decoder's stateful self-attention cache: one (key, value) per layer, or None."""
        return _views(self._past)

    def cache_nbytes(self) -> int:
        """Bytes held by the stateful self-attention and cross-attention key/value caches."""
        return _nbytes(self._past) + _nbytes(self._cross)

    def empty_cache(self, batch: int, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Caches:
        """Zero-length decoder self-attention caches, each (batch, kv_heads, 0, head_dim)."""
        att = self.decoder_layers[0].self_attention
        shape = (batch, att.num_kv_heads, 0, att.head_dim)
        return tuple((torch.zeros(shape, dtype=dtype, device=device),) * 2 for _ in self.decoder_layers)

    def encode(self, source: Tensor, expanding_context: bool = True) -> Tensor:
        h = add_positions(self.encoder_input_proj(source), 0)
        aux = h.new_zeros(())
        for layer in self.encoder_layers:
            h, _, a = layer(h)
            aux = aux + a
        self._encoder_aux = aux
        return h

    def cross_key_values(self, encoder_output: Tensor) -> Caches:
        return tuple(layer.cross_attention.key_values(encoder_output) for layer in self.decoder_layers)

    def _decode(self, target: Tensor, cross_kv: Sequence[KVCache], past: Optional[Sequence[KVCache]],
                start_pos: Union[int, Tensor], window: Optional[int]) -> Tuple[Tensor, Caches, Tensor]:
        _check_past(past, len(self.decoder_layers))
        _check_past(cross_kv, len(self.decoder_layers))
        h = add_positions(self.decoder_input_proj(target), start_pos)
        presents: List[KVCache] = []
        aux = h.new_zeros(())
        for i, layer in enumerate(self.decoder_layers):
            h, present, a = layer(h, cross_kv[i], None if past is None else past[i], window)
            presents.append(present)
            aux = aux + a
        return self.output_proj(h), tuple(presents), aux

    def _window(self, expanding_context: bool) -> Optional[int]:
        return None if expanding_context else self.max_seq_len - 1

    def decode_step(self, target: Tensor, cross_kv: Sequence[KVCache], past: Optional[Sequence[KVCache]] = None,
                    start_pos: Union[int, Tensor, None] = None,
                    expanding_context: bool = True) -> Tuple[Tensor, Caches]:
        start = _start_position(past, start_pos, expanding_context)
        y, present, aux = self._decode(target, cross_kv, past, start, self._window(expanding_context))
        self._decoder_aux = aux
        return y, present

    def decode(self, target: Tensor, encoder_output: Tensor, expanding_context: bool = True) -> Tensor:
        window = self._window(expanding_context)
        if not self.use_kv_cache:
            y, _, aux = self._decode(target, self.cross_key_values(encoder_output), None, 0, window)
            self._decoder_aux = aux
            return y
        if encoder_output is not self._memory or encoder_output._version != self._memory_version:
            self.reset_cache()  # the cached decoder states attended to another encoder output
            self._cross = self.cross_key_values(encoder_output)
            self._memory, self._memory_version = encoder_output, encoder_output._version
        n, total = self._seen, target.shape[1]
        if total <= n:
            raise ValueError(f"with use_kv_cache=True decode takes the whole target so far: target has {total} "
                             f"positions but {n} are cached already; call reset_cache() to start a new target")
        y, self._past, aux = self._decode(target[:, n:], self._cross, self._past, n, window)
        self._decoder_aux = aux
        self._outputs = y if self._outputs is None else torch.cat([self._outputs, y], dim=1)
        self._seen = total
        return self._outputs

    def forward(self, source: Tensor, target: Tensor, expanding_context: bool = True) -> Tensor:
        return self.decode(target, self.encode(source), expanding_context)
