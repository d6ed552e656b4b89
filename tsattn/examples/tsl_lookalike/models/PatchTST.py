"""Look-alike: each variate's window cut into patches; attention over the patches of one variate."""
import torch
from torch import nn
from layers.Transformer_EncDec import Encoder, EncoderLayer
from layers.SelfAttention_Family import FullAttention, AttentionLayer


class Model(nn.Module):
    def __init__(self, configs, patch_len=16, stride=8):
        super().__init__()
        self.pred_len, self.patch_len, self.stride = configs.pred_len, patch_len, stride
        self.pad = nn.ReplicationPad1d((0, stride))
        self.embed = nn.Linear(patch_len, configs.d_model)
        self.encoder = Encoder(
            [
                EncoderLayer(
                    AttentionLayer(
                        FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                      output_attention=False), configs.d_model, configs.n_heads),
                    configs.d_model, configs.d_ff, dropout=configs.dropout, activation=configs.activation
                ) for l in range(configs.e_layers)
            ],
            norm_layer=nn.LayerNorm(configs.d_model)
        )
        patches = (configs.seq_len - patch_len) // stride + 2
        self.head = nn.Linear(configs.d_model * patches, configs.pred_len)

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec, mask=None):
        means = x_enc.mean(1, keepdim=True).detach()
        stdev = torch.sqrt(torch.var(x_enc - means, dim=1, keepdim=True, unbiased=False) + 1e-5)
        x = ((x_enc - means) / stdev).permute(0, 2, 1)  # (B, C, L)
        B, C, _ = x.shape
        patches = self.pad(x).unfold(-1, self.patch_len, self.stride)  # (B, C, N, patch_len)
        tokens = self.embed(patches.reshape(B * C, -1, self.patch_len))
        z, _ = self.encoder(tokens)
        out = self.head(z.reshape(B, C, -1)).permute(0, 2, 1)
        return out * stdev + means
