"""Position embeddings (imported by transformer.py, unused by the blocks)."""

import torch
import torch.nn as nn


class RotaryPositionEmbedding(nn.Module):
    def __init__(self, d_model, max_len=5000):
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len

    def forward(self, x):
        return x
