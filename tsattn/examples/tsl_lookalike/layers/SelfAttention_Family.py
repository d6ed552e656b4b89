"""Look-alike of Time-Series-Library's attention layers: the anchors the time_series_library recipes edit."""
import torch
import torch.nn as nn
import numpy as np
from math import sqrt
from utils.masking import TriangularCausalMask


class FullAttention(nn.Module):
    def __init__(self, mask_flag=True, factor=5, scale=None, attention_dropout=0.1, output_attention=False):
        super(FullAttention, self).__init__()
        self.scale = scale
        self.mask_flag = mask_flag
        self.output_attention = output_attention
        self.dropout = nn.Dropout(attention_dropout)

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        B, L, H, E = queries.shape
        _, S, _, D = values.shape
        scale = self.scale or 1. / sqrt(E)
        scores = torch.einsum("blhe,bshe->bhls", queries, keys)
        if self.mask_flag:
            if attn_mask is None:
                attn_mask = TriangularCausalMask(B, L, device=queries.device)
            scores.masked_fill_(attn_mask.mask, -np.inf)
        A = self.dropout(torch.softmax(scale * scores, dim=-1))
        V = torch.einsum("bhls,bshd->blhd", A, values)
        return V.contiguous(), (A if self.output_attention else None)


class AttentionLayer(nn.Module):
    def __init__(self, attention, d_model, n_heads, d_keys=None, d_values=None):
        super(AttentionLayer, self).__init__()
        width = d_model // n_heads
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, (d_keys or width) * n_heads)
        self.key_projection = nn.Linear(d_model, (d_keys or width) * n_heads)
        self.value_projection = nn.Linear(d_model, (d_values or width) * n_heads)
        self.out_projection = nn.Linear((d_values or width) * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        (B, L, _), S, H = queries.shape, keys.shape[1], self.n_heads
        out, attn = self.inner_attention(self.query_projection(queries).view(B, L, H, -1),
                                         self.key_projection(keys).view(B, S, H, -1),
                                         self.value_projection(values).view(B, S, H, -1),
                                         attn_mask, tau=tau, delta=delta)
        return self.out_projection(out.reshape(B, L, -1)), attn


class TwoStageAttentionLayer(nn.Module):
    """Crossformer's layer over (batch, variates, segments, d_model): attention over segments per variate, then
    variates exchange through a few router tokens."""

    def __init__(self, configs, seg_num, factor, d_model, n_heads, d_ff=None, dropout=0.1):
        super(TwoStageAttentionLayer, self).__init__()
        self.time_attention = AttentionLayer(FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                                           output_attention=False), d_model, n_heads)
        self.dim_sender = AttentionLayer(FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                                       output_attention=False), d_model, n_heads)
        self.dim_receiver = AttentionLayer(FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                                         output_attention=False), d_model, n_heads)
        self.router = nn.Parameter(torch.randn(seg_num, factor, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, attn_mask=None, tau=None, delta=None):
        b, d, s, m = x.shape
        t = x.reshape(b * d, s, m)
        t = self.norm(t + self.time_attention(t, t, t, attn_mask=None)[0])
        v = t.reshape(b, d, s, m).transpose(1, 2).reshape(b * s, d, m)
        router = self.router.repeat(b, 1, 1)
        buffer = self.dim_sender(router, v, v, attn_mask=None)[0]
        v = self.norm(v + self.dim_receiver(v, buffer, buffer, attn_mask=None)[0])
        return v.reshape(b, s, d, m).transpose(1, 2)
