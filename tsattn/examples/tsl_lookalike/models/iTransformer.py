"""Look-alike: every variate's whole window is one token, and so is each time feature; attention over them."""
import torch
import torch.nn as nn
from layers.Transformer_EncDec import Encoder, EncoderLayer
from layers.SelfAttention_Family import FullAttention, AttentionLayer


class Model(nn.Module):
    def __init__(self, configs):
        super(Model, self).__init__()
        self.pred_len = configs.pred_len
        self.enc_embedding = nn.Linear(configs.seq_len, configs.d_model)
        self.encoder = Encoder(
            [
                EncoderLayer(
                    AttentionLayer(
                        FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                      output_attention=False), configs.d_model, configs.n_heads),
                    configs.d_model, configs.d_ff, dropout=configs.dropout, activation=configs.activation
                ) for l in range(configs.e_layers)
            ],
            norm_layer=torch.nn.LayerNorm(configs.d_model)
        )
        self.projection = nn.Linear(configs.d_model, configs.pred_len, bias=True)

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec, mask=None):
        means = x_enc.mean(1, keepdim=True).detach()
        stdev = torch.sqrt(torch.var(x_enc - means, dim=1, keepdim=True, unbiased=False) + 1e-5)
        series = ((x_enc - means) / stdev).permute(0, 2, 1)  # (B, C, L)
        if x_mark_enc is not None:  # the time features are tokens too
            series = torch.cat([series, x_mark_enc.permute(0, 2, 1)], 1)
        z, _ = self.encoder(self.enc_embedding(series), attn_mask=None)
        return self.projection(z).permute(0, 2, 1)[:, :, :x_enc.shape[2]] * stdev + means
