"""Attention over time for 4D inputs, column by column, with the projections shared by all columns."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention4D(nn.Module):
    """(batch, n_columns, seq_len, embed_dim) in and out; always causal, plus an optional extra mask of shape
    (seq_len, seq_len) or (batch, seq_len, seq_len): bool True masks a key out, a float mask is added."""

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _heads(self, x, proj):
        b, c, n, _ = x.shape
        y = proj(x.reshape(-1, self.embed_dim)).reshape(b, c, n, self.num_heads, self.head_dim)
        return y.permute(0, 3, 1, 2, 4)  # (b, heads, columns, n, head_dim)

    def forward(self, query, key, value, mask=None):
        b, c, n, _ = query.shape
        q, k, v = self._heads(query, self.q_proj), self._heads(key, self.k_proj), self._heads(value, self.v_proj)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        future = torch.triu(torch.ones(n, n, device=scores.device) * float("-inf"), diagonal=1)
        scores = scores + future
        if mask is not None:
            extra = mask[None, None, None] if mask.dim() == 2 else mask[:, None, None]
            extra = extra.expand(-1, -1, c, -1, -1)
            scores = scores.masked_fill(extra, float("-inf")) if mask.dtype == torch.bool else scores + extra
        weights = self.dropout(F.softmax(scores, dim=-1))
        context = (weights @ v).permute(0, 2, 3, 1, 4).reshape(b, c, n, self.embed_dim)
        out = self.out_proj(context.reshape(-1, self.embed_dim)).reshape(b, c, n, self.embed_dim)
        return out, weights
