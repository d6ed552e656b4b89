"""Rotary position embedding from precomputed tables, applied to (B, N, heads, d_head) queries and keys."""

import torch
import torch.nn as nn


class YaRNRotaryEmbedding(nn.Module):
    """Consecutive channel pairs (x_2i, x_2i+1) rotated by pos * base ** (-2i / d_model); the cos/sin tables
    cover max_len positions and are buffers (saved with the model)."""

    def __init__(self, d_model, max_len=2048, base=10000, original_max_len=2048):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, d_model, 2).float() / d_model)
        angles = torch.arange(max_len).float()[:, None] * inv_freq[None, :]
        self.register_buffer('inv_freq', inv_freq)
        self.register_buffer('cos', angles.cos())
        self.register_buffer('sin', angles.sin())

    def forward(self, q, k):
        n = q.shape[1]
        return self.rotate(q, n), self.rotate(k, n)

    def rotate(self, x, n):
        cos = self.cos[:n][None, :, None, :]
        sin = self.sin[:n][None, :, None, :]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
