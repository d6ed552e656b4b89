"""Look-alike: an encoder-decoder over time steps (encoder and decoder self-attention, decoder cross-attention)."""
import torch
import torch.nn as nn
from layers.Transformer_EncDec import Decoder, DecoderLayer, Encoder, EncoderLayer
from layers.SelfAttention_Family import FullAttention, AttentionLayer


class Model(nn.Module):
    def __init__(self, configs):
        super(Model, self).__init__()
        self.pred_len = configs.pred_len
        self.enc_embedding = nn.Linear(configs.enc_in, configs.d_model)
        self.dec_embedding = nn.Linear(configs.dec_in, configs.d_model)
        marks = {'h': 4, 't': 5, 's': 6, 'm': 1, 'a': 1, 'w': 2, 'd': 3, 'b': 3}[getattr(configs, 'freq', 'h')]
        self.mark_embedding = nn.Linear(marks, configs.d_model, bias=False)  # time features (embed 'timeF')
        self.encoder = Encoder(
            [
                EncoderLayer(
                    AttentionLayer(
                        FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                      output_attention=False), configs.d_model, configs.n_heads),
                    configs.d_model, configs.d_ff, dropout=configs.dropout, activation=configs.activation,
                ) for l in range(configs.e_layers)
            ],
            norm_layer=torch.nn.LayerNorm(configs.d_model)
        )
        self.decoder = Decoder(
            [
                DecoderLayer(
                    AttentionLayer(
                        FullAttention(True, configs.factor, attention_dropout=configs.dropout,
                                      output_attention=False), configs.d_model, configs.n_heads),
                    AttentionLayer(
                        FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                      output_attention=False), configs.d_model, configs.n_heads),
                    configs.d_model, configs.d_ff, dropout=configs.dropout, activation=configs.activation,
                ) for l in range(configs.d_layers)
            ],
            norm_layer=torch.nn.LayerNorm(configs.d_model),
            projection=nn.Linear(configs.d_model, configs.c_out, bias=True)
        )

    def embed(self, values, x, x_mark):
        return values(x) if x_mark is None else values(x) + self.mark_embedding(x_mark)

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec, mask=None):
        enc_out, _ = self.encoder(self.embed(self.enc_embedding, x_enc, x_mark_enc), attn_mask=None)
        dec_out = self.decoder(self.embed(self.dec_embedding, x_dec, x_mark_dec), enc_out, x_mask=None, cross_mask=None)
        return dec_out[:, -self.pred_len:, :]
