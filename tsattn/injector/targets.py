"""Target kinds and their detection from structural fingerprints (files and the top-level classes they define).

A kind is recognised when every one of its fingerprints holds. ``detect(root)`` returns the one kind that
matches; no match or several raise ``UsageError`` listing what was looked for (``--kind`` forces a kind).
A recipe for a new kind registers it with ``register_kind(TargetKind(...))`` before ``register(Recipe(...))``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from tsattn.injector.errors import UsageError


@dataclass(frozen=True)
class Fingerprint:
    """``path`` (POSIX, relative to the target's root) exists and defines the top-level ``classes``."""

    path: str
    classes: Tuple[str, ...] = ()

    def holds(self, root: Path) -> bool:
        file = root / self.path
        if not file.is_file():
            return False
        if not self.classes:
            return True
        # A line-level look (not a parse): a file with a syntax error elsewhere is still recognised, so that
        # the error is reported for that file rather than as an unknown target.
        data = file.read_bytes()
        return all(re.search(rb"^class[ \t]+" + re.escape(c.encode()) + rb"\b", data, re.MULTILINE) for c in self.classes)

    def __str__(self) -> str:
        return self.path + (f" defining class {', '.join(self.classes)}" if self.classes else "")


@dataclass(frozen=True)
class TargetKind:
    name: str
    description: str
    fingerprints: Tuple[Fingerprint, ...]

    def matches(self, root: Path) -> bool:
        return all(f.holds(root) for f in self.fingerprints)


KINDS: Dict[str, TargetKind] = {}


def register_kind(kind: TargetKind) -> TargetKind:
    KINDS[kind.name] = kind
    return kind


register_kind(TargetKind(
    "calf", "Hank0626/CALF: LLM (GPT-2) time-series forecasting with cross-modal alignment",
    (Fingerprint("models/CALF.py", ("Model",)), Fingerprint("models/GPT2_arch.py", ("AccustumGPT2Model",)),
     Fingerprint("run.py")),
))
register_kind(TargetKind(
    "hephaestus", "IndustryTransformer/Hephaestus: transformers for tabular time series",
    (Fingerprint("hephaestus/timeseries_models/models.py", ("TransformerBlock", "TimeSeriesTransformer", "TimeSeriesDecoder")),
     Fingerprint("hephaestus/timeseries_models/multihead_attention.py", ("MultiHeadAttention4D",))),
))
register_kind(TargetKind(
    "wave_transformer", "Maximilian-Winter/Wave-Transformer: transformer over wave (harmonic) representations",
    (Fingerprint("src/wave_transformer/core/wave_transformer.py", ("WaveTransformer",)),
     Fingerprint("src/wave_transformer/core/transformer.py", ("MultiQueryFlashAttention", "TransformerParallelBlock"))),
))

register_kind(TargetKind(
    "patchtst", "yuqinie98/PatchTST: patch time-series transformer (the PatchTST_supervised tree)",
    (Fingerprint("PatchTST_supervised/models/PatchTST.py", ("Model",)),
     Fingerprint("PatchTST_supervised/layers/PatchTST_backbone.py",
                 ("PatchTST_backbone", "TSTiEncoder", "_ScaledDotProductAttention")),
     Fingerprint("PatchTST_supervised/run_longExp.py")),
))

register_kind(TargetKind(
    "time_series_library", "thuml/Time-Series-Library: one run.py, one data pipeline, dozens of forecasting models",
    (Fingerprint("layers/SelfAttention_Family.py", ("FullAttention", "AttentionLayer", "TwoStageAttentionLayer")),
     Fingerprint("models/iTransformer.py", ("Model",)), Fingerprint("exp/exp_basic.py", ("Exp_Basic",)),
     Fingerprint("run.py")),
))


def describe_fingerprints() -> List[str]:
    return [f"{k.name}: " + "; ".join(str(f) for f in k.fingerprints) for k in KINDS.values()]


def detect(root: Path) -> str:
    """The kind of the repository at ``root``; ``UsageError`` listing the fingerprints when not exactly one."""
    found = [k.name for k in KINDS.values() if k.matches(root)]
    if len(found) == 1:
        return found[0]
    looked = "\n  ".join(describe_fingerprints())
    if not found:
        raise UsageError(f"{root}: unknown target: no known kind matches. Looked for:\n  {looked}\n"
                         "Pass --kind to force one.")
    raise UsageError(f"{root}: ambiguous target: matches {', '.join(found)}; pass --kind")
