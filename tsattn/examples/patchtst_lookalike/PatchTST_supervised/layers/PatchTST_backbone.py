# Look-alike of a channel-independent patch transformer (tsattn test fixture; not upstream code).
__all__ = ['PatchTST_backbone']

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.PatchTST_layers import *


class PatchTST_backbone(nn.Module):
    def __init__(self, c_in, context_window, target_window, patch_len, stride, n_layers=3, d_model=128, n_heads=16,
                 d_ff=256, norm='BatchNorm', attn_dropout=0., dropout=0., act='gelu', res_attention=True,
                 pe='zeros', learn_pe=True, head_dropout=0., padding_patch=None, revin=True, **kwargs):
        super().__init__()
        self.revin = revin
        self.patch_len, self.stride, self.padding_patch = patch_len, stride, padding_patch
        patch_num = (context_window - patch_len) // stride + 1
        if padding_patch == 'end':
            self.padding_patch_layer = nn.ReplicationPad1d((0, stride))
            patch_num += 1
        self.backbone = TSTiEncoder(c_in, patch_num=patch_num, patch_len=patch_len, n_layers=n_layers,
                                    d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm,
                                    attn_dropout=attn_dropout, dropout=dropout, act=act,
                                    res_attention=res_attention, pe=pe, learn_pe=learn_pe, **kwargs)
        self.head = nn.Sequential(nn.Flatten(start_dim=-2), nn.Linear(d_model * patch_num, target_window),
                                  nn.Dropout(head_dropout))

    def forward(self, z):                      # z: [batch, channels, time]
        if self.revin:
            mean = z.mean(-1, keepdim=True).detach()
            std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + 1e-5).detach()
            z = (z - mean) / std
        if self.padding_patch == 'end':
            z = self.padding_patch_layer(z)
        z = z.unfold(dimension=-1, size=self.patch_len, step=self.stride)   # [batch, channels, patches, patch_len]
        z = self.head(self.backbone(z))
        if self.revin:
            z = z * std + mean
        return z


class TSTiEncoder(nn.Module):
    def __init__(self, c_in, patch_num, patch_len, n_layers=3, d_model=128, n_heads=16, d_ff=256, norm='BatchNorm',
                 attn_dropout=0., dropout=0., act='gelu', res_attention=True, pe='zeros', learn_pe=True, **kwargs):
        super().__init__()
        self.W_P = nn.Linear(patch_len, d_model)
        self.W_pos = positional_encoding(pe, learn_pe, patch_num, d_model)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TSTEncoder(patch_num, d_model, n_heads, d_ff=d_ff, norm=norm, attn_dropout=attn_dropout,
                                  dropout=dropout, activation=act, res_attention=res_attention, n_layers=n_layers)

    def forward(self, x):                      # x: [batch, channels, patches, patch_len]
        b, c = x.shape[:2]
        u = self.W_P(x).reshape(b * c, x.shape[2], -1)
        z = self.encoder(self.dropout(u + self.W_pos))
        return z.reshape(b, c, z.shape[-2], z.shape[-1])


class TSTEncoder(nn.Module):
    def __init__(self, q_len, d_model, n_heads, d_ff=None, norm='BatchNorm', attn_dropout=0., dropout=0.,
                 activation='gelu', res_attention=False, n_layers=1):
        super().__init__()
        self.layers = nn.ModuleList([TSTEncoderLayer(q_len, d_model, n_heads=n_heads, d_ff=d_ff, norm=norm,
                                                     attn_dropout=attn_dropout, dropout=dropout,
                                                     activation=activation, res_attention=res_attention)
                                     for _ in range(n_layers)])
        self.res_attention = res_attention

    def forward(self, src: Tensor, key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None):
        scores = None
        for layer in self.layers:
            if self.res_attention:
                src, scores = layer(src, prev=scores, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
            else:
                src = layer(src, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        return src


class TSTEncoderLayer(nn.Module):
    def __init__(self, q_len, d_model, n_heads, d_ff=256, norm='BatchNorm', attn_dropout=0., dropout=0.,
                 activation='gelu', res_attention=False):
        super().__init__()
        self.res_attention = res_attention
        self.self_attn = _MultiheadAttention(d_model, n_heads, attn_dropout=attn_dropout, proj_dropout=dropout,
                                             res_attention=res_attention)
        batch = 'batch' in norm.lower()
        self.norm_attn = nn.Sequential(Transpose(1, 2), nn.BatchNorm1d(d_model), Transpose(1, 2)) if batch \
            else nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), get_activation_fn(activation), nn.Dropout(dropout),
                                nn.Linear(d_ff, d_model))
        self.norm_ffn = nn.Sequential(Transpose(1, 2), nn.BatchNorm1d(d_model), Transpose(1, 2)) if batch \
            else nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, prev=None, key_padding_mask=None, attn_mask=None):
        if self.res_attention:
            out, _, scores = self.self_attn(src, src, src, prev, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        else:
            out, _ = self.self_attn(src, src, src, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        src = self.norm_attn(src + self.dropout(out))
        src = self.norm_ffn(src + self.dropout(self.ff(src)))
        return (src, scores) if self.res_attention else src


class _MultiheadAttention(nn.Module):
    def __init__(self, d_model, n_heads, res_attention=False, attn_dropout=0., proj_dropout=0., lsa=False):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.W_Q = nn.Linear(d_model, d_model)
        self.W_K = nn.Linear(d_model, d_model)
        self.W_V = nn.Linear(d_model, d_model)
        self.res_attention = res_attention
        self.sdp_attn = _ScaledDotProductAttention(d_model, n_heads, attn_dropout=attn_dropout,
                                                   res_attention=res_attention, lsa=lsa)
        self.to_out = nn.Sequential(nn.Linear(d_model, d_model), nn.Dropout(proj_dropout))

    def forward(self, Q, K, V, prev=None, key_padding_mask=None, attn_mask=None):
        b = Q.size(0)
        q = self.W_Q(Q).view(b, -1, self.n_heads, self.d_head).transpose(1, 2)
        k = self.W_K(K).view(b, -1, self.n_heads, self.d_head).permute(0, 2, 3, 1)
        v = self.W_V(V).view(b, -1, self.n_heads, self.d_head).transpose(1, 2)
        if self.res_attention:
            out, weights, scores = self.sdp_attn(q, k, v, prev=prev, key_padding_mask=key_padding_mask,
                                                 attn_mask=attn_mask)
        else:
            out, weights = self.sdp_attn(q, k, v, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, self.n_heads * self.d_head))
        return (out, weights, scores) if self.res_attention else (out, weights)


class _ScaledDotProductAttention(nn.Module):
    def __init__(self, d_model, n_heads, attn_dropout=0., res_attention=False, lsa=False):
        super().__init__()
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.res_attention = res_attention
        self.scale = nn.Parameter(torch.tensor((d_model // n_heads) ** -0.5), requires_grad=lsa)
        self.lsa = lsa

    def forward(self, q, k, v, prev=None, key_padding_mask=None, attn_mask=None):
        attn_scores = torch.matmul(q, k) * self.scale          # [batch, heads, queries, keys]
        if prev is not None:
            attn_scores = attn_scores + prev
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_scores.masked_fill_(attn_mask, -np.inf)
            else:
                attn_scores += attn_mask
        if key_padding_mask is not None:
            attn_scores.masked_fill_(key_padding_mask.unsqueeze(1).unsqueeze(2), -np.inf)
        attn_weights = self.attn_dropout(F.softmax(attn_scores, dim=-1))
        output = torch.matmul(attn_weights, v)
        if self.res_attention:
            return output, attn_weights, attn_scores
        return output, attn_weights
