"""The wave representation: frequencies, amplitudes and phases of H harmonics per position."""

from dataclasses import dataclass

import torch


@dataclass
class Wave:
    frequencies: torch.Tensor  # (B, S, H)
    amplitudes: torch.Tensor  # (B, S, H)
    phases: torch.Tensor  # (B, S, H)

    def to_representation(self) -> torch.Tensor:
        """(B, S, 3H): [frequencies | amplitudes | phases]."""
        return torch.cat([self.frequencies, self.amplitudes, self.phases], dim=-1)

    @classmethod
    def from_representation(cls, x: torch.Tensor) -> "Wave":
        return cls(*x.chunk(3, dim=-1))
