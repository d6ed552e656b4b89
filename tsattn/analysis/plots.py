"""The study's figures (matplotlib, Agg backend: no display needed). Heatmaps follow seed 004: x = the time
being attended to (key), y = the time doing the attending (query), origin at the bottom left."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from tsattn.analysis.metrics import profile_exponent, row_entropy  # noqa: E402

DPI = 80
CLIP_PERCENTILE = 99.0  # colour scales stop here: the first queries see few keys and would saturate the scale


def colour_max(weights: np.ndarray) -> float:
    """The ``CLIP_PERCENTILE`` percentile of a map's positive weights (causal maps are half zeros)."""
    positive = weights[weights > 0]
    return float(np.percentile(positive, CLIP_PERCENTILE)) if positive.size else 1.0


def _save(fig, path: Path, close: bool = True) -> None:
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})  # fast zlib level: the maps are noisy anyway
    if close:
        plt.close(fig)


def training_curves(history: Dict[str, List[float]], path: Path, title: str) -> None:
    """Training (dropout on) and validation MSE per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], "o-", label="train")
    ax.plot(epochs, history["val_loss"], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (standardised units)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.9)
    _save(fig, path)


class HeatmapWriter:
    """Writes single (Lq, Lk) attention maps, reusing one figure (most of a figure's cost is building it).

    ``with HeatmapWriter() as write: write(weights, path, title)``; each map gets its own colour scale.
    """

    def __enter__(self):
        self.fig, self.ax = plt.subplots(figsize=(5, 4.2))
        self.im = None
        return self

    def __call__(self, weights: np.ndarray, path: Path, title: str) -> None:
        if self.im is None:
            self.im = self.ax.imshow(weights, cmap="viridis", aspect="auto", origin="lower", interpolation="nearest")
            self.ax.set_xlabel("time being attended to (key)")
            self.ax.set_ylabel("time doing the attending (query)")
            self.fig.colorbar(self.im, ax=self.ax, label=f"attention weight (to the {CLIP_PERCENTILE:g}th percentile)",
                              extend="max")
            self.fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.9)
        else:
            self.im.set_data(weights)
            self.im.set_extent((-0.5, weights.shape[1] - 0.5, -0.5, weights.shape[0] - 0.5))
        self.im.set_clim(0.0, colour_max(weights))
        self.ax.set_title(title, fontsize=9)
        _save(self.fig, path, close=False)

    def __exit__(self, *exc) -> None:
        plt.close(self.fig)


def heatmap(weights: np.ndarray, path: Path, title: str) -> None:
    """One (Lq, Lk) attention map."""
    with HeatmapWriter() as write:
        write(weights, path, title)


def attention_summary(maps: Sequence[np.ndarray], per_head: List[Dict[str, object]], path: Path, title: str) -> None:
    """One row per layer: each head's map averaged over the samples (each panel on its own colour scale, from 0
    to the ``CLIP_PERCENTILE`` percentile of its weights, printed in the title), then the heads' mean weight
    against lag (log-log) with the fitted power law."""
    n_layers, n_heads = len(maps), maps[0].shape[1]
    fig, axes = plt.subplots(n_layers, n_heads + 1, figsize=(2.6 * (n_heads + 1), 2.5 * n_layers), squeeze=False)
    for layer, m in enumerate(maps):
        mean = m.mean(axis=0)  # (H, L, L)
        for head in range(n_heads):
            ax = axes[layer, head]
            top = colour_max(mean[head])
            ax.imshow(mean[head], cmap="viridis", aspect="auto", origin="lower", interpolation="nearest",
                      vmin=0.0, vmax=top)
            ax.set_title(f"L{layer} H{head} (scale 0-{top:.3f})", fontsize=8)
            ax.set_xticks([0, mean.shape[-1] - 1])
            ax.set_yticks([0, mean.shape[-2] - 1])
            ax.tick_params(labelsize=6)
            if head == 0:
                ax.set_ylabel("query", fontsize=7)
            if layer == n_layers - 1:
                ax.set_xlabel("key", fontsize=7)
        ax = axes[layer, n_heads]
        for rec in (r for r in per_head if r["layer"] == layer):
            profile = np.asarray(rec["lag_profile"])
            lag = np.arange(1, profile.size)
            fit = profile_exponent(profile)
            line, = ax.loglog(lag, profile[1:], ".", ms=3)
            if np.isfinite(fit["exponent"]):
                ax.loglog(lag, np.exp(fit["intercept"]) * lag ** fit["exponent"], "-", color=line.get_color(),
                          lw=1, label=f"H{rec['head']}: {fit['exponent']:.2f}")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"L{layer}: mean weight vs lag", fontsize=8)
        ax.set_xlabel("lag", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, title="exponent", title_fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.86, wspace=0.3, hspace=0.45)
    _save(fig, path)


def entropy_analysis(maps: Sequence[np.ndarray], path: Path, title: str, causal: bool = True) -> None:
    """One panel per layer: each head's row entropy against query position (mean over samples, with a band of
    one std), and the entropy of uniform attention over the same support (the maximum) for reference."""
    n_layers, n_heads = len(maps), maps[0].shape[1]
    fig, axes = plt.subplots(1, n_layers, figsize=(4.2 * n_layers, 3.4), squeeze=False, sharey=True)
    for layer, m in enumerate(maps):
        lq, lk = m.shape[-2:]
        pos = np.arange(lq)
        support = pos + 1 + (lk - lq) if causal else np.full(lq, lk)
        ax = axes[0, layer]
        ax.plot(pos, np.log(support), "k--", lw=0.8, label="uniform")
        for head in range(n_heads):
            h = row_entropy(m[:, head], causal)  # (S, Lq)
            mean, std = h.mean(axis=0), h.std(axis=0)
            line, = ax.plot(pos, mean, lw=1, label=f"H{head}")
            ax.fill_between(pos, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("query position", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("row entropy (nats)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.85, wspace=0.1)
    _save(fig, path)
