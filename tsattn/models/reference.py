"""The bundled reference model: a causal streaming forecaster on WCMHA with a KV cache.

It is the embedded default of ``tsattn-export`` and ``tsattn-serve`` and the model on which streaming is
benchmarked. One token per observation (a per-step token), channel-independent, pre-norm transformer blocks whose
attention is ``WCMHA`` (GQA through ``n_kv_heads``), and a linear head that maps every position's state to the
next ``horizon`` values::

    values (B, L) raw units
      -> z = (values - loc) / scale                       fixed affine normalisation (buffers, see below)
      -> token = Linear(1, d_model)(z)                    (B, L, d_model)
      -> n_layers x [h + WCMHA(LN(h)), h + MLP(LN(h))]    causal; the decay bias is the only position signal
      -> forecast = Linear(d_model, horizon)(LN(h)) * scale + loc      (B, L, horizon)

``forecast[:, t]`` predicts ``values[:, t + 1 .. t + horizon]`` from ``values[:, :t + 1]``; the forecast after the
latest observation is ``forecast[:, -1]``.

Streaming. ``forward(values, past)`` continues a sequence whose keys and values are in ``past`` (one
``(key, value)`` pair per layer, each ``(B, n_kv_heads, P, head_dim)``) and returns the ``present`` caches. Every
operation is causal and per position except attention, and attention reads positions only through distances, so
a step with the cache computes exactly what one full forward computes at that position (tested <= 1e-5 in
float32). With ``max_context`` the caches slide: attention sees at most ``max_context`` earlier positions, in a
full forward as well, so the equality holds past the window too; stacked, the windows reach back
``n_layers * max_context`` values. There are no absolute positions, so a stream can run forever at
O(max_context) per step.

Channels. The model is univariate; a C-channel series is C independent rows of the batch (channel
independence): ``forecast_channels`` folds ``(B, L, C)`` into ``(B * C, L)`` and back.

Normalisation. ``loc`` and ``scale`` are fixed per model (buffers from the config, saved with the checkpoint) and
applied inside the graph, so a prefill and the steps after it see the same function of the raw values. A
per-stream scaling is the caller's choice: pick a stream's ``(loc, scale)`` once when it opens, apply it to
every value of that stream, and invert it on the forecasts; changing it mid-stream would invalidate the cache.
Running (RevIN-style) statistics are deliberately absent: they would make a cached step differ from a recompute.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from tsattn.modules import WCMHA

KVCache = Tuple[Tensor, Tensor]  # (key, value), each (B, n_kv_heads, length, head_dim)
Caches = Tuple[KVCache, ...]  # one per layer


MAX_SIZES = {"d_model": 16384, "n_layers": 512, "n_heads": 1024, "n_kv_heads": 1024, "d_ff": 1 << 17,
             "horizon": 1 << 16, "max_context": 1 << 20}
MAX_PARAMETERS = 1 << 31  # 8 GiB of float32 weights


@dataclass(frozen=True)
class ReferenceConfig:
    """Size and attention of the reference forecaster.

    d_model, n_layers, n_heads, n_kv_heads (None: n_heads; GQA/MQA when fewer), d_ff (None: 4 * d_model),
    horizon (values forecast per position), max_context (earlier positions attention sees and the cache keeps;
    None: unbounded), decay/alpha (``WCMHA``'s decay), loc/scale (the fixed input normalisation), dropout.
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    d_ff: Optional[int] = None
    horizon: int = 24
    max_context: Optional[int] = 512
    decay: str = "powerlaw"
    alpha: float = 1.0
    loc: float = 0.0
    scale: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("n_kv_heads", "d_ff", "max_context"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0; got {self.scale!r}")
        if not (isinstance(self.loc, (int, float)) and math.isfinite(self.loc)):
            raise ValueError(f"loc must be a finite number; got {self.loc!r}")
        for name, most in MAX_SIZES.items():  # bounded before any module is built (a checkpoint's config too)
            value = getattr(self, name)
            if value is not None and value > most:
                raise ValueError(f"{name}={value} is more than {most}, the most a reference forecaster takes")
        d_ff = self.d_ff or 4 * self.d_model
        params = self.n_layers * (4 * self.d_model * self.d_model + 2 * self.d_model * d_ff)
        if params > MAX_PARAMETERS:
            raise ValueError(f"d_model={self.d_model}, d_ff={d_ff}, n_layers={self.n_layers} make about {params:.3g} "
                             f"parameters, more than {MAX_PARAMETERS:.3g} (4 bytes each)")
        # d_model / n_heads / n_kv_heads / decay / alpha / dropout are checked by WCMHA itself

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> "ReferenceConfig":
        """Build from a mapping; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown reference model option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(options))


class _Block(nn.Module):
    """Pre-norm transformer block: h + attn(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = WCMHA(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.n_kv_heads, decay=cfg.decay, alpha=cfg.alpha,
                          max_context=cfg.max_context, dropout=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_ff), nn.GELU(), nn.Linear(d_ff, cfg.d_model),
                                 nn.Dropout(cfg.dropout))

    def forward(self, h: Tensor, past: Optional[KVCache]) -> Tuple[Tensor, KVCache]:
        a, present = self.attn(self.norm1(h), past)  # (B, L, d_model)
        h = h + a
        return h + self.mlp(self.norm2(h)), present


class ReferenceForecaster(nn.Module):
    """Causal streaming forecaster (see the module docstring for the architecture and contracts).

    ``forward(values, past=None) -> (forecast, present)``
        values: (B, L) float, raw units; past: None or a tuple of n_layers (key, value) pairs, each
        (B, n_kv_heads, P, head_dim), the caches of the P positions before ``values``.
        forecast: (B, L, horizon) raw units; present: the caches after ``values``, each
        (B, n_kv_heads, min(P + L, max_context), head_dim) (P + L when max_context is None).
    ``step(values, past)``: the same, with a cache required (a decode step; ``values`` is usually (B, 1)).

    Raises ``ValueError`` for a ``past`` with the wrong number of layers.
    """

    def __init__(self, config: Optional[ReferenceConfig] = None) -> None:
        super().__init__()
        self.config = config or ReferenceConfig()
        cfg = self.config
        self.register_buffer("loc", torch.tensor(float(cfg.loc)))
        self.register_buffer("scale", torch.tensor(float(cfg.scale)))
        self.embed = nn.Linear(1, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.horizon)

    def empty_cache(self, batch: int, dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> Caches:
        """Zero-length caches, each (batch, n_kv_heads, 0, head_dim): the state of a stream before any value."""
        shape = (batch, self.config.kv_heads, 0, self.config.head_dim)
        return tuple((torch.zeros(shape, dtype=dtype, device=device),) * 2 for _ in self.blocks)

    def forward(self, values: Tensor, past: Optional[Caches] = None) -> Tuple[Tensor, Caches]:
        if past is not None and len(past) != len(self.blocks):
            raise ValueError(f"past must hold {len(self.blocks)} (key, value) pairs, one per layer; got {len(past)}")
        h = self.embed(((values - self.loc) / self.scale).unsqueeze(-1))  # (B, L, d_model)
        presents: List[KVCache] = []
        for i, block in enumerate(self.blocks):
            h, present = block(h, None if past is None else past[i])
            presents.append(present)
        forecast = self.head(self.norm(h)) * self.scale + self.loc  # (B, L, horizon)
        return forecast, tuple(presents)

    def step(self, values: Tensor, past: Caches) -> Tuple[Tensor, Caches]:
        """A decode step: ``forward`` continuing from ``past`` (required)."""
        if past is None:
            raise ValueError("step needs the past caches; use forward(values) for a prefill")
        return self.forward(values, past)

    @torch.no_grad()
    def forecast_channels(self, x: Tensor) -> Tensor:
        """Channel-independent forecast of a multichannel series: x (B, L, C) -> (B, horizon, C), after x's end."""
        b, l, c = x.shape
        forecast, _ = self.forward(x.permute(0, 2, 1).reshape(b * c, l))  # (B * C, L, horizon)
        return forecast[:, -1].reshape(b, c, -1).permute(0, 2, 1)


def build_reference(config: Optional[ReferenceConfig] = None, seed: Optional[int] = 0) -> ReferenceForecaster:
    """A reference forecaster in eval mode, with random weights drawn from ``seed`` (None: the global RNG)."""
    if seed is None:
        return ReferenceForecaster(config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReferenceForecaster(config).eval()


def save_checkpoint(model: ReferenceForecaster, path) -> None:
    """Write ``{"model": "reference", "config": {...}, "state_dict": {...}}``: loadable with weights_only=True."""
    torch.save({"model": "reference", "config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
