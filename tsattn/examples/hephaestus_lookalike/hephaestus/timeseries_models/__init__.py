from .model_data_classes import TimeSeriesConfig  # noqa: F401
from .models import (  # noqa: F401
    FeedForwardNetwork,
    ReservoirEmbedding,
    TimeSeriesDecoder,
    TimeSeriesTransformer,
    TransformerBlock,
)
from .multihead_attention import MultiHeadAttention4D  # noqa: F401
