import torch


class TriangularCausalMask():
    """True above the diagonal: the positions a causal query may not see."""

    def __init__(self, B, L, device="cpu"):
        self._mask = torch.ones(B, 1, L, L, dtype=torch.bool, device=device).triu(1)

    @property
    def mask(self):
        return self._mask
