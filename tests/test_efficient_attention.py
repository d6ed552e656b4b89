"""Efficient attentions (local, sparse, chunked, featurewise, flash, standard, wcmha) against float64 dense references
with explicit masks, in 3D and 4D layouts; patterns, gradients, export, the factory and the benchmark function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tsattn.modules.efficient_attention as ea
import tsattn.modules.wcmha as wcmha
from reference import reference_allowed, reference_bias, reference_module_4d
from tsattn.modules import (
    ATTENTION_TYPES,
    AttentionPattern,
    StandardAttention,
    benchmark_attention_mechanisms,
    make_attention,
)

W = 10  # the window / local window / chunk size of the tests
LENGTHS = [1, 7, W - 1, W, W + 1, 64]
D_MODEL, HEADS, BATCH, COLUMNS = 16, 2, 2, 3

# (id, attention_type, kwargs, pattern kwargs of reference_allowed, decay of reference_bias or None)
CONFIGS = [
    ("standard", "standard", {}, {}, None),
    ("flash", "flash", {}, {}, None),
    ("featurewise-shared", "featurewise", {}, {}, None),
    ("featurewise-per-column", "featurewise", {"share_weights": False, "n_columns": COLUMNS}, {}, None),
    ("local", "local", {"window_size": W, "block_size": 4}, {"window": W}, None),
    ("sparse", "sparse", {"stride": 3, "local_window": W, "block_size": 4}, {"window": W, "stride": 3}, None),
    ("chunked", "chunked", {"chunk_size": W, "overlap": 3}, {"chunk_size": W, "overlap": 3}, None),
    ("chunked-overlap0", "chunked", {"chunk_size": W, "overlap": 0}, {"chunk_size": W, "overlap": 0}, None),
    ("chunked-overlap-gt-chunk", "chunked", {"chunk_size": 4, "overlap": 9}, {"chunk_size": 4, "overlap": 9}, None),
    ("wcmha", "wcmha", {"alpha": 0.7, "block_size": 8}, {}, ("powerlaw", 0.7, {})),
    ("local-powerlaw", "local", {"window_size": W, "block_size": 4, "decay": "powerlaw", "alpha": 1.3},
     {"window": W}, ("powerlaw", 1.3, {})),
    ("local-powerlaw-cutoff", "local", {"window_size": W, "block_size": 4, "decay": "powerlaw", "cutoff": 4},
     {"window": W}, ("powerlaw", 1.0, {"cutoff": 4})),
    ("chunked-butterworth", "chunked", {"chunk_size": W, "overlap": 3, "decay": "butterworth", "alpha": 9.0,
                                        "butterworth_order": 2}, {"chunk_size": W, "overlap": 3},
     ("butterworth", 9.0, {"order": 2})),
]
CONFIG_IDS = [c[0] for c in CONFIGS]


def _module(attention_type, kwargs, causal=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return make_attention(attention_type, d_model=D_MODEL, n_heads=HEADS, causal=causal, **kwargs).to(dtype).eval()


def _inputs(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3))


def _reference_bias(m, length, causal, pattern, decay):
    """(1, L, L) float64: -inf outside the pattern, plus the decay (at the module's float32 alpha) if there is one."""
    allowed = reference_allowed(length, causal, **pattern)
    bias = torch.zeros(length, length, dtype=torch.float64).masked_fill(~allowed, -math.inf)[None]
    if decay is not None:
        name, alpha, kw = decay
        alphas = m.decay.alpha.detach().double().numpy().reshape(-1)
        assert np.allclose(alphas, alpha, rtol=1e-6)
        bias = bias + reference_bias(name, alphas, length, length, kw.get("order", 1), kw.get("cutoff"), causal)
    return bias


def _shape(layout, length):
    return (BATCH, COLUMNS, length, D_MODEL) if layout == "4d" else (BATCH, length, D_MODEL)


# 3D inputs are one column: per-column weights are 4D only (test_featurewise_per_column_checks_the_column_count)
LAYOUT_CONFIGS = [(layout,) + c for layout in ("4d", "3d") for c in CONFIGS
                  if not (layout == "3d" and c[2].get("share_weights") is False)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("layout,name,attention_type,kwargs,pattern,decay", LAYOUT_CONFIGS,
                         ids=[f"{c[0]}-{c[1]}" for c in LAYOUT_CONFIGS])
def test_matches_float64_dense_reference(layout, name, attention_type, kwargs, pattern, decay, length, causal):
    m = _module(attention_type, kwargs, causal)
    x = _inputs(_shape(layout, length), seed=length)
    y, _ = m(*x)
    want = reference_module_4d(m, *x, _reference_bias(m, length, causal, pattern, decay))
    assert y.shape == x[0].shape
    assert torch.allclose(y, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("length", [7, 64])
@pytest.mark.parametrize("name,attention_type,kwargs,pattern,decay", CONFIGS, ids=CONFIG_IDS)
def test_dense_export_path_matches_reference(monkeypatch, name, attention_type, kwargs, pattern, decay, length):
    """The path exported graphs take (one dense mask), checked in eager by pretending to export."""
    monkeypatch.setattr(ea, "is_exporting", lambda: True)
    monkeypatch.setattr(wcmha, "is_exporting", lambda: True)
    m = _module(attention_type, kwargs)
    x = _inputs(_shape("4d", length), seed=length + 1)
    want = reference_module_4d(m, *x, _reference_bias(m, length, True, pattern, decay))
    assert torch.allclose(m(*x)[0], want, atol=1e-10, rtol=0)


def _extra_masks(length, seed):
    """A key-padding style bool mask (B, L, L) that never masks a query's own position, and a float (L, L) one."""
    g = torch.Generator().manual_seed(seed)
    pad = torch.rand(BATCH, 1, length, generator=g) < 0.3
    boolean = pad.expand(BATCH, length, length) & ~torch.eye(length, dtype=torch.bool)
    additive = torch.randn(length, length, generator=g, dtype=torch.float64)
    return boolean, additive


@pytest.mark.parametrize("kind", ["bool-3d", "float-2d"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("length", [7, 64])
@pytest.mark.parametrize("name,attention_type,kwargs,pattern,decay", CONFIGS, ids=CONFIG_IDS)
def test_extra_mask_matches_reference(name, attention_type, kwargs, pattern, decay, length, causal, kind):
    m = _module(attention_type, kwargs, causal)
    x = _inputs(_shape("4d", length), seed=length + 2)
    boolean, additive = _extra_masks(length, length)
    mask = boolean if kind == "bool-3d" else additive
    extra = torch.zeros(BATCH, 1, length, length, dtype=torch.float64).masked_fill(boolean[:, None], -math.inf) \
        if kind == "bool-3d" else additive
    bias = _reference_bias(m, length, causal, pattern, decay) + extra
    assert torch.allclose(m(*x, mask=mask)[0], reference_module_4d(m, *x, bias), atol=1e-10, rtol=0)


@pytest.mark.parametrize("pattern", [
    {"window": 5}, {"window": 5, "stride": 3}, {"window": 1, "stride": 4}, {"chunk_size": 6, "overlap": 2},
    {"chunk_size": 6, "overlap": 0}, {"chunk_size": 3, "overlap": 7}, {},
], ids=["local", "sparse", "sparse-w1", "chunked", "chunked-o0", "chunked-o7", "full"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("length", [1, 4, 5, 6, 31])
def test_pattern_and_key_segments_match_the_reference_mask(pattern, causal, length):
    p = AttentionPattern(causal, **pattern)
    pos = torch.arange(length)
    want = reference_allowed(length, causal, **pattern)
    assert torch.equal(p.allowed(pos[:, None], pos[None, :]), want)
    step = p.step(4)
    for s in range(0, length, step):
        e = min(s + step, length)
        keys = [j for lo, hi, st in p.key_segments(s, e, length) for j in range(lo, hi, st)]
        assert keys == sorted(set(keys)), "segments overlap or are out of order"
        needed = set(torch.nonzero(want[s:e].any(0)).flatten().tolist())
        assert needed <= set(keys), f"block [{s}, {e}) misses keys {sorted(needed - set(keys))}"


def test_local_window_size_semantics_on_weights():
    """window_size=3: each query's output is a mix of exactly its 3 most recent values (itself included)."""
    m = _module("local", {"window_size": 3, "block_size": 2})
    length = 9
    q = torch.zeros(1, 1, 1, length, 8, dtype=torch.float64)  # equal scores: uniform weights over the window
    v = torch.arange(length, dtype=torch.float64).view(1, 1, 1, length, 1).expand(1, 1, 1, length, 8)
    out, _ = m.attend(q, q, v)
    want = torch.tensor([np.mean(range(max(0, i - 2), i + 1)) for i in range(length)], dtype=torch.float64)
    assert torch.allclose(out[0, 0, 0, :, 0], want)


@pytest.mark.parametrize("length", [1, 7, 40])
@pytest.mark.parametrize("window", [40, 41, 1000])
def test_local_with_window_at_least_length_equals_full_causal(length, window):
    local = _module("local", {"window_size": window, "block_size": 4}, dtype=torch.float32)
    full = _module("standard", {}, dtype=torch.float32)
    x = _inputs(_shape("4d", length), seed=3, dtype=torch.float32)
    assert (local(*x)[0] - full(*x)[0]).abs().max() < 1e-5


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_flash_equals_standard(with_mask, causal):
    flash = _module("flash", {}, causal, dtype=torch.float32)
    std = _module("standard", {}, causal, dtype=torch.float32)
    x = _inputs(_shape("4d", 33), seed=4, dtype=torch.float32)
    mask = _extra_masks(33, 5)[0] if with_mask else None
    assert (flash(*x, mask=mask)[0] - std(*x, mask=mask)[0]).abs().max() < 1e-5


def test_featurewise_shared_equals_standard_column_by_column():
    fw = _module("featurewise", {"share_weights": True}, dtype=torch.float32)
    std = _module("standard", {}, dtype=torch.float32)
    x = _inputs(_shape("4d", 25), seed=6, dtype=torch.float32)
    per_column = torch.cat([std(*(t[:, c : c + 1] for t in x))[0] for c in range(COLUMNS)], dim=1)
    assert (fw(*x)[0] - per_column).abs().max() < 1e-5


def test_featurewise_per_column_weights_differ_and_copying_them_gives_standard():
    fw = _module("featurewise", {"share_weights": False, "n_columns": COLUMNS})
    assert len(fw.q_proj) == COLUMNS and not torch.equal(fw.q_proj[0].weight, fw.q_proj[1].weight)
    std = _module("standard", {})
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            for layer in getattr(fw, name):
                layer.load_state_dict(getattr(std, name).state_dict())
    x = _inputs(_shape("4d", 12), seed=7)
    assert torch.allclose(fw(*x)[0], std(*x)[0], atol=1e-12)


def test_featurewise_per_column_checks_the_column_count():
    fw = _module("featurewise", {"share_weights": False, "n_columns": COLUMNS})
    with pytest.raises(ValueError, match="n_columns"):
        fw(*_inputs((BATCH, COLUMNS + 1, 5, D_MODEL), seed=0))
    with pytest.raises(ValueError, match="n_columns"):
        fw(*_inputs((BATCH, 5, D_MODEL), seed=0))  # 3D is one column


def test_standard_initialisation_and_weights_follow_hephaestus():
    """Same seed, same parameters as four nn.Linear(d, d) built in the order q, k, v, out and then given
    Xavier-uniform weights and zero biases in that order; weights are (B, H, C, L, L) softmax rows."""
    torch.manual_seed(123)
    m = StandardAttention(D_MODEL, HEADS)
    torch.manual_seed(123)
    layers = [torch.nn.Linear(D_MODEL, D_MODEL) for _ in range(4)]
    for layer in layers:
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.constant_(layer.bias, 0.0)
    for name, layer in zip(("q_proj", "k_proj", "v_proj", "out_proj"), layers):
        assert torch.equal(getattr(m, name).weight, layer.weight) and torch.equal(getattr(m, name).bias, layer.bias)
    assert sorted(m.state_dict()) == sorted(f"{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
                                            for w in ("weight", "bias"))
    assert (m.embed_dim, m.num_heads, m.head_dim) == (D_MODEL, HEADS, D_MODEL // HEADS)
    x = _inputs(_shape("4d", 6), seed=8, dtype=torch.float32)
    _, weights = m.eval()(*x)
    assert weights.shape == (BATCH, HEADS, COLUMNS, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(()))
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))


def test_standard_fully_masked_row_is_nan_like_hephaestus():
    m = _module("standard", {})
    x = _inputs(_shape("4d", 4), seed=9)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True  # query 0 loses its only key
    y, _ = m(*x, mask=mask)
    assert torch.isnan(y[:, :, 0]).all() and not torch.isnan(y[:, :, 1:]).any()


@pytest.mark.parametrize("attention_type,kwargs", [
    ("local", {"window_size": 5}), ("sparse", {"stride": 2, "local_window": 3}), ("chunked", {"chunk_size": 4}),
    ("flash", {}), ("wcmha", {"alpha": 0.5}), ("featurewise", {"share_weights": True}),
])
def test_same_seed_gives_standard_weights(attention_type, kwargs):
    """So a Hephaestus checkpoint of MultiHeadAttention4D loads into any type (strictly)."""
    std = _module("standard", {}).state_dict()
    other = _module(attention_type, kwargs)
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("decay.")}
    assert state.keys() == std.keys() and all(torch.equal(state[k], std[k]) for k in std)


@pytest.mark.parametrize("length", [1, 17, 60])
def test_wcmha_with_alpha_zero_equals_standard(length):
    zero = _module("wcmha", {"alpha": 0.0}, dtype=torch.float32)
    std = _module("standard", {}, dtype=torch.float32)
    x = _inputs(_shape("4d", length), seed=10, dtype=torch.float32)
    assert (zero(*x)[0] - std(*x)[0]).abs().max() < 1e-5


GRAD_CONFIGS = [c for c in CONFIGS if c[0] in ("flash", "featurewise-per-column", "local", "sparse", "chunked",
                                                "wcmha", "local-powerlaw", "chunked-butterworth")]


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("name,attention_type,kwargs,pattern,decay", GRAD_CONFIGS, ids=[c[0] for c in GRAD_CONFIGS])
def test_gradients_match_reference(name, attention_type, kwargs, pattern, decay, with_mask):
    length = 23
    m = _module(attention_type, kwargs)
    x = [t.requires_grad_(True) for t in _inputs(_shape("4d", length), seed=11)]
    boolean, _ = _extra_masks(length, 12)
    bias = _reference_bias(m, length, True, pattern, decay)
    if with_mask:
        pad = torch.zeros(BATCH, 1, length, length, dtype=torch.float64)
        bias = bias + pad.masked_fill(boolean[:, None], -math.inf)
    params = [p for p in m.parameters()]
    ours = torch.autograd.grad((m(*x, mask=boolean if with_mask else None)[0] ** 2).sum(), x + params)
    theirs = torch.autograd.grad((reference_module_4d(m, *x, bias) ** 2).sum(), x + params)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("attention_type", ["local", "chunked"])
def test_learnable_alpha_gets_the_reference_gradient(attention_type):
    length = 30
    kwargs = {"window_size": 6, "block_size": 4} if attention_type == "local" else {"chunk_size": 6, "overlap": 2}
    pattern = {"window": 6} if attention_type == "local" else {"chunk_size": 6, "overlap": 2}
    m = _module(attention_type, dict(kwargs, decay="powerlaw", alpha=0.8, learnable_alpha=True, per_head_alpha=True))
    x = _inputs(_shape("4d", length), seed=13)
    (m(*x)[0] ** 2).sum().backward()
    alpha = m.decay.alpha.detach().clone().requires_grad_(True)
    i = torch.arange(length, dtype=torch.float64)
    dt = (i[:, None] - i[None, :]).clamp(min=0)
    allowed = reference_allowed(length, True, **pattern)
    bias = torch.where(allowed, -alpha.view(-1, 1, 1) * torch.log(dt + 1), torch.tensor(-math.inf, dtype=torch.float64))
    (reference_module_4d(m, *x, bias) ** 2).sum().backward()
    assert m.decay.alpha.grad.abs().sum() > 0
    assert torch.allclose(m.decay.alpha.grad, alpha.grad, atol=1e-8, rtol=1e-8)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest number of elements of any new tensor an aten op returns (views of inputs excluded)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("attention_type,kwargs,with_mask", [
    ("local", {"window_size": 64}, False), ("local", {"window_size": 64, "decay": "powerlaw"}, False),
    ("sparse", {"stride": 64, "local_window": 32}, False), ("chunked", {"chunk_size": 64, "overlap": 16}, False),
    ("local", {"window_size": 64}, True), ("featurewise", {}, False), ("flash", {}, False),
])
def test_blocked_types_never_build_a_length_squared_tensor(attention_type, kwargs, with_mask):
    """At L = 2048, no op returns a tensor of L * L / 8 elements (a dense mask or score matrix would be L * L)."""
    length = 2048
    m = make_attention(attention_type, d_model=8, n_heads=1, **kwargs).eval()
    x = torch.randn(1, 1, length, 8)
    mask = torch.zeros(length, length, dtype=torch.bool) if with_mask else None
    with torch.no_grad(), _LargestTensor() as probe:
        m(x, x, x, mask=mask)
    assert probe.largest < length * length / 8, probe.largest


# ---------------------------------------------------------------------------------------------------------- export

EXPORT_CONFIGS = [
    ("standard", {}), ("flash", {}), ("featurewise-per-column", {"share_weights": False, "n_columns": COLUMNS}),
    ("featurewise", {}), ("local", {"window_size": 6, "block_size": 4}),
    ("sparse", {"stride": 3, "local_window": 5, "block_size": 4}), ("chunked", {"chunk_size": 5, "overlap": 2}),
    ("wcmha", {"alpha": 0.9, "per_head_alpha": True}),
    ("local-decay", {"window_size": 6, "block_size": 4, "decay": "butterworth", "alpha": 5.0}),
]
OTHER_SHAPES = [(1, 9), (3, 37), (2, 1)]  # (batch, L); exported at (2, 20)


class _Outputs(torch.nn.Module):
    """forward(query, key, value[, mask]) -> output (and the weights for standard): the exported signature."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, query, key, value, mask=None):
        y, w = self.m(query, key, value, mask)
        return y if w is None else (y, w)


def _export_module(name, kwargs):
    attention_type = name.split("-")[0] if name != "local-decay" else "local"
    torch.manual_seed(14)
    return _Outputs(make_attention(attention_type, d_model=D_MODEL, n_heads=HEADS, **kwargs)).eval()


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name,kwargs", EXPORT_CONFIGS, ids=[c[0] for c in EXPORT_CONFIGS])
def test_jit_trace_generalises_to_other_batches_and_lengths(name, kwargs):
    w = _export_module(name, kwargs)
    traced = torch.jit.trace(w, _inputs((2, COLUMNS, 20, D_MODEL), seed=0, dtype=torch.float32), check_trace=False)
    for b, length in OTHER_SHAPES:
        x = _inputs((b, COLUMNS, length, D_MODEL), seed=b * 100 + length, dtype=torch.float32)
        with torch.no_grad():
            for got, want in zip(_as_tuple(traced(*x)), _as_tuple(w(*x))):
                assert got.shape == want.shape and (got - want).abs().max() < 1e-5, (b, length)


def _onnx_check(tmp_path, w, name, example, dynamo, with_mask=False, layout="4d"):
    import onnx
    import onnxruntime as ort

    path = tmp_path / f"{name}.onnx"
    names = ["query", "key", "value"] + (["mask"] if with_mask else [])
    seq = 2 if layout == "4d" else 1
    n_out = len(_as_tuple(w(*example)))
    outs = ["output", "attn_weights"][:n_out]
    if dynamo:
        batch, length = torch.export.Dim("batch"), torch.export.Dim("seq", min=2)
        shapes = {n: {0: batch, seq: length} for n in ("query", "key", "value")}
        if with_mask:
            shapes["mask"] = {0: batch, 1: length, 2: length}
        torch.onnx.export(w, example, str(path), dynamo=True, opset_version=18, input_names=names,
                          output_names=outs, dynamic_shapes=shapes)
    else:
        axes = {n: {0: "batch", seq: "seq"} for n in ("query", "key", "value", "output")}
        if with_mask:
            axes["mask"] = {0: "batch", 1: "seq", 2: "seq"}
        if n_out == 2:
            axes["attn_weights"] = {0: "batch", 3: "seq", 4: "seq"}
        torch.onnx.export(w, example, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outs, dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, length in OTHER_SHAPES:
        shape = (b, COLUMNS, length, D_MODEL) if layout == "4d" else (b, length, D_MODEL)
        x = _inputs(shape, seed=b * 10 + length, dtype=torch.float32)
        if with_mask:
            x = x + (_extra_masks(length, length)[0][:1].expand(b, length, length).contiguous(),)
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, x)})
        with torch.no_grad():
            want = _as_tuple(w(*x))
        for g, e in zip(got, want):
            assert g.shape == tuple(e.shape), (b, length)
            assert np.abs(g - e.numpy()).max() <= 1e-4, (b, length)


@pytest.mark.parametrize("name,kwargs", EXPORT_CONFIGS, ids=[c[0] for c in EXPORT_CONFIGS])
def test_onnx_export_runs_in_onnxruntime_at_other_shapes(tmp_path, name, kwargs):
    w = _export_module(name, kwargs)
    _onnx_check(tmp_path, w, name, _inputs((2, COLUMNS, 20, D_MODEL), seed=0, dtype=torch.float32), dynamo=False)


@pytest.mark.parametrize("name,kwargs", [("local", {"window_size": 6, "block_size": 4}),
                                         ("chunked", {"chunk_size": 5, "overlap": 2})])
def test_onnx_export_with_a_mask_input(tmp_path, name, kwargs):
    w = _export_module(name, kwargs)
    x = _inputs((2, COLUMNS, 20, D_MODEL), seed=0, dtype=torch.float32)
    _onnx_check(tmp_path, w, name + "-mask", x + (_extra_masks(20, 20)[0],), dynamo=False, with_mask=True)


def test_onnx_export_3d_layout(tmp_path):
    w = _export_module("sparse", {"stride": 3, "local_window": 5, "block_size": 4})
    _onnx_check(tmp_path, w, "sparse3d", _inputs((2, 20, D_MODEL), seed=0, dtype=torch.float32), dynamo=False,
                layout="3d")


def test_onnx_dynamo_export_local_with_decay(tmp_path):
    w = _export_module("local-decay", {"window_size": 6, "block_size": 4, "decay": "powerlaw", "alpha": 1.5})
    _onnx_check(tmp_path, w, "local-dynamo", _inputs((2, COLUMNS, 20, D_MODEL), seed=0, dtype=torch.float32),
                dynamo=True)


# ------------------------------------------------------------------------------------------------ factory, errors


def test_factory_builds_every_type_with_the_guides_keywords():
    guide = {"local": {"window_size": 256}, "sparse": {"stride": 4, "local_window": 32},
             "featurewise": {"share_weights": True}, "chunked": {"chunk_size": 256, "overlap": 32}}
    for attention_type in ATTENTION_TYPES:
        m = make_attention(attention_type, d_model=64, n_heads=4, **guide.get(attention_type, {}))
        assert m.attention_type == attention_type
    assert set(ea.ATTENTION_KWARGS["sparse"]) >= {"stride", "local_window"}
    m = make_attention("sparse", d_model=64, n_heads=4, stride=8, local_window=64)
    assert (m.stride, m.local_window) == (8, 64)


def test_factory_rejects_unknown_type_listing_the_valid_ones():
    with pytest.raises(ValueError, match="valid types") as err:
        make_attention("linformer", d_model=16, n_heads=2)
    assert all(t in str(err.value) for t in ATTENTION_TYPES)


@pytest.mark.parametrize("attention_type,kwargs,listed", [
    ("local", {"window": 8}, "window_size"),
    ("sparse", {"window_size": 8}, "local_window"),
    ("sparse", {"stride_size": 2}, "stride"),
    ("chunked", {"chunk": 8}, "chunk_size"),
    ("featurewise", {"shared": True}, "share_weights"),
    ("flash", {"window_size": 8}, "dropout"),
    ("standard", {"decay": "powerlaw"}, "causal"),
])
def test_factory_rejects_unknown_keywords_listing_the_valid_ones(attention_type, kwargs, listed):
    with pytest.raises(ValueError, match="valid keywords") as err:
        make_attention(attention_type, d_model=16, n_heads=2, **kwargs)
    assert listed in str(err.value) and repr(next(iter(kwargs))) in str(err.value)


@pytest.mark.parametrize("attention_type,kwargs,name", [
    ("local", {"window_size": 0}, "window_size"),
    ("local", {"window_size": 2.5}, "window_size"),
    ("local", {"block_size": 0}, "block_size"),
    ("sparse", {"stride": 0}, "stride"),
    ("sparse", {"local_window": 0}, "local_window"),
    ("chunked", {"chunk_size": 0}, "chunk_size"),
    ("chunked", {"overlap": -1}, "overlap"),
    ("featurewise", {"share_weights": False}, "n_columns"),
    ("featurewise", {"share_weights": "no"}, "share_weights"),
    ("featurewise", {"share_weights": False, "n_columns": 0}, "n_columns"),
    ("flash", {"dropout": 1.5}, "dropout"),
    ("local", {"alpha": 2.0}, "decay"),
    ("local", {"decay": "expo"}, "decay"),
    ("chunked", {"decay": "powerlaw", "alpha": -1.0}, "alpha"),
    ("wcmha", {"cutoff": -2}, "cutoff"),
])
def test_bad_values_raise_value_error_naming_the_argument(attention_type, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_attention(attention_type, d_model=16, n_heads=2, **kwargs)


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="d_model"):
        make_attention("local", d_model=15, n_heads=2)
    m = _module("local", {"window_size": 4})
    x = _inputs(_shape("4d", 6), seed=0)
    with pytest.raises(ValueError, match="mask"):
        m(*x, mask=torch.zeros(6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        m(*x, mask=torch.zeros(1, 1, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        m(x[0], x[1][:, :, :5], x[2])
    with pytest.raises(ValueError, match="query"):
        m(x[0][0, 0, 0], x[1][0, 0, 0], x[2][0, 0, 0])


# ------------------------------------------------------------------------------------------------------ benchmark


def test_benchmark_attention_mechanisms_reports_the_guides_structure():
    results = benchmark_attention_mechanisms(seq_lengths=[64, 512], n_columns=2, d_model=16, n_heads=2,
                                             batch_size=1, device="cpu", methods=["standard", "local", "nope"],
                                             repeats=1)
    assert list(results) == [64, 512]
    for length, by_method in results.items():
        assert set(by_method) == {"standard", "local", "nope"}
        for method in ("standard", "local"):
            r = by_method[method]
            assert r["successful"] and r["time_ms"] > 0 and r["memory_mb"] > 0, (length, method, r)
        assert not by_method["nope"]["successful"] and "valid types" in by_method["nope"]["error"]
    # standard holds (B, H, C, L, L) scores and weights: at L=512 at least 2 * 2 * 2 * 512^2 * 4 bytes = 8 MiB
    assert results[512]["standard"]["memory_mb"] >= 8 > results[512]["local"]["memory_mb"]


def test_benchmark_rejects_an_unavailable_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        benchmark_attention_mechanisms(seq_lengths=[8], device="cuda")
