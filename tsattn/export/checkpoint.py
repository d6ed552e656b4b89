"""Safe checkpoint loading: ``torch.load(..., weights_only=True)`` only; anything else is refused.

A checkpoint that needs arbitrary unpickling (a pickled model object, a custom class) could run code on load, so
``load_checkpoint`` refuses it with ``CheckpointRefused`` naming every class or function the pickle would import
that the safe unpickler does not allow (read from the pickle's opcodes, never by unpickling it) and saying how to
re-save the weights (``torch.save(model.state_dict(), path)``); it never suggests loading it unsafely.
``split_checkpoint`` checks a checkpoint's config before any model is built from it (``check_config``: plain JSON
types, bounded nesting, finite numbers, sizes at most ``MAX_CONFIG_INT``), so that ``n_layers=10**9`` is refused
with a message instead of a MemoryError. ``tsattn-export`` maps the refusal to exit code 4.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

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
        unsafe = unsafe_globals(path)
        if unsafe:
            what = "it would import " + ", ".join(unsafe[:8]) + (f" and {len(unsafe) - 8} more" if len(unsafe) > 8
                                                                 else "")
        else:
            found = re.search(r"(Unsupported (?:global|operand)[^\n]*)", str(exc))
            what = found.group(1).strip() if found else "an instruction the safe unpickler refuses"
        raise CheckpointRefused(
            f"checkpoint {path} refused: it needs arbitrary unpickling, which can run code ({what}); "
            f"tsattn loads checkpoints with torch.load(weights_only=True) only: tensors, containers and plain "
            f"numbers. Re-save the weights alone, e.g. torch.save(model.state_dict(), path), from an environment "
            f"you trust"
        ) from None
    except Exception as exc:  # a torn or foreign file: torch raises many different types here
        raise CheckpointRefused(f"checkpoint {path} refused: not a readable torch checkpoint "
                                f"({type(exc).__name__}: {exc})") from None


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(data: bytes) -> List[str]:
    """Every ``module.name`` that the pickle(s) in ``data`` would import (GLOBAL and STACK_GLOBAL opcodes), in
    order, without unpickling anything. ``data`` may hold several pickles one after another (torch's legacy
    format)."""
    found: List[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: List[str] = []
        memo: Dict[int, str] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                name = op.name
                if name in _STRING_OPS and isinstance(arg, (str, bytes)):
                    strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                elif name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                    strings.append(memo[int(arg)])
                elif name == "GLOBAL":
                    found.append(".".join(str(arg).split(" ", 1)))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif name in ("INST",):
                    found.append(".".join(str(arg).split(" ", 1)))
        except Exception:  # a torn pickle: what was found so far
            break
    compat = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol <= 2 names (pickle's fix_imports)
    found = [compat.get(g.split(".", 1)[0], g.split(".", 1)[0]) + "." + g.split(".", 1)[1] if "." in g else g
             for g in found]
    return list(dict.fromkeys(found))


def unsafe_globals(path: Union[str, os.PathLike]) -> List[str]:
    """The globals a checkpoint file would import that ``torch.load(weights_only=True)`` does not allow."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(member) if member else b""
        else:
            data = Path(path).read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a private API: without it, everything but torch's own and the containers
        allowed = {"collections.OrderedDict"}
    try:
        from torch.serialization import get_safe_globals

        allowed |= {f"{g.__module__}.{g.__qualname__}" for g in get_safe_globals() if hasattr(g, "__qualname__")}
    except Exception:
        pass
    return [g for g in pickle_globals(data) if g not in allowed and not g.startswith("torch._utils._rebuild")]


MAX_CONFIG_INT = 1 << 20  # a size in a checkpoint's config (layers, widths, heads, lengths, vocabulary)
MAX_CONFIG_DEPTH = 6


def check_config(config: Any, path: Union[str, os.PathLike] = "checkpoint", where: str = "config",
                 depth: int = 0) -> None:
    """A checkpoint's config is plain data of bounded size, checked before any model is built from it: strings,
    booleans, None, finite numbers, integers in [-MAX_CONFIG_INT, MAX_CONFIG_INT] (keys naming a seed excepted),
    lists and string-keyed mappings nested at most MAX_CONFIG_DEPTH deep. Raises ``CheckpointRefused`` naming the
    entry."""
    def refuse(why: str) -> CheckpointRefused:
        return CheckpointRefused(f"checkpoint {path} refused: its {where} {why}")

    if depth > MAX_CONFIG_DEPTH:
        raise refuse(f"nests deeper than {MAX_CONFIG_DEPTH} levels")
    if config is None or isinstance(config, (str, bool)):
        return
    if isinstance(config, int):
        if abs(config) > MAX_CONFIG_INT and "seed" not in where.rsplit(".", 1)[-1]:
            raise refuse(f"= {config} is out of range (at most {MAX_CONFIG_INT}); refusing to build a model of "
                         f"that size")
        return
    if isinstance(config, float):
        if not math.isfinite(config):
            raise refuse(f"= {config!r} is not a finite number")
        return
    if isinstance(config, Mapping):
        for key, value in config.items():
            if not isinstance(key, str):
                raise refuse(f"has a key {key!r} that is not a string")
            check_config(value, path, f"{where}.{key}", depth + 1)
        return
    if isinstance(config, (list, tuple)):
        if len(config) > MAX_CONFIG_INT:
            raise refuse(f"is a list of {len(config)} entries")
        for i, value in enumerate(config):
            check_config(value, path, f"{where}[{i}]", depth + 1)
        return
    raise refuse(f"is a {type(config).__name__}, not plain data (strings, numbers, lists, mappings)")


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
    if config is not None:
        check_config(config, path)  # before any model is built from it
    return dict(obj), None if config is None else dict(config)


def load_weights(model: nn.Module, state: Mapping[str, Tensor], path: Union[str, os.PathLike] = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch raises ``CheckpointRefused`` naming the keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointRefused(f"checkpoint {path} refused: it does not fit the model ({detail[:600]})") from None
