"""A small wave -> token decoder (one attention layer and an MLP), with save/load."""

import json
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn

from wave_transformer.core.transformer import MultiQueryFlashAttention, RMSNorm


class WaveToTokenDecoder(nn.Module):
    def __init__(self, vocab_size: int, num_harmonics: int = 64, d_model: int = 64, num_heads: int = 4,
                 num_heads_kv: int = 4, dropout: float = 0.0, max_seq_len: int = 512, use_flash=False):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_harmonics = num_harmonics
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv
        self.dropout = dropout
        self.use_flash = use_flash
        self.input_projection = nn.Linear(num_harmonics * 3, d_model)
        self.self_attention = MultiQueryFlashAttention(d_model, num_heads, num_heads_kv, self.dropout,
                                                       max_seq_len=max_seq_len, use_flash=use_flash)
        self.norm = RMSNorm(d_model)
        self.output_projection = nn.Linear(d_model, vocab_size)

    def forward(self, representation: torch.Tensor, attention_mask=None) -> torch.Tensor:
        x = self.input_projection(representation)
        x = x + self.self_attention(x, True, attention_mask)
        return self.output_projection(self.norm(x))

    def save(self, model_dir: Union[str, Path]):
        path = Path(model_dir)
        path.mkdir(parents=True, exist_ok=True)
        config = {'vocab_size': self.vocab_size, 'num_harmonics': self.num_harmonics, 'd_model': self.d_model,
                  'num_heads': self.num_heads, 'num_heads_kv': self.num_heads_kv, 'dropout': self.dropout,
                  'use_flash': self.use_flash}
        with open(path / 'decoder_config.json', 'w', encoding="utf-8") as f:
            json.dump(config, f, indent=4)
        torch.save({'decoder_state_dict': self.state_dict()}, path / 'decoder_state_dict.pt')

    @classmethod
    def load(cls, model_dir: Union[str, Path], map_location=None):
        path = Path(model_dir)
        with open(path / 'decoder_config.json', 'r', encoding="utf-8") as f:
            model = cls(**json.load(f))
        model.load_state_dict(torch.load(path / 'decoder_state_dict.pt', map_location=map_location)['decoder_state_dict'])
        return model
