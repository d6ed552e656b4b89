"""``tsattn``: the umbrella command.

    tsattn demo                 the embedded end-to-end demo (the README's main job)
    tsattn inject ...           same as tsattn-inject
    tsattn export ...           same as tsattn-export
    tsattn serve ...            same as tsattn-serve
    tsattn analyze ...          same as tsattn-analyze
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Optional, Sequence

from tsattn import __version__


def _commands() -> Dict[str, Callable[[Optional[Sequence[str]]], int]]:
    from tsattn import demo
    from tsattn.analysis import cli as analyze_cli
    from tsattn.export import cli as export_cli
    from tsattn.injector import cli as inject_cli
    from tsattn.runtime import cli as serve_cli

    return {"demo": demo.main, "inject": inject_cli.main, "export": export_cli.main, "serve": serve_cli.main,
            "analyze": analyze_cli.main}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    parser = argparse.ArgumentParser(
        prog="tsattn",
        description="Modern attention for time-series research code: inject, export, serve.",
        epilog="Run `tsattn COMMAND --help` for a command's options. Exit codes: 0 ok, 1 internal error, "
        "2 usage error; commands document further codes.",
    )
    parser.add_argument("--version", action="version", version=f"tsattn {__version__}")
    parser.add_argument("command", choices=sorted(commands), help="what to run")
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # prints usage or help and exits
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
