"""Powerformer's attention decay masks, exactly as the authors build them.

Self-contained template: it imports torch and the standard library only, because tsattn copies it verbatim
into target repositories (the PatchTST and Time-Series-Library recipes).

The Powerformer authors (khegazy/Powerformer, ``layers/Causal_local_masks.py``) add a mask to the attention
scores after the scaling and before the softmax. With ``dt = i - j`` (query ``i``, key ``j``, both counted from
the first position) the mask is ``-inf`` for ``dt < 0`` (causal) except for ``none``, and otherwise, with
``s = attn_decay_scale``:

    none         no mask at all: the original BIDIRECTIONAL attention (``forward`` returns None).
                 Note: tsattn's own WCMHA ``decay="none"`` means causal attention; here that is ``causal``.
    causal       0
    step         0 for dt <= int(s), -inf beyond (int(s) >= 1)
    butter1/2    5 * log|H(w)| of scipy's ``butter(order, 0.8)`` digital low-pass, H sampled on freqz's grid
                 w_k = k * pi / 512 (k < 512), placed at t_k = s * w_k / 2 and linearly interpolated at the
                 integers dt <= int(t_511); -inf beyond. Computed in float64 and cast to the requested dtype,
                 as the authors' float64 mask is cast by their ``model.float()``. s > 0.
    powerlaw     log(|dt + 1| ** (-|s|)), i.e. -|s| * log(dt + 1), computed in that form as they do
    simpowerlaw  -(|dt| ** s), s >= 0 (s < 0 would put -inf on the diagonal)

With ``train_attn_decay`` (``powerlaw`` and ``simpowerlaw`` only) the exponent is one trainable scalar,
``PowerformerDecay.scale``, initialised as the authors do: ``-|s|`` for powerlaw (then used as the exponent
itself), ``s`` for simpowerlaw. Without it the module has no state at all, so checkpoints of the unpatched
model load strictly. A mask that needs no gradient is built once per (q_len, k_len, device, dtype) and reused
(for a trainable scale, also per value of the scale), so no L x L tensor is rebuilt per call when the shape is
fixed; a mask whose scale is trained is rebuilt on each call that records gradients, and computed from the
parameter in a traced or exported graph (a fixed mask is a constant of the graph).

Public API: ``DECAY_TYPES``, ``TRAINABLE_DECAY_TYPES``, ``normalize_decay_type``, ``check_decay_options``,
``decay_mask`` (functional) and ``PowerformerDecay`` (the module).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

DECAY_TYPES = ("none", "causal", "step", "butter1", "butter2", "powerlaw", "simpowerlaw")
TRAINABLE_DECAY_TYPES = ("powerlaw", "simpowerlaw")

_FREQZ_POINTS = 512  # scipy.signal.freqz's default worN: w_k = k * pi / 512, k = 0 .. 511
_BUTTER_CUTOFF = 0.8  # the authors' butter(order, 0.8): cutoff as a fraction of Nyquist
_CACHE_SIZE = 16  # masks kept per module (distinct shapes, devices, dtypes, scale values)


def normalize_decay_type(name: Optional[str]) -> str:
    """The canonical (lower-case) name of a decay type: ``powerLaw`` -> ``powerlaw``; None -> ``none``.

    Raises ``ValueError`` naming ``attn_decay_type`` and the valid names for anything else.
    """
    if name is None:
        return "none"
    if not isinstance(name, str) or name.strip().lower() not in DECAY_TYPES:
        raise ValueError(f"attn_decay_type must be one of {', '.join(DECAY_TYPES)} (case-insensitive); got {name!r}")
    return name.strip().lower()


def check_decay_options(attn_decay_type: Optional[str], attn_decay_scale: float = 0.0,
                        train_attn_decay: bool = False) -> Tuple[str, float]:
    """Validate the three options; return (canonical type, the scale's initial value as the mask uses it).

    The initial value is ``-|s|`` for powerlaw, ``int(s)`` for step, ``s`` otherwise. Raises ``ValueError``
    naming the option for an unknown type, a scale the type cannot use, or ``train_attn_decay`` on a type with
    no trainable scale.
    """
    kind = normalize_decay_type(attn_decay_type)
    try:
        scale = float(attn_decay_scale)
    except (TypeError, ValueError):
        raise ValueError(f"attn_decay_scale must be a number; got {attn_decay_scale!r}") from None
    if kind not in ("none", "causal") and not math.isfinite(scale):
        raise ValueError(f"attn_decay_scale must be finite for attn_decay_type={kind!r}; got {attn_decay_scale!r}")
    if kind == "step":
        if int(scale) < 1:
            raise ValueError(f"attn_decay_scale is the step width and must be >= 1 for attn_decay_type='step' "
                             f"(int(scale) is used); got {attn_decay_scale!r}")
        scale = float(int(scale))
    elif kind.startswith("butter") and scale <= 0:
        raise ValueError(f"attn_decay_scale is the time scale and must be > 0 for attn_decay_type={kind!r}; "
                         f"got {attn_decay_scale!r}")
    elif kind == "simpowerlaw" and scale < 0:
        raise ValueError(f"attn_decay_scale must be >= 0 for attn_decay_type='simpowerlaw' (a negative exponent "
                         f"puts -inf on the diagonal); got {attn_decay_scale!r}")
    elif kind == "powerlaw":
        scale = -abs(scale)
    if train_attn_decay and kind not in TRAINABLE_DECAY_TYPES:
        raise ValueError(f"train_attn_decay needs attn_decay_type in {', '.join(TRAINABLE_DECAY_TYPES)} (the types "
                         f"with a trainable exponent); got attn_decay_type={kind!r}")
    return kind, scale


def _tracing() -> bool:
    """True under torch.jit tracing/scripting and torch.export / torch.compile."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    for name in ("is_exporting", "is_compiling"):
        check = getattr(compiler, name, None)
        if check is not None and check():
            return True
    return False


def _times(q_len: int, k_len: int, device, dtype: torch.dtype) -> Tensor:
    """dt[i, j] = i - j, shape (q_len, k_len)."""
    return (torch.arange(q_len, dtype=dtype, device=device).unsqueeze(1)
            - torch.arange(k_len, dtype=dtype, device=device).unsqueeze(0))


def _butterworth(times: Tensor, order: int, scale: float) -> Tensor:
    """The authors' Butterworth mask (no causal masking), float64, for integer-valued float64 ``times``."""
    w = torch.arange(_FREQZ_POINTS, dtype=torch.float64, device=times.device) * (math.pi / _FREQZ_POINTS)
    t = scale * w / 2
    # |H(e^{jw})|^2 = 1 / (1 + (tan(w/2) / tan(pi*0.8/2))^(2 order)) for the bilinear-transformed Butterworth
    ratio = torch.tan(w / 2) / math.tan(math.pi * _BUTTER_CUTOFF / 2)
    dc = 5 * (-0.5 * torch.log1p(ratio.pow(2 * order)))  # 5 * log|H|
    last = int(t[-1].item())  # distances 0 .. last are interpolated, larger ones masked
    d = torch.arange(last + 1, dtype=torch.float64, device=times.device)
    hi = torch.searchsorted(t, d).clamp(1, _FREQZ_POINTS - 1)  # as scipy's interp1d: the interval (hi-1, hi]
    lo = hi - 1
    values = (dc[hi] - dc[lo]) / (t[hi] - t[lo]) * (d - t[lo]) + dc[lo]
    inside = (times >= 0) & (times <= last)
    picked = values[times.clamp(0, last).long()]
    return torch.where(inside, picked, torch.full_like(picked, -math.inf))


def decay_mask(attn_decay_type: Optional[str], scale: Union[float, Tensor], q_len: int, k_len: int,
               device=None, dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
    """The additive mask (q_len, k_len) of a decay type, or None for ``none``.

    ``scale`` is the value the mask uses (``check_decay_options``' second result, or a trainable 0-dim tensor
    for powerlaw / simpowerlaw; gradients flow to it). No validation beyond the type's name.
    """
    kind = normalize_decay_type(attn_decay_type)
    if kind == "none":
        return None
    if kind.startswith("butter"):
        times = _times(q_len, k_len, device, torch.float64)
        return _butterworth(times, int(kind[6:]), float(scale)).to(dtype)
    times = _times(q_len, k_len, device, dtype)
    future = times < 0
    if isinstance(scale, Tensor):
        scale = scale.to(device=times.device, dtype=dtype)
    if kind == "causal":
        mask = torch.zeros_like(times)
    elif kind == "step":
        mask = torch.zeros_like(times).masked_fill(torch.abs(times) > scale, -math.inf)
    elif kind == "powerlaw":
        mask = torch.log(torch.abs((times + 1).masked_fill(future, 1.0)) ** scale)
    else:  # simpowerlaw
        mask = -1 * torch.abs(times) ** scale
    return mask.masked_fill(future, -math.inf)


class PowerformerDecay(nn.Module):
    """Powerformer's decay mask for one attention layer (the authors' ``CausalLocalMasks``).

    Args:
        attn_decay_type: one of ``DECAY_TYPES``, case-insensitive (their scripts pass ``powerLaw``); None is
            ``none``, the original bidirectional attention.
        attn_decay_scale: the decay's scale (see the module docstring for what each type needs).
        train_attn_decay: make the exponent one trainable scalar (``powerlaw`` and ``simpowerlaw`` only).

    ``forward(q_len, k_len, device=None, dtype=torch.float32)`` returns the additive mask, shape
    (q_len, k_len), to add to the scaled scores before the softmax, or None when ``is_active`` is False.
    """

    def __init__(self, attn_decay_type: Optional[str] = "none", attn_decay_scale: float = 0.0,
                 train_attn_decay: bool = False) -> None:
        super().__init__()
        self.decay_type, value = check_decay_options(attn_decay_type, attn_decay_scale, train_attn_decay)
        self.train_attn_decay = bool(train_attn_decay)
        if self.train_attn_decay:
            self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))
        else:
            self.scale_value = value
        self._cache: Dict[tuple, Tensor] = {}

    @property
    def is_active(self) -> bool:
        """False for ``none``: no mask, the attention is left exactly as it was."""
        return self.decay_type != "none"

    def forward(self, q_len: int, k_len: int, device=None, dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
        if not self.is_active:
            return None
        scale = self.scale if self.train_attn_decay else self.scale_value
        if self.train_attn_decay and (_tracing() or (torch.is_grad_enabled() and self.scale.requires_grad)):
            # gradients flow to the scale; a traced or exported graph computes the mask from the parameter
            return decay_mask(self.decay_type, scale, q_len, k_len, device, dtype)
        key = (int(q_len), int(k_len), torch.device(device or "cpu"), dtype)
        if self.train_attn_decay:
            key += (self.scale._version,)  # an optimizer step changes the scale in place
        mask = self._cache.get(key)
        if mask is None:
            with torch.no_grad():
                mask = decay_mask(self.decay_type, scale.detach() if self.train_attn_decay else scale, q_len, k_len,
                                  device, dtype)
            if not _tracing():  # a tensor made while tracing (a FakeTensor under torch.export) is not kept
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = mask
        return mask

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        scale = float(self.scale.detach()) if self.train_attn_decay else self.scale_value
        return f"attn_decay_type={self.decay_type!r}, scale={scale}, train_attn_decay={self.train_attn_decay}"
