from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class NumericCategoricalData:
    """Numeric (batch, n_numeric, seq) and categorical (batch, n_categorical, seq[, n_tokens]) tensors."""

    numeric: torch.Tensor
    categorical: Optional[torch.Tensor] = None


__all__ = ["NumericCategoricalData"]
