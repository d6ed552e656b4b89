"""Configuration of the feed-forward block (seed 002's ``FFNConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


@dataclass
class FFNConfig:
    """The feed-forward block of every layer: a dense two-layer MLP, or a Mixture of Experts.

    Args:
        embed_dim: model width; must equal the model's ``embed_dim``.
        latent_dim: hidden width of the MLP (of each expert with MoE).
        use_moe: use ``MOE`` instead of the dense MLP.
        num_experts: experts (required with ``use_moe``).
        capacity: at most this many tokens per expert and call; the rest go to the overflow expert.
            None: no limit (every expert can take every token of the call).
        alpha: weight of the load-balancing loss (>= 0).
        topk: experts per token (1 <= topk <= num_experts).

    Raises ``ValueError`` naming the argument: ``use_moe`` without ``num_experts``, ``topk > num_experts``,
    non-positive sizes, a negative ``alpha``.
    """

    embed_dim: int
    latent_dim: int
    use_moe: bool = False
    num_experts: Optional[int] = None
    capacity: Optional[int] = None
    alpha: float = 0.01
    topk: int = 1

    def __post_init__(self) -> None:
        _check_int("embed_dim", self.embed_dim)
        _check_int("latent_dim", self.latent_dim)
        if not self.use_moe:
            return
        if self.num_experts is None:
            raise ValueError("num_experts is required when use_moe=True")
        check_moe_arguments(self.num_experts, self.capacity, self.alpha, self.topk)


def check_moe_arguments(num_experts: int, capacity: Optional[int], alpha: float, topk: int) -> None:
    """The MoE argument checks shared by ``FFNConfig`` and ``MOE`` (``ValueError`` naming the argument)."""
    _check_int("num_experts", num_experts)
    _check_int("topk", topk)
    if topk > num_experts:
        raise ValueError(f"topk ({topk}) must be <= num_experts ({num_experts})")
    if capacity is not None:
        _check_int("capacity", capacity)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0; got {alpha!r}")
