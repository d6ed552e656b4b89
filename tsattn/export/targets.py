"""Export specs of patched target repositories (``tsattn-export --target REPO_DIR --feature F``).

Each target kind gets one ``TargetEntry``: how to recognise a clone (``detect``; the injector's fingerprints,
``tsattn.injector.targets.KINDS[kind].matches``, are the natural choice), the features it can export, and
``build(repo, feature, options, checkpoint, seed) -> Exportable`` (import the model from the patched clone, build it
from a small config or the user's checkpoint, and describe its graph with an ``ExportSpec``). The specs for CALF
(forecast: batch x seq_len x channels -> batch x pred_len x channels), Hephaestus (``TimeSeriesDecoder`` with a
cache) and Wave-Transformer (with a cache) land together with their injection recipes; until then no target is
registered and a target export is refused with a usage error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from tsattn.export.spec import Exportable

TargetBuilder = Callable[[Path, str, Mapping[str, Any], Optional[Path], Optional[int]], Exportable]


class NoExportSpec(LookupError):
    """No registered export spec fits the target repository or feature."""


@dataclass(frozen=True)
class TargetEntry:
    """One target kind: ``detect(repo) -> bool`` recognises a clone; ``features`` lists what ``build`` exports."""

    kind: str
    features: Tuple[str, ...]
    detect: Callable[[Path], bool]
    build: TargetBuilder


TARGETS: Dict[str, TargetEntry] = {}

PLANNED = ("calf", "hephaestus", "wave-transformer")  # recipes whose export specs are still to come


def find_target(repo: Path, feature: str) -> TargetEntry:
    """The entry that recognises ``repo`` and exports ``feature``; raises ``NoExportSpec`` saying what is missing."""
    for entry in TARGETS.values():
        if entry.detect(repo):
            if feature not in entry.features:
                raise NoExportSpec(f"target {entry.kind} ({repo}) has no export spec for feature {feature!r}; "
                                   f"it has {list(entry.features)}")
            return entry
    known = sorted(TARGETS) or "none yet"
    kind = _injector_kind(repo)
    what = f"target {kind} ({repo})" if kind else f"target {repo} (not a kind tsattn-inject recognises)"
    raise NoExportSpec(
        f"no export spec for {what}, feature {feature!r}, yet: registered target specs: {known}. "
        f"Export specs for {', '.join(PLANNED)} land with their injection recipes; "
        f"`tsattn-export --model reference` works today"
    )


def _injector_kind(repo: Path) -> Optional[str]:
    """The target kind the injector's fingerprints recognise in ``repo`` (None: none or several)."""
    try:
        from tsattn.injector.targets import KINDS
    except ImportError:  # the injector is absent: name the directory only
        return None
    found = [k.name for k in KINDS.values() if k.matches(repo)]
    return found[0] if len(found) == 1 else None
