"""WaveTransformer: a token encoder makes waves, parallel blocks transform their representation, a decoder reads it."""

import json
import os
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

from .transformer import TransformerParallelBlock, RMSNorm


class WaveTransformer(nn.Module):
    def __init__(self, wave_encoder, wave_decoder, num_harmonics=64, transformer_num_layers=6,
                 transformer_num_heads=8, transformer_heads_kv=4, transformer_d_ff_multi=4, max_seq_len=512,
                 dropout=0.1, use_flash=True):
        super().__init__()
        self.num_harmonics = num_harmonics
        self.input_dim = num_harmonics * 3
        self.transformer_num_layers = transformer_num_layers
        self.transformer_num_heads = transformer_num_heads
        self.transformer_heads_kv = transformer_heads_kv
        self.transformer_d_ff_multi = transformer_d_ff_multi
        self.dropout_p = dropout
        self.use_flash = use_flash
        self.wave_encoder = wave_encoder

        self.layers = nn.ModuleList([
            TransformerParallelBlock(d_model=self.input_dim, num_heads_q=transformer_num_heads,
                                     num_heads_kv=transformer_heads_kv, d_ff=self.input_dim * transformer_d_ff_multi,
                                     max_seq_len=max_seq_len, dropout=dropout, use_yarn=True, use_flash=use_flash)
            for _ in range(transformer_num_layers)
        ])
        self.norm_f = RMSNorm(self.input_dim)

        self.wave_decoder = wave_decoder

    def forward(self, encoder_input: dict[str, Any], causal=True, return_encoder_outputs=False,
                attention_mask=None):
        wave = self.wave_encoder(attention_mask=attention_mask, **encoder_input)
        x = wave.to_representation()

        for i, block in enumerate(self.layers):
            x = block(x, causal=causal, attention_mask=attention_mask)

        x = self.norm_f(x)
        output = self.wave_decoder(x, attention_mask=attention_mask)

        if return_encoder_outputs:
            return output, wave
        return output

    def save(self, model_dir: Union[str, Path]):
        """Write transformer_config.json and transformer_state_dict.pt, then the encoder's and decoder's files."""
        path = Path(model_dir)
        path.mkdir(parents=True, exist_ok=True)

        config = {
            'num_harmonics': self.num_harmonics,
            'transformer_num_layers': self.transformer_num_layers,
            'transformer_num_heads': self.transformer_num_heads,
            'transformer_heads_kv': self.transformer_heads_kv,
            'transformer_d_ff_multi': self.transformer_d_ff_multi,
            'dropout': self.dropout_p,
            'use_flash': self.use_flash,
        }

        checkpoint = {
            'transformer_state_dict': self.state_dict(),
        }

        with open(path / 'transformer_config.json', 'w', encoding="utf-8") as f:
            json.dump(config, f, indent=4)
        torch.save(checkpoint, path / 'transformer_state_dict.pt')

        self.wave_encoder.save(model_dir)
        self.wave_decoder.save(model_dir)

    @classmethod
    def load(cls, model_dir: Union[str, Path], encoder_cls, decoder_cls, map_location=None):
        """The model save() wrote to model_dir, with its encoder and decoder."""
        if not (os.path.exists(model_dir) and os.path.isdir(model_dir)):
            raise FileNotFoundError(model_dir)
        path = Path(model_dir)
        wave_encoder = encoder_cls.load(path, map_location=map_location)
        wave_decoder = decoder_cls.load(path, map_location=map_location)

        with open(path / 'transformer_config.json', 'r', encoding="utf-8") as f:
            config = json.load(f)

        model = cls(
            wave_encoder=wave_encoder,
            wave_decoder=wave_decoder,
            **config
        )

        checkpoint = torch.load(path / 'transformer_state_dict.pt', map_location=map_location)
        model.load_state_dict(checkpoint['transformer_state_dict'])
        return model
