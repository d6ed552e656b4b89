"""The efficient attentions' KV cache: step-by-step decoding equals one forward, for every type, in 3D and 4D, with
Hephaestus' extra mask; its errors; and checkpoints without a decay loading into a type that has one."""

from __future__ import annotations

import pytest
import torch

from tsattn.modules import make_attention

D_MODEL, HEADS, BATCH, COLUMNS = 16, 2, 2, 3
HEAD_DIM = D_MODEL // HEADS

CONFIGS = [
    ("standard", {}),
    ("flash", {}),
    ("featurewise", {}),
    ("featurewise", {"share_weights": False, "n_columns": COLUMNS}),
    ("local", {"window_size": 4, "block_size": 3}),
    ("local", {"window_size": 5, "decay": "powerlaw", "alpha": 0.8, "per_head_alpha": True}),
    ("sparse", {"stride": 3, "local_window": 2, "block_size": 4}),
    ("chunked", {"chunk_size": 4, "overlap": 2}),
    ("chunked", {"chunk_size": 3, "overlap": 0, "decay": "butterworth", "alpha": 6.0}),
    ("wcmha", {"alpha": 0.7, "block_size": 4}),
    ("wcmha", {"decay": "step", "alpha": 3.0}),
]
IDS = [t + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "") for t, kw in CONFIGS]
STEPS = (5, 1, 1, 3, 1, 2)  # a prefill, single steps and chunks: 13 positions, past the windows and chunks


def _module(attention_type, kwargs, seed=0):
    torch.manual_seed(seed)
    return make_attention(attention_type, D_MODEL, HEADS, **kwargs).double().eval()


def _empty_past(columns):
    shape = (BATCH, HEADS * columns, 0, HEAD_DIM)
    return torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)


def _stepwise(m, q, k, v, mask=None):
    """Outputs of decoding ``STEPS`` positions at a time with the cache, concatenated, and the final cache."""
    columns = 1 if q.dim() == 3 else q.shape[1]
    past, outs, start = _empty_past(columns), [], 0
    for n in STEPS:
        sl = (slice(None),) * (q.dim() - 2) + (slice(start, start + n),)
        step_mask = None if mask is None else mask[..., start:start + n, :start + n]
        out, past = m(q[sl], k[sl], v[sl], mask=step_mask, past=past)
        outs.append(out)
        start += n
    return torch.cat(outs, dim=q.dim() - 2), past


# per-column weights need the 4D layout (a 3D input is one column)
LAYOUTS = [(layout, t, kw) for layout in ("4d", "3d") for t, kw in CONFIGS
           if not (layout == "3d" and kw.get("share_weights") is False)]


@pytest.mark.parametrize("layout, attention_type, kwargs", LAYOUTS,
                         ids=[f"{layout}-{i}" for layout in ("4d", "3d") for (t, kw), i in zip(CONFIGS, IDS)
                              if not (layout == "3d" and kw.get("share_weights") is False)])
def test_cached_steps_equal_one_forward(attention_type, kwargs, layout):
    m = _module(attention_type, kwargs)
    total = sum(STEPS)
    shape = (BATCH, COLUMNS, total, D_MODEL) if layout == "4d" else (BATCH, total, D_MODEL)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        full, _ = m(q, k, v)
        got, (key, value) = _stepwise(m, q, k, v)
        # the cache holds every position's projected key and value, one kv head per (head, column), h * C + c
        x = k if layout == "4d" else k.unsqueeze(1)
        proj = m.k_proj if not isinstance(m.k_proj, torch.nn.ModuleList) else None
        columns = x.shape[1]
        if proj is not None:
            want = proj(x).view(BATCH, columns, total, HEADS, HEAD_DIM).permute(0, 3, 1, 2, 4)
            assert torch.allclose(key, want.reshape(BATCH, HEADS * columns, total, HEAD_DIM), atol=1e-12)
    assert key.shape == value.shape == (BATCH, HEADS * (COLUMNS if layout == "4d" else 1), total, HEAD_DIM)
    assert (got - full).abs().max() <= 1e-10


@pytest.mark.parametrize("attention_type, kwargs", [CONFIGS[0], CONFIGS[4], CONFIGS[6], CONFIGS[9]],
                         ids=[IDS[0], IDS[4], IDS[6], IDS[9]])
def test_cached_steps_with_hephaestus_mask(attention_type, kwargs):
    """Hephaestus' mask: causal | padded keys (B, L, L); each step gets its rows over every key so far."""
    m = _module(attention_type, kwargs)
    total = sum(STEPS)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(BATCH, COLUMNS, total, D_MODEL, generator=g, dtype=torch.float64) for _ in range(3))
    pad = torch.zeros(BATCH, total, dtype=torch.bool)
    pad[0, [2, 7]] = True  # keys 2 and 7 of the first series are padding (never the first key of a row)
    mask = torch.triu(torch.ones(total, total, dtype=torch.bool), 1)[None] | pad[:, None, :]
    with torch.no_grad():
        full, _ = m(q, k, v, mask=mask)
        got, _ = _stepwise(m, q, k, v, mask=mask)
        plain, _ = m(q, k, v)
    assert (got - full).abs().max() <= 1e-10
    assert (full - plain).abs().max() > 1e-3  # the padding mattered


def test_cache_errors_name_the_problem():
    m = _module("local", {"window_size": 4})
    x = torch.randn(BATCH, COLUMNS, 3, D_MODEL, dtype=torch.float64)
    key, value = _empty_past(COLUMNS)
    with pytest.raises(ValueError, match=r"past key must be \(batch, n_heads \* n_columns, past, head_dim\)"):
        m(x, x, x, past=(key[:, :HEADS], value[:, :HEADS]))
    with pytest.raises(ValueError, match="past value"):
        m(x, x, x, past=(key, value.float()))
    with pytest.raises(ValueError, match=r"mask must end in \(queries, keys\) = \(3, 3\)"):
        m(x, x, x, mask=torch.zeros(3, 4, dtype=torch.bool), past=(key, value))
    torch.manual_seed(0)
    bidirectional = make_attention("standard", D_MODEL, HEADS, causal=False).double()
    with pytest.raises(ValueError, match="needs causal attention"):
        bidirectional(x, x, x, past=(key, value))


def test_a_checkpoint_without_decay_loads_and_keeps_the_configured_decay():
    standard = _module("standard", {})
    for attention_type, kwargs in (("wcmha", {"alpha": 0.7}), ("local", {"window_size": 4, "decay": "powerlaw",
                                                                        "alpha": 1.5, "per_head_alpha": True})):
        m = _module(attention_type, kwargs, seed=5)
        alpha = m.decay.alpha.clone()
        m.load_state_dict(standard.state_dict())  # strict
        assert torch.equal(m.decay.alpha, alpha)
        assert torch.equal(m.q_proj.weight, standard.q_proj.weight)
        saved = {k: v * 0 + 2.0 if k == "decay.alpha" else v for k, v in m.state_dict().items()}
        m.load_state_dict(saved)  # a checkpoint with the decay sets it
        assert bool((m.decay.alpha == 2.0).all())
