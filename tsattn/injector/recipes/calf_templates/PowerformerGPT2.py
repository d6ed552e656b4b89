# tsattn-inject calf/wcmha: generated file. Re-run tsattn-inject to update it, or `tsattn-inject --revert` to remove it.
"""GPT-2 with Powerformer's weighted causal attention (WCMHA): attention, block and model.

The modules keep GPT-2's parameter names and shapes (``c_attn``, ``c_proj`` as transformers' ``Conv1D``, ``ln_1``,
``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``wte``, ``wpe``, ``ln_f``), so a GPT-2 state_dict loads one to one and
peft's LoRA with ``target_modules=["c_attn"]`` applies unchanged. The only new state is each attention's decay
(``h.<i>.attn.decay.alpha``); a state_dict without it (a plain GPT-2, or a checkpoint saved before the
attention was swapped) still loads with ``strict=True`` and keeps the configured alpha. A state_dict whose alpha
differs from the configured one wins, with a ``UserWarning`` naming both values.

Attention scores are GPT-2's ``q.k / sqrt(head_dim)`` plus the WCMHA bias ``decay(dt)`` of the query-key distance
``dt`` (``-alpha * log(dt + 1)`` for the default ``powerlaw``), future positions masked. ``alpha=0`` is GPT-2's
causal attention exactly. Nothing here uses transformers' ``GPT2Block``/``GPT2Attention``: only ``GPT2Model``
(for its embeddings, ``from_pretrained`` and ``PreTrainedModel`` plumbing), ``Conv1D`` and ``ACT2FN``, which are
the same in transformers 4.30 and 5.x.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.gpt2.modeling_gpt2 import GPT2Model
from transformers.pytorch_utils import Conv1D

from tsattn.modules.wcmha import DecayBias, decayed_attention, dense_bias, dense_weights

KVCache = Tuple[torch.Tensor, torch.Tensor]  # (key, value), each (batch, heads, length, head_dim)

# Buffers of transformers' GPT2Attention that older GPT-2 checkpoints carry; they hold no learned state.
_LEGACY_ATTENTION_BUFFERS = ("bias", "masked_bias")


def _values(t: torch.Tensor):
    """A decay tensor as a number (scalar) or a list of numbers, for messages."""
    def short(v: float) -> float:
        return float(f"{v:.7g}")  # float32 0.7 as 0.7, not 0.699999988079071

    values = t.detach().cpu().tolist()
    return [short(v) for v in values] if isinstance(values, list) else short(values)


class PowerformerGPT2Attention(nn.Module):
    """GPT-2 self-attention with the WCMHA decay bias.

    ``forward(hidden_states, layer_past=None, attention_mask=None, use_cache=False, output_attentions=False)``
    takes (B, L, E) and returns ``(output (B, L, E), present, weights)``: ``present`` the (key, value) of the past
    and new positions, each (B, H, P + L, E / H), when ``use_cache`` (else None); ``weights`` the softmax weights
    (B, H, L, P + L) when ``output_attentions`` (else None). ``attention_mask`` is GPT-2's additive padding mask,
    broadcastable to (B, H, L, P + L). Without weights or a padding mask the attention is the blockwise
    ``decayed_attention``; otherwise the scores are formed densely.
    """

    def __init__(self, config, layer_idx: Optional[int] = None, alpha: float = 1.0, decay: str = "powerlaw") -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size ({self.embed_dim}) must be divisible by num_attention_heads ({self.num_heads})")
        # GPT-2 divides the scores by sqrt(head_dim) (scale_attn_weights) and optionally by (layer_idx + 1);
        # SDPA divides by sqrt(head_dim), so the queries carry the difference.
        scale = 1.0 if getattr(config, "scale_attn_weights", True) else math.sqrt(self.head_dim)
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float((layer_idx or 0) + 1)
        self.query_scale = scale
        self.attn_pdrop = float(config.attn_pdrop)
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.decay = DecayBias(decay, alpha, n_heads=self.num_heads)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in _LEGACY_ATTENTION_BUFFERS:
            state_dict.pop(prefix + name, None)
        for name, configured in self.decay.state_dict().items():
            key = prefix + "decay." + name
            if key not in state_dict:  # saved before the swap (no decay): keep the configured one
                state_dict[key] = configured
                continue
            loaded = state_dict[key]
            if loaded.shape == configured.shape and not torch.equal(loaded.to(configured), configured):
                warnings.warn(
                    f"PowerformerGPT2: the loaded state_dict's decay {name} {_values(loaded)} replaces the configured "
                    f"{_values(configured)} (decay {self.decay.decay!r}): the checkpoint wins. To run with the "
                    f"configured value, leave the '*.attn.decay.{name}' entries out of the state_dict you load.",
                    UserWarning, stacklevel=2)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        layer_past: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> Tuple[torch.Tensor, Optional[KVCache], Optional[torch.Tensor]]:
        b, l, _ = hidden_states.shape
        q, k, v = (self._heads(t) for t in self.c_attn(hidden_states).split(self.embed_dim, dim=2))
        if layer_past is not None:
            k = torch.cat([layer_past[0].to(k.dtype), k], dim=2)  # (B, H, P + L, D)
            v = torch.cat([layer_past[1].to(v.dtype), v], dim=2)
        present = (k, v) if use_cache else None
        if self.query_scale != 1.0:
            q = q * self.query_scale
        dropout_p = self.attn_pdrop if self.training else 0.0
        weights = None
        if output_attentions or attention_mask is not None:
            mask = dense_bias(self.decay, l, k.shape[2], None, q.dtype, q.device)  # (1, H|1, L, P + L)
            if attention_mask is not None:
                mask = (mask + attention_mask.to(q.dtype)).clamp(min=torch.finfo(q.dtype).min)
            weights = dense_weights(q, k, mask)  # (B, H, L, P + L)
            y = F.dropout(weights, dropout_p, self.training) @ v
        else:
            y = decayed_attention(q, k, v, self.decay, dropout_p=dropout_p, kv_groups=1)  # (B, H, L, D)
        y = y.transpose(1, 2).reshape(b, l, self.embed_dim)
        y = self.resid_dropout(self.c_proj(y))
        return y, present, (weights if output_attentions else None)


class PowerformerGPT2MLP(nn.Module):
    """GPT-2's feed-forward layer: ``c_proj(act(c_fc(x)))`` with dropout; (B, L, E) -> (B, L, E)."""

    def __init__(self, config) -> None:
        super().__init__()
        inner = config.n_inner if getattr(config, "n_inner", None) is not None else 4 * config.hidden_size
        self.c_fc = Conv1D(inner, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, inner)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class PowerformerGPT2Block(nn.Module):
    """GPT-2's pre-norm block with ``PowerformerGPT2Attention``; returns ``(hidden, present, weights)``."""

    def __init__(self, config, layer_idx: Optional[int] = None, alpha: float = 1.0, decay: str = "powerlaw") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = PowerformerGPT2Attention(config, layer_idx, alpha, decay)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = PowerformerGPT2MLP(config)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False, output_attentions=False):
        attn_out, present, weights = self.attn(
            self.ln_1(hidden_states), layer_past, attention_mask, use_cache, output_attentions
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, present, weights


class PowerformerGPT2Model(GPT2Model, GenerationMixin):
    """``GPT2Model`` whose blocks are ``PowerformerGPT2Block``s, with its own forward loop.

    ``GenerationMixin`` is a base because peft's ``CAUSAL_LM`` wrapper (which CALF uses) reads
    ``prepare_inputs_for_generation``: transformers < 5 gave every model one, 5.x only ``GenerationMixin``s.
    It cannot generate (``can_generate()`` is False): it has no LM head.

    ``PowerformerGPT2Model(config, powerformer_alpha=1.0, powerformer_decay="powerlaw")`` builds it with fresh
    weights; ``PowerformerGPT2Model.from_gpt2(gpt2, alpha, decay)`` copies every weight of a loaded GPT-2.

    ``forward`` takes GPT-2's arguments (``input_ids`` or ``inputs_embeds`` (B, L, E), ``past_key_values`` as a
    tuple of (key, value) per layer, ``attention_mask`` (B, P + L) of 1/0, ``token_type_ids``, ``position_ids``)
    and returns ``BaseModelOutputWithPastAndCrossAttentions``: ``last_hidden_state`` (B, L, E) after ``ln_f``;
    ``hidden_states`` (when asked): the input of every block, then the final state, len(h) + 1 tensors;
    ``attentions`` (when asked): (B, H, L, P + L) per layer, computed densely; ``past_key_values`` (with
    ``use_cache``). ``return_dict=False`` gives the non-None fields as a tuple, in that order. Defaults come from
    the config, as in GPT-2. ``head_mask`` and cross-attention are not supported and raise ``ValueError``.
    """

    def __init__(self, config, powerformer_alpha: float = 1.0, powerformer_decay: str = "powerlaw") -> None:
        super().__init__(config)
        self.h = nn.ModuleList(
            [PowerformerGPT2Block(config, i, powerformer_alpha, powerformer_decay) for i in range(config.n_layer)]
        )
        self.post_init()

    @classmethod
    def can_generate(cls) -> bool:
        return False  # no LM head: GenerationMixin is a base only for peft (see the class docstring)

    @classmethod
    def from_gpt2(cls, gpt2: GPT2Model, alpha: float = 1.0, decay: str = "powerlaw") -> "PowerformerGPT2Model":
        """A model of this class with every weight of ``gpt2`` (embeddings, layer norms, attention, MLPs) copied.

        ``gpt2`` is any ``GPT2Model`` (for example from ``from_pretrained``, possibly with fewer blocks than its
        config says); the copy has as many blocks, the same config otherwise, device, dtype and train/eval mode.
        It draws no random numbers (the global CPU and CUDA generators are left as they were), so a seeded
        script builds everything after it as the unpatched script does. Raises ``ValueError`` if a weight of
        ``gpt2`` has no place in the copy or the copy has one ``gpt2`` lacks.
        """
        config = copy.deepcopy(gpt2.config)
        config.n_layer = len(gpt2.h)
        # Every weight is overwritten below, so the fresh ones must not draw from the global random stream:
        # otherwise what a seeded script builds after this (LoRA adapters, heads) differs from the unpatched run.
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            model = cls(config, powerformer_alpha=alpha, powerformer_decay=decay)
        ref = next(gpt2.parameters())
        model.to(device=ref.device, dtype=ref.dtype)
        legacy = tuple(".attn." + name for name in _LEGACY_ATTENTION_BUFFERS)
        source = {k: v for k, v in gpt2.state_dict().items() if not k.endswith(legacy)}
        missing, unexpected = model.load_state_dict(source, strict=False)
        missing = [k for k in missing if ".attn.decay." not in k]
        if missing or unexpected:
            raise ValueError(f"from_gpt2: weights not copied: missing {missing}, unexpected {unexpected}")
        return model.train(gpt2.training)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Tuple[KVCache, ...]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        head_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        unsupported = {"head_mask": head_mask, "encoder_hidden_states": encoder_hidden_states,
                       "encoder_attention_mask": encoder_attention_mask, **kwargs}
        given = sorted(name for name, value in unsupported.items() if value is not None)
        if given:
            raise ValueError(f"{type(self).__name__}.forward does not support {', '.join(given)}")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = getattr(config, "use_cache", False) if use_cache is None else use_cache
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True) and not getattr(config, "torchscript", False)

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            input_shape = input_ids.shape
            inputs_embeds = self.wte(input_ids.view(-1, input_shape[-1]))
        input_shape = inputs_embeds.shape[:-1]  # (B, L)
        batch, length = inputs_embeds.shape[0], input_shape[-1]
        past_length = 0 if past_key_values is None else past_key_values[0][0].shape[-2]
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device).unsqueeze(0)
        hidden = inputs_embeds + self.wpe(position_ids.view(-1, length))
        if token_type_ids is not None:
            hidden = hidden + self.wte(token_type_ids.view(-1, length))
        hidden = self.drop(hidden)
        if attention_mask is not None:  # (B, P + L) of 1 (attend) / 0 (padding) -> additive (B, 1, 1, P + L)
            keep = attention_mask.view(batch, -1)[:, None, None, :].to(hidden.dtype)
            attention_mask = (1.0 - keep) * torch.finfo(hidden.dtype).min

        presents = () if use_cache else None
        all_hidden = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden, present, weights = block(hidden, layer_past, attention_mask, use_cache, output_attentions)
            if use_cache:
                presents = presents + (present,)
            if output_attentions:
                all_attentions = all_attentions + (weights,)
        hidden = self.ln_f(hidden)
        if output_hidden_states:
            all_hidden = all_hidden + (hidden,)

        if not return_dict:
            return tuple(v for v in (hidden, presents, all_hidden, all_attentions) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden, past_key_values=presents, hidden_states=all_hidden, attentions=all_attentions
        )
