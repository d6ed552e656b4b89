"""Seed 002's models (tsattn.models) against independent float64 references; caches; MoE; argument checks."""

from __future__ import annotations

import math

import pytest
import torch

import model_reference as ref
from reference import reference_attention
from tsattn.models import (
    MOE,
    AutoregressiveTransformerModel,
    EncoderDecoder,
    FFNConfig,
    GroupQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
    TransformerModel,
    create_causal_mask,
    get_attention,
    scaled_dot_product_attention,
)

E, HEADS, LATENT = 16, 4, 24
ATTN = [("mha", None), ("gqa", 2), ("mqa", None)]


def _ar(attention_type="mha", num_groups=None, layers=2, moe=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = FFNConfig(E, LATENT, **moe) if moe else None
    args = dict(input_dim=3, embed_dim=E, ffn_latent_dim=LATENT, num_layers=layers, num_heads=HEADS, output_dim=2,
                apply_causal_mask=True, max_seq_len=64, attention_type=attention_type, ffn_config=cfg,
                num_groups=num_groups)
    args.update(kw)
    return AutoregressiveTransformerModel(**args).eval()


def _encdec(attention_type="mha", num_groups=None, moe=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = FFNConfig(E, LATENT, **moe) if moe else None
    args = dict(input_dim=2, embed_dim=E, ffn_latent_dim=LATENT, num_encoder_layers=2, num_decoder_layers=2,
                num_heads=HEADS, output_dim=3, apply_causal_mask=True, max_seq_len=64, attention_type=attention_type,
                ffn_config=cfg, num_groups=num_groups)
    args.update(kw)
    return EncoderDecoder(**args).eval()


def _twin(make, model, *args, **kw):
    """``make(*args, **kw)`` carrying ``model``'s weights."""
    twin = make(*args, **kw)
    twin.load_state_dict(model.state_dict())
    return twin


def _rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MOE_SMALL = dict(use_moe=True, num_experts=4, capacity=3, alpha=0.05, topk=2)  # overflows at these sizes
MOE_ROOMY = dict(use_moe=True, num_experts=4, capacity=1000, alpha=0.05, topk=2)  # never overflows


# ---------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("attention_type,groups", ATTN)
@pytest.mark.parametrize("moe", [None, MOE_SMALL], ids=["dense", "moe"])
@pytest.mark.parametrize("decay", [{}, {"decay": "powerlaw", "alpha": 0.8}], ids=["plain", "powerlaw"])
def test_autoregressive_matches_float64_reference(attention_type, groups, moe, decay):
    m = _ar(attention_type, groups, moe=moe, **decay).double()
    x = _rand(2, 11, 3).double()
    y = m(x)
    want, aux = ref.autoregressive(m, x)
    assert (y - want).abs().max() < 1e-10
    assert abs(float(m.aux_loss.detach()) - float(aux)) < 1e-12
    # sliding window (expanding_context=False): every layer's query sees itself and max_seq_len - 1 earlier positions
    m.max_seq_len = 4
    want, _ = ref.autoregressive(m, x, window=3)
    assert (m(x, expanding_context=False) - want).abs().max() < 1e-10


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attention_type,groups", ATTN[1:2])
def test_regression_model_matches_float64_reference(causal, attention_type, groups):
    torch.manual_seed(3)
    m = TransformerModel(input_dim=3, embed_dim=E, ffn_latent_dim=LATENT, num_layers=2, num_heads=HEADS,
                         output_dim=1, apply_causal_mask=causal, max_seq_len=5, attention_type=attention_type,
                         ffn_config=FFNConfig(E, LATENT, **MOE_SMALL), num_groups=groups).double().eval()
    x = _rand(3, 9, 3).double()
    want, aux = ref.regression(m, x)
    y = m(x)
    assert y.shape == (3, 1) and (y - want).abs().max() < 1e-10
    assert abs(float(m.aux_loss.detach()) - float(aux)) < 1e-12 and float(aux) > 0
    want, _ = ref.regression(m, x, window=4)
    assert (m(x, expanding_context=False) - want).abs().max() < 1e-10


@pytest.mark.parametrize("attention_type,groups", ATTN)
@pytest.mark.parametrize("moe", [None, MOE_SMALL], ids=["dense", "moe"])
def test_encoder_decoder_matches_float64_reference(attention_type, groups, moe):
    m = _encdec(attention_type, groups, moe=moe).double()
    s, t = _rand(2, 7, 2, seed=2).double(), _rand(2, 9, 2, seed=3).double()
    want, aux = ref.encoder_decoder(m, s, t)
    assert (m(s, t) - want).abs().max() < 1e-10
    assert abs(float(m.aux_loss.detach()) - float(aux)) < 1e-12
    enc = m.encode(s)
    assert enc.shape == (2, 7, E) and (m.decode(t, enc) - want).abs().max() < 1e-10
    m.max_seq_len = 3
    want, _ = ref.encoder_decoder(m, s, t, window=2)
    assert (m(s, t, expanding_context=False) - want).abs().max() < 1e-10


@pytest.mark.parametrize("attention_type,groups", ATTN)
def test_decay_combines_with_every_attention_type(attention_type, groups):
    torch.manual_seed(4)
    attn = get_attention(attention_type, 16, 4, num_groups=groups, apply_causal_mask=True, decay="butterworth",
                         alpha=12.0, butterworth_order=2).double()
    assert attn.attn.decay.decay == "butterworth"
    x = _rand(2, 30, 16).double()
    y = attn(x, x, x)
    assert (y - ref.self_attention(attn, x, None)).abs().max() < 1e-10


def test_causal_mask_and_sdpa_match_reference():
    mask = create_causal_mask(10)
    assert mask.dtype == torch.bool and torch.equal(mask, torch.ones(10, 10, dtype=torch.bool).tril())
    q, k, v = (_rand(2, 3, 10, 8, seed=s) for s in (1, 2, 3))
    bias = torch.zeros(10, 10, dtype=torch.float64).masked_fill(~mask, -math.inf)
    got = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (got.double() - reference_attention(q, k, v, bias)).abs().max() < 1e-5
    assert (scaled_dot_product_attention(q, k, v).double()
            - reference_attention(q, k, v, torch.zeros(10, 10))).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------- caches


@pytest.mark.parametrize("attention_type,groups", ATTN)
@pytest.mark.parametrize("expanding", [True, False], ids=["expanding", "sliding"])
def test_autoregressive_cached_steps_equal_full_forward(attention_type, groups, expanding):
    kw = dict(moe=MOE_ROOMY, decay="powerlaw", alpha=0.5) if attention_type == "gqa" else {}
    m = _ar(attention_type, groups, max_seq_len=6, **kw)
    cached = _twin(_ar, m, attention_type, groups, max_seq_len=6, use_kv_cache=True, **kw)
    x = _rand(2, 25, 3)
    with torch.no_grad():
        full = m(x, expanding_context=expanding)
        # stateful (seed 002): prompt, single steps, uneven chunks
        outs, t = [], 0
        for size in (5, 1, 1, 1, 3, 1, 7, 1, 5):
            outs.append(cached(x[:, t:t + size], expanding_context=expanding))
            t += size
        assert t == 25 and (torch.cat(outs, 1) - full).abs().max() <= 1e-5
        kept = cached.cache[0][0].shape[2]
        assert kept == (25 if expanding else 5)
        # functional (export form): past in, present out, absolute start positions
        past, outs = None, []
        for t in range(25):
            y, past = m.step(x[:, t:t + 1], past, start_pos=t, expanding_context=expanding)
            outs.append(y)
        assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5
        assert all(p[0].shape == (2, m.layers[0].attention.num_kv_heads, kept, E // HEADS) for p in past)


def test_stateful_cache_reset_and_per_call_mode():
    m = _ar(use_kv_cache=True, max_seq_len=4)
    x = _rand(1, 8, 3)
    with torch.no_grad():
        first = m(x)
        m.reset_cache()
        assert m.cache is None and (m(x) - first).abs().max() == 0
        assert m.cache[0][0].shape[2] == 8
        m(x[:, :1], expanding_context=False)  # a sliding call keeps the window only
        assert m.cache[0][0].shape[2] == 3
        with pytest.raises(ValueError, match="start_pos"):
            m.step(x[:, :1], m.cache, expanding_context=False)


@pytest.mark.parametrize("attention_type,groups", ATTN)
@pytest.mark.parametrize("expanding", [True, False], ids=["expanding", "sliding"])
def test_encoder_decoder_cached_decoding_equals_full_forward(attention_type, groups, expanding):
    kw = dict(moe=MOE_ROOMY) if attention_type == "mqa" else {}
    m = _encdec(attention_type, groups, max_seq_len=5, **kw)
    cached = _twin(_encdec, m, attention_type, groups, max_seq_len=5, use_kv_cache=True, **kw)
    s, t = _rand(2, 9, 2, seed=4), _rand(2, 14, 2, seed=5)
    with torch.no_grad():
        full = m(s, t, expanding_context=expanding)
        enc = cached.encode(s)
        for n in (3, 4, 5, 9, 10, 14):  # seed 002's loop: the whole target so far, one or more new positions
            out = cached.decode(t[:, :n], enc, expanding_context=expanding)
            assert out.shape == (2, n, 3) and (out - full[:, :n]).abs().max() <= 1e-5
        # functional: cross K/V once, then one position at a time
        cross = m.cross_key_values(m.encode(s))
        past, outs = None, []
        for i in range(14):
            y, past = m.decode_step(t[:, i:i + 1], cross, past, start_pos=i, expanding_context=expanding)
            outs.append(y)
        assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5
        assert past[0][0].shape[2] == (14 if expanding else 4)


def test_decoder_computes_cross_attention_keys_once_per_encoder_output():
    m = _encdec("gqa", 2, use_kv_cache=True)
    calls = []
    for layer in m.decoder_layers:
        layer.cross_attention.k_proj.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        enc = m.encode(_rand(1, 6, 2))
        target = _rand(1, 1, 2)
        for _ in range(6):
            out = m.decode(target, enc)
            target = torch.cat([target, out[:, -1:, :2]], dim=1)
        assert len(calls) == 2  # one per decoder layer
        with pytest.raises(ValueError, match="whole target"):
            m.decode(target[:, :2], enc)
        enc2 = m.encode(_rand(1, 6, 2, seed=9))  # a new encoder output restarts the decoder cache
        out = m.decode(target[:, :2], enc2)
        uncached = _twin(_encdec, m, "gqa", 2)
        assert len(calls) == 4 and (out - uncached.decode(target[:, :2], enc2)).abs().max() <= 1e-5


def test_regression_model_streaming_cache_equals_full_forward():
    torch.manual_seed(6)
    args = dict(input_dim=3, embed_dim=E, ffn_latent_dim=LATENT, num_layers=2, num_heads=HEADS, output_dim=2,
                apply_causal_mask=True, max_seq_len=4, attention_type="mqa")
    m = TransformerModel(**args).eval()
    cached = TransformerModel(**args, use_kv_cache=True).eval()
    cached.load_state_dict(m.state_dict())
    x = _rand(2, 12, 3)
    with torch.no_grad():
        for expanding in (True, False):
            cached.reset_cache()
            for t in range(12):
                y = cached(x[:, t:t + 1], expanding_context=expanding)
                assert (y - m(x[:, :t + 1], expanding_context=expanding)).abs().max() <= 1e-5


@pytest.mark.parametrize("attention_type,groups", ATTN)
def test_one_layer_sliding_cache_equals_recompute_over_last_max_seq_len_inputs(attention_type, groups):
    """Sliding cache, one layer: the output at t is the model recomputed on inputs t-W+1..t (at those positions)."""
    w = 5
    m = _ar(attention_type, groups, layers=1, max_seq_len=w, use_kv_cache=True, decay="powerlaw", alpha=1.0)
    x = _rand(2, 20, 3)
    with torch.no_grad():
        for t in range(20):
            y = m(x[:, t:t + 1], expanding_context=False)
            lo = max(0, t - w + 1)
            recompute, _ = m.step(x[:, lo:t + 1], None, start_pos=lo)  # fresh, uncached, no window needed
            assert (y[:, -1] - recompute[:, -1]).abs().max() <= 1e-5, t
        assert m.cache[0][0].shape[2] == w - 1


def test_deeper_sliding_cache_is_the_windowed_forward_not_a_recompute_of_the_window():
    """With 2 layers a position's keys carry, through layer 1, inputs older than the window: the sliding cache
    equals the windowed forward (the definition, checked against the float64 reference above), and differs from
    a recompute over the last max_seq_len inputs alone. This pins the documented definition."""
    w = 4
    m = _ar(layers=2, max_seq_len=w, use_kv_cache=True)
    x = _rand(1, 12, 3)
    with torch.no_grad():
        steps = torch.cat([m(x[:, t:t + 1], expanding_context=False) for t in range(12)], 1)
        windowed, _ = ref.autoregressive(m, x.double(), window=w - 1)
        assert (steps.double() - windowed).abs().max() <= 1e-5
        recompute, _ = m.step(x[:, 12 - w:], None, start_pos=12 - w)
        assert (steps[:, -1] - recompute[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("model", ["ar", "encdec"])
def test_mqa_cache_is_one_over_num_heads_of_mha(model):
    sizes = {}
    for attention_type, groups in ATTN:
        with torch.no_grad():
            if model == "ar":
                m = _ar(attention_type, groups, use_kv_cache=True)
                m(_rand(3, 10, 3))
            else:
                m = _encdec(attention_type, groups, use_kv_cache=True)
                m.decode(_rand(3, 10, 2), m.encode(_rand(3, 7, 2)))
        sizes[attention_type] = m.cache_nbytes()
    assert sizes["mha"] > 0
    assert sizes["mqa"] * HEADS == sizes["mha"]
    assert sizes["gqa"] * HEADS == sizes["mha"] * 2


def test_generate_cached_equals_recompute():
    m = _ar("gqa", 2, input_dim=2, output_dim=2)
    cached = _twin(_ar, m, "gqa", 2, input_dim=2, output_dim=2, use_kv_cache=True)
    prompt = _rand(2, 6, 2)
    with torch.no_grad():
        a, b = m.generate(prompt, 9), cached.generate(prompt, 9)
        assert a.shape == (2, 9, 2) and (a - b).abs().max() <= 1e-5
        assert (m.generate_next_token(prompt) - a[:, :1]).abs().max() == 0


# ---------------------------------------------------------------------------------------------- GQA / MQA / MHA


def _map_gqa_to_mha(gqa, mha, groups):
    rep = gqa.num_heads // groups
    d = gqa.head_dim
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha.attn, name).load_state_dict(getattr(gqa.attn, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(gqa.attn, name), getattr(mha.attn, name)
            dst.weight.copy_(src.weight.view(groups, d, -1).repeat_interleave(rep, 0).reshape(dst.weight.shape))
            dst.bias.copy_(src.bias.view(groups, d).repeat_interleave(rep, 0).reshape(-1))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gqa_equals_mha_with_repeated_key_value_weights(groups):
    torch.manual_seed(7)
    gqa = GroupQueryAttention(16, 4, num_groups=groups, apply_causal_mask=True)
    mha = MultiHeadAttention(16, 4, apply_causal_mask=True)
    _map_gqa_to_mha(gqa, mha, groups)
    x = _rand(2, 13, 16)
    assert (gqa(x, x, x) - mha(x, x, x)).abs().max() <= 1e-5


@pytest.mark.parametrize("cls", [AutoregressiveTransformerModel, EncoderDecoder])
def test_gqa_one_group_is_mqa_and_all_groups_is_mha(cls):
    make = _ar if cls is AutoregressiveTransformerModel else _encdec
    for groups, other in ((1, "mqa"), (HEADS, "mha")):
        gqa = make("gqa", groups)
        twin = _twin(make, gqa, other, None, seed=99)  # same shapes: the weights map one to one
        with torch.no_grad():
            if cls is AutoregressiveTransformerModel:
                x = _rand(2, 9, 3)
                assert (gqa(x) - twin(x)).abs().max() <= 1e-6
            else:
                s, t = _rand(2, 5, 2), _rand(2, 7, 2)
                assert (gqa(s, t) - twin(s, t)).abs().max() <= 1e-6
    assert isinstance(get_attention("mqa", 16, 4, num_groups=3), MultiQueryAttention)  # num_groups ignored
    assert get_attention("gqa", 16, 8).num_kv_heads == 4  # default num_heads // 2


# ---------------------------------------------------------------------------------------------- MoE


def _moe(capacity, topk, experts=4, seed=8, alpha=0.01, grad=False):
    torch.manual_seed(seed)
    return MOE(8, 12, num_experts=experts, capacity=capacity, alpha=alpha, topk=topk).double().requires_grad_(grad)


@pytest.mark.parametrize("topk", [1, 2, 3])
def test_moe_with_room_is_the_weighted_sum_of_the_chosen_experts(topk):
    m = _moe(capacity=50, topk=topk)
    x = _rand(3, 10, 8).double()  # 30 tokens: every expert has room
    y, aux = m(x)
    xs = x.reshape(-1, 8)
    probs = torch.softmax(xs @ m.router.weight.T + m.router.bias, -1)
    want = torch.zeros_like(xs)
    for i in range(xs.shape[0]):
        top = sorted(range(4), key=lambda e: -float(probs[i, e]))[:topk]
        norm = sum(probs[i, e] for e in top)
        for e in top:
            hidden = torch.relu(xs[i] @ m.w1[e] + m.b1[e])
            want[i] += probs[i, e] / norm * (hidden @ m.w2[e] + m.b2[e])
    assert (y.reshape(-1, 8) - want).abs().max() < 1e-12
    assert bool(m.route(xs).kept.all())


@pytest.mark.parametrize("topk,capacity", [(1, 2), (2, 3), (2, 1)])
def test_moe_tokens_over_capacity_reach_the_overflow_expert(topk, capacity):
    m = _moe(capacity=capacity, topk=topk)
    x = _rand(2, 9, 8, seed=3).double()
    y, aux = m(x)
    want, want_aux, overflowed = ref.moe(m, x)
    r = m.route(x.reshape(-1, 8))
    assert overflowed > 0 and int((~r.kept).sum()) == overflowed
    assert (r.slot[r.kept] < capacity).all()
    counts = torch.bincount(r.expert[r.kept], minlength=4)
    assert counts.max() <= capacity  # never more than capacity tokens per expert
    assert (y - want).abs().max() < 1e-12 and abs(float(aux) - float(want_aux)) < 1e-14
    # the overflowed tokens, and only they, depend on the overflow expert
    with torch.no_grad():
        m.overflow.fc2.bias.add_(1.0)
    changed = ((m(x)[0] - y).abs().sum(-1) > 1e-9).reshape(-1)
    assert torch.equal(changed, (~r.kept).any(-1))


def test_moe_first_come_in_token_order():
    m = _moe(capacity=2, topk=1)
    with torch.no_grad():  # route every token to expert 2
        m.router.weight.zero_()
        m.router.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    r = m.route(_rand(7, 8).double())
    assert r.expert.flatten().tolist() == [2] * 7
    assert r.slot.flatten().tolist() == list(range(7))
    assert r.kept.flatten().tolist() == [True, True] + [False] * 5


@pytest.mark.parametrize("topk", [1, 2])
def test_moe_uniform_routing_gives_aux_loss_alpha(topk):
    m = _moe(capacity=None, topk=topk, alpha=0.03)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.bias.zero_()
    _, aux = m(_rand(4, 5, 8).double())
    assert abs(float(aux) - 0.03) < 1e-15


@pytest.mark.parametrize("topk", [1, 2])
def test_moe_router_gets_a_gradient(topk):
    m = _moe(capacity=3, topk=topk, grad=True).float()
    x = _rand(2, 6, 8)
    y, aux = m(x)
    (y.square().mean() + aux).backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    if topk == 2:  # renormalised weights of two experts also carry the task gradient
        m.zero_grad()
        m(x)[0].square().mean().backward()
        assert m.router.weight.grad.abs().sum() > 0


def test_moe_model_exposes_summed_aux_loss_for_training():
    m = _ar(moe=MOE_SMALL)
    m.train()
    x = _rand(2, 8, 3)
    y = m(x)
    assert m.aux_loss.requires_grad and float(m.aux_loss.detach()) > 0
    (y.square().mean() + m.aux_loss).backward()
    assert m.layers[0].ffn.router.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("build,name", [
    (lambda: FFNConfig(16, 32, use_moe=True, num_experts=2, topk=3), "topk"),
    (lambda: FFNConfig(16, 32, use_moe=True), "num_experts"),
    (lambda: FFNConfig(16, 32, use_moe=True, num_experts=2, capacity=0), "capacity"),
    (lambda: FFNConfig(16, 32, use_moe=True, num_experts=2, alpha=-1.0), "alpha"),
    (lambda: MOE(16, 32, num_experts=2, capacity=4, topk=3), "topk"),
    (lambda: _ar(embed_dim=18), "embed_dim"),
    (lambda: _ar("gqa", 3), "num_groups"),
    (lambda: _ar(ffn_config=FFNConfig(32, LATENT)), "ffn_config.embed_dim"),
    (lambda: _ar(ffn_config=FFNConfig(E, 2 * LATENT)), "ffn_config.latent_dim"),
    (lambda: _ar("bert"), "attention_type"),
    (lambda: _ar(num_layers=0), "num_layers"),
    (lambda: _ar(max_seq_len=0), "max_seq_len"),
    (lambda: _ar(apply_causal_mask=False, use_kv_cache=True), "use_kv_cache"),
    (lambda: _encdec(embed_dim=18), "embed_dim"),
    (lambda: _encdec("gqa", 3), "num_groups"),
    (lambda: _encdec(ffn_config=FFNConfig(32, LATENT)), "ffn_config.embed_dim"),
    (lambda: _encdec(num_decoder_layers=0), "num_decoder_layers"),
    (lambda: get_attention("gqa", 16, 4, num_groups=3), "num_groups"),
    (lambda: get_attention("mha", 18, 4), "embed_dim"),
    (lambda: get_attention("sparse", 16, 4), "attention_type"),
    (lambda: get_attention("mha", 16, 4, decay="expo"), "decay"),
    (lambda: _ar(input_dim=2, output_dim=3).generate(torch.zeros(1, 2, 2), 3), "output_dim"),
])
def test_bad_configurations_raise_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        build()


def test_unknown_attention_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="dropoutt"):
        get_attention("mha", 16, 4, dropoutt=0.1)


def test_stateful_cache_keeps_gradients_and_matches_the_full_forward_gradient():
    """Seed 002: "Caching preserves gradient computation during training"."""
    m = _ar("gqa", 2, max_seq_len=4)
    cached = _twin(_ar, m, "gqa", 2, max_seq_len=4, use_kv_cache=True)
    x = _rand(2, 9, 3)
    for expanding in (True, False):
        m.zero_grad()
        cached.zero_grad()
        cached.reset_cache()
        m(x, expanding_context=expanding).square().sum().backward()
        steps = [cached(x[:, t:t + 3], expanding_context=expanding) for t in range(0, 9, 3)]
        torch.cat(steps, 1).square().sum().backward()
        for (name, a), b in zip(m.named_parameters(), cached.parameters()):
            assert (a.grad - b.grad).abs().max() <= 1e-5, name


def test_kv_buffer_appends_in_place_and_slides():
    from tsattn.models.attention import KVBuffer

    buf, ks = KVBuffer(), []
    with torch.no_grad():
        for t in range(100):
            k = torch.full((2, 1, 1, 4), float(t))
            ks.append(k)
            got_k, _ = buf.append(k, -k)
            assert torch.equal(got_k, torch.cat(ks[max(0, t - 5):], 2))  # 5 kept + the new one
            buf.trim(5)
        assert buf.length == 5 and buf._k.shape[2] <= 64
