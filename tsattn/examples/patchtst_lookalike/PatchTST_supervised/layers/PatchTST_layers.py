# Helpers of the look-alike backbone (tsattn test fixture; not upstream code).
import math

import torch
from torch import nn

__all__ = ["Transpose", "get_activation_fn", "positional_encoding", "series_decomp"]


class Transpose(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return x.transpose(self.a, self.b)


def get_activation_fn(name):
    return {"relu": nn.ReLU, "gelu": nn.GELU}[name.lower()]()


def positional_encoding(pe, learn_pe, q_len, d_model):
    # "zeros": small random values, learned; "sincos": the fixed sinusoids
    if pe == "sincos":
        pos = torch.arange(q_len, dtype=torch.float32).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        w = torch.zeros(q_len, d_model)
        w[:, 0::2], w[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : d_model // 2]
    else:
        w = torch.empty(q_len, d_model).uniform_(-0.02, 0.02)
    return nn.Parameter(w, requires_grad=learn_pe)


class series_decomp(nn.Module):
    """x -> (x - moving average, moving average) along time; x: [batch, time, channels]."""

    def __init__(self, kernel_size):
        super().__init__()
        self.kernel_size = kernel_size
        self.pool = nn.AvgPool1d(kernel_size, stride=1)

    def forward(self, x):
        half = (self.kernel_size - 1) // 2
        padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
        trend = self.pool(padded.transpose(1, 2)).transpose(1, 2)
        return x - trend, trend
