"""``tsattn-inject``: wire a feature into a clone of a research repository and write the reviewable patch."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from typing import Dict, Iterator, Optional, Sequence

from tsattn.cliutil import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, setup_logging

log = logging.getLogger("tsattn.inject")

EXIT_INTERRUPTED = 130  # SIGINT; SIGTERM 143, SIGHUP 129 (128 + the signal's number)

EPILOG = """\
examples:
  tsattn-inject --list
  tsattn-inject --target ./CALF --feature wcmha                 # writes patches/calf-wcmha.patch
  tsattn-inject --target ./CALF --feature wcmha --alpha 2       # again: updates the defaults in place
  tsattn-inject --target ./CALF --feature wcmha --dry-run       # print the diff, write nothing
  tsattn-inject --target ./CALF --status                        # what is applied, with which options
  tsattn-inject --target ./CALF --feature wcmha --revert        # the clone byte-identical to before
  git -C ../other-CALF apply $PWD/patches/calf-wcmha.patch      # the same change in another clone
  cd CALF && tsattn-inject --target . --feature wcmha           # patch: .git/tsattn/patches/calf-wcmha.patch

exit codes:
  0    applied, updated, already applied, reverted (or nothing to revert), status
  1    internal error (with a traceback), or a file that could not be written, e.g. a full disk (the message
       names it; every file restored)
  2    usage error, unknown target kind, feature or option
  3    target refused: not the root of a git work tree, uncommitted changes in a file the recipe touches
       (--allow-dirty overrides), a file the recipe adds exists and is not tsattn output, a symbolic link or a
       directory where the recipe writes a file, a file does not parse, an anchor the recipe needs is missing
       (the message names the file and the symbol), a torn or foreign record, another run on the same clone
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, 129 by SIGHUP: every file was restored

All or nothing, also when the process dies: all files are computed in memory first; before the first byte of
the target changes, a journal (the bytes of every file to touch, the files to add, the hashes to write) is
written and fsynced in the target's .git/tsattn/; every file is written atomically (temporary file, fsync,
rename); the record is marked complete only when every file is in place. A failure or a signal restores every
file byte for byte; after a kill (SIGKILL, power loss) the next tsattn-inject command on the clone (any of
inject, update, --revert, --dry-run, --status) first rolls the interrupted change back and says what it
repaired. The record (tool version, options, upstream commit, the original bytes for --revert) stays in
.git/tsattn/, outside the work tree and the patch. The default patch path is patches/<kind>-<feature>.patch
under the current directory, or .git/tsattn/patches/ of the target when the current directory is inside it.
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
                   "under the current directory; inside the target: its .git/tsattn/patches/)")
    p.add_argument("--dry-run", action="store_true", help="print the diff and write nothing (an interrupted run is "
                   "still rolled back first)")
    p.add_argument("--revert", action="store_true", help="remove the feature: restore the recorded originals")
    p.add_argument("--status", action="store_true", help="say what is applied to --target (with which options) "
                   "and repair an interrupted run; --feature is optional")
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
    found = " (options found in the code: no record)" if result.options_from == "code" else ""
    return (f"{result.kind}/{result.feature} [{opts}]{commit}: {result.status}{found}"
            + (f": {'; '.join(parts)}" if parts else ""))


def _status_lines(st) -> str:
    lines = []
    for a in st.applied:
        commit = f", upstream {a['upstream_commit'][:7]}" if a["upstream_commit"] else ""
        lines.append(f"{a['kind']}/{a['feature']}: applied [{', '.join(f'{k}={v}' for k, v in a['options'].items())}]"
                     f" by tsattn-inject {a['version'] or '?'}{commit}; changed {', '.join(a['changed']) or 'none'};"
                     f" added {', '.join(a['added']) or 'none'}")
        if a["modified_since"]:
            lines.append(f"  modified since: {', '.join(a['modified_since'])}")
    u = st.unrecorded
    if u is not None:
        name = f"{u['kind']}/{u['feature']}"
        if not u["present"]:
            lines.append(f"{name}: not applied")
        elif u.get("options_in_code") is not None:
            opts = ", ".join(f"{k}={v}" for k, v in u["options_in_code"].items())
            lines.append(f"{name}: applied without a record (e.g. with git apply) [{opts}, found in the code]")
        else:
            lines.append(f"{name}: some of its files are present, but no record and not a complete injection")
    if not lines:
        lines.append("no injection recorded")
    lines += [f"interrupted run found and rolled back first: {line}" for line in st.repaired]
    return "\n".join(lines)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted`` as SIGINT raises KeyboardInterrupt (main thread only)."""
    from tsattn.injector.errors import Interrupted

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {}
    try:
        for s in (signal.SIGTERM, signal.SIGHUP):
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Optional[Sequence[str]] = None) -> int:
    with _signals_interrupt():
        return _main(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
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
    missing = [f"--{n}" for n in ("target", "feature") if getattr(args, n) is None
               and not (n == "feature" and args.status)]
    if missing:
        parser.print_usage(sys.stderr)
        print(f"tsattn-inject: error: {' and '.join(missing)} required (or --list)", file=sys.stderr)
        return EXIT_USAGE
    options = {name: getattr(args, name) for name in args._options}
    from tsattn.injector.errors import Interrupted

    try:
        if args.status:
            given = [f"--{k}" for k, v in options.items() if v is not None] + [
                f"--{n.replace('_', '-')}" for n in ("patch_out", "revert", "dry_run") if getattr(args, n)]
            if given:
                raise engine.UsageError(f"--status takes no {', '.join(given)}")
            st = engine.status(args.target, args.feature, kind=args.kind, allow_dirty=args.allow_dirty)
            if args.json:
                print(json.dumps(st.as_dict(), indent=1))
            else:
                print(_status_lines(st))
            return EXIT_OK
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
    except Interrupted as exc:
        print(f"tsattn-inject: interrupted by {exc.signame}; every file was restored", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tsattn-inject: interrupted; every file was restored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"tsattn-inject: {exc}; every file was restored", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:
        log.exception("internal error")
        return EXIT_INTERNAL
    print(f"tsattn-inject: {_summary(result)}", file=sys.stderr)
    if result.patch_path:
        print(f"tsattn-inject: patch written to {result.patch_path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    elif result.status == "dry run" and not args.revert:
        sys.stdout.write(result.patch.decode("utf-8", "replace"))
    elif result.patch_path:
        print(result.patch_path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
