"""What the target export builders (``calf.py``, ``hephaestus.py``, ``wave.py``) share, in one base class.

A target's builder subclasses ``TargetExport`` and keeps only what differs: its adapters, its spec and ``build()``
(the model from the clone, the checks that prove the export faithful). The base opens the patched clone
(``open_patched``: the injection is there, the injector's record read), fixes the seed, splits and loads a
checkpoint (``read_checkpoint``: a state dict with an optional config, whose config sits under the user's options
in ``fields``), validates options (``options``: a dataclass config's ``from_options``, unknown keys named), and
writes the provenance every manifest's ``source`` carries (``source``: the clone, feature, options, weights, seed,
checkpoint path and sha256). ``TargetExport.export`` is the registry's ``build(repo, feature, options,
checkpoint, seed) -> Exportable``.

    class MyTargetExport(TargetExport):
        kind = "my_target"                                  # the injector's target kind
        random_weights = "a tiny synthetic config"          # what random weights mean here (source.weights)

        def build(self) -> Exportable:
            config = MyConfig.from_options(self.fields)     # defaults < the checkpoint's config < the options
            module = self.target.import_module("models.net")
            ...
            return Exportable(adapter, spec, self.source(model="models.net.Net", config=config.to_dict()))

    build_my_target_export = MyTargetExport.export
"""

from __future__ import annotations

from pathlib import Path
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import Tensor

from tsattn.export.checkpoint import load_checkpoint, load_weights, split_checkpoint
from tsattn.export.manifest import sha256_file
from tsattn.export.spec import Exportable
from tsattn.export.targets import PatchedTarget, TargetError, open_patched, recipe_features  # noqa: F401 (re-exported)


def check_option_names(config: type, options: Mapping[str, Any], target: str, with_checkpoint: bool = False,
                       checkpoint_keys: Sequence[str] = (), also: str = "") -> None:
    """What every target config's ``from_options`` checks first: ``options`` names only fields of the dataclass
    ``config`` (else ``TargetError`` naming the unknown keys and the known ones) and, ``with_checkpoint`` (a
    target's checkpoints are bare state dicts, they hold no config), gives every one of the run's
    ``checkpoint_keys`` (``also``: what else the message asks for)."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TargetError(f"unknown {target} export option(s) {unknown}; known: {', '.join(sorted(names))}")
    missing = [k for k in checkpoint_keys if k not in options] if with_checkpoint else []
    if missing:
        raise TargetError(f"--checkpoint: {target} checkpoints hold no config; give the run's {', '.join(missing)} "
                          f"(e.g. --set {missing[0]}=...; needed: {', '.join(checkpoint_keys)}){also}")


class TargetExport:
    """One export of a patched target (see the module docstring). Attributes after ``__init__``: ``target`` (the
    ``PatchedTarget``), ``feature``, ``checkpoint`` (a path or None), ``seed`` (an int), ``state`` (the checkpoint's
    state dict or None), ``fields`` (the checkpoint's config updated by ``options``)."""

    kind: str = ""
    random_weights: str = "not a trained model"
    """What random weights mean for this target, written after ``random (seed N): `` in ``source.weights``."""

    def __init__(self, repo: Path, feature: str, options: Mapping[str, Any], checkpoint: Optional[Path],
                 seed: Optional[int]) -> None:
        self.target: PatchedTarget = open_patched(repo, self.kind, feature)
        self.feature = feature
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.seed = 0 if seed is None else int(seed)
        self.state: Optional[Dict[str, Tensor]] = None
        self.fields: Dict[str, Any] = {}
        if self.checkpoint is not None:
            self.state, config = self.read_checkpoint(self.checkpoint)
            self.fields.update(config or {})
        self.fields.update(options)

    @classmethod
    def export(cls, repo: Path, feature: str, options: Mapping[str, Any], checkpoint: Optional[Path],
               seed: Optional[int]) -> Exportable:
        """The registry's builder: ``cls(...).build()``."""
        return cls(repo, feature, options, checkpoint, seed).build()

    def build(self) -> Exportable:  # pragma: no cover - every target defines it
        raise NotImplementedError

    def read_checkpoint(self, path: Path) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
        """(state dict, config or None) of a checkpoint file (``torch.load(weights_only=True)``); a target whose
        checkpoints are laid out otherwise (a directory) overrides it."""
        return split_checkpoint(load_checkpoint(path), path)

    def load_weights(self, model, state: Optional[Mapping[str, Tensor]] = None) -> None:
        """Load the checkpoint's state dict (or ``state``) into ``model`` strictly; nothing without a checkpoint."""
        state = self.state if state is None else state
        if state is not None:
            load_weights(model, state, self.checkpoint)

    def checkpoint_file(self) -> Optional[Path]:
        """The file whose sha256 the manifest records (the checkpoint itself; a directory's weights file)."""
        return self.checkpoint

    def source(self, **extra: Any) -> Dict[str, Any]:
        """The manifest's ``source``: the clone's provenance (``PatchedTarget.source``), weights, seed, checkpoint,
        and the target's own ``extra`` entries."""
        weights = ("checkpoint" if self.checkpoint is not None else
                   f"random (seed {self.seed}): {self.random_weights}")
        file = self.checkpoint_file()
        provenance = {
            "weights": weights,
            "seed": None if self.checkpoint is not None else self.seed,
            "checkpoint": None if self.checkpoint is None else {"path": str(self.checkpoint),
                                                                "sha256": sha256_file(file)},
        }
        return self.target.source(**{**extra, **provenance})


__all__ = ["TargetExport", "recipe_features"]
