"""One run of the study: windows of a series, training of seed 004's model, attention maps and their metrics.

Data: the series is standardised with the mean and std of its first ``train_fraction`` (the training split),
then cut into windows of ``input_len`` inputs and ``horizon`` targets with stride 1. Training windows have their
targets inside the training split; validation windows have their targets after it (their inputs may reach back
into it), so no target is seen in training. MSE is in units of the training split's standard deviation.

Training: Adam (lr 1e-3), batch 64, gradient norm clipped at 1, a fixed number of epochs, shuffling from
``seed``. Before each model is built the torch seed is reset to ``seed``, so ``standard`` and ``wcmha`` start
from the same weights and see the same batches: they differ only by the attention's decay bias.

Maps: after training, ``Forecaster.attention_maps`` on up to ``metric_samples`` validation windows (evenly
spaced); metrics per layer and head from ``tsattn.analysis.metrics`` (causal supports).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from tsattn.analysis.metrics import model_metrics
from tsattn.analysis.model import Forecaster, ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    train_fraction: float = 0.8
    grad_clip: float = 1.0
    metric_samples: int = 64

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass
class Windows:
    train_x: torch.Tensor  # (N_train, input_len)
    train_y: torch.Tensor  # (N_train, horizon)
    val_x: torch.Tensor  # (N_val, input_len)
    val_y: torch.Tensor  # (N_val, horizon)
    mean: float
    std: float


def make_windows(series: np.ndarray, input_len: int, horizon: int, train_fraction: float = 0.8) -> Windows:
    """Standardised stride-1 windows, split in time (see the module docstring). ``ValueError`` if too short."""
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError("series must be one-dimensional and finite")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction}")
    n, span = x.size, input_len + horizon
    split = int(math.floor(train_fraction * n))
    n_train = split - span + 1  # starts t with t + span <= split
    n_val = n - split - horizon + 1  # starts t = split - input_len .. n - span
    if n_train < 1 or n_val < 1 or split < input_len:
        raise ValueError(
            f"series of length {n} is too short for input {input_len} + horizon {horizon} with a "
            f"{train_fraction:.0%} training split (need both splits to hold a window)"
        )
    mean, std = float(x[:split].mean()), float(x[:split].std())
    z = (x - mean) / (std if std > 0 else 1.0)
    windows = np.lib.stride_tricks.sliding_window_view(z, span)  # (n - span + 1, span)
    train = windows[:n_train]
    val = windows[split - input_len : split - input_len + n_val]

    def tensors(w):
        t = torch.tensor(np.ascontiguousarray(w), dtype=torch.float32)
        return t[:, :input_len], t[:, input_len:]

    (tx, ty), (vx, vy) = tensors(train), tensors(val)
    return Windows(tx, ty, vx, vy, mean, std)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """MSE of the model in eval mode."""
    model.eval()
    total = 0.0
    for s in range(0, x.shape[0], batch_size):
        total += float(((model(x[s : s + batch_size]) - y[s : s + batch_size]) ** 2).sum())
    return total / y.numel()


def train(
    model: nn.Module,
    data: Windows,
    cfg: TrainConfig,
    seed: int,
    on_epoch: Optional[Callable[[int, float, float], None]] = None,
) -> Dict[str, List[float]]:
    """Train with MSE; returns ``{"train_loss": [...], "val_loss": [...]}`` per epoch (train: mean batch loss
    with dropout on; val: eval mode). ``on_epoch(epoch, train_loss, val_loss)`` is called after each epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    history: Dict[str, List[float]] = {"train_loss": [], "val_loss": []}
    n = data.train_x.shape[0]
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = nn.functional.mse_loss(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * idx.numel()
            count += idx.numel()
        history["train_loss"].append(total / count)
        history["val_loss"].append(evaluate(model, data.val_x, data.val_y))
        if on_epoch is not None:
            on_epoch(epoch, history["train_loss"][-1], history["val_loss"][-1])
    return history


def sample_indices(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` evenly spaced indices into ``n`` items."""
    return np.unique(np.linspace(0, n - 1, num=min(k, n)).round().astype(int))


@dataclass
class RunResult:
    series: str
    attention: str
    history: Dict[str, List[float]]
    val_mse: float
    maps: List[np.ndarray]  # per layer (S, H, L, L), float32, S = metric samples (validation windows)
    sample_windows: List[int]  # indices into the validation windows of the maps' samples
    metrics: Dict[str, object]  # tsattn.analysis.metrics.model_metrics(...)
    n_train: int
    n_val: int
    seconds: float
    model: Forecaster


def run(
    name: str,
    series: np.ndarray,
    attention: str,
    model_cfg: ModelConfig = ModelConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    seed: int = 0,
    on_epoch: Optional[Callable[[int, float, float], None]] = None,
) -> RunResult:
    """Train one model on one series and analyse its attention (see the module docstring)."""
    t0 = time.perf_counter()
    data = make_windows(series, model_cfg.input_len, model_cfg.horizon, train_cfg.train_fraction)
    torch.manual_seed(seed)
    model = Forecaster(attention, model_cfg)
    history = train(model, data, train_cfg, seed, on_epoch)
    idx = sample_indices(data.val_x.shape[0], train_cfg.metric_samples)
    maps = [m.numpy() for m in model.attention_maps(data.val_x[torch.as_tensor(idx)])]
    metrics = model_metrics(maps, causal=True)
    return RunResult(
        series=name,
        attention=attention,
        history=history,
        val_mse=history["val_loss"][-1] if history["val_loss"] else evaluate(model, data.val_x, data.val_y),
        maps=maps,
        sample_windows=idx.tolist(),
        metrics=metrics,
        n_train=int(data.train_x.shape[0]),
        n_val=int(data.val_x.shape[0]),
        seconds=time.perf_counter() - t0,
        model=model,
    )
