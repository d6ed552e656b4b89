"""Metrics of attention maps: pure functions of row-stochastic weight matrices.

Every function takes weights ``w`` of shape ``(..., Lq, Lk)`` (a numpy array or a torch tensor; computed in
float64), whose rows are softmax distributions over keys, and ``causal``: whether key ``j`` is visible to query
``i`` only when ``dt = (i + Lk - Lq) - j >= 0`` (the queries are the last Lq of the Lk positions, as in
``GroupedQueryAttention.attention_weights``). The visible keys of row ``i`` are its *support*, of size ``n_i``.
Rows with ``n_i = 1`` carry no choice (their weight is forced to 1) and are left out of every mean. Scalar
metrics are means over the remaining rows and over the leading dimensions (samples); map-level metrics
(``vertical_strength``, ``horizontal_strength``) are computed per map and averaged over maps.

Definitions (natural logarithms; ``0 log 0 = 0``):

    entropy              H_i = -sum_j w_ij log w_ij; mean over rows. Uniform over the support: log n_i (max).
    entropy_normalised   H_i / log n_i in [0, 1]: 1 uniform, 0 one-hot.
    gini                 Gini coefficient of the row over its support, c sorted ascending, k = 1..n:
                         G_i = 2 sum_k k c_(k) / (n sum c) - (n + 1) / n;  0 uniform, 1 - 1/n one-hot.
    concentration        mass on the row's top ceil(top_fraction * n_i) keys (default 10%): about
                         top_fraction when uniform, 1 when one-hot.
    diagonal_strength    mass within |dt| <= width of the query's own position (default width 3, the seed's
                         ``diagonal_width``): local attention, a bright diagonal band. 1 for the identity.
    vertical_strength    vertical stripes in the heatmaps (x = key, y = query): the same keys attended by many
                         queries. With r_j = sum_i w_ij / sum_i u_ij, the attention key j receives relative to
                         uniform attention u_ij = 1/n_i over each support, it is the Gini coefficient of r over
                         the keys: 0 when every key gets its uniform share, 1 - 1/K when every query attends the
                         same key. (The seed calls this a "horizontal pattern: attending to specific time
                         points"; its heatmaps put keys on the x axis, so such a pattern draws vertical stripes.)
    horizontal_strength  horizontal stripes: some queries focus heavily while others spread. With the focus
                         f_i = 1 - H_i / log n_i of each row, it is the Gini coefficient of f over the rows: 0
                         when all rows focus alike, near 1 when one row focuses and the others are uniform.
                         (The seed's "vertical pattern" was the variance of the row sums, which softmax makes
                         identically 0.)
    lag_profile          a(d) = mean weight at lag d = dt >= 0, over the rows that see every lag 0..max_lag
                         (so every lag is averaged over the same rows and uniform attention gives a flat
                         profile; default max_lag = (Lk - 1) // 2).
    fit_power_law        least squares log a(d) = c + exponent * log d over lags d >= 1 with a(d) > 0;
                         returns the exponent (negative: attention decays with lag) and R^2 of the fit.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

METRIC_NAMES = (
    "entropy",
    "entropy_normalised",
    "gini",
    "concentration",
    "diagonal_strength",
    "vertical_strength",
    "horizontal_strength",
    "lag_exponent",
    "lag_exponent_r2",
)


def _as_array(w) -> np.ndarray:
    if hasattr(w, "detach"):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 2:
        raise ValueError(f"attention weights must have shape (..., Lq, Lk); got shape {w.shape}")
    if w.shape[-2] > w.shape[-1]:
        raise ValueError(f"attention weights need Lq <= Lk (queries are the last Lq keys); got shape {w.shape}")
    return w


def lags(lq: int, lk: int) -> np.ndarray:
    """dt[i, j] = (i + lk - lq) - j: how far key j lies before query i. Shape (lq, lk)."""
    return (np.arange(lq)[:, None] + (lk - lq)) - np.arange(lk)[None, :]


def support_mask(lq: int, lk: int, causal: bool) -> np.ndarray:
    """Boolean (lq, lk): which keys each query can see (all, or dt >= 0 when causal)."""
    return lags(lq, lk) >= 0 if causal else np.ones((lq, lk), dtype=bool)


def _rows(w: np.ndarray, causal: bool):
    lq, lk = w.shape[-2:]
    mask = support_mask(lq, lk, causal)
    n = mask.sum(axis=1)  # (Lq,)
    return mask, n, n >= 2


def row_entropy(w, causal: bool = False) -> np.ndarray:
    """Shannon entropy (nats) of every row: shape (..., Lq)."""
    w = _as_array(w)
    mask, _, _ = _rows(w, causal)
    p = np.where(mask, w, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def _mean_valid(values: np.ndarray, valid: np.ndarray) -> float:
    if not valid.any():
        return float("nan")
    return float(values[..., valid].mean())


def entropy(w, causal: bool = False, normalised: bool = False) -> float:
    """Mean row entropy in nats, or divided by log n_i (``normalised``), over rows with n_i >= 2."""
    w = _as_array(w)
    _, n, valid = _rows(w, causal)
    h = row_entropy(w, causal)
    if normalised:
        h = h / np.log(np.maximum(n, 2))
    return _mean_valid(h, valid)


def _gini_rows(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gini coefficient of each row of x over its masked entries; 0 for an all-zero row. x: (..., R, C)."""
    n = mask.sum(axis=-1)
    ranked = np.sort(np.where(mask, x, np.inf), axis=-1)  # ascending; entries outside the support last
    ranked = np.where(np.isfinite(ranked), ranked, 0.0)
    k = np.arange(1, x.shape[-1] + 1)
    total = ranked.sum(axis=-1)
    nn = np.maximum(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = 2.0 * (ranked * k).sum(axis=-1) / (nn * total) - (nn + 1.0) / nn
    return np.where(total > 0, g, 0.0)


def gini(w, causal: bool = False) -> float:
    """Mean Gini coefficient of the rows over their supports (0 uniform, 1 - 1/n one-hot)."""
    w = _as_array(w)
    mask, _, valid = _rows(w, causal)
    return _mean_valid(_gini_rows(w, np.broadcast_to(mask, w.shape)), valid)


def concentration(w, causal: bool = False, top_fraction: float = 0.1) -> float:
    """Mean mass on each row's top ``ceil(top_fraction * n_i)`` keys."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1]; got {top_fraction}")
    w = _as_array(w)
    mask, n, valid = _rows(w, causal)
    top = np.sort(np.where(mask, w, -np.inf), axis=-1)[..., ::-1]
    top = np.where(np.isfinite(top), top, 0.0).cumsum(axis=-1)  # (..., Lq, Lk)
    k = np.maximum(np.ceil(top_fraction * n).astype(int), 1)  # (Lq,)
    mass = np.take_along_axis(top, np.broadcast_to((k - 1)[:, None], top.shape[:-1] + (1,)), axis=-1)[..., 0]
    return _mean_valid(mass, valid)


def diagonal_strength(w, causal: bool = False, width: int = 3) -> float:
    """Mean mass within |dt| <= width of each query's own position."""
    if width < 0:
        raise ValueError(f"width must be >= 0; got {width}")
    w = _as_array(w)
    mask, _, valid = _rows(w, causal)
    band = mask & (np.abs(lags(*w.shape[-2:])) <= width)
    return _mean_valid(np.where(band, w, 0.0).sum(axis=-1), valid)


def _per_map(w: np.ndarray) -> np.ndarray:
    return w.reshape((-1,) + w.shape[-2:])


def vertical_strength(w, causal: bool = False) -> float:
    """Gini coefficient over keys of the attention each key receives relative to uniform attention; map mean."""
    w = _per_map(_as_array(w))
    mask, n, valid = _rows(w, causal)
    uniform = np.where(mask, 1.0 / n[:, None], 0.0)[valid]  # (R, Lk)
    seen = uniform.sum(axis=0) > 0
    if not seen.any():
        return float("nan")
    received = np.where(mask, w, 0.0)[:, valid].sum(axis=1)[:, seen] / uniform.sum(axis=0)[seen]  # (S, K)
    return float(_gini_rows(received, np.ones_like(received, dtype=bool)).mean())


def horizontal_strength(w, causal: bool = False) -> float:
    """Gini coefficient over rows of each row's focus 1 - H_i / log n_i; map mean."""
    w = _per_map(_as_array(w))
    _, n, valid = _rows(w, causal)
    if not valid.any():
        return float("nan")
    focus = 1.0 - row_entropy(w, causal)[:, valid] / np.log(n[valid])
    focus = np.where(focus < 1e-12, 0.0, np.minimum(focus, 1.0))  # a uniform row's focus is 0 up to rounding
    return float(_gini_rows(focus, np.ones_like(focus, dtype=bool)).mean())


def lag_profile(w, max_lag: Optional[int] = None) -> np.ndarray:
    """Mean weight at lags d = 0..max_lag (dt >= 0: keys before the query), shape (max_lag + 1,).

    Averaged over the leading dimensions and over the rows that see all of those lags, i.e. rows with
    ``i + Lk - Lq >= max_lag``. Default ``max_lag = (Lk - 1) // 2``.
    """
    w = _as_array(w)
    lq, lk = w.shape[-2:]
    off = lk - lq
    max_lag = (lk - 1) // 2 if max_lag is None else int(max_lag)
    if not 0 <= max_lag <= lk - 1:
        raise ValueError(f"max_lag must be in [0, {lk - 1}]; got {max_lag}")
    rows = np.arange(max(0, max_lag - off), lq)
    if rows.size == 0:
        raise ValueError(f"no query sees every lag up to max_lag={max_lag} (Lq={lq}, Lk={lk})")
    return np.array([w[..., rows, rows + off - d].mean() for d in range(max_lag + 1)])


def fit_power_law(lag: Sequence[float], value: Sequence[float]) -> Dict[str, float]:
    """Least-squares fit of log(value) = intercept + exponent * log(lag) over lag >= 1 and value > 0.

    Returns ``{"exponent", "intercept", "r2", "n_lags"}``; NaNs when fewer than 2 points qualify. R^2 is 1 for
    an exact power law (and NaN when the values are all equal: a flat profile has nothing to explain).
    """
    lag = np.asarray(lag, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if lag.shape != value.shape:
        raise ValueError(f"lag and value must have the same shape; got {lag.shape} and {value.shape}")
    keep = (lag >= 1) & (value > 0) & np.isfinite(value)
    if keep.sum() < 2:
        return {"exponent": float("nan"), "intercept": float("nan"), "r2": float("nan"), "n_lags": int(keep.sum())}
    x, y = np.log(lag[keep]), np.log(value[keep])
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - (intercept + slope * x)) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 1e-300 else float("nan")
    return {"exponent": float(slope), "intercept": float(intercept), "r2": float(r2), "n_lags": int(keep.sum())}


def profile_exponent(profile: Sequence[float]) -> Dict[str, float]:
    """``fit_power_law`` of a lag profile indexed by lag (profile[d] = mean weight at lag d)."""
    profile = np.asarray(profile, dtype=np.float64)
    return fit_power_law(np.arange(profile.size), profile)


def head_metrics(w, causal: bool = False, max_lag: Optional[int] = None) -> Dict[str, float]:
    """Every metric of one head's maps ``w`` (S, Lq, Lk) or (Lq, Lk), plus its lag profile (a list)."""
    w = _as_array(w)
    profile = lag_profile(w, max_lag)
    fit = profile_exponent(profile)
    return {
        "entropy": entropy(w, causal),
        "entropy_normalised": entropy(w, causal, normalised=True),
        "gini": gini(w, causal),
        "concentration": concentration(w, causal),
        "diagonal_strength": diagonal_strength(w, causal),
        "vertical_strength": vertical_strength(w, causal),
        "horizontal_strength": horizontal_strength(w, causal),
        "lag_exponent": fit["exponent"],
        "lag_exponent_r2": fit["r2"],
        "lag_profile": profile.tolist(),
    }


def model_metrics(maps: Sequence, causal: bool = False, max_lag: Optional[int] = None) -> Dict[str, object]:
    """Metrics per layer and head of a model's maps (one (B, H, Lq, Lk) array per layer), and their summary.

    ``per_head``: one dict per (layer, head). ``mean``: the mean of each scalar metric over all heads, except
    ``lag_exponent`` / ``lag_exponent_r2``, which are fitted to the lag profile averaged over all layers and heads
    (``lag_profile``), one curve per model.
    """
    per_head: List[Dict[str, object]] = []
    for layer, m in enumerate(maps):
        m = _as_array(m)
        if m.ndim != 4:
            raise ValueError(f"layer {layer}: expected maps of shape (B, H, Lq, Lk); got {m.shape}")
        for head in range(m.shape[1]):
            per_head.append({"layer": layer, "head": head, **head_metrics(m[:, head], causal, max_lag)})
    mean: Dict[str, float] = {}
    for name in METRIC_NAMES[:-2]:
        mean[name] = float(np.mean([h[name] for h in per_head]))
    profile = np.mean([h["lag_profile"] for h in per_head], axis=0)
    fit = profile_exponent(profile)
    mean["lag_exponent"] = fit["exponent"]
    mean["lag_exponent_r2"] = fit["r2"]
    mean["mean_head_lag_exponent"] = float(np.mean([h["lag_exponent"] for h in per_head]))
    return {"per_head": per_head, "mean": mean, "lag_profile": profile.tolist()}

