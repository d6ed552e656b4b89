"""Shared benchmark harness: each case runs in its own process so that its peak RSS is its own.

A benchmark script defines ``CASES`` (a list of dicts of parameters) and ``run_case(params, repeats) -> dict``
and calls ``main(...)``. The parent process re-invokes the script with ``--case JSON`` once per case, collects one
JSON object per case from the child's stdout, prints a table and, with ``--json PATH``, writes the list.
Timings are medians over ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter  # set from --clock in each case's process


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median time of ``fn()`` in milliseconds over ``repeats`` runs, after ``warmup`` untimed runs.

    Wall time by default; with ``--clock cpu`` the process's CPU time (all its threads), which other jobs on a
    loaded machine disturb less (use it with ``--threads 1``: idle threads that spin count as CPU time).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        times.append((_clock() - t0) * 1e3)
    return statistics.median(times)


def print_table(rows: List[Dict], columns: Sequence[str], file=sys.stdout) -> None:
    """A plain-text table of ``rows`` restricted to ``columns``, floats with 1 decimal."""

    def fmt(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)), file=file)
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)), file=file)


def main(
    description: str,
    cases: List[Dict],
    run_case: Callable[[Dict, int], Dict],
    columns: Sequence[str],
    argv: Optional[Sequence[str]] = None,
    default_repeats: int = 3,
    select: Optional[Callable[[Dict, argparse.Namespace], bool]] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    finish: Optional[Callable[[List[Dict]], List[Dict]]] = None,
) -> int:
    """Run the selected ``cases``, each in its own process; ``finish(rows) -> rows`` may add columns computed
    across cases (ratios within the run) before the table and the JSON are written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list to PATH")
    parser.add_argument("--repeats", type=int, default=default_repeats, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (default) or cpu: the process's CPU time, steadier on a loaded machine")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)

    if args.case:
        import torch

        global _clock
        _clock = CLOCKS[args.clock]

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(json.loads(args.case), args.repeats)))
        return 0

    chosen = [c for c in cases if select is None or select(c, args)]
    results: List[Dict] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for i, case in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {json.dumps(case)}", file=sys.stderr, flush=True)
        cmd = [sys.executable, sys.argv[0], "--case", json.dumps(case), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--clock", args.clock]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {case} failed with exit code {proc.returncode}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if finish is not None:
        results = finish(results)
    print_table(results, columns)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
