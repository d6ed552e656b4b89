"""Feed-forward blocks: the dense two-layer MLP (``FFN``) and a Mixture of Experts with capacity (``MOE``)."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsattn.modules.wcmha import is_exporting

from .configs import check_moe_arguments


class FFN(nn.Module):
    """``Linear(embed_dim, latent_dim) -> ReLU -> Linear(latent_dim, embed_dim)``; (..., E) -> (..., E)."""

    def __init__(self, embed_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, latent_dim)
        self.fc2 = nn.Linear(latent_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class Routing(NamedTuple):
    """Where ``MOE`` sends each token. T tokens (the input flattened in batch-major order), k = topk, E experts.

    probs: (T, E) router softmax. expert: (T, k) chosen experts, best first. weight: (T, k) their probabilities
    renormalised over the chosen k. slot: (T, k) the token's place in the chosen expert's queue (0-based, first
    come in token order). kept: (T, k) bool, ``slot < capacity``; the others go to the overflow expert.
    """

    probs: Tensor
    expert: Tensor
    weight: Tensor
    slot: Tensor
    kept: Tensor


class MOE(nn.Module):
    """Mixture of Experts with top-k routing, a capacity per expert and an overflow expert.

    Args:
        embed_dim: token width E. ffn_latent_dim: hidden width of every expert (each is an ``FFN``).
        num_experts: routed experts. capacity: at most this many tokens per expert and call (None: no limit).
        alpha: load-balancing loss weight. topk: experts per token.

    ``forward(x) -> (output, aux_loss)``: x (..., E) -> output of the same shape and a scalar loss.

    Routing: a linear router gives ``probs = softmax(router(x))`` (T, num_experts); each token picks its top-k
    experts and weights them by their probabilities renormalised over the k (with ``topk=1`` the weight is 1,
    so the router then learns through ``aux_loss`` only). Tokens are the input flattened in batch-major order; an
    expert takes the first ``capacity`` (token, choice) assignments in token order (token 0's choices, then
    token 1's, ...), counted over the whole call. An assignment beyond capacity is computed by the dedicated
    overflow expert (an ``FFN``) with the same weight, so no token is dropped:

        output_t = sum_j weight_tj * (expert_{e_tj}(x_t) if kept_tj else overflow(x_t))

    Load-balancing loss (Switch Transformer's, generalised to top-k):

        aux_loss = alpha * num_experts * sum_i f_i * p_i
        f_i = (number of top-k assignments to expert i, before capacity) / (T * topk)      (sum_i f_i = 1)
        p_i = mean over tokens of probs[:, i]

    so a uniform router (every p_i = 1 / num_experts) gives exactly ``alpha`` whatever the choices; f_i carries no
    gradient, p_i does.

    Dispatch (export-friendly, no Python control flow on token counts): each assignment's queue position is a
    cumulative sum over a (T * topk, num_experts) one-hot; kept assignments are scattered by their slot index into
    a (num_experts * capacity, E) buffer, the experts run as one batched matmul over (num_experts, capacity, E),
    and the results are gathered back. Only routed tokens are computed: about capacity * num_experts rows instead
    of every expert on every token. In eager mode the buffer holds min(capacity, T) rows per expert and the overflow
    expert runs on the overflowing tokens only; exported graphs (tracing, ONNX) keep the static capacity and run
    the overflow expert on every token with a zero weight where nothing overflowed.

    ``route(x_flat)`` returns the ``Routing`` of (T, E) tokens, for inspection and tests.

    Raises ``ValueError`` naming the argument for ``topk > num_experts`` and non-positive sizes.
    """

    def __init__(self, embed_dim: int, ffn_latent_dim: int, num_experts: int, capacity: Optional[int] = None,
                 alpha: float = 0.01, topk: int = 1) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("ffn_latent_dim", ffn_latent_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        check_moe_arguments(num_experts, capacity, alpha, topk)
        self.embed_dim = embed_dim
        self.ffn_latent_dim = ffn_latent_dim
        self.num_experts = num_experts
        self.capacity = capacity
        self.alpha = float(alpha)
        self.topk = topk
        self.router = nn.Linear(embed_dim, num_experts)
        # Expert i: relu(x @ w1[i] + b1[i]) @ w2[i] + b2[i], initialised like nn.Linear.
        self.w1 = nn.Parameter(torch.empty(num_experts, embed_dim, ffn_latent_dim))
        self.b1 = nn.Parameter(torch.empty(num_experts, ffn_latent_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, ffn_latent_dim, embed_dim))
        self.b2 = nn.Parameter(torch.empty(num_experts, embed_dim))
        for w, b, fan_in in ((self.w1, self.b1, embed_dim), (self.w2, self.b2, ffn_latent_dim)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.overflow = FFN(embed_dim, ffn_latent_dim)

    def expert(self, i: int, x: Tensor) -> Tensor:
        """Expert ``i`` applied to x (..., E) (every token; for inspection and tests)."""
        return F.relu(x @ self.w1[i] + self.b1[i]) @ self.w2[i] + self.b2[i]

    def route(self, x: Tensor, capacity: Optional[int] = None) -> Routing:
        """Routing of tokens x (T, E); ``capacity`` defaults to the module's (None: no limit)."""
        cap = self.capacity if capacity is None else capacity
        probs = torch.softmax(self.router(x), dim=-1)  # (T, E)
        top_p, expert = probs.topk(self.topk, dim=-1)  # (T, k)
        weight = top_p / top_p.sum(-1, keepdim=True)
        chosen = expert.reshape(-1, 1) == torch.arange(self.num_experts, device=x.device)  # (T*k, E), token-major
        queue = torch.cumsum(chosen.long(), dim=0)  # assignments to each expert so far, this one included
        slot = ((queue * chosen).sum(-1) - 1).view_as(expert)  # (T, k)
        kept = slot < cap if cap is not None else torch.ones_like(slot, dtype=torch.bool)
        return Routing(probs, expert, weight, slot, kept)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        shape = x.shape
        xf = x.reshape(-1, self.embed_dim)  # (T, E)
        t, k, n_exp = xf.shape[0], self.topk, self.num_experts
        exporting = is_exporting()
        if self.capacity is None:
            cap = t  # an expert never gets more than T assignments (the top-k experts are distinct)
        else:
            cap = self.capacity if exporting else min(self.capacity, t)
        r = self.route(xf, cap)

        # aux loss: f from the choices (no gradient), p from the probabilities
        f = (r.expert.reshape(-1, 1) == torch.arange(n_exp, device=x.device)).sum(0).to(x.dtype) / (t * k)
        aux = self.alpha * n_exp * (f * r.probs.mean(0)).sum()

        # dispatch: kept assignments to expert e, slot s go to buffer row e * cap + s; the rest to spare rows
        n = t * k
        kept = r.kept.reshape(n)
        rows = torch.arange(n, device=x.device)
        dest = torch.where(kept, r.expert.reshape(n) * cap + r.slot.reshape(n), n_exp * cap + rows)  # (T*k,)
        src = xf.unsqueeze(1).expand(t, k, self.embed_dim).reshape(n, self.embed_dim)
        buffer = xf.new_zeros(n_exp * cap + n, self.embed_dim).scatter(
            0, dest.unsqueeze(1).expand(n, self.embed_dim), src)
        h = buffer[: n_exp * cap].view(n_exp, cap, self.embed_dim)  # (experts, capacity, E)
        h = F.relu(torch.matmul(h, self.w1) + self.b1.unsqueeze(1))  # (experts, capacity, latent)
        h = torch.matmul(h, self.w2) + self.b2.unsqueeze(1)  # (experts, capacity, E)
        gathered = h.reshape(n_exp * cap, self.embed_dim).index_select(0, torch.where(kept, dest, 0))  # (T*k, E)
        kept_w = r.weight.reshape(n) * kept.to(x.dtype)
        y = (gathered * kept_w.unsqueeze(1)).view(t, k, self.embed_dim).sum(1)  # (T, E)

        over_w = (r.weight * (~r.kept).to(x.dtype)).sum(-1)  # (T,) weight that went to the overflow expert
        if exporting:
            y = y + over_w.unsqueeze(1) * self.overflow(xf)
        else:
            idx = torch.nonzero(over_w, as_tuple=True)[0]
            if idx.numel():
                y = y.index_add(0, idx, over_w[idx].unsqueeze(1) * self.overflow(xf[idx]))
        return y.view(shape), aux

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, ffn_latent_dim={self.ffn_latent_dim}, num_experts={self.num_experts}, "
                f"capacity={self.capacity}, alpha={self.alpha}, topk={self.topk}")
