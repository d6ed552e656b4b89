"""PowerformerDecay (tsattn/modules/powerformer_decay.py) against a reference written from the definitions.

The reference is pure Python (math, cmath, bisect), one entry at a time: the Butterworth gain is the analog
prototype's transfer function evaluated at the bilinear transform's image of e^{jw} (not the closed form the
template uses), interpolated with bisect; powerlaw is written as -|s| * log(dt + 1) (the template uses the
authors' log((dt+1) ** -|s|)). The authors' own module was compared by hand (see the PatchTST recipe notes).
"""

from __future__ import annotations

import bisect
import cmath
import math

import pytest
import torch

from tsattn.modules import powerformer_decay as pd
from tsattn.modules.powerformer_decay import DECAY_TYPES, PowerformerDecay, decay_mask, normalize_decay_type

NEG = -math.inf


def _butter_gain_db5(w: float, order: int) -> float:
    """5 * ln|H(e^{jw})| of the order-N digital Butterworth low-pass with cutoff 0.8 * Nyquist (fs = 2)."""
    wc = 4 * math.tan(math.pi * 0.8 / 2)  # pre-warped analog cutoff, 2 fs tan(pi Wn / fs)
    z = cmath.exp(1j * w)
    s = 4 * (z - 1) / (z + 1)  # bilinear transform, 2 fs (z - 1) / (z + 1)
    h = 1 + 0j
    for k in range(1, order + 1):
        pole = wc * cmath.exp(1j * math.pi * (2 * k + order - 1) / (2 * order))
        h *= -pole / (s - pole)  # unit DC gain per pole
    return 5 * math.log(abs(h))


def _butter_line(order: int, scale: float, n: int):
    t = [scale * (math.pi * k / 512) / 2 for k in range(512)]
    g = [_butter_gain_db5(math.pi * k / 512, order) for k in range(512)]
    out = []
    for d in range(n):
        if d > t[-1]:
            out.append(NEG)
            continue
        hi = min(max(bisect.bisect_left(t, d), 1), 511)
        lo = hi - 1
        out.append(g[lo] + (g[hi] - g[lo]) * (d - t[lo]) / (t[hi] - t[lo]))
    return out


def reference(kind: str, scale: float, lq: int, lk: int):
    kind = kind.lower()
    line = _butter_line(int(kind[6:]), scale, max(lq, lk)) if kind.startswith("butter") else None
    rows = []
    for i in range(lq):
        row = []
        for j in range(lk):
            dt = i - j
            if kind == "none":
                row.append(0.0)
            elif dt < 0:
                row.append(NEG)
            elif kind == "causal":
                row.append(0.0)
            elif kind == "step":
                row.append(0.0 if dt <= math.floor(scale) else NEG)
            elif kind == "powerlaw":
                row.append(-abs(scale) * math.log(dt + 1))
            elif kind == "simpowerlaw":
                row.append(-(float(dt) ** scale))
            else:
                row.append(line[dt])
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def assert_mask_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    got = got.double()
    assert got.shape == want.shape
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "the masked (-inf) entries differ"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=atol, rtol=rtol)


CASES = [("causal", 0.0), ("step", 1.0), ("step", 3.9), ("step", 30), ("butter1", 0.7), ("butter1", 5.0),
         ("butter1", 25.0), ("butter2", 2.0), ("butter2", 13.3), ("butter2", 80.0), ("powerlaw", 0.0),
         ("powerLaw", 0.5), ("powerlaw", -1.5), ("simpowerlaw", 0.0), ("SimPowerLaw", 0.5), ("simpowerlaw", 2.0)]


@pytest.mark.parametrize("kind,scale", CASES)
@pytest.mark.parametrize("lq,lk", [(1, 1), (5, 5), (42, 42), (6, 9), (9, 4)])
def test_mask_matches_reference(kind, scale, lq, lk):
    want = reference(kind, scale, lq, lk)
    module = PowerformerDecay(kind, scale)
    assert_mask_close(module(lq, lk, "cpu", torch.float64), want, atol=1e-12, rtol=1e-12)
    got32 = module(lq, lk, "cpu", torch.float32)
    assert got32.dtype == torch.float32
    assert_mask_close(got32, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["butter1", "butter2"])
@pytest.mark.parametrize("scale", [1.0, 9.5, 40.0])
def test_butterworth_matches_scipy(kind, scale):
    signal = pytest.importorskip("scipy.signal")
    np = pytest.importorskip("numpy")
    b, a = signal.butter(int(kind[6:]), 0.8, "lowpass", analog=False)
    w, h = signal.freqz(b, a)
    t, g = scale * w / 2, 5 * np.log(np.abs(h))
    n = 70
    line = [float(np.interp(d, t, g)) if d <= t[-1] else NEG for d in range(n)]
    got = PowerformerDecay(kind, scale)(n, n, dtype=torch.float64)[n - 1].flip(0)  # last row: dt = 0 .. n-1
    assert_mask_close(got, torch.tensor(line, dtype=torch.float64), atol=1e-9)


def test_none_is_no_mask_and_no_state():
    module = PowerformerDecay("none", 3.0)
    assert not module.is_active and module(4, 4) is None
    assert decay_mask(None, 0.0, 3, 3) is None
    for kind, scale in CASES:
        assert PowerformerDecay(kind, scale).state_dict() == {}  # unpatched checkpoints load strictly
    assert PowerformerDecay("causal").is_active


def test_names():
    assert normalize_decay_type("powerLaw") == "powerlaw"
    assert normalize_decay_type(None) == "none"
    assert normalize_decay_type(" Butter2 ") == "butter2"
    for bad in ("butterworth", "butter3", "", 3):
        with pytest.raises(ValueError, match="attn_decay_type") as err:
            normalize_decay_type(bad)
        assert all(name in str(err.value) for name in DECAY_TYPES)


@pytest.mark.parametrize("kwargs,match", [
    (dict(attn_decay_type="step", attn_decay_scale=0.9), "step width"),
    (dict(attn_decay_type="butter1", attn_decay_scale=0.0), "time scale"),
    (dict(attn_decay_type="butter2", attn_decay_scale=-1.0), "time scale"),
    (dict(attn_decay_type="simpowerlaw", attn_decay_scale=-0.5), ">= 0"),
    (dict(attn_decay_type="powerlaw", attn_decay_scale=float("nan")), "finite"),
    (dict(attn_decay_type="powerlaw", attn_decay_scale="x"), "a number"),
    (dict(attn_decay_type="causal", train_attn_decay=True), "train_attn_decay"),
    (dict(attn_decay_type="butter1", attn_decay_scale=2.0, train_attn_decay=True), "train_attn_decay"),
    (dict(attn_decay_type="nope"), "attn_decay_type"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerformerDecay(**kwargs)


def test_fixed_mask_is_cached_per_shape_device_dtype(monkeypatch):
    module = PowerformerDecay("butter2", 6.0)
    built = []
    real = pd._butterworth
    monkeypatch.setattr(pd, "_butterworth", lambda *a: built.append(1) or real(*a))
    for training in (True, False):
        module.train(training)
        first = module(12, 12, "cpu", torch.float32)
        assert module(12, 12, "cpu", torch.float32) is first
    assert len(built) == 1
    assert module(12, 12, "cpu", torch.float64).dtype == torch.float64
    assert module(13, 13, "cpu", torch.float32).shape == (13, 13)
    assert len(built) == 3


@pytest.mark.parametrize("kind,scale", [("powerlaw", 0.5), ("powerlaw", -0.8), ("simpowerlaw", 0.7)])
def test_trainable_scale(kind, scale):
    module = PowerformerDecay(kind, scale, train_attn_decay=True)
    assert list(dict(module.named_parameters())) == ["scale"]
    start = -abs(scale) if kind == "powerlaw" else scale
    assert module.scale.item() == pytest.approx(start)
    n = 9
    mask = module(n, n)
    assert mask.requires_grad and module(n, n) is not mask  # rebuilt while gradients are recorded
    finite = torch.isfinite(mask)
    mask[finite].sum().backward()
    dts = [i - j for i in range(n) for j in range(n) if i >= j]
    if kind == "powerlaw":  # d/ds log((dt+1)^s) = log(dt+1); s is the exponent itself
        want = sum(math.log(d + 1) for d in dts)
    else:  # d/ds -(dt^s) = -dt^s log dt
        want = sum(-(d ** start) * math.log(d) for d in dts if d > 0)
    assert module.scale.grad.item() == pytest.approx(want, rel=1e-5)
    # without gradients the mask is cached, and refreshed when the scale changes (an optimizer step)
    with torch.no_grad():
        cached = module(n, n)
        assert module(n, n) is cached and not cached.requires_grad
        module.scale.add_(-0.25)
        moved = module(n, n)
    assert moved is not cached
    assert_mask_close(moved, reference(kind, -start + 0.25 if kind == "powerlaw" else start - 0.25, n, n), atol=1e-6)
    # a loaded scale is used
    module.load_state_dict({"scale": torch.tensor(start)})
    with torch.no_grad():
        assert_mask_close(module(n, n), reference(kind, abs(start) if kind == "powerlaw" else start, n, n), atol=1e-6)


def test_device_and_module_cast():
    module = PowerformerDecay("powerlaw", 0.5, train_attn_decay=True).double()
    with torch.no_grad():
        assert module(4, 4, torch.device("cpu"), torch.float64).dtype == torch.float64
        assert module(4, 4, None, torch.float32).dtype == torch.float32
