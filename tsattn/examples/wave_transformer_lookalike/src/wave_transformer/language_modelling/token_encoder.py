"""A small token -> wave encoder (embedding and three heads), with save/load."""

import json
import math
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from wave_transformer.core.wave import Wave


class TokenToWaveEncoder(nn.Module):
    def __init__(self, vocab_size: int, num_harmonics: int = 64, d_model: int = 64):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_harmonics = num_harmonics
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.freq = nn.Linear(d_model, num_harmonics)
        self.amp = nn.Linear(d_model, num_harmonics)
        self.phase = nn.Linear(d_model, num_harmonics)

    def forward(self, token_ids, attention_mask=None) -> Wave:
        h = self.embedding(token_ids)
        return Wave(frequencies=F.softplus(self.freq(h)), amplitudes=F.softplus(self.amp(h)),
                    phases=math.pi * torch.tanh(self.phase(h)))

    def save(self, model_dir: Union[str, Path]):
        path = Path(model_dir)
        path.mkdir(parents=True, exist_ok=True)
        config = {'vocab_size': self.vocab_size, 'num_harmonics': self.num_harmonics, 'd_model': self.d_model}
        with open(path / 'encoder_config.json', 'w', encoding="utf-8") as f:
            json.dump(config, f, indent=4)
        torch.save({'encoder_state_dict': self.state_dict()}, path / 'encoder_state_dict.pt')

    @classmethod
    def load(cls, model_dir: Union[str, Path], map_location=None):
        path = Path(model_dir)
        with open(path / 'encoder_config.json', 'r', encoding="utf-8") as f:
            model = cls(**json.load(f))
        model.load_state_dict(torch.load(path / 'encoder_state_dict.pt', map_location=map_location)['encoder_state_dict'])
        return model
