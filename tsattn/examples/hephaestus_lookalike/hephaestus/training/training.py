"""The training wrapper (upstream: a pytorch_lightning.LightningModule; a plain module here)."""

import torch.nn as nn

from hephaestus.timeseries_models import TimeSeriesDecoder


class TabularDecoder(nn.Module):
    def __init__(self, time_series_config, d_model, n_heads):
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.model = TimeSeriesDecoder(time_series_config, self.d_model, self.n_heads)

    def forward(self, x):
        return self.model(x.numeric, x.categorical)
