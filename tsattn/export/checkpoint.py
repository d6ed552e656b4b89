"""Safe checkpoint loading: ``torch.load(..., weights_only=True)`` only; anything else is refused.

A checkpoint that needs arbitrary unpickling (a pickled model object, a custom class) could run code on load, so
``load_checkpoint`` refuses it with ``CheckpointRefused`` naming the offending global and saying how to re-save
the weights (``torch.save(model.state_dict(), path)``). ``tsattn-export`` maps the refusal to exit code 4.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn


class CheckpointRefused(ValueError):
    """The checkpoint is unsafe to load, unreadable, or does not fit the model."""


def load_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; raises ``CheckpointRefused`` instead of
    unpickling arbitrary objects, and ``FileNotFoundError`` for a missing file."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a directory; this model takes a checkpoint file (a state dict)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it pickles {found.group(1)}" if found else str(exc).splitlines()[0]
        raise CheckpointRefused(
            f"checkpoint {path} refused: it needs arbitrary unpickling ({what}), which can run code; tsattn loads "
            f"checkpoints with torch.load(weights_only=True) only. Re-save the weights alone, e.g. "
            f"torch.save(model.state_dict(), path), from an environment you trust"
        ) from None
    except Exception as exc:  # a torn or foreign file: torch raises many different types here
        raise CheckpointRefused(f"checkpoint {path} refused: not a readable torch checkpoint "
                                f"({type(exc).__name__}: {exc})") from None


def split_checkpoint(obj: Any, path: Union[str, os.PathLike] = "checkpoint"
                     ) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """(state_dict, config or None) from a bare state dict or ``{"state_dict": ..., "config": {...}}``
    (``{"model": ...}`` and ``{"model_state_dict": ...}`` also accepted). Raises ``CheckpointRefused``."""
    if not isinstance(obj, Mapping):
        raise CheckpointRefused(f"checkpoint {path} refused: expected a state dict (a mapping of names to tensors), "
                                f"got {type(obj).__name__}")
    config = None
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            config = obj.get("config")
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointRefused(f"checkpoint {path} refused: entries {bad[:5]} are not tensors; expected a state dict")
    if config is not None and not isinstance(config, Mapping):
        raise CheckpointRefused(f"checkpoint {path} refused: its 'config' is {type(config).__name__}, not a mapping")
    return dict(obj), None if config is None else dict(config)


def load_weights(model: nn.Module, state: Mapping[str, Tensor], path: Union[str, os.PathLike] = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch raises ``CheckpointRefused`` naming the keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointRefused(f"checkpoint {path} refused: it does not fit the model ({detail[:600]})") from None
