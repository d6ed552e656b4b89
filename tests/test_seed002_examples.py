"""Every usage example of seed 002's README runs against tsattn.models, import path changed, nothing else.

The snippets below are copied verbatim from the seed (``transformer.*`` imports included); ``_run`` rewrites each
``from transformer... import`` line to ``from tsattn.models import`` and executes the result. Where a snippet uses a
name it never defines (``query``, ``tokens``, ``dataloader``, ``criterion``, and ``MultiHeadAttention`` in the MoE
integration example, which the seed forgets to import), the test supplies it in the namespace first and says so.
After each run the test checks what the seed's comments claim (shapes) and, for the cache examples, that the
cached results equal the uncached model's.
"""

from __future__ import annotations

import re
import textwrap

import torch

SEED_IMPORT = re.compile(r"^from transformer(\.[\w.]+)? import ", re.M)

REGRESSION = '''
from transformer.transformer_model import TransformerModel
from transformer.configs import FFNConfig

# Configure feedforward network
ffn_config = FFNConfig(
    embed_dim=32,
    latent_dim=128,
    use_moe=False  # Set to True for Mixture of Experts
)

model = TransformerModel(
    input_dim=8,
    embed_dim=32,
    ffn_latent_dim=128,
    num_layers=2,
    num_heads=2,
    output_dim=1,
    apply_causal_mask=False,
    max_seq_len=128,
    attention_type="mha",  # "mha", "mqa", or "gqa"
    ffn_config=ffn_config,
    use_kv_cache=False
)

# Input: [batch_size, sequence_length, input_dim]
x = torch.randn(32, 16, 8)
output = model(x)  # [32, 1] - scalar prediction
'''

AUTOREGRESSIVE = '''
from transformer.transformer_model import AutoregressiveTransformerModel
from transformer.configs import FFNConfig

# Configure feedforward network with MOE
ar_ffn_config = FFNConfig(
    embed_dim=64,
    latent_dim=128,
    use_moe=True,      # Enable Mixture of Experts
    num_experts=8,
    capacity=32,
    alpha=0.01,
    topk=2
)

model = AutoregressiveTransformerModel(
    input_dim=1,
    embed_dim=64,
    ffn_latent_dim=128,
    num_layers=2,
    num_heads=2,
    output_dim=1,
    apply_causal_mask=True,
    max_seq_len=128,
    attention_type="mha",
    ffn_config=ar_ffn_config,
    use_kv_cache=False
)

# Input: [batch_size, sequence_length, input_dim]
x = torch.randn(32, 16, 1)
output = model(x)  # [32, 16, 1] - full sequence

# Next token generation
next_token = model.generate_next_token(x)  # [32, 1, 1]
'''

ENCODER_DECODER = '''
from transformer.transformer_model import EncoderDecoder
from transformer.configs import FFNConfig

# Configure feedforward network
encdec_ffn_config = FFNConfig(
    embed_dim=64,
    latent_dim=128,
    use_moe=False  # Standard FFN for encoder-decoder
)

model = EncoderDecoder(
    input_dim=1,
    embed_dim=64,
    ffn_latent_dim=128,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    output_dim=1,
    apply_causal_mask=True,
    max_seq_len=128,
    attention_type="mha",
    ffn_config=encdec_ffn_config,
    use_kv_cache=False
)

# Source and target sequences
source = torch.randn(32, 16, 1)      # [batch, src_len, input_dim]
target = torch.randn(32, 20, 1)      # [batch, tgt_len, input_dim]

# Encode source sequence
encoder_output = model.encode(source)  # [32, 16, 64]

# Decode with target (teacher forcing during training)
decoder_output = model.decode(target, encoder_output)  # [32, 20, 1]

# Full forward pass
output = model(source, target)  # [32, 20, 1]
'''

CAUSAL_MASKING = '''
from transformer.attention import create_causal_mask, scaled_dot_product_attention

# Create causal mask for sequence length 10
mask = create_causal_mask(10)  # Lower triangular matrix

# Use in attention computation
attention_output = scaled_dot_product_attention(
    query, key, value, mask=mask
)
'''

BASIC_KV_CACHING = '''
from transformer.transformer_model import AutoregressiveTransformerModel
from transformer.configs import FFNConfig

# Configure FFN for KV caching model
kv_ffn_config = FFNConfig(
    embed_dim=64,
    latent_dim=128,
    use_moe=False
)

# Enable KV caching in model configuration
model = AutoregressiveTransformerModel(
    input_dim=1, embed_dim=64, ffn_latent_dim=128,
    num_layers=2, num_heads=4, output_dim=1,
    apply_causal_mask=True, max_seq_len=128,
    attention_type="gqa", use_kv_cache=True,
    ffn_config=kv_ffn_config
)

# First forward pass - initializes and populates cache
initial_sequence = torch.randn(1, 10, 1)  # [batch, seq_len, input_dim]
output1 = model(initial_sequence, expanding_context=True)

# Subsequent passes - reuses cache for efficiency
next_token = torch.randn(1, 1, 1)          # [batch, 1, input_dim] 
output2 = model(next_token, expanding_context=True)  # Much faster
'''

CONTEXT_MODES = '''
# Expanding Context - Cache grows with each generation step
# Good for: Short sequences, maximum context retention
model(tokens, expanding_context=True)

# Sliding Window - Fixed cache size, removes oldest entries  
# Good for: Long sequences, memory-constrained environments
model(tokens, expanding_context=False)
'''

ENCODER_DECODER_KV_CACHING = '''
from transformer.transformer_model import EncoderDecoder
from transformer.configs import FFNConfig

# Configure FFN for encoder-decoder with KV caching
encdec_kv_ffn_config = FFNConfig(
    embed_dim=64,
    latent_dim=128,
    use_moe=True,  # MOE can be beneficial for large encoder-decoder models
    num_experts=4,
    capacity=32,
    alpha=0.01,
    topk=1
)

model = EncoderDecoder(
    input_dim=1, embed_dim=64, ffn_latent_dim=128,
    num_encoder_layers=2, num_decoder_layers=2, num_heads=4, output_dim=1,
    apply_causal_mask=True, max_seq_len=128,
    attention_type="mqa", use_kv_cache=True,
    ffn_config=encdec_kv_ffn_config
)

# Encoder - can cache for repeated encoding of same source
source = torch.randn(1, 20, 1)
encoder_output = model.encode(source, expanding_context=False)

# Decoder - caches both self-attention and cross-attention K,V pairs
target = torch.randn(1, 1, 1)  # Start with single token
for step in range(10):
    # Each step reuses previous K,V and only computes new ones
    output = model.decode(target, encoder_output, expanding_context=True)
    # Use output to get next token for autoregressive generation
    target = torch.cat([target, output[:, -1:, :]], dim=1)
'''

MHA = '''
from transformer.attention.mha import MultiHeadAttention

attn = MultiHeadAttention(embed_dim=64, num_heads=8, apply_causal_mask=False)
'''

MQA = '''
from transformer.attention.mqa import MultiQueryAttention

attn = MultiQueryAttention(embed_dim=64, num_heads=8)
'''

GQA = '''
from transformer.attention.gqa import GroupQueryAttention

attn = GroupQueryAttention(embed_dim=64, num_heads=8, num_groups=4)
'''

FACTORY = '''
from transformer.attention_utils import get_attention

# Unified interface for all attention types
mha = get_attention("mha", embed_dim=64, num_heads=8, num_groups=8, apply_causal_mask=False, use_kv_cache=True)  # num_groups ignored for MHA
mqa = get_attention("mqa", embed_dim=64, num_heads=8, num_groups=1, apply_causal_mask=False, use_kv_cache=True)  # num_groups ignored for MQA
gqa = get_attention("gqa", embed_dim=64, num_heads=8, num_groups=4, apply_causal_mask=False, use_kv_cache=True)  # num_groups configurable for GQA

# GQA flexibility examples:
gqa_mqa_like = get_attention("gqa", embed_dim=64, num_heads=8, num_groups=1)  # Acts like MQA
gqa_balanced = get_attention("gqa", embed_dim=64, num_heads=8, num_groups=4)  # 2 heads per group
gqa_mha_like = get_attention("gqa", embed_dim=64, num_heads=8, num_groups=8)  # Acts like MHA
'''

BASIC_MOE = '''
from transformer.moe import MOE
import torch

# Create MOE layer with 8 experts
moe = MOE(
    embed_dim=512,           # Input/output embedding dimension
    ffn_latent_dim=2048,     # Hidden dimension for expert FFNs
    num_experts=8,           # Number of expert networks
    capacity=128,            # Max tokens per expert
    alpha=0.01,              # Load balancing coefficient
    topk=1                   # Top-1 routing
)

# Forward pass returns output and auxiliary loss
input_tensor = torch.randn(4, 32, 512)  # [batch, seq_len, embed_dim]
output, aux_loss = moe(input_tensor)     # Same shape + scalar loss

print(f"Output shape: {output.shape}")         # torch.Size([4, 32, 512])
print(f"Auxiliary loss: {aux_loss.item():.4f}") # Load balancing penalty
'''

MOE_INTEGRATION = '''
import torch.nn as nn
from transformer.moe import MOE
from transformer.encoder import TransformerEncoderLayer

class TransformerWithMOE(nn.Module):
    def __init__(self, embed_dim, num_experts=8):
        super().__init__()
        
        # Standard transformer layer with attention
        self.attention = MultiHeadAttention(embed_dim, num_heads=8)
        self.norm1 = nn.LayerNorm(embed_dim)
        
        # Replace FFN with MOE
        self.moe = MOE(
            embed_dim=embed_dim,
            ffn_latent_dim=embed_dim * 4,
            num_experts=num_experts,
            capacity=embed_dim,
            alpha=0.01,
            topk=1
        )
        self.norm2 = nn.LayerNorm(embed_dim)
    
    def forward(self, x):
        # Self-attention block
        attn_out = self.attention(x, x, x)
        x = self.norm1(x + attn_out)
        
        # MOE block (replaces standard FFN)
        moe_out, aux_loss = self.moe(x)
        x = self.norm2(x + moe_out)
        
        return x, aux_loss
'''

MOE_TRAINING = '''
model = TransformerWithMOE(embed_dim=512, num_experts=16)
optimizer = torch.optim.Adam(model.parameters())

for batch in dataloader:
    inputs, targets = batch
    outputs, aux_loss = model(inputs)
    
    # Main task loss
    main_loss = criterion(outputs, targets)
    
    # Total loss includes auxiliary loss
    total_loss = main_loss + aux_loss
    
    optimizer.zero_grad()
    total_loss.backward()
    optimizer.step()
'''


def _run(snippet: str, ns: dict = None, imports: int = None) -> dict:
    """Rewrite the seed's ``transformer.*`` imports to ``tsattn.models`` and execute the snippet in ``ns``."""
    code, n = SEED_IMPORT.subn("from tsattn.models import ", textwrap.dedent(snippet))
    if imports is not None:
        assert n == imports, f"expected {imports} seed imports to rewrite, found {n}"
    assert "transformer." not in code.replace("transformer_model", "")
    ns = {"torch": torch} if ns is None else ns
    torch.manual_seed(0)
    exec(compile(code, "<seed 002 example>", "exec"), ns)
    return ns


def test_regression_example():
    ns = _run(REGRESSION, imports=2)
    assert ns["output"].shape == (32, 1)


def test_autoregressive_example():
    ns = _run(AUTOREGRESSIVE, imports=2)
    assert ns["output"].shape == (32, 16, 1) and ns["next_token"].shape == (32, 1, 1)
    assert torch.equal(ns["next_token"], ns["output"][:, -1:])
    assert float(ns["model"].aux_loss.detach()) > 0  # MoE on: the summed load-balancing loss is exposed


def test_encoder_decoder_example():
    ns = _run(ENCODER_DECODER, imports=2)
    assert ns["encoder_output"].shape == (32, 16, 64)
    assert ns["decoder_output"].shape == (32, 20, 1) and ns["output"].shape == (32, 20, 1)
    assert torch.allclose(ns["decoder_output"], ns["output"])


def test_causal_masking_example():
    # the seed leaves query/key/value undefined
    ns = {"torch": torch, "query": torch.randn(2, 4, 10, 16), "key": torch.randn(2, 4, 10, 16),
          "value": torch.randn(2, 4, 10, 16)}
    ns = _run(CAUSAL_MASKING, ns, imports=1)
    assert torch.equal(ns["mask"], torch.ones(10, 10, dtype=torch.bool).tril())
    out = ns["attention_output"]
    assert out.shape == (2, 4, 10, 16)
    assert torch.allclose(out[:, :, 0], ns["value"][:, :, 0], atol=1e-6)  # the first query sees only the first key


def _uncached_twin(model, cls, **kwargs):
    twin = cls(**kwargs, use_kv_cache=False).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_basic_kv_caching_and_context_mode_examples():
    from tsattn.models import AutoregressiveTransformerModel, FFNConfig

    ns = _run(BASIC_KV_CACHING, imports=2)
    m = ns["model"]
    assert ns["output1"].shape == (1, 10, 1) and ns["output2"].shape == (1, 1, 1)
    twin = _uncached_twin(m, AutoregressiveTransformerModel, input_dim=1, embed_dim=64, ffn_latent_dim=128,
                          num_layers=2, num_heads=4, output_dim=1, apply_causal_mask=True, max_seq_len=128,
                          attention_type="gqa", ffn_config=FFNConfig(64, 128))
    full = twin(torch.cat([ns["initial_sequence"], ns["next_token"]], dim=1))
    assert (full[:, :10] - ns["output1"]).abs().max() <= 1e-5
    assert (full[:, 10:] - ns["output2"]).abs().max() <= 1e-5
    assert m.cache[0][0].shape == (1, 2, 11, 16)  # gqa default: num_heads // 2 = 2 kv heads

    ns["tokens"] = torch.randn(1, 1, 1)  # the seed leaves tokens undefined
    _run(CONTEXT_MODES, ns, imports=0)
    assert m.cache[0][0].shape[2] == 13  # 11 + 2 new positions: the sliding window (127) has not filled yet


def test_encoder_decoder_kv_caching_example():
    from tsattn.models import EncoderDecoder, FFNConfig

    ns = _run(ENCODER_DECODER_KV_CACHING, imports=2)
    m, target, output = ns["model"], ns["target"], ns["output"]
    assert target.shape == (1, 11, 1) and output.shape == (1, 10, 1)
    twin = _uncached_twin(m, EncoderDecoder, input_dim=1, embed_dim=64, ffn_latent_dim=128, num_encoder_layers=2,
                          num_decoder_layers=2, num_heads=4, output_dim=1, apply_causal_mask=True, max_seq_len=128,
                          attention_type="mqa",
                          ffn_config=FFNConfig(64, 128, use_moe=True, num_experts=4, capacity=32, alpha=0.01, topk=1))
    # the seed's claim "each step reuses previous K,V and only computes new ones": same result as no cache
    want = twin.decode(target[:, :10], ns["encoder_output"])
    assert (output - want).abs().max() <= 1e-5
    # each generated value was the last output of its step
    assert (target[:, 1:] - want).abs().max() <= 1e-5
    assert m.cache[0][0].shape == (1, 1, 10, 16)  # mqa: one kv head


def test_attention_class_examples():
    ns = _run(MHA, imports=1)
    assert ns["attn"].num_kv_heads == 8 and not ns["attn"].apply_causal_mask
    ns = _run(MQA, imports=1)
    assert ns["attn"].num_kv_heads == 1
    ns = _run(GQA, imports=1)
    assert ns["attn"].num_kv_heads == 4
    x = torch.randn(2, 5, 64)
    assert ns["attn"](x, x, x).shape == (2, 5, 64)


def test_attention_factory_example():
    ns = _run(FACTORY, imports=1)
    kv = {name: ns[name].num_kv_heads for name in
          ("mha", "mqa", "gqa", "gqa_mqa_like", "gqa_balanced", "gqa_mha_like")}
    assert kv == {"mha": 8, "mqa": 1, "gqa": 4, "gqa_mqa_like": 1, "gqa_balanced": 4, "gqa_mha_like": 8}
    assert ns["mha"].use_kv_cache and not ns["gqa_balanced"].use_kv_cache


def test_basic_moe_example(capsys):
    ns = _run(BASIC_MOE, imports=1)
    assert ns["output"].shape == (4, 32, 512) and ns["aux_loss"].dim() == 0
    assert "Output shape: torch.Size([4, 32, 512])" in capsys.readouterr().out


def test_moe_integration_and_training_examples():
    from tsattn.models import MultiHeadAttention

    ns = _run(MOE_INTEGRATION, {"torch": torch, "MultiHeadAttention": MultiHeadAttention}, imports=2)
    model = ns["TransformerWithMOE"](embed_dim=32, num_experts=4)
    out, aux = model(torch.randn(2, 6, 32))
    assert out.shape == (2, 6, 32) and aux.dim() == 0

    # the seed leaves dataloader and criterion undefined
    g = torch.Generator().manual_seed(0)
    ns["dataloader"] = [(torch.randn(2, 4, 512, generator=g), torch.randn(2, 4, 512, generator=g)) for _ in range(1)]
    ns["criterion"] = torch.nn.MSELoss()
    ns = _run(MOE_TRAINING, ns, imports=0)
    model = ns["model"]
    assert model.moe.router.weight.grad.abs().sum() > 0  # the aux loss reached the router
    assert ns["total_loss"].requires_grad
