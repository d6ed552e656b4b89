"""Ready models built on tsattn.modules.

Seed 002's model family (``from tsattn.models import ...`` replaces its ``from transformer.* import ...``):
``TransformerModel``, ``AutoregressiveTransformerModel``, ``EncoderDecoder``, ``FFNConfig``, ``MOE``,
``get_attention``, ``MultiHeadAttention``, ``MultiQueryAttention``, ``GroupQueryAttention``, ``CrossAttention``,
``TransformerEncoderLayer``, ``TransformerDecoderLayer``, ``create_causal_mask``, ``scaled_dot_product_attention``;
export wrappers of their stateless forms in ``tsattn.models.graphs``.
"""

from .attention import (
    CrossAttention,
    GroupQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
    SelfAttention,
    create_causal_mask,
    get_attention,
    scaled_dot_product_attention,
)
from .configs import FFNConfig
from .graphs import DecodeStepGraph, DecoderStepGraph, EncoderGraph, ForwardGraph, GraphSpec
from .layers import TransformerDecoderLayer, TransformerEncoderLayer, sinusoidal_encoding
from .moe import FFN, MOE, Routing
from .transformer import AutoregressiveTransformerModel, EncoderDecoder, TransformerModel

__all__ = [
    "AutoregressiveTransformerModel",
    "CrossAttention",
    "DecodeStepGraph",
    "DecoderStepGraph",
    "EncoderDecoder",
    "EncoderGraph",
    "FFN",
    "FFNConfig",
    "ForwardGraph",
    "GraphSpec",
    "GroupQueryAttention",
    "MOE",
    "MultiHeadAttention",
    "MultiQueryAttention",
    "Routing",
    "SelfAttention",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "TransformerModel",
    "create_causal_mask",
    "get_attention",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]
