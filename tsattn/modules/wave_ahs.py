"""Adaptive Harmonic Sparsification (AHS): keep the k most important harmonics at each position.

Self-contained template: torch and the standard library only.

A wave representation is ``(B, S, 3 * H)``: frequencies, amplitudes and phases of H harmonics in three blocks
``[f_0 .. f_{H-1}, a_0 .. a_{H-1}, p_0 .. p_{H-1}]``. A dropped harmonic has all three channels set to 0.

Importance, per position and harmonic:

    ctx    = causal depthwise conv of the representation over the last ``context_size`` positions   (B, S, 3H)
    hidden = SiLU(Linear(ctx))                                                                     (B, S, hidden)
    score  = Linear(hidden) + |a| / mean_h |a|          (the amplitude prior is not differentiated)   (B, S, H)

The score head starts at zero, so an untrained selector keeps the harmonics of largest |amplitude|. Scores only
look backwards in time, so a causal model stays causal.

k per position is ``base_k = clamp(round(k_ratio * H), min_k, H)``, or with ``use_dynamic_k`` a learned
``k = min_k + (H - min_k) * sigmoid(Linear(hidden))``, initialised to ``base_k`` and rounded for selection.

Selection: in eval, the hard top-k of the scores. In training, Gumbel top-k: the top-k of the scores plus Gumbel
noise, with a straight-through gradient from a sigmoid relaxation around the k-th perturbed score,
``sigmoid((score + g - threshold(k)) / temperature)``; ``threshold`` interpolates between the midpoints of
consecutive sorted scores at the continuous k, so the learned k gets a gradient too. The forward value is exactly
the hard mask, so training keeps exactly k harmonics per position as well.

``HarmonicSparsificationLoss`` regularises the selection: ``(1 - mean k / H - target_sparsity)^2`` (trains the
learned k), plus ``smoothness_weight`` times the mean squared change of the mask between neighbouring harmonics,
plus ``temporal_weight`` times its mean squared change between neighbouring positions.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _topk_mask(scores: Tensor, k: Union[int, Tensor]) -> Tensor:
    """1.0 at the k largest scores of the last dimension, else 0.0. k: an int, or a (...) integer tensor per row."""
    if isinstance(k, int):
        idx = scores.topk(k, dim=-1).indices
        return torch.zeros_like(scores).scatter(-1, idx, 1.0)
    order = scores.argsort(dim=-1, descending=True)
    ranks = order.argsort(dim=-1)  # rank of each entry, 0 = largest
    return (ranks < k.unsqueeze(-1)).to(scores.dtype)


class AdaptiveHarmonicSelector(nn.Module):
    """Context-aware top-k harmonic selection (see the module docstring).

    Args:
        num_harmonics: H. d_model: the representation width, which must be 3 * H (the seed's API names both).
        k_ratio: fraction of the harmonics kept, in (0, 1]. temperature: of the training relaxation, > 0.
        min_k: never keep fewer (1 <= min_k <= H). use_dynamic_k: learn k per position (initialised to base_k).
        context_size: positions the importance looks at (the current one and context_size - 1 before it).
        hidden: width of the scoring network (default d_model // 2, at least H). ema_momentum: of ``ema_sparsity``.

    ``forward(wave_repr, return_stats=False)``: wave_repr (B, S, 3H). Returns the sparsified representation (same
    shape), or ``(sparse, stats)`` when return_stats. ``stats``: ``actual_k_mean`` (0-dim, harmonics kept per
    position), ``sparsity`` (1 - actual_k_mean / H), ``ema_sparsity`` (running mean over training calls),
    ``selection_mask`` (B, S, H; carries the straight-through gradient in training), ``importance_scores``
    (B, S, H), ``k_values`` (B, S; the continuous k, with gradient when learned). The monitoring scalars are
    detached.

    Raises ``ValueError`` naming the argument for inconsistent sizes or out-of-range values.
    """

    def __init__(
        self,
        num_harmonics: int,
        d_model: int,
        k_ratio: float = 0.5,
        temperature: float = 1.0,
        min_k: int = 1,
        use_dynamic_k: bool = False,
        context_size: int = 3,
        hidden: Optional[int] = None,
        ema_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        h = _positive_int("num_harmonics", num_harmonics)
        if d_model != 3 * h:
            raise ValueError(f"d_model must be 3 * num_harmonics = {3 * h} (frequencies, amplitudes, phases); got {d_model!r}")
        k_ratio, temperature, ema_momentum = float(k_ratio), float(temperature), float(ema_momentum)
        if not 0.0 < k_ratio <= 1.0:
            raise ValueError(f"k_ratio must be in (0, 1]; got {k_ratio!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
        min_k = _positive_int("min_k", min_k)
        if min_k > h:
            raise ValueError(f"min_k must be <= num_harmonics ({h}); got {min_k}")
        context_size = _positive_int("context_size", context_size)
        hidden = max(h, d_model // 2) if hidden is None else _positive_int("hidden", hidden)
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1); got {ema_momentum!r}")

        self.num_harmonics = h
        self.d_model = int(d_model)
        self.k_ratio = k_ratio
        self.temperature = temperature
        self.min_k = min_k
        self.use_dynamic_k = bool(use_dynamic_k)
        self.context_size = context_size
        self.ema_momentum = ema_momentum
        self.base_k = min(h, max(min_k, int(round(k_ratio * h))))

        self.context = nn.Conv1d(d_model, d_model, context_size, groups=d_model)  # causal: left padding in forward
        self.trunk = nn.Linear(d_model, hidden)
        self.score_head = nn.Linear(hidden, h)
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)
        if self.use_dynamic_k:
            self.k_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.k_head.weight)
            frac = (self.base_k - min_k) / (h - min_k) if h > min_k else 0.5
            frac = min(max(frac, 1e-4), 1.0 - 1e-4)
            nn.init.constant_(self.k_head.bias, math.log(frac / (1.0 - frac)))
        self.register_buffer("ema_sparsity", torch.tensor(1.0 - self.base_k / h))

    def _features(self, wave_repr: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.num_harmonics
        ctx = F.pad(wave_repr.transpose(1, 2), (self.context_size - 1, 0))  # (B, 3H, K - 1 + S)
        ctx = self.context(ctx).transpose(1, 2)  # (B, S, 3H), position t sees t - K + 1 .. t
        hidden = F.silu(self.trunk(ctx))  # (B, S, hidden)
        amp = wave_repr[..., h : 2 * h].detach().abs()
        prior = amp / (amp.mean(dim=-1, keepdim=True) + 1e-6)  # (B, S, H)
        return hidden, self.score_head(hidden) + prior

    def _k(self, hidden: Tensor) -> Tensor:
        # (B, S) continuous k
        if not self.use_dynamic_k:
            return torch.full(hidden.shape[:-1], float(self.base_k), dtype=hidden.dtype, device=hidden.device)
        frac = torch.sigmoid(self.k_head(hidden).squeeze(-1))
        return self.min_k + (self.num_harmonics - self.min_k) * frac

    def _relaxed_mask(self, perturbed: Tensor, k: Tensor) -> Tensor:
        # sigmoid((s - threshold(k)) / T): threshold(j) is the midpoint of the j-th and (j+1)-th largest scores,
        # linearly interpolated at the continuous k, so that d mask / d k exists.
        v = perturbed.sort(dim=-1, descending=True).values  # (B, S, H)
        mids = torch.cat([(v[..., :-1] + v[..., 1:]) / 2, v[..., -1:] - 1.0], dim=-1)  # mids[j-1] = threshold(j)
        k = k.clamp(1.0, float(self.num_harmonics))
        lo = k.detach().floor().clamp(max=self.num_harmonics - 1)
        frac = (k - lo).unsqueeze(-1)
        t_lo = mids.gather(-1, (lo.long() - 1).clamp(min=0).unsqueeze(-1))
        t_hi = mids.gather(-1, lo.long().unsqueeze(-1))
        threshold = t_lo + (t_hi - t_lo) * frac  # (B, S, 1)
        return torch.sigmoid((perturbed - threshold) / self.temperature)

    def forward(self, wave_repr: Tensor, return_stats: bool = False):
        b, s, d = wave_repr.shape
        h = self.num_harmonics
        if d != self.d_model:
            raise ValueError(f"wave_repr's last dimension must be d_model = {self.d_model}; got {d}")
        hidden, scores = self._features(wave_repr)
        k = self._k(hidden)  # (B, S)
        k_int: Union[int, Tensor] = self.base_k
        if self.use_dynamic_k:
            k_int = k.detach().round().clamp(self.min_k, h).long()
        if self.training:
            u = torch.rand_like(scores).clamp(1e-9, 1.0 - 1e-9)
            perturbed = scores - torch.log(-torch.log(u))  # Gumbel(0, 1) noise
            hard = _topk_mask(perturbed.detach(), k_int)
            soft = self._relaxed_mask(perturbed, k)
            mask = hard + (soft - soft.detach())  # forward: hard; backward: the relaxation
        else:
            hard = _topk_mask(scores, k_int)
            mask = hard
        sparse = (wave_repr.view(b, s, 3, h) * mask.unsqueeze(2).to(wave_repr.dtype)).view(b, s, d)

        if self.training:
            with torch.no_grad():
                sparsity = 1.0 - hard.sum(-1).mean() / h
                self.ema_sparsity.mul_(self.ema_momentum).add_((1.0 - self.ema_momentum) * sparsity)
        if not return_stats:
            return sparse
        actual_k = hard.detach().sum(-1).mean()
        stats: Dict[str, Tensor] = {
            "actual_k_mean": actual_k,
            "sparsity": 1.0 - actual_k / h,
            "ema_sparsity": self.ema_sparsity.detach().clone(),
            "selection_mask": mask,
            "importance_scores": scores,
            "k_values": k,
        }
        return sparse, stats

    def extra_repr(self) -> str:
        return (f"num_harmonics={self.num_harmonics}, k_ratio={self.k_ratio}, base_k={self.base_k}, "
                f"min_k={self.min_k}, use_dynamic_k={self.use_dynamic_k}, temperature={self.temperature}")


class HarmonicSparsificationLoss(nn.Module):
    """Regulariser for ``AdaptiveHarmonicSelector``'s stats (see the module docstring).

    Args: target_sparsity in [0, 1); smoothness_weight, temporal_weight >= 0.

    ``forward(stats) -> dict`` of 0-dim tensors: ``sparsity``, ``smoothness``, ``temporal`` and
    ``total = sparsity + smoothness_weight * smoothness + temporal_weight * temporal``. Every term is bounded
    (in [0, 1]); gradients reach the selector through ``selection_mask`` and ``k_values``.

    Raises ``ValueError`` naming the argument for out-of-range values, or the missing stats key.
    """

    def __init__(self, target_sparsity: float = 0.5, smoothness_weight: float = 0.1, temporal_weight: float = 0.05) -> None:
        super().__init__()
        target_sparsity = float(target_sparsity)
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1); got {target_sparsity!r}")
        for name, value in (("smoothness_weight", smoothness_weight), ("temporal_weight", temporal_weight)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        self.target_sparsity = target_sparsity
        self.smoothness_weight = float(smoothness_weight)
        self.temporal_weight = float(temporal_weight)

    def forward(self, stats: Dict[str, Tensor]) -> Dict[str, Tensor]:
        for key in ("selection_mask", "k_values"):
            if key not in stats:
                raise ValueError(f"stats must come from AdaptiveHarmonicSelector(..., return_stats=True): missing {key!r}")
        mask, k = stats["selection_mask"], stats["k_values"]  # (B, S, H), (B, S)
        h = mask.shape[-1]
        sparsity = (1.0 - k.mean() / h - self.target_sparsity) ** 2
        smoothness = (mask[..., 1:] - mask[..., :-1]).pow(2).mean() if h > 1 else mask.new_zeros(())
        temporal = (mask[:, 1:] - mask[:, :-1]).pow(2).mean() if mask.shape[1] > 1 else mask.new_zeros(())
        total = sparsity + self.smoothness_weight * smoothness + self.temporal_weight * temporal
        return {"total": total, "sparsity": sparsity, "smoothness": smoothness, "temporal": temporal}
