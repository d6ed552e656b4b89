"""Look-alike of Hephaestus' time-series models (tsattn test fixture, not upstream code).

Tokens are (column, time) cells: each column's values at each time step become a d_model vector; the blocks
attend over time within each column (MultiHeadAttention4D), queries and values from the cells, keys from the
column-name embeddings; the decoder predicts every numeric column (from all columns at that time) and the token
of every categorical column.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hephaestus.timeseries_models.model_data_classes import TimeSeriesConfig
from hephaestus.timeseries_models.multihead_attention import MultiHeadAttention4D
from hephaestus.utils import NumericCategoricalData


class FeedForwardNetwork(nn.Module):
    """Two d_model x d_model layers with a ReLU (d_ff is stored, as upstream, but unused)."""

    def __init__(self, d_model: int, d_ff: int, dropout_rate: float):
        super().__init__()
        self.d_model = d_model
        self.d_ff = d_ff
        self.dropout_rate = dropout_rate
        self.dense1 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout_rate)
        self.dense2 = nn.Linear(d_model, d_model)

    def forward(self, x, deterministic: bool = False):
        shape = x.shape
        h = F.relu(self.dense1(x.to(torch.float32).view(-1, self.d_model)))
        if not deterministic:
            h = self.dropout(h)
        h = self.dense2(h)
        if not deterministic:
            h = self.dropout(h)
        return h.view(*shape)


class TransformerBlock(nn.Module):
    """Attention, residual and layer norm, then feed-forward, residual and layer norm, on 4D tensors."""

    def __init__(self, num_heads: int, d_model: int, d_ff: int, dropout_rate: float):
        super().__init__()
        self.num_heads = num_heads
        self.d_model = d_model
        self.d_ff = d_ff
        self.dropout_rate = dropout_rate
        self.multi_head_attention = MultiHeadAttention4D(
            embed_dim=d_model, num_heads=num_heads, dropout=dropout_rate
        )
        self.layer_norm1 = nn.LayerNorm(d_model)
        self.feed_forward_network = FeedForwardNetwork(d_model=d_model, d_ff=d_ff, dropout_rate=dropout_rate)
        self.layer_norm2 = nn.LayerNorm(d_model)
        for module in self.modules():  # every linear layer again, attention included (as upstream does)
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _norm(self, norm, x):
        b, c, n, _ = x.shape
        return norm(x.reshape(-1, self.d_model)).view(b, c, n, self.d_model)

    def forward(self, q, k, v, deterministic: bool = False, mask: torch.Tensor = None):
        q, k, v = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
        if mask is not None:
            mask = mask.to(q.device)
        attention_output, _ = self.multi_head_attention(query=q, key=k, value=v, mask=mask)
        out = self._norm(self.layer_norm1, q + attention_output)
        out = out + self.feed_forward_network(out, deterministic=deterministic)
        return self._norm(self.layer_norm2, out)


class ReservoirEmbedding(nn.Module):
    """A token's vector: the sum of the embeddings of its reservoir (sub-word) ids, ``config.reservoir_encoded``."""

    def __init__(self, config: TimeSeriesConfig, features: int, frozen_index: int = 0):
        super().__init__()
        self.config = config
        self.features = features
        self.frozen_index = frozen_index
        self.register_buffer("token_reservoir_lookup", config.reservoir_encoded, persistent=True)
        self.embedding = nn.Embedding(num_embeddings=config.vocab_size, embedding_dim=features)

    def forward(self, base_indices: torch.Tensor):
        ids = self.token_reservoir_lookup.to(base_indices.device)[base_indices.long()]
        return self.embedding(ids).sum(dim=-2, dtype=torch.float32)


class TimeSeriesTransformer(nn.Module):
    """Embeddings of the cells and of the column names, sinusoidal positions, then four blocks."""

    def __init__(self, config: TimeSeriesConfig, d_model: int = 64, n_heads: int = 4):
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.n_heads = n_heads
        self.embedding = ReservoirEmbedding(config=self.config, features=self.d_model)
        self.transformer_block_0 = TransformerBlock(
            num_heads=self.n_heads, d_model=self.d_model, d_ff=64, dropout_rate=0.1
        )
        self.transformer_block_chain = nn.ModuleList(
            [
                TransformerBlock(
                    num_heads=self.n_heads,
                    d_model=self.d_model,
                    d_ff=64,
                    dropout_rate=0.1,
                )
                for i in range(1, 4)
            ]
        )
        self.pos_encoder = PositionalEncoding(max_len=1024, d_pos_encoding=d_model)

    def _device(self):
        return next(self.parameters()).device

    def _columns(self, indices, batch, seq_len):
        """Embeddings of the column-name tokens ``indices`` at every position: (batch, n, seq_len, d_model)."""
        indices = torch.as_tensor(indices, device=self._device()).long()
        names = self.embedding(indices.repeat(seq_len, 1).t())
        return names.unsqueeze(0).expand(batch, -1, -1, -1).to(torch.float32)

    def process_numeric(self, numeric_inputs):
        """Value times the numeric token's embedding; a NaN becomes the numeric-mask token's embedding."""
        numeric_inputs = numeric_inputs.to(torch.float32)
        missing = torch.isnan(numeric_inputs)
        values = torch.nan_to_num(numeric_inputs, nan=0.0)
        device = self._device()
        unit = self.embedding(torch.tensor(self.config.token_dict[self.config.numeric_token], device=device))
        masked = self.embedding(torch.tensor(self.config.numeric_mask_token, device=device))
        cells = torch.where(missing.unsqueeze(-1), masked.expand(*values.shape, -1), values.unsqueeze(-1) * unit)
        columns = self._columns(self.config.numeric_indices, values.shape[0], values.shape[2])
        return cells.to(torch.float32), columns

    def process_categorical(self, categorical_inputs):
        """Token ids (as floats) embedded; a NaN becomes the numeric-mask token."""
        if categorical_inputs is None:
            return None, None
        categorical_inputs = categorical_inputs.to(torch.float32)
        mask_token = torch.tensor(self.config.token_dict["[NUMERIC_MASK]"], device=self._device(),
                                  dtype=torch.float32)
        tokens = torch.where(torch.isnan(categorical_inputs), mask_token, categorical_inputs).long()
        cells = self.embedding(tokens)
        columns = self._columns(self.config.categorical_indices, tokens.shape[0], tokens.shape[2])
        return cells.to(torch.float32), columns

    def combine_inputs(self, numeric, categorical):
        """Numeric columns first, then categorical ones; positions added to both embeddings."""
        parts = [p for p in (numeric, categorical) if p[0] is not None]
        if not parts:
            raise ValueError("No numeric or categorical inputs provided.")
        cells = torch.cat([p[0] for p in parts], dim=1)
        columns = torch.cat([p[1] for p in parts], dim=1)
        return self.pos_encoder(cells), self.pos_encoder(columns)

    def causal_mask(self, numeric_inputs, categorical_inputs):
        """(batch, seq, seq) bool, True = masked: future positions, and every position where any input is NaN."""
        given = [x for x in (numeric_inputs, categorical_inputs) if x is not None]
        inputs = torch.cat(given, dim=1)
        seq_len = inputs.size(2)
        future = torch.triu(torch.ones(seq_len, seq_len), diagonal=1).bool().to(self._device())
        padded = torch.isnan(inputs).any(dim=1)  # (batch, seq)
        return future | padded.unsqueeze(1).expand(-1, seq_len, -1)

    def forward(self, numeric_inputs=None, categorical_inputs=None, deterministic: bool = False,
                causal_mask: bool = True):
        device = self._device()
        numeric_inputs = numeric_inputs.to(device, dtype=torch.float32)
        if categorical_inputs is not None:
            categorical_inputs = categorical_inputs.to(device, dtype=torch.float32)
        cells, columns = self.combine_inputs(self.process_numeric(numeric_inputs),
                                             self.process_categorical(categorical_inputs))
        mask = self.causal_mask(numeric_inputs, categorical_inputs) if causal_mask else None
        out = self.transformer_block_0(q=cells, k=columns, v=cells, deterministic=deterministic, mask=mask)
        for block in self.transformer_block_chain:
            out = block(q=out, k=columns, v=out, deterministic=deterministic, mask=mask)
        return out


class TimeSeriesDecoder(nn.Module):
    """The transformer, a numeric head over all columns at each time and a categorical head per cell."""

    def __init__(self, config: TimeSeriesConfig, d_model: int = 64, n_heads: int = 4):
        super().__init__()
        self.config = config
        self.d_model = d_model
        self.n_heads = n_heads
        self.time_series_transformer = TimeSeriesTransformer(
            config=self.config, d_model=self.d_model, n_heads=self.n_heads
        )
        self.numeric_linear1 = nn.Linear(d_model * config.n_columns, d_model * 2)
        self.numeric_linear2 = nn.Linear(d_model * 2, len(config.numeric_col_tokens))
        wide, wider = d_model * 4, d_model * 6
        self.categorical_dense1 = nn.Linear(d_model, wide)
        self.categorical_bn1 = nn.BatchNorm1d(wide)
        self.categorical_dropout1 = nn.Dropout(0.2)
        self.categorical_dense2 = nn.Linear(wide, wider)
        self.categorical_bn2 = nn.BatchNorm1d(wider)
        self.categorical_dropout2 = nn.Dropout(0.2)
        self.categorical_dense3 = nn.Linear(wider, wide)
        self.categorical_bn3 = nn.BatchNorm1d(wide)
        self.categorical_dropout3 = nn.Dropout(0.1)
        self.categorical_output = nn.Linear(wide, len(config.token_decoder_dict))
        for module in self.modules():  # every linear layer of the model, the transformer's too
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def _categorical_head(self, x, deterministic):
        layers = ((self.categorical_dense1, self.categorical_bn1, self.categorical_dropout1),
                  (self.categorical_dense2, self.categorical_bn2, self.categorical_dropout2),
                  (self.categorical_dense3, self.categorical_bn3, self.categorical_dropout3))
        for dense, norm, dropout in layers:
            x = F.relu(norm(dense(x)))
            if not deterministic:
                x = dropout(x)
        return self.categorical_output(x)

    def forward(self, numeric_inputs, categorical_inputs=None, deterministic: bool = False,
                causal_mask: bool = True) -> NumericCategoricalData:
        numeric_inputs = torch.as_tensor(numeric_inputs, dtype=torch.float32)
        if categorical_inputs is not None:
            categorical_inputs = torch.as_tensor(categorical_inputs, dtype=torch.float32)
        # data-dependent branches, as upstream has them (an exporter's trap)
        if torch.isnan(numeric_inputs).any():
            numeric_inputs = torch.nan_to_num(numeric_inputs, nan=0.0)
        out = self.time_series_transformer(numeric_inputs=numeric_inputs, categorical_inputs=categorical_inputs,
                                           deterministic=deterministic, causal_mask=causal_mask)
        if torch.isnan(out).any():
            print("Warning: NaNs detected in transformer output")
            out = torch.nan_to_num(out, nan=0.0)
        b, c, n, d = out.shape
        numeric = out.transpose(1, 2).reshape(b, n, c * d)
        numeric = self.numeric_linear2(F.relu(self.numeric_linear1(numeric))).transpose(1, 2)
        if torch.isnan(numeric).any():
            numeric = torch.nan_to_num(numeric, nan=0.0)
        categorical = None
        if categorical_inputs is not None:
            n_cat = categorical_inputs.shape[1]
            cells = out[:, -n_cat:].reshape(-1, d)
            categorical = self._categorical_head(cells, deterministic).reshape(b, n_cat, n, -1)
            if torch.isnan(categorical).any():
                categorical = torch.nan_to_num(categorical, nan=0.0)
        return NumericCategoricalData(numeric=numeric, categorical=categorical)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions 0 .. seq_len - 1 added to (batch, n_columns, seq_len, d); at most ``max_len``."""

    def __init__(self, max_len: int, d_pos_encoding: int):
        super().__init__()
        self.max_len = max_len
        self.d_pos_encoding = d_pos_encoding

    def forward(self, x):
        seq_len = x.shape[2]
        if seq_len > self.max_len:
            raise ValueError(f"Sequence length {seq_len} is larger than the maximum length {self.max_len}")
        position = torch.arange(self.max_len, dtype=torch.float, device=x.device).unsqueeze(1)
        rate = torch.exp(torch.arange(0, self.d_pos_encoding, 2, dtype=torch.float, device=x.device)
                         * (-math.log(10000.0) / self.d_pos_encoding))
        table = torch.zeros(self.max_len, self.d_pos_encoding, device=x.device)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate)
        return x + table[:seq_len]
