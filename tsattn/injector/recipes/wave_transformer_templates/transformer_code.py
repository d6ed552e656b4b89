# tsattn-inject wave_transformer: the code the wave_transformer recipes insert into core/transformer.py.
"""The code that the ``wave_transformer`` recipes (``pcca``, ``wcmha``) insert into upstream's
``core/transformer.py`` (``TransformerParallelBlock``, ``MultiQueryFlashAttention``), kept as real Python so that
it is imported and tested like the other templates; read as text by the recipe with ``template_code``, as
``wave_transformer_code.py`` is (module-level functions: inserted statements or expressions, their parameters
the names they use; methods of the stand-in classes: added as they are).
"""

import torch
from torch import nn

from tsattn.modules.wave_pcca import PhaseCoherentAttention
from tsattn.modules.wcmha import DecayBias

# --- PCCA -------------------------------------------------------------------------------------------------------------


# TransformerParallelBlock.__init__: ``self.attn = MultiQueryFlashAttention(...)`` becomes this expression (WrapCall:
# ``{call}``, a set display here, stands for the original call). Continuation lines are relative to the statement's
# indentation (libcst adds it).
def pcca_attention(d_model, num_harmonics, num_heads_q, num_heads_kv, dropout, use_yarn, use_flash, pcca_mode,
                   pcca_phase_temp, decay, decay_alpha, decay_cutoff, use_pcca, call):
    return (
        PhaseCoherentAttention(d_model, num_harmonics or d_model // 3, n_heads_q=num_heads_q, n_heads_kv=num_heads_kv,
                               dropout_p=dropout, use_yarn=use_yarn, use_flash=use_flash,
                               phase_coherence_mode=pcca_mode, phase_temp=pcca_phase_temp,
                               decay=decay or "none", decay_alpha=decay_alpha, cutoff=decay_cutoff)
        if use_pcca
        else {call}
    )


class TransformerParallelBlock(nn.Module):
    """Stand-in for upstream's block: the method the ``pcca`` recipe adds to it (after ``__init__``)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # (tsattn-inject) Weights of the standard attention load into PhaseCoherentAttention: kv_proj is split into
        # k_proj and v_proj, the rotary tables are dropped (PCCA computes the same rotation) and PCCA's own state
        # (blend alpha and beta, decay) keeps its configured values. With beta = 0 the block then computes what it
        # computed before.
        attn = prefix + "attn."
        if isinstance(self.attn, PhaseCoherentAttention) and attn + "kv_proj.weight" in state_dict:
            key, value = state_dict.pop(attn + "kv_proj.weight").chunk(2, dim=0)
            state_dict.setdefault(attn + "k_proj.weight", key)
            state_dict.setdefault(attn + "v_proj.weight", value)
            for name in [k for k in state_dict if k.startswith(attn + "yarn_rope.")]:
                del state_dict[name]
            for name, tensor in self.attn.state_dict().items():
                if not name.endswith("_proj.weight"):
                    state_dict.setdefault(attn + name, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# --- WCMHA ----------------------------------------------------------------------------------------------------------

# MultiQueryFlashAttention.__init__, after ``self.use_yarn = use_yarn``
def init_decay(self, decay, decay_alpha, n_heads_q, decay_cutoff, use_flash):
    # WCMHA decay bias (tsattn-inject): added to the scores of the manual path
    self.decay_bias = None
    if decay is not None:
        if use_flash:
            raise ValueError("decay (WCMHA) needs use_flash=False: flash_attn takes no attention bias")
        self.decay_bias = DecayBias(decay, decay_alpha, n_heads_q, cutoff=decay_cutoff)


# MultiQueryFlashAttention.forward, after the scores (``scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale``)
def decay_scores(self, scores, N, causal):
    if self.decay_bias is not None:  # (tsattn-inject) WCMHA: bias(i - j), causal masking kept below
        pos = torch.arange(N, device=scores.device, dtype=torch.promote_types(scores.dtype, torch.float32))
        dt = pos[:, None] - pos[None, :]
        scores = scores + self.decay_bias(dt if causal else dt.abs()).to(scores.dtype)


# MultiQueryFlashAttention.forward, after the softmax. A padded query whose window (step, butterworth,
# cutoff) holds only padded keys has no key left: its row would be NaN, and the next layer's 0 * NaN
# would spread it to every position; it attends to nothing instead.
def decay_empty_rows(self, attn, scores):
    if self.decay_bias is not None:  # (tsattn-inject) rows the decay window and the padding mask both emptied
        attn = attn.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)



class MultiQueryFlashAttention(nn.Module):
    """Stand-in for upstream's attention: the method the ``wcmha`` recipe adds to it (after ``__init__``)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # (tsattn-inject) A checkpoint saved without the WCMHA decay keeps the configured one.
        if self.decay_bias is not None:
            for name, tensor in self.decay_bias.state_dict().items():
                state_dict.setdefault(prefix + "decay_bias." + name, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
