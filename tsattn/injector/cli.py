"""``tsattn-inject``: wire a feature into a clone of a research repository and write the reviewable patch."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Dict, Optional, Sequence

from tsattn.cliutil import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, setup_logging

log = logging.getLogger("tsattn.inject")

EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  tsattn-inject --list
  tsattn-inject --target ./CALF --feature wcmha                 # writes patches/calf-wcmha.patch
  tsattn-inject --target ./CALF --feature wcmha --alpha 2       # again: updates the defaults in place
  tsattn-inject --target ./CALF --feature wcmha --dry-run       # print the diff, write nothing
  tsattn-inject --target ./CALF --feature wcmha --revert        # the clone byte-identical to before
  git -C ../other-CALF apply $PWD/patches/calf-wcmha.patch      # the same change in another clone

exit codes:
  0    applied, updated, already applied, reverted (or nothing to revert)
  1    internal error (with a traceback), or a file that could not be written (every file restored)
  2    usage error, unknown target kind, feature or option
  3    target refused: not the root of a git work tree, uncommitted changes in a file the recipe touches
       (--allow-dirty overrides), a file the recipe adds exists and is not tsattn output, a file does not
       parse, an anchor the recipe needs is missing (the message names the file and the symbol)
  130  interrupted: every file was restored

The target is never half-written: all files are computed in memory first, then written atomically; any
failure restores every touched file byte for byte. What was applied (tool version, options, upstream commit,
the original bytes for --revert) is recorded in the target's .git/tsattn/, outside the work tree and the patch.
"""


def _parser(recipes) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsattn-inject",
        description="Inject a feature (modern attention) into a clone of a research repository with libcst, "
        "and write the change as a patch that `git apply`s to another clone of the same commit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", metavar="DIR", help="root of the target's git work tree")
    p.add_argument("--feature", metavar="NAME", help="feature to inject (see --list)")
    p.add_argument("--kind", metavar="K", help="target kind, instead of detecting it from the files")
    p.add_argument("--patch-out", metavar="PATH", help="where to write the patch (default: patches/<kind>-<feature>.patch "
                   "under the current directory)")
    p.add_argument("--dry-run", action="store_true", help="print the diff and write nothing")
    p.add_argument("--revert", action="store_true", help="remove the feature: restore the recorded originals")
    p.add_argument("--allow-dirty", action="store_true", help="accept uncommitted changes in the files the recipe touches")
    p.add_argument("--list", action="store_true", help="print the target x feature matrix and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    options: Dict[str, object] = {}
    group = p.add_argument_group("recipe options (a recipe's defaults apply when not given)")
    for recipe in recipes:
        for opt in recipe.options:
            if opt.name in options:
                continue
            options[opt.name] = opt
            group.add_argument(f"--{opt.name}", type=opt.type, choices=opt.choices, default=None,
                               help=f"{opt.help} ({recipe.name} default: {opt.default})")
    p.set_defaults(_options=list(options))
    return p


def _matrix(recipes) -> str:
    from tsattn.injector.targets import KINDS, describe_fingerprints

    kinds = list(KINDS)
    features = sorted({r.feature for r in recipes})
    have = {(r.kind, r.feature) for r in recipes}
    width = max([len("feature")] + [len(f) for f in features]) + 2
    lines = ["feature".ljust(width) + "  ".join(k for k in kinds)]
    for f in features:
        lines.append(f.ljust(width) + "  ".join(("yes" if (k, f) in have else "-").ljust(len(k)) for k in kinds))
    lines.append("")
    name_w = max(len(r.name) for r in recipes) + 2 if recipes else 10
    for r in recipes:
        lines.append(f"{r.name.ljust(name_w)}{r.description}")
        for opt in r.options:
            choices = f" {{{','.join(map(str, opt.choices))}}}" if opt.choices else ""
            lines.append(f"{'':{name_w}}--{opt.name}{choices} (default {opt.default}): {opt.help}")
        if r.notes:
            lines.append(f"{'':{name_w}}note: {r.notes}")
    for k in kinds:
        if not any(r.kind == k for r in recipes):
            lines.append(f"{k.ljust(name_w)}(no recipe yet)")
    lines += ["", "target detection (every fingerprint of a kind must hold):"]
    lines += [f"  {line}" for line in describe_fingerprints()]
    return "\n".join(lines)


def _summary(result) -> str:
    parts = []
    if result.changed:
        parts.append(("restored " if result.status == "reverted" else "changed ") + ", ".join(result.changed))
    if result.added:
        parts.append("added " + ", ".join(result.added))
    if result.removed:
        parts.append("removed " + ", ".join(result.removed))
    commit = f" (upstream {result.upstream_commit[:7]})" if result.upstream_commit else ""
    opts = ", ".join(f"{k}={v}" for k, v in result.options.items())
    return f"{result.kind}/{result.feature} [{opts}]{commit}: {result.status}" + (f": {'; '.join(parts)}" if parts else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tsattn.injector import engine
    from tsattn.injector.errors import InjectError
    from tsattn.injector.recipe import all_recipes

    recipes = all_recipes()
    parser = _parser(recipes)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.list:
        if args.json:
            print(json.dumps([{"kind": r.kind, "feature": r.feature, "description": r.description,
                               "options": {o.name: o.default for o in r.options}} for r in recipes], indent=1))
        else:
            print(_matrix(recipes))
        return EXIT_OK
    missing = [f"--{n}" for n in ("target", "feature") if getattr(args, n) is None]
    if missing:
        parser.print_usage(sys.stderr)
        print(f"tsattn-inject: error: {' and '.join(missing)} required (or --list)", file=sys.stderr)
        return EXIT_USAGE
    options = {name: getattr(args, name) for name in args._options}
    try:
        if args.revert:
            given = [f"--{k}" for k, v in options.items() if v is not None] + (["--patch-out"] if args.patch_out else [])
            if given:
                raise engine.UsageError(f"--revert takes no {', '.join(given)}")
            result = engine.revert(args.target, args.feature, kind=args.kind, allow_dirty=args.allow_dirty,
                                   dry_run=args.dry_run)
        else:
            result = engine.inject(args.target, args.feature, options, kind=args.kind, patch_out=args.patch_out,
                                   dry_run=args.dry_run, allow_dirty=args.allow_dirty)
    except InjectError as exc:
        print(f"tsattn-inject: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tsattn-inject: interrupted; every file was restored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. an unwritable --patch-out: the transaction restored the target
        print(f"tsattn-inject: {exc}; every file was restored", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:
        log.exception("internal error")
        return EXIT_INTERNAL
    print(f"tsattn-inject: {_summary(result)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    elif result.status == "dry run" and not args.revert:
        sys.stdout.write(result.patch.decode("utf-8", "replace"))
    elif result.patch_path:
        print(result.patch_path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
