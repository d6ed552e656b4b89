"""Wave-Transformer enhancements (AHS, FCL, PCCA, MRWP) against their stated semantics and float64 references."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from reference import reference_attention, reference_bias
from tsattn.modules import (
    AdaptiveHarmonicSelector,
    FrequencyCurriculumScheduler,
    FrequencyMask,
    HarmonicSparsificationLoss,
    MultiResolutionWavePyramid,
    PhaseCoherentAttention,
    RotaryAttention,
)

H = 16  # harmonics: representations are (B, S, 48)


def _wave(b=2, s=9, h=H, seed=0, dtype=torch.float32):
    """A plausible wave representation: frequencies > 0, amplitudes > 0, phases in [-pi, pi]."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(b, s, h, generator=g, dtype=dtype) * 20 + 0.1
    a = torch.rand(b, s, h, generator=g, dtype=dtype) * 2 + 0.05
    p = (torch.rand(b, s, h, generator=g, dtype=dtype) * 2 - 1) * math.pi
    return torch.cat([f, a, p], dim=-1)


def _per_harmonic(x, h=H):  # (B, S, 3H) -> (B, S, 3, H)
    return x.reshape(*x.shape[:-1], 3, h)


# ---------------------------------------------------------------------------------------------------------------
# AHS
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k_ratio,expected_k", [(0.5, 8), (0.25, 4), (1.0, 16), (0.01, 1)])
@pytest.mark.parametrize("training", [False, True])
def test_ahs_keeps_k_ratio_of_the_harmonics(k_ratio, expected_k, training):
    torch.manual_seed(0)
    sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=k_ratio).train(training)
    with torch.no_grad():  # a trained-looking scorer, so that the selection is not just the amplitude prior
        sel.score_head.weight.normal_()
    x = _wave()
    y, stats = sel(x, return_stats=True)
    mask = stats["selection_mask"]
    assert sel.base_k == expected_k
    assert torch.equal(mask.detach().sum(-1), torch.full((2, 9), float(expected_k)))
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    # every channel of a kept harmonic is unchanged, every channel of a dropped one is zero
    assert torch.equal(_per_harmonic(y.detach()), _per_harmonic(x) * mask.detach().unsqueeze(2))
    assert float(stats["actual_k_mean"]) == expected_k
    assert math.isclose(float(stats["sparsity"]), 1 - expected_k / H, abs_tol=1e-6)
    if not training:  # eval: exactly the top-k of the importance scores
        top = stats["importance_scores"].topk(expected_k, dim=-1).indices
        assert torch.equal(mask.gather(-1, top), torch.ones_like(top, dtype=mask.dtype))


def test_ahs_untrained_keeps_the_largest_amplitudes_and_is_causal():
    torch.manual_seed(1)
    sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.25, context_size=4).eval()
    x = _wave(seed=3)
    _, stats = sel(x, return_stats=True)
    amps = _per_harmonic(x)[:, :, 1]
    want = torch.zeros_like(amps).scatter(-1, amps.topk(4, dim=-1).indices, 1.0)
    assert torch.equal(stats["selection_mask"], want)
    # importance at position t only looks at positions <= t
    with torch.no_grad():
        sel.score_head.weight.normal_()
    s1 = sel(x, return_stats=True)[1]["importance_scores"]
    x2 = x.clone()
    x2[:, 5:] = _wave(seed=4)[:, 5:]
    s2 = sel(x2, return_stats=True)[1]["importance_scores"]
    assert torch.equal(s1[:, :5], s2[:, :5]) and not torch.equal(s1[:, 5:], s2[:, 5:])


def test_ahs_training_is_stochastic_and_passes_gradients():
    torch.manual_seed(2)
    sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.5).train()
    with torch.no_grad():  # the score head starts at zero, which blocks the gradient to the layers before it
        sel.score_head.weight.normal_()
    x = _wave().requires_grad_(True)
    masks = {tuple(sel(x, return_stats=True)[1]["selection_mask"].detach().flatten().tolist()) for _ in range(5)}
    assert len(masks) > 1  # Gumbel noise changes the selection
    y, stats = sel(x, return_stats=True)
    loss = (y * torch.randn_like(y)).sum() + HarmonicSparsificationLoss()(stats)["total"]
    loss.backward()
    for name, p in sel.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    kept = stats["selection_mask"].detach().bool()
    gx = _per_harmonic(x.grad)
    assert (gx[:, :, 0][kept] != 0).all()  # kept harmonics pass the gradient of the output straight through


def test_ahs_dynamic_k_is_learned_per_position():
    torch.manual_seed(3)
    sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.5, min_k=2, use_dynamic_k=True)
    x = _wave()
    for training in (False, True):
        _, stats = sel.train(training)(x, return_stats=True)
        assert torch.allclose(stats["k_values"], torch.full((2, 9), 8.0), atol=1e-4)  # starts at base_k
        assert torch.equal(stats["selection_mask"].detach().sum(-1), torch.full((2, 9), 8.0))
    with torch.no_grad():
        sel.k_head.weight.normal_(std=2.0)
    for training in (False, True):
        _, stats = sel.train(training)(x, return_stats=True)
        k = stats["k_values"].detach()
        assert k.min() >= 2 and k.max() <= H and k.std() > 0.1
        assert torch.equal(stats["selection_mask"].detach().sum(-1), k.round())
    # the sparsity term pulls k towards the target: wanting 75% sparsity (4 of 16) must lower k
    sel.train()
    _, stats = sel(x, return_stats=True)
    HarmonicSparsificationLoss(target_sparsity=0.75)(stats)["sparsity"].backward()
    assert sel.k_head.bias.grad.item() > 0  # gradient descent lowers the k logit
    assert stats["k_values"].mean() > 4


def test_ahs_ema_sparsity_tracks_training_calls_only():
    torch.manual_seed(4)
    sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.25, ema_momentum=0.9)
    assert math.isclose(float(sel.ema_sparsity), 0.75)
    sel.ema_sparsity.fill_(0.0)
    _, stats = sel.train()(_wave(), return_stats=True)
    assert math.isclose(float(stats["ema_sparsity"]), 0.1 * 0.75, rel_tol=1e-6)
    sel.eval()(_wave())
    assert math.isclose(float(sel.ema_sparsity), 0.075, rel_tol=1e-6)
    assert isinstance(sel.train()(_wave()), torch.Tensor)  # stats only when asked


def test_sparsification_loss_hand_computed():
    mask = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]])  # (1, 3, 4)
    k = torch.tensor([[3.0, 2.0, 2.0]])
    out = HarmonicSparsificationLoss(target_sparsity=0.25, smoothness_weight=0.5, temporal_weight=2.0)(
        {"selection_mask": mask, "k_values": k})
    sparsity = (1 - (7 / 3) / 4 - 0.25) ** 2
    smooth = (2 + 1 + 2) / 9  # adjacent-harmonic changes: row 0: 1,0,... -> |1-0|,|0-1|,|1-1|
    temporal = (0 + 1 + 1 + 1 + 1 + 0 + 1 + 0) / 8
    assert math.isclose(float(out["sparsity"]), sparsity, rel_tol=1e-6)
    assert math.isclose(float(out["smoothness"]), smooth, rel_tol=1e-6)
    assert math.isclose(float(out["temporal"]), temporal, rel_tol=1e-6)
    assert math.isclose(float(out["total"]), sparsity + 0.5 * smooth + 2.0 * temporal, rel_tol=1e-6)
    with pytest.raises(ValueError, match="k_values"):
        HarmonicSparsificationLoss()({"selection_mask": mask})


# ---------------------------------------------------------------------------------------------------------------
# FCL
# ---------------------------------------------------------------------------------------------------------------

def _mask_by_hand(limit, h, slope):
    out = []
    for i in range(h):
        t = min(1.0, max(0.0, ((i + 1) / h - limit) * slope))
        out.append(1 - t * t * (3 - 2 * t))
    return torch.tensor(out)


@pytest.mark.parametrize("limit", [0.0, 0.1, 0.37, 0.5, 0.92, 1.0])
def test_frequency_mask_formula_and_identity_at_one(limit):
    m = FrequencyMask(H, mask_slope=6.0)
    x = _wave()
    want = _mask_by_hand(limit, H, 6.0)
    assert torch.allclose(m.mask(limit), want, atol=1e-6)
    y = m(x, limit)
    assert torch.allclose(_per_harmonic(y), _per_harmonic(x) * want, atol=1e-6)
    if limit == 1.0:
        assert torch.equal(y, x)
    inside = [i for i in range(H) if (i + 1) / H <= limit]
    assert torch.equal(_per_harmonic(y)[..., inside], _per_harmonic(x)[..., inside])
    assert (want[1:] <= want[:-1]).all()  # low frequencies kept first


def test_frequency_mask_monotone_in_the_limit_and_accepts_a_tensor():
    m = FrequencyMask(H, mask_slope=4.0)
    masks = torch.stack([m.mask(t) for t in torch.linspace(0, 1, 41)])
    assert (masks[1:] >= masks[:-1] - 1e-7).all()
    assert torch.allclose(m(_wave(), torch.tensor(0.3)), m(_wave(), 0.3))


@pytest.mark.parametrize("mode", ["linear", "exponential", "cosine"])
@pytest.mark.parametrize("warmup", [0, 100])
def test_schedules_hit_their_endpoints_and_are_monotone(mode, warmup):
    s = FrequencyCurriculumScheduler(1000, start_freq_limit=0.2, end_freq_limit=0.9, warmup_steps=warmup,
                                     curriculum_mode=mode, adaptive=False)
    values = [s.get_freq_limit(t) for t in range(0, 1201)]
    assert all(v == 0.2 for v in values[: warmup + 1])
    assert values[1000] == pytest.approx(0.9, abs=1e-12) and values[1200] == pytest.approx(0.9, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[warmup + 1] > 0.2
    mid = s.get_freq_limit(warmup + (1000 - warmup) // 2)
    want = {"linear": 0.55, "cosine": 0.55, "exponential": math.sqrt(0.2 * 0.9)}[mode]
    assert mid == pytest.approx(want, abs=1e-9)
    quarter = s.get_freq_limit(warmup + (1000 - warmup) // 4)
    want = {"linear": 0.2 + 0.7 / 4, "cosine": 0.2 + 0.7 * (1 - math.cos(math.pi / 4)) / 2,
            "exponential": 0.2 * (0.9 / 0.2) ** 0.25}[mode]
    assert quarter == pytest.approx(want, abs=1e-9)


def test_adaptive_rule_slows_down_after_patience_and_not_before():
    kw = dict(total_steps=1000, start_freq_limit=0.1, warmup_steps=0, curriculum_mode="linear", patience=100,
              slowdown=0.5)
    plain = FrequencyCurriculumScheduler(**kw, adaptive=False)
    s = FrequencyCurriculumScheduler(**kw, adaptive=True)
    assert not s.step(0, val_loss=1.0)["slowed"]
    for t in (50, 100):  # no improvement for 50, then 100 steps: not more than patience yet
        info = s.step(t, val_loss=1.0)
        assert not info["slowed"] and info["freq_limit"] == pytest.approx(plain.get_freq_limit(t))
    assert s.get_freq_limit(300) == pytest.approx(plain.get_freq_limit(300))
    info = s.step(101, val_loss=1.5)  # 101 steps without improvement: slowed from here on
    assert info["slowed"] and info["steps_since_improvement"] == 101
    assert info["freq_limit"] == pytest.approx(plain.get_freq_limit(101))  # continuous
    p101 = s.progress(101)
    assert s.progress(301) == pytest.approx(p101 + 0.5 * 200 / 1000)  # half speed
    assert s.get_freq_limit(301) < plain.get_freq_limit(301)
    s.step(301, val_loss=1.2)
    info = s.step(401, val_loss=0.9)  # improvement: catch up, still ending at total_steps
    assert not info["slowed"] and info["steps_since_improvement"] == 0
    values = [s.get_freq_limit(t) for t in range(0, 1001)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[1000] == pytest.approx(1.0) and values[999] < 1.0
    assert values[700] < plain.get_freq_limit(700)
    # non-adaptive schedulers ignore the validation loss
    for t in (0, 150, 300):
        assert not plain.step(t, val_loss=5.0)["slowed"]
    assert plain.get_freq_limit(500) == pytest.approx(0.1 + 0.9 * 0.5)


def test_scheduler_state_dict_round_trip_and_backwards_step():
    s = FrequencyCurriculumScheduler(500, patience=10, curriculum_mode="cosine", warmup_steps=20)
    for t, loss in ((0, 2.0), (30, 2.1), (60, 2.2), (90, 1.0)):
        s.step(t, loss)
    t2 = FrequencyCurriculumScheduler(500, patience=10, curriculum_mode="cosine", warmup_steps=20)
    t2.load_state_dict(s.state_dict())
    assert [t2.get_freq_limit(t) for t in range(0, 501, 7)] == [s.get_freq_limit(t) for t in range(0, 501, 7)]
    assert t2.get_freq_limit() == s.get_freq_limit(90)
    with pytest.raises(ValueError, match="step"):
        s.step(80)


def test_plot_schedule_writes_a_png(tmp_path, monkeypatch):
    s = FrequencyCurriculumScheduler(300, warmup_steps=30, patience=20)
    s.step(0, 1.0)
    s.step(60, 1.1)
    path = s.plot_schedule(str(tmp_path / "curriculum.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="matplotlib"):
        s.plot_schedule(str(tmp_path / "again.png"))


# ---------------------------------------------------------------------------------------------------------------
# PCCA
# ---------------------------------------------------------------------------------------------------------------

def _rope64(x, positions, base=10000.0):
    """RoPE as complex multiplication of consecutive channel pairs, float64. x (B, H, L, D)."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                      positions.to(torch.float64)[:, None] * theta[None, :])
    return torch.view_as_real(z * rot).reshape(x.shape)


def _coherence64(x, mode, h=H):
    """The seed's definitions with an explicit (B, S, S, H) tensor, float64."""
    x = x.to(torch.float64)
    a, p = x[..., h : 2 * h], x[..., 2 * h :]
    diff = p[:, :, None, :] - p[:, None, :, :]
    if mode == "cosine":
        return torch.cos(diff).mean(-1)
    z = (a[:, :, None, :] * a[:, None, :, :]) * torch.exp(1j * diff)
    return z.sum(-1).abs() / (a.norm(dim=-1)[:, :, None] * a.norm(dim=-1)[:, None, :])


def _reference_pcca(m, x, bias, with_coherence=True):
    """m's forward recomputed in float64 from its weights: rotary, GQA expansion, explicit scores."""
    x64 = x.to(torch.float64)
    b, l, _ = x.shape
    hq, hkv, d = m.n_heads, m.n_kv_heads, m.head_dim
    w = lambda layer: layer.weight.to(torch.float64)
    q = (x64 @ w(m.q_proj).T).view(b, l, hq, d).transpose(1, 2)
    k = (x64 @ w(m.k_proj).T).view(b, l, hkv, d).transpose(1, 2)
    v = (x64 @ w(m.v_proj).T).view(b, l, hkv, d).transpose(1, 2)
    if m.rotary is not None:
        pos = torch.arange(l)
        q, k = _rope64(q, pos), _rope64(k, pos)
    k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    bias = bias.to(torch.float64)
    if with_coherence:
        q = q * float(m.alpha.detach())
        bias = bias + float(m.beta.detach()) / m.phase_temp * _coherence64(x, m.phase_coherence_mode, m.num_harmonics)[:, None]
    y = reference_attention(q, k, v, bias).transpose(1, 2).reshape(b, l, hq * d)
    return y @ w(m.out_proj).T


def _pcca(mode="cosine", n_kv=2, beta=0.5, alpha=1.0, **kw):
    torch.manual_seed(5)
    m = PhaseCoherentAttention(3 * H, H, n_heads_q=4, n_heads_kv=n_kv, phase_coherence_mode=mode, **kw)
    with torch.no_grad():
        m.alpha.fill_(alpha)
        m.beta.fill_(beta)
    return m.eval()


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("use_yarn", [True, False])
def test_pcca_with_beta_zero_equals_float64_standard_attention(n_kv, use_yarn):
    m = _pcca(n_kv=n_kv, beta=0.0, use_yarn=use_yarn)
    x = _wave(s=11)
    causal = reference_bias("none", [1.0], 11, 11)
    want = _reference_pcca(m, x, causal, with_coherence=False)
    assert (m(x).double() - want).abs().max() < 1e-5
    # and the same in float64, tightly, with the WCMHA decay added
    md = _pcca(n_kv=n_kv, beta=0.0, use_yarn=use_yarn, decay="powerlaw", decay_alpha=0.7).double()
    alpha = float(md.decay.alpha)  # 0.7 as stored (float32, then float64)
    want = _reference_pcca(md, x, reference_bias("powerlaw", [alpha], 11, 11), with_coherence=False)
    assert (md(x.double()) - want).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["cosine", "complex"])
def test_pcca_coherence_modes_match_the_definitions(mode):
    m = _pcca(mode, beta=0.8, alpha=1.3, phase_temp=0.5).double()
    x = _wave(s=10, dtype=torch.float64)
    want = _reference_pcca(m, x, reference_bias("none", [1.0], 10, 10))
    got = m(x)
    assert (got - want).abs().max() < 1e-9
    c = _coherence64(x, mode)
    assert c.min() >= -1 - 1e-12 and c.max() <= 1 + 1e-12
    m0 = _pcca(mode, beta=0.0, alpha=1.3).double()
    assert (got - m0(x)).abs().max() > 1e-3  # the coherence term changes the output
    w = m.attention_weights(x)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1))) and (w.triu(1) == 0).all()


def test_pcca_blend_parameters_get_gradients():
    m = _pcca("complex", beta=0.3).train()
    m(_wave()).pow(2).sum().backward()
    assert m.alpha.grad.abs() > 0 and m.beta.grad.abs() > 0
    fixed = PhaseCoherentAttention(3 * H, H, 4, learnable_blend=False)
    assert "alpha" in dict(fixed.named_buffers()) and "alpha" not in dict(fixed.named_parameters())


@pytest.mark.parametrize("mode", ["cosine", "complex"])
@pytest.mark.parametrize("n_kv,max_context", [(4, None), (2, None), (1, 5), (2, 7)])
def test_pcca_cached_decoding_equals_full_forward(mode, n_kv, max_context):
    m = _pcca(mode, n_kv=n_kv, beta=0.7, max_context=max_context)
    x = _wave(s=20, seed=7)
    with torch.no_grad():
        full, present = m(x, use_cache=True)
        past, steps = None, []
        for t in range(20):
            y, past = m(x[:, t : t + 1], past=past, use_cache=True)
            steps.append(y)
        assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
        past, chunks, t = None, [], 0
        for size in (3, 1, 9, 7):
            y, past = m(x[:, t : t + size], past=past, use_cache=True)
            chunks.append(y)
            t += size
        assert (torch.cat(chunks, 1) - full).abs().max() < 1e-5
    kept = 20 if max_context is None else max_context
    assert past[0].shape == (2, n_kv, kept, m.head_dim) and past[2].shape == (2, kept, 2 * H)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(past, present))


@pytest.mark.parametrize("decay,max_context", [("none", None), ("powerlaw", 6), ("butterworth", None)])
def test_rotary_attention_cached_decoding_equals_full_forward(decay, max_context):
    torch.manual_seed(13)
    m = RotaryAttention(32, 4, n_kv_heads=2, decay=decay, alpha=8.0 if decay == "butterworth" else 1.0,
                        max_context=max_context, block_size=4).eval()
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        full = m(x)
        past, steps = None, []
        for t in range(17):
            y, past = m(x[:, t : t + 1], past=past, use_cache=True)
            steps.append(y)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    assert past[0].shape[2] == (17 if m.window is None else min(17, m.window))


def test_pcca_with_all_kv_heads_equals_torch_multihead_attention():
    m = _pcca(n_kv=4, beta=0.0, use_yarn=False)
    mha = torch.nn.MultiheadAttention(3 * H, 4, bias=False, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([m.q_proj.weight, m.k_proj.weight, m.v_proj.weight]))
        mha.out_proj.weight.copy_(m.out_proj.weight)
    x = _wave(b=3, s=13)
    causal = torch.triu(torch.ones(13, 13, dtype=torch.bool), 1)
    want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    assert (m(x) - want).abs().max() < 1e-5


@pytest.mark.parametrize("cls", ["pcca", "rotary"])
def test_padding_mask_equals_running_the_unpadded_sequence(cls):
    torch.manual_seed(8)
    m = _pcca(beta=0.6) if cls == "pcca" else RotaryAttention(3 * H, 4, n_kv_heads=2).eval()
    x = _wave(b=2, s=10, seed=9)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0  # second sequence is 6 long, right-padded
    y = m(x, True, mask)
    assert (y[1, :6] - m(x[1:, :6])[0]).abs().max() < 1e-5
    assert (y[0] - m(x[:1])[0]).abs().max() < 1e-5
    # non-causal: padded keys are not attended either
    y = m(x, False, mask)
    assert (y[1, :6] - m(x[1:, :6], causal=False)[0]).abs().max() < 1e-5


def test_rotary_attention_fast_path_equals_dense_path_and_reference():
    torch.manual_seed(10)
    m = RotaryAttention(32, 4, n_kv_heads=2, decay="powerlaw", alpha=0.9, block_size=8).double().eval()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    fast = m(x)  # blockwise decayed_attention
    dense = m(x, True, torch.ones(2, 21))  # explicit mask path
    assert (fast - dense).abs().max() < 1e-12
    b, l = 2, 21
    q = (x @ m.q_proj.weight.T).view(b, l, 4, 8).transpose(1, 2)
    k = (x @ m.k_proj.weight.T).view(b, l, 2, 8).transpose(1, 2)
    v = (x @ m.v_proj.weight.T).view(b, l, 2, 8).transpose(1, 2)
    pos = torch.arange(l)
    q, k = _rope64(q, pos), _rope64(k, pos)
    y = reference_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                            reference_bias("powerlaw", [float(m.decay.alpha)], l, l))
    want = y.transpose(1, 2).reshape(b, l, 32) @ m.out_proj.weight.T
    assert (fast - want).abs().max() < 1e-10


# ---------------------------------------------------------------------------------------------------------------
# MRWP
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,bounds", [(12, (0.2, 0.6)), (64, (0.2, 0.6)), (64, (0.25, 0.5, 0.75)), (7, (0.5,)),
                                      (5, ())])
def test_mrwp_bands_partition_the_harmonics(h, bounds):
    p = MultiResolutionWavePyramid(h, band_boundaries=bounds, band_num_layers=[0] * (len(bounds) + 1), n_heads_q=2)
    covered = [i for lo, hi in p.band_ranges for i in range(lo, hi)]
    assert covered == list(range(h))  # every harmonic exactly once, in order: no overlap, no gap
    assert all(hi > lo for lo, hi in p.band_ranges)
    x = _wave(h=h)
    bands = p.split(x)
    for band, (lo, hi) in zip(bands, p.band_ranges):
        assert torch.equal(band.reshape(2, 9, 3, hi - lo), x.reshape(2, 9, 3, h)[..., lo:hi])
    assert torch.equal(p.merge(bands), x)


def _pyramid(cross=True, **kw):
    torch.manual_seed(11)
    args = dict(band_boundaries=(0.25, 0.6), band_num_layers=[2, 1, 0], n_heads_q=4, n_heads_kv=2,
                use_cross_band_attn=cross)
    args.update(kw)
    return MultiResolutionWavePyramid(H, **args).eval()


def test_mrwp_keeps_the_shape_and_all_parameters_get_gradients():
    p = _pyramid().train()
    assert [len(proc.blocks) for proc in p.processors] == [2, 1, 0]
    assert all(d % 8 == 0 and d >= 3 * (hi - lo) for d, (lo, hi) in zip(p.band_dims, p.band_ranges))
    x = _wave(s=8).requires_grad_(True)
    y = p(x)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    for name, param in p.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_mrwp_bands_are_processed_separately_without_cross_band_attention():
    x = _wave(s=8)
    for cross, separate in ((False, True), (True, False)):
        p = _pyramid(cross=cross)
        y = p(x)
        lo, hi = p.band_ranges[1]
        x2 = _per_harmonic(x).clone()
        x2[..., lo:hi] += 1.0  # perturb the middle band only
        y2 = p(x2.reshape(x.shape))
        changed = (_per_harmonic(y2) - _per_harmonic(y)).abs().amax(dim=(0, 1, 2)) > 1e-6  # per harmonic
        assert changed[lo:hi].all()
        assert (not changed[:lo].any() and not changed[hi:].any()) == separate


def test_mrwp_is_causal_and_honours_the_padding_mask():
    p = _pyramid()
    x = _wave(s=10)
    x2 = x.clone()
    x2[:, 6:] = _wave(s=10, seed=5)[:, 6:]
    assert (p(x)[:, :6] - p(x2)[:, :6]).abs().max() < 1e-6
    assert (p(x, causal=False)[:, :6] - p(x2, causal=False)[:, :6]).abs().max() > 1e-4
    mask = torch.ones(2, 10)
    mask[:, 6:] = 0
    assert (p(x, False, mask)[:, :6] - p(x2, False, mask)[:, :6]).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# export: torch.jit.trace and ONNX (legacy exporter) run at other shapes
# ---------------------------------------------------------------------------------------------------------------

class _PccaWithCache(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, past_key, past_value, past_wave):
        y, (k, v, w) = self.m(x, past=(past_key, past_value, past_wave), use_cache=True)
        return y, k, v, w


def _pcca_inputs(m, b, t, p, seed):
    g = torch.Generator().manual_seed(seed)
    x = _wave(b, t + p, seed=seed)
    return (x[:, p:], torch.randn(b, m.n_kv_heads, p, m.head_dim, generator=g),
            torch.randn(b, m.n_kv_heads, p, m.head_dim, generator=g), x[:, :p, H:].contiguous())


SHAPES = [(3, 4, 11), (1, 1, 0), (2, 9, 1)]


def _onnx_check(tmp_path, module, example, names, outs, axes, others):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=names,
                      output_names=outs, dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    traced = torch.jit.trace(module, example, check_trace=False)
    for args in others:
        with torch.no_grad():
            want = module(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = sess.run(None, dict(zip(names, (a.numpy() for a in args))))
        from_trace = traced(*args)
        from_trace = from_trace if isinstance(from_trace, tuple) else (from_trace,)
        for g, tr, e in zip(got, from_trace, want):
            assert g.shape == tuple(e.shape) and tr.shape == e.shape
            assert np.abs(g - e.numpy()).max() <= 1e-4 and (tr - e).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["cosine", "complex"])
def test_pcca_exports_with_cache(tmp_path, mode):
    m = _pcca(mode, n_kv=2, beta=0.6, decay="powerlaw", decay_alpha=0.5)
    w = _PccaWithCache(m).eval()
    names = ["x", "past_key", "past_value", "past_wave"]
    outs = ["y", "present_key", "present_value", "present_wave"]
    axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}, "past_wave": {0: "batch", 1: "past"},
            "present_wave": {0: "batch", 1: "present"}}
    axes.update({n: {0: "batch", 2: "past"} for n in names[1:3]})
    axes.update({n: {0: "batch", 2: "present"} for n in outs[1:3]})
    others = [_pcca_inputs(m, b, t, p, 100 * b + t) for b, t, p in SHAPES]
    _onnx_check(tmp_path, w, _pcca_inputs(m, 2, 5, 3, 0), names, outs, axes, others)


def test_mrwp_exports(tmp_path):
    p = _pyramid()
    axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    _onnx_check(tmp_path, p, (_wave(2, 7),), ["x"], ["y"], axes, [(_wave(3, 12, seed=1),), (_wave(1, 1, seed=2),)])


def test_ahs_and_frequency_mask_export_in_eval(tmp_path):
    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mask = FrequencyMask(H, 5.0)
            self.sel = AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.5, use_dynamic_k=True)

        def forward(self, x, limit):
            return self.sel(self.mask(x, limit))

    torch.manual_seed(12)
    m = Both().eval()
    with torch.no_grad():
        m.sel.k_head.weight.normal_()
        m.sel.score_head.weight.normal_()
    axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    _onnx_check(tmp_path, m, (_wave(2, 7), torch.tensor(0.6)), ["x", "limit"], ["y"], axes,
                [(_wave(3, 11, seed=1), torch.tensor(0.3)), (_wave(1, 1, seed=2), torch.tensor(1.0))])


# ---------------------------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,name", [
    (lambda: AdaptiveHarmonicSelector(H, 3 * H + 1), "d_model"),
    (lambda: AdaptiveHarmonicSelector(H, 3 * H, k_ratio=0.0), "k_ratio"),
    (lambda: AdaptiveHarmonicSelector(H, 3 * H, k_ratio=1.5), "k_ratio"),
    (lambda: AdaptiveHarmonicSelector(H, 3 * H, temperature=0.0), "temperature"),
    (lambda: AdaptiveHarmonicSelector(H, 3 * H, min_k=H + 1), "min_k"),
    (lambda: AdaptiveHarmonicSelector(0, 0), "num_harmonics"),
    (lambda: AdaptiveHarmonicSelector(H, 3 * H, context_size=0), "context_size"),
    (lambda: HarmonicSparsificationLoss(target_sparsity=1.0), "target_sparsity"),
    (lambda: HarmonicSparsificationLoss(smoothness_weight=-1), "smoothness_weight"),
    (lambda: FrequencyMask(H, mask_slope=0.0), "mask_slope"),
    (lambda: FrequencyMask(0), "num_harmonics"),
    (lambda: FrequencyCurriculumScheduler(100, warmup_steps=100), "total_steps"),
    (lambda: FrequencyCurriculumScheduler(100, start_freq_limit=0.0), "start_freq_limit"),
    (lambda: FrequencyCurriculumScheduler(100, start_freq_limit=0.5, end_freq_limit=0.4), "end_freq_limit"),
    (lambda: FrequencyCurriculumScheduler(100, curriculum_mode="step"), "curriculum_mode"),
    (lambda: FrequencyCurriculumScheduler(100, patience=-1), "patience"),
    (lambda: FrequencyCurriculumScheduler(100, slowdown=1.0), "slowdown"),
    (lambda: PhaseCoherentAttention(3 * H + 3, H, 4), "d_model"),
    (lambda: PhaseCoherentAttention(3 * H, H, 4, 3), "n_kv_heads"),
    (lambda: PhaseCoherentAttention(3 * H, H, 5), "d_model"),
    (lambda: PhaseCoherentAttention(3 * H, H, 4, phase_coherence_mode="sine"), "phase_coherence_mode"),
    (lambda: PhaseCoherentAttention(3 * H, H, 4, phase_temp=0), "phase_temp"),
    (lambda: PhaseCoherentAttention(3 * H, H, 4, decay="expo"), "decay"),
    (lambda: PhaseCoherentAttention(3 * H, H, 16), "head_dim"),
    (lambda: MultiResolutionWavePyramid(H, band_boundaries=(0.6, 0.2)), "band_boundaries"),
    (lambda: MultiResolutionWavePyramid(H, band_boundaries=(0.01, 0.5)), "band_boundaries"),
    (lambda: MultiResolutionWavePyramid(H, band_boundaries=(0.5, 1.0)), "band_boundaries"),
    (lambda: MultiResolutionWavePyramid(H, band_num_layers=[1, 1]), "band_num_layers"),
    (lambda: MultiResolutionWavePyramid(H, band_num_layers=[1, -1, 1]), "band_num_layers"),
    (lambda: MultiResolutionWavePyramid(H, n_heads_q=4, n_heads_kv=3), "n_heads_kv"),
    (lambda: MultiResolutionWavePyramid(H, dropout=1.0), "dropout"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_wrong_input_width_is_named():
    with pytest.raises(ValueError, match="num_harmonics"):
        FrequencyMask(H)(torch.randn(1, 2, 3 * H + 1), 0.5)
    with pytest.raises(ValueError, match="d_model"):
        AdaptiveHarmonicSelector(H, 3 * H)(torch.randn(1, 2, 3 * H + 3))
    with pytest.raises(ValueError, match="num_harmonics"):
        MultiResolutionWavePyramid(H, n_heads_q=2)(torch.randn(1, 2, 3 * H + 3))


def test_templates_import_only_torch_the_standard_library_and_sibling_templates():
    import ast
    import pathlib

    import tsattn.modules

    root = pathlib.Path(tsattn.modules.__file__).parent
    lazy = {"matplotlib"}  # allowed inside a function only (FrequencyCurriculumScheduler.plot_schedule)
    for name in ("wave_ahs", "wave_fcl", "wave_pcca", "wave_mrwp"):
        tree = ast.parse((root / f"{name}.py").read_text())
        in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: a sibling template
                    assert (root / f"{node.module}.py").exists(), (name, node.module)
                    continue
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                allowed = top == "torch" or top in sys.stdlib_module_names or (top in lazy and id(node) in in_functions)
                assert allowed, (name, top)
