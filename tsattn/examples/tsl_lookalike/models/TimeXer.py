"""Look-alike (anchors only): an encoder layer with self-attention (patches) and cross-attention (to variates)."""
import torch.nn as nn
from layers.SelfAttention_Family import FullAttention, AttentionLayer


class EncoderLayer(nn.Module):
    def __init__(self, self_attention, cross_attention, d_model, d_ff=None, dropout=0.1, activation="relu"):
        super(EncoderLayer, self).__init__()
        self.self_attention, self.cross_attention = self_attention, cross_attention


class Model(nn.Module):
    def __init__(self, configs):
        super(Model, self).__init__()
        self.layers = nn.ModuleList([
            EncoderLayer(
                AttentionLayer(
                    FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                  output_attention=False), configs.d_model, configs.n_heads),
                AttentionLayer(
                    FullAttention(False, configs.factor, attention_dropout=configs.dropout,
                                  output_attention=False), configs.d_model, configs.n_heads),
                configs.d_model, configs.d_ff, dropout=configs.dropout, activation=configs.activation,
            ) for l in range(configs.e_layers)
        ])
