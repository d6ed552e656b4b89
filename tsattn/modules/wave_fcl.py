"""Frequency Curriculum Learning (FCL) for wave representations: a frequency mask and its schedule.

Self-contained template: torch and the standard library only (matplotlib is imported inside ``plot_schedule``).

A wave representation is ``(B, S, 3 * H)``: the frequencies, amplitudes and phases of H harmonics, in three
blocks ``[f_0 .. f_{H-1}, a_0 .. a_{H-1}, p_0 .. p_{H-1}]`` (Wave-Transformer's ``Wave.to_representation``).
Harmonic index order is taken as frequency order: harmonic 0 is the lowest.

``FrequencyMask(wave, freq_limit)`` keeps the harmonics inside the first ``freq_limit`` of the spectrum unchanged
and rolls the ones beyond off to zero (all three channels of a harmonic are scaled by the same factor):

    c_h   = (h + 1) / H                          upper edge of harmonic h, as a fraction of the spectrum
    t_h   = clamp((c_h - freq_limit) * mask_slope, 0, 1)
    m_h   = 1 - t_h^2 (3 - 2 t_h)                a smoothstep from 1 (c_h <= freq_limit) to 0
                                                 (c_h >= freq_limit + 1 / mask_slope)

so ``freq_limit = 1`` is exactly the identity and the mask is continuous in ``freq_limit``.

``FrequencyCurriculumScheduler`` gives the ``freq_limit`` for each training step: held at ``start_freq_limit``
through the warm-up, then rising to ``end_freq_limit`` at ``total_steps`` along a linear, exponential (geometric)
or cosine curve of the curriculum progress ``p`` in [0, 1]:

    linear       start + (end - start) * p
    exponential  start * (end / start) ** p
    cosine       start + (end - start) * (1 - cos(pi p)) / 2

With ``adaptive=True``, once the validation loss passed to ``step()`` has not improved for more than ``patience``
training steps, progress advances at ``slowdown`` times its normal rate (0 pauses the curriculum). When the loss
improves again the rest of the curriculum is spread over the remaining steps, so it still ends at
``end_freq_limit`` at ``total_steps`` (a curriculum still slowed down then jumps there: training always ends on the
full spectrum the model is evaluated with). ``get_freq_limit(step)`` includes these adjustments: it is the value to train
with.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor, nn

CURRICULUM_MODES = ("linear", "exponential", "cosine")


class FrequencyMask(nn.Module):
    """Masks the harmonics above a fraction of the spectrum (see the module docstring for the formula).

    Args:
        num_harmonics: H; the input's last dimension must be 3 * H.
        mask_slope: inverse width of the roll-off, as a fraction of the spectrum (10: over a tenth of it); > 0.

    ``forward(wave_repr, freq_limit) -> masked``: wave_repr (B, S, 3 * H); freq_limit a float or 0-dim tensor
    in [0, 1]. Returns the same shape and dtype. ``mask(freq_limit)`` gives the (H,) factors.

    Raises ``ValueError`` naming the argument for a bad num_harmonics or mask_slope.
    """

    def __init__(self, num_harmonics: int, mask_slope: float = 10.0) -> None:
        super().__init__()
        if isinstance(num_harmonics, bool) or int(num_harmonics) != num_harmonics or num_harmonics < 1:
            raise ValueError(f"num_harmonics must be a positive integer; got {num_harmonics!r}")
        mask_slope = float(mask_slope)
        if not (math.isfinite(mask_slope) and mask_slope > 0):
            raise ValueError(f"mask_slope must be a finite number > 0; got {mask_slope!r}")
        self.num_harmonics = int(num_harmonics)
        self.mask_slope = mask_slope
        edges = torch.arange(1, self.num_harmonics + 1, dtype=torch.float32) / self.num_harmonics
        self.register_buffer("edges", edges, persistent=False)  # (H,) upper edge of each harmonic

    def mask(self, freq_limit: Union[float, Tensor]) -> Tensor:
        """(H,) float32 factors in [0, 1] for this limit."""
        t = ((self.edges - freq_limit) * self.mask_slope).clamp(0.0, 1.0)
        return 1.0 - t * t * (3.0 - 2.0 * t)

    def forward(self, wave_repr: Tensor, freq_limit: Union[float, Tensor]) -> Tensor:
        b, s, d = wave_repr.shape
        if d != 3 * self.num_harmonics:
            raise ValueError(f"wave_repr's last dimension must be 3 * num_harmonics = {3 * self.num_harmonics}; got {d}")
        m = self.mask(freq_limit).to(wave_repr.dtype)  # (H,)
        return (wave_repr.view(b, s, 3, self.num_harmonics) * m).view(b, s, d)

    def extra_repr(self) -> str:
        return f"num_harmonics={self.num_harmonics}, mask_slope={self.mask_slope}"


class FrequencyCurriculumScheduler:
    """The ``freq_limit`` of each training step (see the module docstring for the schedules and adaptive rule).

    Args:
        total_steps: the step at which the curriculum reaches ``end_freq_limit``; > warmup_steps.
        start_freq_limit: the limit through the warm-up and at its end, in (0, 1].
        end_freq_limit: the limit from ``total_steps`` on, in [start_freq_limit, 1].
        warmup_steps: steps held at ``start_freq_limit`` before the curriculum starts (>= 0).
        curriculum_mode: one of ``CURRICULUM_MODES``.
        adaptive: slow the curriculum down when ``step(step, val_loss)`` sees no improvement.
        patience: training steps without a validation improvement before slowing down (>= 0).
        slowdown: the rate of progress while slowed down, in [0, 1) (0: pause).

    Methods: ``get_freq_limit(step=None) -> float`` (the last step seen when None); ``step(step, val_loss=None)
    -> info`` (dict: step, freq_limit, curriculum_progress, nominal_progress, slowed, steps_since_improvement,
    best_val_loss, val_loss); ``state_dict()`` / ``load_state_dict(d)``; ``plot_schedule(save_path)`` writes a PNG
    (needs matplotlib) and returns the path.

    Raises ``ValueError`` naming the argument for any bad argument, and for a step that goes backwards.
    """

    def __init__(
        self,
        total_steps: int,
        start_freq_limit: float = 0.1,
        end_freq_limit: float = 1.0,
        warmup_steps: int = 0,
        curriculum_mode: str = "cosine",
        adaptive: bool = True,
        patience: int = 500,
        slowdown: float = 0.5,
    ) -> None:
        for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must be greater than warmup_steps ({warmup_steps})")
        start_freq_limit, end_freq_limit, slowdown = float(start_freq_limit), float(end_freq_limit), float(slowdown)
        if not 0.0 < start_freq_limit <= 1.0:
            raise ValueError(f"start_freq_limit must be in (0, 1]; got {start_freq_limit!r}")
        if not start_freq_limit <= end_freq_limit <= 1.0:
            raise ValueError(f"end_freq_limit must be in [start_freq_limit, 1] = [{start_freq_limit}, 1]; "
                             f"got {end_freq_limit!r}")
        if curriculum_mode not in CURRICULUM_MODES:
            raise ValueError(f"curriculum_mode must be one of {CURRICULUM_MODES}; got {curriculum_mode!r}")
        if not 0.0 <= slowdown < 1.0:
            raise ValueError(f"slowdown must be in [0, 1); got {slowdown!r}")
        self.total_steps = total_steps
        self.start_freq_limit = start_freq_limit
        self.end_freq_limit = end_freq_limit
        self.warmup_steps = warmup_steps
        self.curriculum_mode = curriculum_mode
        self.adaptive = bool(adaptive)
        self.patience = patience
        self.slowdown = slowdown
        # Progress is piecewise linear in the nominal progress u: from anchor i on, p = p_i + rate_i * (u - u_i).
        self._anchor_u: List[float] = [0.0]
        self._anchor_p: List[float] = [0.0]
        self._anchor_rate: List[float] = [1.0]
        self.current_step = 0
        self.best_val_loss = math.inf
        self.last_improvement_step: Optional[int] = None
        self.slowed = False
        self.history: List[Dict[str, Any]] = []  # the info dicts returned by step()

    # -- the schedule ---------------------------------------------------------------------------------------
    def nominal_progress(self, step: int) -> float:
        """Progress of the plain schedule: 0 through the warm-up, 1 from total_steps on."""
        return min(1.0, max(0.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)))

    def progress(self, step: int) -> float:
        """Curriculum progress at ``step``, adaptive slow-downs included."""
        u = self.nominal_progress(step)
        if u >= 1.0:  # the curriculum always ends at total_steps, slowed down or not
            return 1.0
        i = bisect.bisect_right(self._anchor_u, u) - 1
        return min(1.0, max(0.0, self._anchor_p[i] + self._anchor_rate[i] * (u - self._anchor_u[i])))

    def freq_limit_at(self, progress: float) -> float:
        """The schedule's limit at a curriculum progress in [0, 1]."""
        s, e = self.start_freq_limit, self.end_freq_limit
        if self.curriculum_mode == "linear":
            value = s + (e - s) * progress
        elif self.curriculum_mode == "exponential":
            value = s * (e / s) ** progress
        else:
            value = s + (e - s) * (1.0 - math.cos(math.pi * progress)) / 2.0
        return min(e, max(s, value))

    def get_freq_limit(self, step: Optional[int] = None) -> float:
        """The limit to train with at ``step`` (the last step seen when None)."""
        return self.freq_limit_at(self.progress(self.current_step if step is None else step))

    # -- the adaptive rule ------------------------------------------------------------------------------------
    def step(self, step: int, val_loss: Optional[float] = None) -> Dict[str, Any]:
        """Record a training step (and a validation loss); returns the info dict, also appended to ``history``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer; got {step!r}")
        if step < self.current_step:
            raise ValueError(f"step must not go backwards: got {step} after {self.current_step}")
        u, p = self.nominal_progress(step), self.progress(step)
        if val_loss is not None:
            val_loss = float(val_loss)
            if val_loss < self.best_val_loss:
                self.best_val_loss = val_loss
                self.last_improvement_step = step
        since = None if self.last_improvement_step is None else step - self.last_improvement_step
        slowed = self.adaptive and since is not None and since > self.patience
        if u < 1.0:
            rate = self.slowdown if slowed else (1.0 - p) / (1.0 - u)  # catch up: end at total_steps
            if slowed != self.slowed or abs(rate - self._anchor_rate[-1]) > 1e-12:
                if u == self._anchor_u[-1]:  # same nominal point (e.g. still in warm-up): replace
                    self._anchor_p[-1], self._anchor_rate[-1] = p, rate
                else:
                    self._anchor_u.append(u)
                    self._anchor_p.append(p)
                    self._anchor_rate.append(rate)
        self.slowed = slowed
        self.current_step = step
        info = {
            "step": step,
            "freq_limit": self.freq_limit_at(p),
            "curriculum_progress": p,
            "nominal_progress": u,
            "slowed": slowed,
            "steps_since_improvement": since,
            "best_val_loss": self.best_val_loss,
            "val_loss": val_loss,
        }
        self.history.append(info)
        return info

    # -- checkpointing and plotting ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything ``load_state_dict`` needs to continue the same schedule (plain Python values)."""
        return {
            "anchors": [list(a) for a in zip(self._anchor_u, self._anchor_p, self._anchor_rate)],
            "current_step": self.current_step,
            "best_val_loss": self.best_val_loss,
            "last_improvement_step": self.last_improvement_step,
            "slowed": self.slowed,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        anchors = state["anchors"]
        self._anchor_u = [float(a[0]) for a in anchors]
        self._anchor_p = [float(a[1]) for a in anchors]
        self._anchor_rate = [float(a[2]) for a in anchors]
        self.current_step = int(state["current_step"])
        self.best_val_loss = float(state["best_val_loss"])
        self.last_improvement_step = state["last_improvement_step"]
        self.slowed = bool(state["slowed"])
        self.history = [dict(h) for h in state["history"]]

    def plot_schedule(self, save_path: str, num_points: int = 500) -> str:
        """Plot the plain schedule and the adapted one (with the steps recorded so far) to a PNG at ``save_path``.

        Needs matplotlib (only this method does); raises ``ImportError`` saying so when it is missing.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                "FrequencyCurriculumScheduler.plot_schedule needs matplotlib (pip install matplotlib); "
                "the scheduler itself does not"
            ) from err
        end = max(self.total_steps, self.current_step)
        steps = sorted({round(end * i / num_points) for i in range(num_points + 1)})
        fig = Figure(figsize=(8, 4))
        ax = fig.add_subplot()
        ax.plot(steps, [self.freq_limit_at(self.nominal_progress(s)) for s in steps], "--", label=f"{self.curriculum_mode} schedule")
        ax.plot(steps, [self.get_freq_limit(s) for s in steps], label="adapted (get_freq_limit)")
        if self.history:
            ax.plot([h["step"] for h in self.history], [h["freq_limit"] for h in self.history], ".", label="step() calls")
        if self.warmup_steps:
            ax.axvline(self.warmup_steps, color="grey", linewidth=0.8, label="end of warm-up")
        ax.set_xlabel("training step")
        ax.set_ylabel("freq_limit (fraction of the spectrum)")
        ax.set_ylim(0.0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.savefig(save_path, format="png", dpi=100)
        return str(save_path)
