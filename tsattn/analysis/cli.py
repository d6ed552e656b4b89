"""``tsattn-analyze``: how the input distribution shapes learned attention maps, standard vs WCMHA (seed 004).

For each series and attention it trains seed 004's forecaster (``tsattn.analysis.model``), extracts the attention
maps of validation windows and writes, under ``OUT/<series>/<attention>/``, seed 004's files:

    training_curves.png                  train and validation MSE per epoch
    attention_summary_<series>.png       every layer/head's mean map, and mean weight vs lag with the fitted power law
    entropy_analysis.png                 row entropy against query position, per layer and head
    attention_L<layer>_H<head>_S<sample>.png   single heatmaps (layers, heads, samples counted from 0)
    attention_metrics.json               metrics per layer and head (tsattn.analysis.metrics)
    summary.json                         configuration, data sizes, losses, timings, mean metrics

and, at the top, ``comparison.md`` / ``comparison.json``: validation MSE, entropy, Gini and the fitted lag
exponent of standard vs WCMHA per series (for the series of this invocation). Everything is written to a staging
folder inside OUT first and moved into place at the end, so a failed run leaves no half-written series folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tsattn.cliutil import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, setup_logging

log = logging.getLogger("tsattn.analyze")

QUICK_SERIES = ("HeavyTailedAR1", "RandomWalk", "MultiSeasonality")
QUICK = {"epochs": 2, "length": 500, "samples": 1, "metric_samples": 32}
DEFAULT = {"epochs": 6, "length": 1200, "samples": 2, "metric_samples": 64}

EPILOG = """\
examples:
  tsattn-analyze --quick --out /tmp/a                 3 series, 2 epochs (about 30 s of CPU time in all)
  tsattn-analyze --out results                        all nine generators and co2 and sunspots (minutes)
  tsattn-analyze --generators GARCH11,co2 --attention wcmha --epochs 10 --json

series: HeavyTailedAR1, GARCH11, JumpDiffusion, RegimeSwitching, TrendBreaks, RandomWalk,
SeasonTrendOutliers, MultiSeasonality, OneOverFNoise (synthetic), co2, sunspots (statsmodels), or all.
Both attentions are causal; see tsattn.analysis.model for why.

exit codes: 0 ok, 1 internal error, 2 usage error (unknown series or attention, bad number, series too short)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsattn-analyze",
        description="Train seed 004's forecaster with standard and WCMHA attention on synthetic and real series, "
        "and analyse the learned attention maps (heatmaps, entropy, Gini, patterns, power-law lag exponent).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--generators", metavar="NAMES",
                   help="comma-separated series (default: all; with --quick: " + ",".join(QUICK_SERIES) + ")")
    p.add_argument("--attention", metavar="KINDS", default="standard,wcmha",
                   help="comma-separated attentions among standard, wcmha (default: both)")
    p.add_argument("--out", metavar="DIR", default="analysis_results", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"fewer series and epochs: {QUICK['epochs']} epochs, length {QUICK['length']}, "
                   f"{QUICK['samples']} heatmap sample")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the generators, initial weights and batches (default 0)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {DEFAULT['epochs']}, quick {QUICK['epochs']})")
    p.add_argument("--length", type=int,
                   help=f"synthetic series length (default {DEFAULT['length']}, quick {QUICK['length']}); "
                   "real series keep their own")
    p.add_argument("--samples", type=int,
                   help=f"validation windows drawn as single heatmaps per head (default {DEFAULT['samples']}, quick "
                   f"{QUICK['samples']})")
    p.add_argument("--alpha", type=float, default=1.0, help="WCMHA's power-law exponent (default 1.0)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained in parallel, each in its own process (default: min(2, CPUs) = %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: the model is small, and torch's threads spin badly "
                   "when other processes share the cores: measured 6x slower with 2 threads on 2 busy cores)")
    p.add_argument("--json", action="store_true", help="print comparison.json to stdout instead of the table")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class UsageError(ValueError):
    pass


def _split(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _resolve(args: argparse.Namespace):
    from tsattn.analysis.generators import SERIES_NAMES, resolve_name
    from tsattn.analysis.model import ATTENTIONS

    preset = QUICK if args.quick else DEFAULT
    names = _split(args.generators) if args.generators else list(QUICK_SERIES if args.quick else SERIES_NAMES)
    if any(n.lower() == "all" for n in names):
        names = list(SERIES_NAMES)
    series: List[str] = []
    for n in names:
        try:
            canonical = resolve_name(n)
        except ValueError as exc:
            raise UsageError(f"--generators: {exc}") from None
        if canonical not in series:
            series.append(canonical)
    if not series:
        raise UsageError("--generators: no series given")
    attentions: List[str] = []
    for a in _split(args.attention):
        if a.lower() not in ATTENTIONS:
            raise UsageError(f"--attention: unknown attention {a!r}; choose from {', '.join(ATTENTIONS)}")
        if a.lower() not in attentions:
            attentions.append(a.lower())
    if not attentions:
        raise UsageError("--attention: no attention given")
    epochs = preset["epochs"] if args.epochs is None else args.epochs
    length = preset["length"] if args.length is None else args.length
    samples = preset["samples"] if args.samples is None else args.samples
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1; got {epochs}")
    if samples < 0:
        raise UsageError(f"--samples must be >= 0; got {samples}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1; got {args.threads}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1; got {args.jobs}")
    if not (math.isfinite(args.alpha) and args.alpha >= 0):
        raise UsageError(f"--alpha must be a finite number >= 0; got {args.alpha}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder")
    return series, attentions, epochs, length, samples, preset["metric_samples"], out


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def comparison_markdown(comparison: Dict[str, object]) -> str:
    """The comparison table (one row per series and attention) with its configuration and definitions."""
    cfg = comparison["config"]
    lines = [
        "# Attention-map study: standard vs WCMHA",
        "",
        f"Seed 004's model ({cfg['model']['n_layers']} layers, d_model {cfg['model']['d_model']}, "
        f"{cfg['model']['n_heads']} heads, input {cfg['model']['input_len']}, horizon {cfg['model']['horizon']}), "
        f"{cfg['epochs']} epochs, synthetic length {cfg['length']}, seed {cfg['seed']}, WCMHA alpha "
        f"{cfg['model']['alpha']}; both attentions causal.",
        "",
        "| series | attention | val MSE | entropy (nats) | norm. entropy | Gini | lag exponent | R² |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in comparison["runs"]:
        lines.append(
            f"| {r['series']} | {r['attention']} | {_fmt(r['val_mse'])} | {_fmt(r['entropy'])} | "
            f"{_fmt(r['entropy_normalised'])} | {_fmt(r['gini'])} | {_fmt(r['lag_exponent'])} | "
            f"{_fmt(r['lag_exponent_r2'], 2)} |"
        )
    wc = [r for r in comparison["runs"] if r["attention"] == "wcmha"]
    lines += [
        "",
        "val MSE: last epoch, on windows whose targets follow the training split, in units of the training split's "
        "std. Entropy, Gini: means over layers, heads, query rows and validation samples. Lag exponent: "
        "least-squares slope of log(mean attention weight) against log(lag) over lags 1.."
        f"{cfg['max_lag']}, of the lag profile averaged over all layers and heads (negative: attention decays with "
        "lag); R² of that fit. Definitions: tsattn/analysis/metrics.py.",
    ]
    if wc:
        neg = sum(1 for r in wc if math.isfinite(r["lag_exponent"]) and r["lag_exponent"] < 0)
        lines += ["", f"WCMHA lag exponent negative on {neg} of {len(wc)} series."]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _write_run(folder: Path, result, series: str, info: Dict[str, object], config: Dict[str, object],
               samples: int) -> List[str]:
    from tsattn.analysis import plots

    folder.mkdir(parents=True)
    files: List[str] = []

    def name(n: str) -> Path:
        files.append(n)
        return folder / n

    label = f"{series} / {result.attention}"
    plots.training_curves(result.history, name("training_curves.png"), f"Training curves: {label}")
    plots.attention_summary(result.maps, result.metrics["per_head"], name(f"attention_summary_{series}.png"),
                            f"Attention maps (mean over {result.maps[0].shape[0]} validation windows): {label}")
    plots.entropy_analysis(result.maps, name("entropy_analysis.png"), f"Attention entropy: {label}")
    n_samples = min(samples, result.maps[0].shape[0])
    with plots.HeatmapWriter() as heatmap:
        for layer, m in enumerate(result.maps):
            for head in range(m.shape[1]):
                for s in range(n_samples):
                    heatmap(m[s, head], name(f"attention_L{layer}_H{head}_S{s}.png"),
                            f"{label}: layer {layer}, head {head}, sample {s}")
    _write_json(name("attention_metrics.json"), {
        "series": series,
        "attention": result.attention,
        "causal": True,
        "n_maps": int(result.maps[0].shape[0]),
        "validation_windows": result.sample_windows,
        "heatmap_samples": {f"S{s}": result.sample_windows[s] for s in range(n_samples)},
        "definitions": "tsattn/analysis/metrics.py (module docstring)",
        "per_head": result.metrics["per_head"],
        "mean": result.metrics["mean"],
        "lag_profile": result.metrics["lag_profile"],
    })
    files.append("summary.json")
    _write_json(folder / "summary.json", {
        "series": info,
        "attention": result.attention,
        "config": config,
        "n_train_windows": result.n_train,
        "n_val_windows": result.n_val,
        "val_mse": result.val_mse,
        "best_val_mse": min(result.history["val_loss"]),
        "history": result.history,
        "train_seconds": round(result.seconds, 3),
        "metrics": result.metrics["mean"],
        "files": files,
    })
    return files


_EVENTS = None  # in worker processes: the queue that carries per-epoch progress back to the parent


def _init_worker(events, threads: int) -> None:
    global _EVENTS
    import torch

    _EVENTS = events
    torch.set_num_threads(threads)


def _run_task(task: Dict[str, object], on_epoch=None) -> Dict[str, object]:
    """Train, analyse and write one (series, attention) run; returns its comparison row. Runs in a worker
    process when --jobs > 1 (then progress goes through ``_EVENTS``)."""
    from tsattn.analysis import experiment

    name, attention = task["series"], task["attention"]
    if on_epoch is None and _EVENTS is not None:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            _EVENTS.put((name, attention, train_loss, val_loss))

    result = experiment.run(name, task["values"], attention, task["model_cfg"], task["train_cfg"], task["seed"],
                            on_epoch)
    files = _write_run(Path(task["folder"]), result, name, task["info"], task["config"], task["samples"])
    mean = result.metrics["mean"]
    return {
        "series": name,
        "attention": attention,
        "val_mse": result.val_mse,
        "entropy": mean["entropy"],
        "entropy_normalised": mean["entropy_normalised"],
        "gini": mean["gini"],
        "lag_exponent": mean["lag_exponent"],
        "lag_exponent_r2": mean["lag_exponent_r2"],
        "train_seconds": round(result.seconds, 3),
        "folder": f"{name}/{attention}",
        "files": len(files),
    }


def _row_line(row: Dict[str, object]) -> str:
    return (f"{row['series']}/{row['attention']}: val MSE {row['val_mse']:.4f}, lag exponent "
            f"{row['lag_exponent']:.3f} (R² {row['lag_exponent_r2']:.2f}), {row['train_seconds']:.1f} s")


def _execute(tasks: List[Dict[str, object]], jobs: int, threads: int, bar) -> List[Dict[str, object]]:
    """Run the tasks in this process (jobs == 1) or in a pool of ``jobs`` processes; rows in task order.

    On Linux the workers are forked, as PyTorch's DataLoader workers are, after this process has imported torch,
    matplotlib and the optimiser's lazy imports (about 4 s of CPU that each spawned worker would repeat); each
    worker then sets its own thread count. Elsewhere they are spawned.
    """
    def progress(name: str, attention: str, train_loss: float, val_loss: float) -> None:
        bar.set_description(f"{name}/{attention}")
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        bar.update(1)

    if jobs == 1:
        import torch

        torch.set_num_threads(threads)
        rows = []
        for task in tasks:
            bar.set_description(f"{task['series']}/{task['attention']}")
            rows.append(_run_task(task, lambda e, tl, vl, t=task: progress(t["series"], t["attention"], tl, vl)))
            bar.write(_row_line(rows[-1]), file=sys.stderr)
        return rows

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if sys.platform == "linux":
        import importlib

        import torch

        importlib.import_module("tsattn.analysis.plots")  # imported once here, inherited by the forked workers
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # its first call imports torch._dynamo
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("spawn")
    events = ctx.Queue()

    def drain(timeout: float = 0.0) -> None:
        while True:
            try:
                progress(*(events.get(timeout=timeout) if timeout else events.get_nowait()))
            except queue_mod.Empty:
                return

    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(events, threads)) as pool:
        futures = {pool.submit(_run_task, task): i for i, task in enumerate(tasks)}
        rows: List[Optional[Dict[str, object]]] = [None] * len(tasks)
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    rows[futures[f]] = f.result()  # re-raises a worker's exception
                    bar.write(_row_line(rows[futures[f]]), file=sys.stderr)
        except BaseException:
            for f in pending:  # do not train the rest after a failure
                f.cancel()
            raise
        if bar.n < bar.total:
            drain(timeout=0.5)  # the last epochs' events can trail the results
    return rows  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    series_names, attentions, epochs, length, samples, metric_samples, out = _resolve(args)

    from tqdm import tqdm

    from tsattn.analysis import experiment, generators
    from tsattn.analysis.model import ModelConfig

    model_cfg = ModelConfig(alpha=args.alpha)
    train_cfg = replace(experiment.TrainConfig(), epochs=epochs, metric_samples=metric_samples)
    data = {}
    for i, name in enumerate(series_names):
        values = generators.make_series(name, length, seed=args.seed + i)
        try:  # refuse before any training if a series cannot hold a training and a validation window
            experiment.make_windows(values, model_cfg.input_len, model_cfg.horizon, train_cfg.train_fraction)
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
        data[name] = values
    config = {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "epochs": epochs,
        "length": length,
        "seed": args.seed,
        "samples": samples,
        "max_lag": (model_cfg.input_len - 1) // 2,
        "causal": True,
    }

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tsattn-analyze-", dir=out))
    t_start = time.perf_counter()
    finished = False
    try:
        tasks = []
        for i, name in enumerate(series_names):
            info = generators.describe(name)
            info["length"] = int(data[name].size)
            info["seed"] = None if name in generators.REAL_SERIES else args.seed + i
            for attention in attentions:
                tasks.append({
                    "series": name, "attention": attention, "values": data[name], "model_cfg": model_cfg,
                    "train_cfg": train_cfg, "seed": args.seed, "info": info, "config": config, "samples": samples,
                    "folder": str(staging / name / attention),
                })
        jobs = min(args.jobs, len(tasks))
        # the bar only on a terminal: a redirected log gets the per-run lines, not carriage returns
        with tqdm(total=len(tasks) * epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True,
                  disable=not sys.stderr.isatty()) as bar:
            runs = _execute(tasks, jobs, args.threads, bar)
        comparison = {"config": {**config, "jobs": jobs, "threads": args.threads}, "runs": runs,
                      "seconds": round(time.perf_counter() - t_start, 3)}
        markdown = comparison_markdown(comparison)
        (staging / "comparison.md").write_text(markdown)
        _write_json(staging / "comparison.json", comparison)
        for name in series_names:  # move into place: replace this invocation's series folders
            target = out / name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(staging / name, target)
        for fname in ("comparison.md", "comparison.json"):
            os.replace(staging / fname, out / fname)
        finished = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not finished and created and not any(out.iterdir()):
            out.rmdir()  # a failed run leaves no trace of a folder it created

    log.info("wrote %s (%d runs) in %.1f s", out, len(runs), comparison["seconds"])
    if args.json:
        print(json.dumps(comparison, indent=2))
    else:
        print(markdown, end="")
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return run(args)
    except UsageError as exc:
        print(f"tsattn-analyze: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tsattn-analyze: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception:
        log.exception("internal error")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
