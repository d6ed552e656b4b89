"""The model configuration: the fields Hephaestus' TimeSeriesConfig has (its generate(df) is not reproduced)."""

from dataclasses import dataclass

import torch


@dataclass
class TimeSeriesConfig:
    numeric_token: str = None
    numeric_mask: str = None
    numeric_col_tokens: list = None
    categorical_col_tokens: list = None
    tokens: list = None
    token_dict: dict = None
    token_decoder_dict: dict = None
    n_tokens: int = None
    numeric_indices: torch.Tensor = None
    categorical_indices: torch.Tensor = None
    object_tokens: list = None
    numeric_mask_token: int = None
    reservoir_vocab: list = None
    reservoir_encoded: torch.Tensor = None  # (n_tokens, 8) sub-word ids of every token
    tokenizer: object = None
    vocab_size: int = None
    ds_length: int = None
    n_columns: int = None
