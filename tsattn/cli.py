"""``tsattn``: the umbrella command.

    tsattn demo                 the embedded end-to-end demo (the README's main job)
    tsattn inject ...           same as tsattn-inject
    tsattn export ...           same as tsattn-export
    tsattn serve ...            same as tsattn-serve
    tsattn analyze ...          same as tsattn-analyze

Only the chosen command's module is imported (``tsattn inject`` does not import torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from typing import Dict, Optional, Sequence, Tuple

from tsattn import __version__

# command: (module whose ``main(argv)`` runs it, what it does)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("tsattn.demo", "run the end-to-end demo on bundled look-alikes: inject, export, stream, analyse "
                            "(--out DIR keeps what it makes)"),
    "inject": ("tsattn.injector.cli", "edit a clone of a research repository (CALF, Hephaestus, Wave-Transformer, "
                                      "PatchTST, Time-Series-Library) to use modern attention, write its patch, revert it (= tsattn-inject)"),
    "export": ("tsattn.export.cli", "export a bundled model or a patched target to ONNX and TorchScript, with "
                                    "parity checks and a manifest (= tsattn-export)"),
    "serve": ("tsattn.runtime.cli", "serve an export over HTTP with ONNX Runtime: streaming forecasts with a "
                                    "per-stream KV cache, batched (= tsattn-serve)"),
    "analyze": ("tsattn.analysis.cli", "train a small forecaster with standard and WCMHA attention on synthetic and "
                                       "real series and analyse its attention maps (= tsattn-analyze)"),
}


def _epilog() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    rows = "\n".join(textwrap.fill(what, 100, initial_indent=f"  {name:<{width}}", subsequent_indent=" " * (width + 2),
                                   break_on_hyphens=False)  # never "tsattn-" / "inject" across two lines
                     for name, (_, what) in COMMANDS.items())
    return (f"commands:\n{rows}\n\nexamples:\n  tsattn demo --out demo-out\n  tsattn inject --list\n"
            f"  tsattn export --model reference --out /tmp/ref\n\n"
            f"Run `tsattn COMMAND --help` for a command's options. Exit codes: 0 ok, 1 internal error, 2 usage "
            f"error; commands document further codes.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="tsattn",
        description="Modern attention for time-series research code: inject, export, serve, analyse.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tsattn {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), help="what to run (see below)")
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage or help and exits
    module = importlib.import_module(COMMANDS[argv[0]][0])  # only what this command needs
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
