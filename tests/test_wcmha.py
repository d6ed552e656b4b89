"""WCMHA / GroupedQueryAttention against independent float64 references, caches, export, argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import reference_attention, reference_bias, reference_module, upstream_decay
from tsattn.modules import DecayBias, GroupedQueryAttention, WCMHA, decayed_attention, dense_bias

BLOCK = 16
LENGTHS = [1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 100]

DECAYS = [
    # (decay, alpha, extra kwargs)
    ("powerlaw", 1.0, {}),
    ("powerlaw", 0.7, {"per_head_alpha": True}),
    ("simpowerlaw", 0.6, {}),
    ("butterworth", 20.0, {"butterworth_order": 1}),
    ("butterworth", 12.0, {"butterworth_order": 2}),
    ("step", 5.0, {}),
    ("none", 1.0, {}),
    ("powerlaw", 1.0, {"cutoff": 9}),
]


def _alphas(m: GroupedQueryAttention) -> np.ndarray:
    return np.atleast_1d(m.decay.alpha.detach().double().numpy())


def _module(decay, alpha, kw, n_kv_heads=None, dtype=torch.float64, **more):
    torch.manual_seed(0)
    m = WCMHA(32, 4, n_kv_heads=n_kv_heads, decay=decay, alpha=alpha, block_size=BLOCK, **kw, **more)
    if kw.get("per_head_alpha"):
        with torch.no_grad():
            m.decay.alpha.copy_(torch.tensor([0.3, 0.7, 1.5, 2.5]))
        m.decay._refresh_static()
    return m.to(dtype).eval()


@pytest.mark.parametrize("decay,alpha,kw", DECAYS, ids=[f"{d}-{a}-{sorted(k)}" for d, a, k in DECAYS])
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_float64_reference(decay, alpha, kw, length):
    m = _module(decay, alpha, kw, n_kv_heads=2)
    x = torch.randn(2, length, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    bias = reference_bias(decay, _alphas(m), length, length, kw.get("butterworth_order", 1), kw.get("cutoff"))
    y, _ = m(x)
    assert torch.allclose(y, reference_module(m, x, bias), atol=1e-10, rtol=0)


@pytest.mark.parametrize("decay,alpha,kw", DECAYS, ids=[f"{d}-{a}-{sorted(k)}" for d, a, k in DECAYS])
@pytest.mark.parametrize("lq,lk", [(1, 1), (7, 7), (1, 30), (5, 40)])
def test_dense_bias_used_by_exports_matches_reference(decay, alpha, kw, lq, lk):
    m = _module(decay, alpha, kw)
    got = dense_bias(m.decay, lq, lk, m.window, torch.float64, torch.device("cpu"))
    want = reference_bias(decay, _alphas(m), lq, lk, kw.get("butterworth_order", 1), kw.get("cutoff"))
    assert got.shape == (1, want.shape[0], lq, lk)
    assert torch.equal(torch.isinf(got[0]), torch.isinf(want))
    assert torch.allclose(got[0][torch.isfinite(want)], want[torch.isfinite(want)], atol=1e-12)


@pytest.mark.parametrize("decay,alpha,kw", DECAYS[:2] + DECAYS[3:4], ids=["powerlaw", "perhead", "butter1"])
def test_float32_within_1e5_of_float64_reference_blocked_long(decay, alpha, kw):
    m = _module(decay, alpha, kw, dtype=torch.float32)
    m.block_size = 128
    x = torch.randn(1, 700, 32)
    bias = reference_bias(decay, _alphas(m), 700, 700, kw.get("butterworth_order", 1))
    y, _ = m(x)
    assert (y.double() - reference_module(m, x, bias)).abs().max() < 1e-5


def test_default_block_size_long_input_uses_blocks_and_matches():
    torch.manual_seed(1)
    m = WCMHA(32, 4, alpha=1.0).double().eval()
    assert m.block_size < 1100
    x = torch.randn(1, 1100, 32, dtype=torch.float64)
    y, _ = m(x)
    assert torch.allclose(y, reference_module(m, x, reference_bias("powerlaw", [1.0], 1100, 1100)), atol=1e-10)


@pytest.mark.parametrize("length", [7, 40])
def test_non_causal_symmetric_decay(length):
    torch.manual_seed(2)
    m = GroupedQueryAttention(32, 4, decay="powerlaw", alpha=0.8, causal=False, cutoff=11, block_size=BLOCK).double()
    x = torch.randn(2, length, 32, dtype=torch.float64)
    bias = reference_bias("powerlaw", [0.8], length, length, cutoff=11, causal=False)
    assert torch.allclose(m(x)[0], reference_module(m, x, bias), atol=1e-10)


@pytest.mark.parametrize("decay,alpha,order", [
    ("powerlaw", 1.0, 1), ("powerlaw", 2.5, 1), ("simpowerlaw", 0.5, 1), ("simpowerlaw", 0.0, 1),
    ("step", 7.0, 1), ("butterworth", 30.0, 1), ("butterworth", 30.0, 2), ("butterworth", 5.0, 2),
])
def test_decay_values_match_the_authors_masks(decay, alpha, order):
    dt = torch.arange(0, 120, dtype=torch.float64)
    ours = DecayBias(decay, alpha, butterworth_order=order)(dt.view(1, -1)).squeeze()
    theirs = torch.from_numpy(upstream_decay(decay, alpha, dt.numpy(), order))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(theirs)
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-9, rtol=1e-9)


def test_decay_aliases_and_window():
    assert DecayBias("butter2", 10.0).butterworth_order == 2
    assert DecayBias("butter1", 10.0).window == int(10.0 * math.pi * 511 / 1024)
    assert DecayBias("step", 4.0).window == 4
    assert DecayBias("step", 4.0, cutoff=2).window == 2
    assert DecayBias("causal").decay == "none" and DecayBias("none").window is None


@pytest.mark.parametrize("length", [1, BLOCK + 1, 60])
def test_decay_none_and_alpha_zero_equal_causal_sdpa(length):
    torch.manual_seed(3)
    none = GroupedQueryAttention(32, 4, decay="none", block_size=BLOCK).eval()
    zero = WCMHA(32, 4, alpha=0.0, block_size=BLOCK).eval()
    learn0 = WCMHA(32, 4, alpha=0.0, learnable_alpha=True, block_size=BLOCK).eval()  # no fast path
    weights = {k: v for k, v in none.state_dict().items() if not k.startswith("decay.")}
    zero.load_state_dict(weights, strict=False)
    learn0.load_state_dict(weights, strict=False)
    assert float(zero.decay.alpha) == 0.0 and zero.decay.is_trivial and not learn0.decay.is_trivial
    x = torch.randn(2, length, 32)
    q = none.q_proj(x).view(2, length, 4, 8).transpose(1, 2)
    k = none.k_proj(x).view(2, length, 4, 8).transpose(1, 2)
    v = none.v_proj(x).view(2, length, 4, 8).transpose(1, 2)
    sdpa = none.out_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, length, 32))
    for m in (none, zero, learn0):
        assert (m(x)[0] - sdpa).abs().max() < 1e-5


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("decay,alpha,order,max_context", [
    ("powerlaw", 1.0, 1, None), ("powerlaw", 1.0, 1, 6), ("butterworth", 8.0, 2, None), ("none", 1.0, 1, 5),
])
def test_cached_decoding_equals_full_forward(n_kv_heads, decay, alpha, order, max_context):
    torch.manual_seed(4)
    m = GroupedQueryAttention(32, 4, n_kv_heads=n_kv_heads, decay=decay, alpha=alpha, butterworth_order=order,
                              max_context=max_context, block_size=8).eval()
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        full, present = m(x)
        # one position at a time
        past, steps = None, []
        for t in range(30):
            y, past = m(x[:, t : t + 1], past)
            steps.append(y)
        assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
        # uneven chunks, including one longer than the block size (blocked path with a cache)
        past, chunks, t = None, [], 0
        for size in (3, 1, 12, 5, 9):
            y, past = m(x[:, t : t + size], past)
            chunks.append(y)
            t += size
        assert (torch.cat(chunks, 1) - full).abs().max() <= 1e-5
    expected = 30 if m.window is None else min(30, m.window)
    assert past[0].shape == (2, n_kv_heads, expected, 8) and present[0].shape == past[0].shape
    assert (past[0] - present[0]).abs().max() < 1e-6 and (past[1] - present[1]).abs().max() < 1e-6


def test_sliding_window_keeps_true_distances():
    """With a cache slid to 6 positions, the bias of the oldest kept key is decay(6), not decay of a reset index."""
    torch.manual_seed(5)
    m = WCMHA(32, 4, alpha=2.0, max_context=6).double().eval()
    x = torch.randn(1, 20, 32, dtype=torch.float64)
    _, past = m(x[:, :19])
    assert past[0].shape[2] == 6
    y, _ = m(x[:, 19:], past)
    bias = reference_bias("powerlaw", [2.0], 1, 7)  # keys at distances 6 .. 0
    assert torch.allclose(y, reference_module(m, x[:, 19:], bias, past), atol=1e-10)
    w = m.attention_weights(x[:, 19:], past)[0, 0, 0]
    assert w.shape == (7,) and torch.allclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gqa_with_all_kv_heads_equals_torch_multihead_attention():
    torch.manual_seed(6)
    ours = GroupedQueryAttention(32, 4, n_kv_heads=4).eval()
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 21, 32)
    causal = torch.triu(torch.ones(21, 21, dtype=torch.bool), 1)
    expected, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    assert (ours(x)[0] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_weights(n_kv_heads):
    torch.manual_seed(7)
    gqa = WCMHA(32, 4, n_kv_heads=n_kv_heads, alpha=1.0, block_size=BLOCK).eval()
    mha = WCMHA(32, 4, alpha=1.0, block_size=BLOCK).eval()
    rep = 4 // n_kv_heads
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src = getattr(gqa, name)
            getattr(mha, name).weight.copy_(src.weight.view(n_kv_heads, 8, 32).repeat_interleave(rep, 0).reshape(32, 32))
            getattr(mha, name).bias.copy_(src.bias.view(n_kv_heads, 8).repeat_interleave(rep, 0).reshape(32))
    x = torch.randn(2, 40, 32)
    assert (gqa(x)[0] - mha(x)[0]).abs().max() < 1e-5
    # and the cache is n_kv_heads / n_heads of MHA's
    assert gqa(x)[1][0].numel() * rep == mha(x)[1][0].numel()


@pytest.mark.parametrize("length", [12, 50])
@pytest.mark.parametrize("per_head", [False, True])
def test_learnable_alpha_gets_the_reference_gradient(length, per_head):
    torch.manual_seed(8)
    m = WCMHA(32, 4, alpha=0.9, learnable_alpha=True, per_head_alpha=per_head, block_size=BLOCK).double()
    assert isinstance(m.decay.alpha, torch.nn.Parameter)
    x = torch.randn(2, length, 32, dtype=torch.float64)
    y, _ = m(x)
    (y**2).sum().backward()
    ours = m.decay.alpha.grad.clone()
    assert ours.abs().sum() > 0

    alpha = m.decay.alpha.detach().clone().requires_grad_(True)
    i = torch.arange(length, dtype=torch.float64)
    dt = i[:, None] - i[None, :]
    a = alpha.view(-1, 1, 1)
    bias = torch.where(dt >= 0, -a * torch.log(dt.clamp(min=0) + 1), torch.tensor(-math.inf, dtype=torch.float64))
    (reference_module(m, x, bias) ** 2).sum().backward()
    assert torch.allclose(ours, alpha.grad, atol=1e-8, rtol=1e-8)


class _WithCache(torch.nn.Module):
    """forward(x, past_key, past_value) -> (y, present_key, present_value): the export signature."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, past_key, past_value):
        y, (k, v) = self.m(x, (past_key, past_value))
        return y, k, v


def _cache_inputs(m, b, t, p, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, 32, generator=g), torch.randn(b, m.n_kv_heads, p, 8, generator=g),
            torch.randn(b, m.n_kv_heads, p, 8, generator=g))


OTHER_SHAPES = [(3, 4, 11), (1, 1, 0), (2, 9, 1), (1, 17, 30)]


def test_trace_without_past_of_plain_causal_attention_still_honours_a_past():
    """A decay='none' model traced with an empty past must not bake in the past-free is_causal fast path."""
    torch.manual_seed(13)
    m = GroupedQueryAttention(32, 4, n_kv_heads=2).eval()
    w = _WithCache(m)
    traced = torch.jit.trace(w, _cache_inputs(m, 2, 5, 0, 0), check_trace=False)
    args = _cache_inputs(m, 2, 3, 6, 1)
    for got, want in zip(traced(*args), w(*args)):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5


def test_jit_trace_generalises_to_other_shapes():
    torch.manual_seed(9)
    m = WCMHA(32, 4, n_kv_heads=2, alpha=1.0, max_context=20).eval()
    w = _WithCache(m)
    traced = torch.jit.trace(w, _cache_inputs(m, 2, 5, 3, 0), check_trace=False)
    for b, t, p in OTHER_SHAPES:
        args = _cache_inputs(m, b, t, p, b * 100 + t)
        for got, want in zip(traced(*args), w(*args)):
            assert got.shape == want.shape and (got - want).abs().max() < 1e-5


def _onnx_roundtrip(tmp_path, m, dynamo: bool, name: str):
    import onnx
    import onnxruntime as ort

    w = _WithCache(m).eval()
    path = tmp_path / f"{name}.onnx"
    names = ["x", "past_key_values.0.key", "past_key_values.0.value"]
    outs = ["y", "present.0.key", "present.0.value"]
    example = _cache_inputs(m, 2, 5, 3, 0)
    if dynamo:
        batch, seq, past = (torch.export.Dim(n) for n in ("batch", "seq", "past"))
        torch.onnx.export(w, example, str(path), dynamo=True, opset_version=18, input_names=names,
                          output_names=outs, dynamic_shapes={"x": {0: batch, 1: seq},
                                                             "past_key": {0: batch, 2: past},
                                                             "past_value": {0: batch, 2: past}})
    else:
        axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
        axes.update({n: {0: "batch", 2: "past"} for n in names[1:]})
        axes.update({n: {0: "batch", 2: "present"} for n in outs[1:]})
        torch.onnx.export(w, example, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outs, dynamic_axes=axes)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == names
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t, p in OTHER_SHAPES:
        args = _cache_inputs(m, b, t, p, b * 100 + t + 7)
        got = sess.run(None, dict(zip(names, (a.numpy() for a in args))))
        with torch.no_grad():
            want = w(*args)
        for g, e in zip(got, want):
            assert g.shape == tuple(e.shape), (b, t, p)
            assert np.abs(g - e.numpy()).max() <= 1e-4


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript-exporter"])
def test_onnx_export_with_cache_runs_in_onnxruntime(tmp_path, dynamo):
    torch.manual_seed(10)
    m = WCMHA(32, 4, n_kv_heads=2, alpha=1.0, max_context=20).eval()
    _onnx_roundtrip(tmp_path, m, dynamo, "wcmha")


@pytest.mark.parametrize("decay,alpha,kw", [("butterworth", 10.0, {"butterworth_order": 2}),
                                            ("simpowerlaw", 0.5, {"per_head_alpha": True}),
                                            ("step", 4.0, {})])
def test_onnx_export_other_decays(tmp_path, decay, alpha, kw):
    torch.manual_seed(11)
    m = WCMHA(32, 4, decay=decay, alpha=alpha, **kw).eval()
    _onnx_roundtrip(tmp_path, m, False, decay)


@pytest.mark.parametrize("kwargs,name", [
    ({"decay": "expo"}, "decay"),
    ({"decay": "powerlaw", "alpha": -1.0}, "alpha"),
    ({"decay": "simpowerlaw", "alpha": -0.5}, "alpha"),
    ({"decay": "step", "alpha": 0.5}, "alpha"),
    ({"decay": "butterworth", "alpha": 0.0}, "alpha"),
    ({"decay": "butterworth", "butterworth_order": 3}, "butterworth_order"),
    ({"decay": "step", "learnable_alpha": True}, "learnable_alpha"),
    ({"cutoff": -1}, "cutoff"),
    ({"max_context": 0}, "max_context"),
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"d_model": 30}, "d_model"),
    ({"block_size": 0}, "block_size"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    args = {"d_model": 32, "n_heads": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        WCMHA(**args)


def test_decayed_attention_functional_gqa_matches_expanded():
    torch.manual_seed(12)
    bias = DecayBias("powerlaw", 1.0)
    q = torch.randn(2, 4, 40, 8)
    k, v = torch.randn(2, 1, 50, 8), torch.randn(2, 1, 50, 8)
    got = decayed_attention(q, k, v, bias, block_size=BLOCK)
    want = decayed_attention(q, k.expand(2, 4, 50, 8), v.expand(2, 4, 50, 8), bias, block_size=1000)
    assert (got - want).abs().max() < 1e-5


# ------------------------------------------------------------------------------------ training path (issue #21)

def _torch_reference_bias(decay, alpha, lq, lk, causal=True, cutoff=None, window=None):
    """The bias in float64 from the decay's formula, differentiable in ``alpha`` (scalar or (H,)): (H|1, Lq, Lk)."""
    q_pos = torch.arange(lq, dtype=torch.float64) + (lk - lq)
    dt = q_pos[:, None] - torch.arange(lk, dtype=torch.float64)[None, :]
    dist = dt if causal else dt.abs()
    a = alpha.reshape(-1, 1, 1)
    d = dist.clamp(min=0)
    if decay == "powerlaw":
        bias = -a * torch.log(d + 1)
    else:  # simpowerlaw: -(dt ** alpha), with 0 ** alpha = 0 and its alpha-derivative 0 at dt = 0 (alpha > 0)
        bias = -torch.where(d > 0, torch.exp(a * torch.log(d.clamp(min=1))), torch.zeros_like(a * d))
    masked = dist < 0
    for limit in (cutoff, window):
        if limit is not None:
            masked = masked | (dt.abs() > limit)
    return bias.masked_fill(masked, -math.inf)


# (lq, lk, block_size, cutoff, window): every path of decayed_attention
GRAD_PATHS = [
    (5, 5, 16, None, None),     # dense: few queries
    (4, 30, 16, None, None),    # dense, after a cache
    (50, 50, 16, None, None),   # blocked, causal blocks of 16 (one part each: keys reversed, the corner masked)
    (37, 60, 16, None, None),   # blocked after a cache, a partial last block
    (50, 50, 16, 9, None),      # windowed by the decay's cutoff
    (45, 70, 16, None, 12),     # windowed by the call's window (max_context), after a cache
]
# blocks longer than the split's sub-rows (256): a block's rows take the keys before the block (one part) and,
# 256 queries at a time, the block's keys up to them (the causal corner masked), merged through log-sum-exps;
# (900, 900, 640): a partial last sub-row (128 queries) and a last block of 260 queries (a sub-row of 4);
# (1090, 1200, 512): after a cache, two full blocks (each with keys before it) and a partial one
LONG_GRAD_PATHS = [(600, 600, 512, None, None), (530, 700, 512, None, None), (900, 900, 640, None, None),
                   (1090, 1200, 512, None, None)]


@pytest.mark.parametrize("decay,alpha", [("powerlaw", 0.9), ("simpowerlaw", 0.6)])
@pytest.mark.parametrize("per_head", [False, True], ids=["scalar", "per_head"])
@pytest.mark.parametrize("lq,lk,block,cutoff,window", GRAD_PATHS + LONG_GRAD_PATHS)
@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_gradients_of_q_k_v_and_alpha_equal_the_float64_dense_reference(decay, alpha, per_head, lq, lk, block,
                                                                        cutoff, window, n_kv):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    bias = DecayBias(decay, alpha, n_heads=4, learnable_alpha=True, per_head_alpha=per_head, cutoff=cutoff).double()
    if per_head:
        with torch.no_grad():
            bias.alpha.copy_(torch.tensor([0.3, 0.7, 1.2, 1.9]) * alpha)
    q = torch.randn(2, 4, lq, 8, dtype=torch.float64, generator=g).requires_grad_(True)
    k, v = (torch.randn(2, n_kv, lk, 8, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2))
    grad = torch.randn(2, 4, lq, 8, dtype=torch.float64, generator=g)
    y = decayed_attention(q, k, v, bias, window=window, block_size=block)
    ours = torch.autograd.grad(y, (q, k, v, bias.alpha), grad)

    a = bias.alpha.detach().clone().requires_grad_(True)
    rep = 4 // n_kv
    ref_bias = _torch_reference_bias(decay, a, lq, lk, cutoff=cutoff, window=window)
    y_ref = reference_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), ref_bias)
    want = torch.autograd.grad(y_ref, (q, k, v, a), grad)
    assert (y - y_ref).abs().max() < 1e-12
    for name, got, exp in zip(("q", "k", "v", "alpha"), ours, want):
        assert got.shape == exp.shape, name
        assert torch.allclose(got, exp, atol=1e-11, rtol=1e-10), (name, (got - exp).abs().max())
    assert ours[3].abs().min() > 0


@pytest.mark.parametrize("per_head", [False, True], ids=["scalar", "per_head"])
def test_non_causal_blocked_gradients_equal_the_float64_reference(per_head):
    g = torch.Generator().manual_seed(3)
    bias = DecayBias("powerlaw", 0.8, n_heads=4, learnable_alpha=True, per_head_alpha=per_head, causal=False).double()
    q, k, v = (torch.randn(1, 4, 40, 8, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(3))
    grad = torch.randn(1, 4, 40, 8, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(decayed_attention(q, k, v, bias, block_size=16), (q, k, v, bias.alpha), grad)
    a = bias.alpha.detach().clone().requires_grad_(True)
    y_ref = reference_attention(q, k, v, _torch_reference_bias("powerlaw", a, 40, 40, causal=False))
    for got, exp in zip(ours, torch.autograd.grad(y_ref, (q, k, v, a), grad)):
        assert torch.allclose(got, exp, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("decay,alpha,kw", [("powerlaw", 1.0, {}), ("butterworth", 20.0, {}), ("step", 5.0, {}),
                                            ("none", 1.0, {"cutoff": 7})])
def test_fixed_decays_give_the_float64_reference_gradients_of_q_k_v(decay, alpha, kw):
    g = torch.Generator().manual_seed(4)
    bias = DecayBias(decay, alpha, **kw).double()
    q, k, v = (torch.randn(1, 4, 60, 8, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(3))
    grad = torch.randn(1, 4, 60, 8, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(decayed_attention(q, k, v, bias, block_size=16), (q, k, v), grad)
    ref = reference_bias(decay, np.atleast_1d(alpha), 60, 60, 1, kw.get("cutoff"))
    want = torch.autograd.grad(reference_attention(q, k, v, ref), (q, k, v), grad)
    for got, exp in zip(ours, want):
        assert torch.allclose(got, exp, atol=1e-11, rtol=1e-10)


def test_float32_gradients_long_blocked_within_tolerance_of_float64():
    torch.manual_seed(5)
    bias = DecayBias("powerlaw", 1.0, n_heads=4, learnable_alpha=True, per_head_alpha=True)
    q, k, v = (torch.randn(1, 4, 700, 32).requires_grad_(True) for _ in range(3))
    grad = torch.randn(1, 4, 700, 32)
    ours = torch.autograd.grad(decayed_attention(q, k, v, bias, block_size=128), (q, k, v, bias.alpha), grad)
    a = bias.alpha.detach().double().requires_grad_(True)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    y_ref = reference_attention(qd, kd, vd, _torch_reference_bias("powerlaw", a, 700, 700))
    want = torch.autograd.grad(y_ref, (qd, kd, vd, a), grad.double())
    for got, exp in zip(ours, want):
        assert (got.double() - exp).abs().max() <= 2e-5 * max(1.0, exp.abs().max().item())


def test_backward_saves_nothing_of_size_lq_by_lk():
    """The memory contract: what autograd keeps between forward and backward is O(L), learnable alpha included."""
    bias = DecayBias("powerlaw", 1.0, n_heads=4, learnable_alpha=True, per_head_alpha=True)
    length = 512
    q, k, v = (torch.randn(1, 4, length, 16).requires_grad_(True) for _ in range(3))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = decayed_attention(q, k, v, bias, block_size=128)
    assert sizes and max(sizes) <= 4 * length * 16  # q, k, v, the output: (B, H, L, D); the log-sum-exp: (B, H, L)
    y.sum().backward()
    assert bias.alpha.grad is not None and q.grad is not None


def test_module_training_step_with_learnable_alpha_matches_dense_reference():
    torch.manual_seed(6)
    m = WCMHA(32, 4, n_kv_heads=2, alpha=0.9, learnable_alpha=True, per_head_alpha=True, block_size=BLOCK).double()
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    m(x)[0].pow(2).sum().backward()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    a = m.decay.alpha
    reference_module(m, x, _torch_reference_bias("powerlaw", a, 70, 70)).pow(2).sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-10, rtol=1e-9), n


def test_attention_dropout_while_training_takes_autograd_through_sdpa_and_gets_gradients():
    torch.manual_seed(7)
    m = WCMHA(32, 4, alpha=0.9, learnable_alpha=True, dropout=0.5, block_size=BLOCK).train()
    x = torch.randn(1, 60, 32)
    m(x)[0].sum().backward()
    assert m.decay.alpha.grad is not None and torch.isfinite(m.decay.alpha.grad).all()
    m.eval()
    with torch.no_grad():  # without dropout the same module is the blockwise CPU path
        y = m(x)[0]
    ref = reference_module(m, x, _torch_reference_bias("powerlaw", m.decay.alpha.detach().double(), 60, 60))
    assert (y.double() - ref).abs().max() < 1e-5


# ------------------------------------------------------------------------------------- one attention core (#21)

def test_step_with_a_window_equals_forward_with_that_max_context_and_trims_the_same():
    torch.manual_seed(9)
    m = GroupedQueryAttention(32, 4, n_kv_heads=2, decay="powerlaw", alpha=0.8, block_size=BLOCK).double().eval()
    w = GroupedQueryAttention(32, 4, n_kv_heads=2, decay="powerlaw", alpha=0.8, block_size=BLOCK,
                              max_context=6).double().eval()
    w.load_state_dict(m.state_dict())
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    past = (torch.randn(2, 2, 9, 8, dtype=torch.float64), torch.randn(2, 2, 9, 8, dtype=torch.float64))
    y, present = m.step(x, past, window=6)
    y_w, present_w = w(x, past)
    assert torch.allclose(y, y_w, atol=1e-12) and present[0].shape[2] == 6
    assert all(torch.equal(a, b) for a, b in zip(present, present_w))
    assert m.kept_length(6) == 6 and m.kept_length(None) is None and w.kept_length(10) == 6


def test_step_fills_a_cache_object_in_place():
    class Cache:  # the duck type step accepts: append(k, v) -> (key, value), trim(keep)
        def __init__(self):
            self.k = self.v = None
            self.kept = []

        def append(self, k, v):
            self.k = k if self.k is None else torch.cat([self.k, k], 2)
            self.v = v if self.v is None else torch.cat([self.v, v], 2)
            return self.k, self.v

        def trim(self, keep):
            self.kept.append(keep)
            if keep is not None:
                self.k, self.v = self.k[:, :, -keep:], self.v[:, :, -keep:]

    torch.manual_seed(10)
    m = GroupedQueryAttention(32, 4, decay="powerlaw", alpha=1.0, cutoff=5, block_size=BLOCK).double().eval()
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    cache = Cache()
    ys = [m.step(x[:, i : i + 3], cache)[0] for i in range(0, 12, 3)]
    assert m.step(x[:, :0], cache)[1] is cache and cache.kept[:4] == [5, 5, 5, 5] and cache.k.shape[2] == 5
    assert torch.allclose(torch.cat(ys, 1), m(x)[0], atol=1e-12)


def test_dense_weights_is_the_softmax_of_scaled_scores_plus_bias_with_kv_heads_repeated():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64, generator=g)
    k = torch.randn(2, 2, 7, 8, dtype=torch.float64, generator=g)
    mask = torch.randn(1, 4, 5, 7, dtype=torch.float64, generator=g)
    mask[..., 0, 3:] = -math.inf
    from tsattn.modules import dense_weights

    got = dense_weights(q, k, mask, scale=0.3)
    kr = k.repeat_interleave(2, 1).numpy()
    scores = np.einsum("bhqd,bhkd->bhqk", q.numpy(), kr) * 0.3 + mask.numpy()
    want = np.exp(scores - scores.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.allclose(got.numpy(), want, atol=1e-14) and (got[..., 0, 3:] == 0).all()
    assert torch.allclose(dense_weights(q, k, None), torch.softmax(
        q @ k.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8), -1), atol=1e-14)


def test_split_schedule_parts_cover_each_causal_row_once():
    """The causal schedule's parts (queries [qs, qe) x keys [ks, ke)) tile exactly the causal triangle (plus the
    masked corners of the sub-rows), with the lengths the gradient tests above use."""
    from tsattn.modules.wcmha import _SUB_ROWS, _Schedule

    for lq, lk, block in [(900, 900, 640), (530, 700, 512), (1090, 1200, 512), (50, 50, 16), (2048, 2048, 1024)]:
        sched = _Schedule(lq, lk, True, None, block)
        seen = torch.zeros(lq, lk, dtype=torch.int64)
        for s, e, parts in sched.spans:
            for qs, qe, ks, ke in parts:
                assert s <= qs < qe <= e and 0 <= ks < ke <= lk
                assert (qs, qe) == (s, e) or qe - qs <= _SUB_ROWS  # a whole block, or a sub-row
                seen[qs:qe, ks:ke] += 1
        causal = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        assert (seen[causal] == 1).all() and (seen <= 1).all()
    assert len(_Schedule(900, 900, True, None, 640).spans[0][2]) == 3  # sub-rows of 256, 256, 128
    assert [p[:2] for p in _Schedule(900, 900, True, None, 640).spans[1][2]] == [(640, 896), (896, 900), (640, 900)]
