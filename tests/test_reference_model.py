"""The reference streaming forecaster: cached steps equal one full forward, the sliding window, normalisation."""

from __future__ import annotations

import pytest
import torch

from tsattn.models.reference import ReferenceConfig, ReferenceForecaster, build_reference, save_checkpoint

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, horizon=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stream(m: ReferenceForecaster, x: torch.Tensor, lengths):
    """Feed x (B, L) in chunks of ``lengths`` through the cache; returns (forecasts (B, L, H), final caches)."""
    past, outs, start = m.empty_cache(x.shape[0]), [], 0
    for n in lengths:
        f, past = m.step(x[:, start : start + n], past)
        outs.append(f)
        start += n
    assert start == x.shape[1]
    return torch.cat(outs, 1), past


@pytest.mark.parametrize("max_context", [None, 12])
@pytest.mark.parametrize("decay", ["powerlaw", "butterworth", "none"])
def test_cached_steps_equal_one_full_forward(max_context, decay):
    cfg = ReferenceConfig(**SMALL, max_context=max_context, decay=decay, alpha=8.0 if decay == "butterworth" else 1.0)
    m = build_reference(cfg, seed=1)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 2 + 1
    with torch.no_grad():
        full, present = m(x)
        stepped, past = _stream(m, x, [7] + [1] * 20 + [3, 1, 1, 1, 4, 1, 1, 1])
    assert (stepped - full).abs().max() <= 1e-5
    for (k1, v1), (k2, v2) in zip(present, past):
        window = m.blocks[0].attn.window  # max_context, or the decay's own reach (butterworth: about alpha * 1.57)
        assert k1.shape == k2.shape == (3, 2, 40 if window is None else window, 8)
        assert (k1 - k2).abs().max() <= 1e-5 and (v1 - v2).abs().max() <= 1e-5


def test_sliding_window_receptive_field_is_layers_times_max_context():
    # No absolute positions: with max_context W and n_layers stacked windows, the forecast at t is a function of
    # x[t - n_layers * W .. t] alone, so it equals a fresh forward over just that slice (a check of the window that
    # does not use the cache), and it changes when a value inside that range changes, not outside it.
    w, layers = 6, SMALL["n_layers"]
    reach = layers * w
    m = build_reference(ReferenceConfig(**SMALL, max_context=w), seed=2)
    x = torch.randn(2, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = m(x)
        for t in (reach, reach + 1, 25, 39):
            alone, _ = m(x[:, t - reach : t + 1])
            assert (alone[:, -1] - full[:, t]).abs().max() <= 1e-5
        for where, changes in ((39 - reach, True), (39 - reach - 1, False)):
            y = x.clone()
            y[:, where] += 1.0
            diff = (m(y)[0][:, 39] - full[:, 39]).abs().max()
            assert (diff > 1e-4) if changes else (diff == 0)


def test_fixed_normalisation_is_applied_inside_the_graph():
    base = build_reference(ReferenceConfig(**SMALL), seed=3)
    scaled = ReferenceForecaster(ReferenceConfig(**SMALL, loc=100.0, scale=20.0)).eval()
    state = {k: v for k, v in base.state_dict().items() if k not in ("loc", "scale")}
    scaled.load_state_dict(state, strict=False)
    z = torch.randn(2, 15)
    with torch.no_grad():
        want = base(z)[0] * 20.0 + 100.0
        got = scaled(z * 20.0 + 100.0)[0]
    assert (got - want).abs().max() <= 1e-3  # raw units of size ~100: fp32 relative error ~1e-6


def test_channels_fold_into_the_batch():
    m = build_reference(ReferenceConfig(**SMALL), seed=4)
    x = torch.randn(2, 20, 3)
    got = m.forecast_channels(x)  # (B, horizon, C)
    assert got.shape == (2, 5, 3)
    with torch.no_grad():
        for c in range(3):
            assert (got[:, :, c] - m(x[:, :, c])[0][:, -1]).abs().max() <= 1e-6


@pytest.mark.parametrize("kwargs,name", [
    ({"d_model": 0}, "d_model"), ({"n_layers": 0}, "n_layers"), ({"horizon": -1}, "horizon"),
    ({"max_context": 0}, "max_context"), ({"scale": 0.0}, "scale"), ({"loc": float("nan")}, "loc"),
    ({"n_kv_heads": 3}, "n_kv_heads"), ({"d_model": 30}, "d_model"), ({"decay": "expo"}, "decay"),
])
def test_bad_config_raises_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ReferenceForecaster(ReferenceConfig(**{**SMALL, **kwargs}))


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="colour"):
        ReferenceConfig.from_dict({"colour": 1})


def test_step_needs_a_cache_and_past_needs_every_layer():
    m = build_reference(ReferenceConfig(**SMALL), seed=0)
    with pytest.raises(ValueError, match="past"):
        m.step(torch.randn(1, 1), None)
    with pytest.raises(ValueError, match="2 .key, value. pairs"):
        m(torch.randn(1, 1), m.empty_cache(1)[:1])


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    m = build_reference(ReferenceConfig(**SMALL, loc=1.5), seed=5)
    save_checkpoint(m, tmp_path / "ref.pt")
    blob = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert blob["config"]["loc"] == 1.5 and blob["model"] == "reference"
    again = ReferenceForecaster(ReferenceConfig.from_dict(blob["config"])).eval()
    again.load_state_dict(blob["state_dict"])
    x = torch.randn(2, 10)
    with torch.no_grad():
        assert torch.equal(again(x)[0], m(x)[0])
