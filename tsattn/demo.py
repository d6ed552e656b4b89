"""``tsattn demo``: the embedded end-to-end demo, the README's main job.

Each step prints what it did and what it measured; the demo exits non-zero if a check fails. ``--out DIR``
keeps everything it makes in DIR (patched clones, patches, exports, analysis heatmaps) and ends with a list of it
and the commands to try next; without it, the demo works in a temporary folder removed at exit. Third-party
warnings stay out of its output; on a terminal, the long steps show their progress on one line of stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from tsattn.modules import WCMHA

Step = Tuple[str, Callable[[argparse.Namespace], str]]


def _reference(m: WCMHA, x: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) - alpha * log(dt + 1), causal) V in float64, written out independently."""
    b, l, _ = x.shape
    h, d = m.n_heads, m.head_dim
    q = (x @ m.q_proj.weight.T + m.q_proj.bias).view(b, l, h, d).transpose(1, 2)
    k = (x @ m.k_proj.weight.T + m.k_proj.bias).view(b, l, h, d).transpose(1, 2)
    v = (x @ m.v_proj.weight.T + m.v_proj.bias).view(b, l, h, d).transpose(1, 2)
    i = torch.arange(l, dtype=torch.float64)
    dt = i[:, None] - i[None, :]
    alpha = float(m.decay.alpha)
    bias = torch.where(dt >= 0, -alpha * torch.log(dt.clamp(min=0) + 1), torch.full_like(dt, -math.inf))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    y = (w @ v).transpose(1, 2).reshape(b, l, h * d)
    return y @ m.out_proj.weight.T + m.out_proj.bias


def step_reference(args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    m = WCMHA(64, 4, alpha=1.0, block_size=128).double().eval()
    x = torch.randn(2, 300, 64, dtype=torch.float64)
    err = (m(x)[0] - _reference(m, x)).abs().max().item()
    if err > 1e-10:
        raise RuntimeError(f"WCMHA differs from the float64 reference by {err:.3g}")
    return f"WCMHA (powerlaw, alpha=1), L=300 in blocks of 128 vs a float64 dense reference: max |err| = {err:.2g}"


def step_cache(args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    m = WCMHA(64, 4, n_kv_heads=2, alpha=1.0, max_context=32).eval()
    x = torch.randn(1, 80, 64)
    with torch.no_grad():
        full, _ = m(x)
        past, outs = None, []
        for t in range(x.shape[1]):
            y, past = m(x[:, t : t + 1], past)
            outs.append(y)
    err = (torch.cat(outs, 1) - full).abs().max().item()
    if err > 1e-5:
        raise RuntimeError(f"cached decoding differs from the full forward by {err:.3g}")
    return (f"GQA (4 query / 2 kv heads) with a sliding 32-position cache: 80 single-step decodes vs one full "
            f"forward: max |err| = {err:.2g}; cache holds {past[0].shape[2]} positions")


def step_long(args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    l = args.length
    q, k, v = (torch.randn(1, 4, l, 32) for _ in range(3))
    m = WCMHA(128, 4, alpha=1.0)

    def timed(fn: Callable[[], torch.Tensor]) -> Tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out

    from tsattn.modules import decayed_attention, dense_bias

    ms_sdpa, _ = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    ms_blocked, y_blocked = timed(lambda: decayed_attention(q, k, v, m.decay))
    ms_dense, y_dense = timed(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_bias(m.decay, l, l, None, q.dtype, q.device))
    )
    err = (y_blocked - y_dense).abs().max().item()
    return (f"L={l}, 4 heads: causal SDPA {ms_sdpa:.0f} ms; WCMHA blocked {ms_blocked:.0f} ms; "
            f"WCMHA with a dense {l}x{l} bias {ms_dense:.0f} ms; max |blocked - dense| = {err:.2g}")


def _calf_demo(args: argparse.Namespace) -> dict:
    """State shared by the steps: ``tmp``, the folder everything is made in: ``--out`` (kept), else a temporary
    folder removed at exit."""
    state = getattr(args, "_calf_demo", None)
    if state is None:
        out = getattr(args, "out", None)
        if out is not None:
            tmp = Path(out).resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            import atexit
            import shutil
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix="tsattn-demo-"))
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        state = args._calf_demo = {"tmp": tmp}
    return state


def _progress(text: str) -> None:
    """Progress within a long step, on one line of stderr, only on a terminal (``_progress("")`` clears it)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + (f"      ... {text}" if text else ""))
        sys.stderr.flush()


def step_inject(args: argparse.Namespace) -> str:
    from tsattn.examples import lookalike_repo
    from tsattn.injector import engine

    state = _calf_demo(args)
    repo = lookalike_repo("calf_lookalike", state["tmp"] / "CALF")
    t0 = time.perf_counter()
    result = engine.inject(repo, "wcmha", patch_out=state["tmp"] / "patches" / "calf-wcmha.patch")
    ms = (time.perf_counter() - t0) * 1e3
    again = engine.inject(repo, "wcmha", patch_out=state["tmp"] / "patches" / "calf-wcmha.patch").status
    if again != "already applied":
        raise RuntimeError(f"a second identical injection was not a no-op: {again}")
    state.update(repo=repo, patch=Path(result.patch_path), commit=result.upstream_commit)
    lines = result.patch.count(b"\n")
    return (f"copied the CALF look-alike to {repo} (git, commit {result.upstream_commit[:7]}); tsattn-inject "
            f"--feature wcmha: {result.status} in {ms:.0f} ms: changed {', '.join(result.changed)}; added "
            f"{', '.join(result.added)}; patch of {lines} lines at {result.patch_path}; run again: {again}")


def step_patch(args: argparse.Namespace) -> str:
    import subprocess

    import git

    state = _calf_demo(args)
    fresh = state["tmp"] / "pristine"
    git.Repo.clone_from(state["repo"], fresh)
    for cmd in (["git", "apply", "--check", str(state["patch"])], ["git", "apply", str(state["patch"])]):
        proc = subprocess.run(cmd, cwd=fresh, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    touched = ("models/CALF.py", "models/GPT2_arch.py", "run.py", "models/PowerformerAttention.py",
               "models/PowerformerGPT2.py")
    differ = [p for p in touched if (fresh / p).read_bytes() != (state["repo"] / p).read_bytes()]
    if differ:
        raise RuntimeError(f"after git apply, these files differ from the injected ones: {differ}")
    return (f"git apply --check, then git apply, on a pristine clone at {state['commit'][:7]}: clean; the "
            f"{len(touched)} touched files are byte-identical to the injected ones")


def step_calf_model(args: argparse.Namespace) -> str:
    import types
    import warnings

    from tsattn.examples import import_from, lookalike_repo, offline_gpt2

    state = _calf_demo(args)
    base = lookalike_repo("calf_lookalike", state["tmp"] / "unpatched")
    unpatched_module = import_from(base, "models.CALF")
    import peft

    unpatched_module.get_peft_model = peft.get_peft_model  # upstream (and the look-alike) never import it
    patched_module = import_from(state["repo"], "models.CALF")

    def configs(**kw):
        return types.SimpleNamespace(pred_len=24, seq_len=96, d_model=32, r=8, lora_alpha=32, lora_dropout=0.0,
                                     gpt_layers=3, **kw)

    with warnings.catch_warnings(), offline_gpt2():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        unpatched = unpatched_module.Model(configs(), "cpu").eval()
        zero = patched_module.Model(configs(powerformer_alpha=0.0), "cpu").eval()
        one = patched_module.Model(configs(powerformer_alpha=1.0), "cpu").eval()
    checkpoint = unpatched.state_dict()
    new_keys = sorted(set(zero.state_dict()) - set(checkpoint))
    zero.load_state_dict(checkpoint)  # strict: an unpatched checkpoint keeps working
    one.load_state_dict(checkpoint)
    x = torch.randn(4, 96, 7)
    with torch.no_grad():
        a, b, c = unpatched(x), zero(x), one(x)
    err0 = (a["outputs_time"] - b["outputs_time"]).abs().max().item()
    err1 = (a["outputs_time"] - c["outputs_time"]).abs().max().item()
    if err0 > 1e-5 or not torch.equal(a["outputs_text"], b["outputs_text"]):
        raise RuntimeError(f"alpha=0 does not reproduce the unpatched forecast: max |diff| = {err0:.3g}")
    return (f"patched Model built offline (random GPT-2, 3 layers); unpatched checkpoint loads strictly "
            f"({len(new_keys)} new keys, all decay alphas); forecast {tuple(b['outputs_time'].shape)}: alpha=0 vs "
            f"unpatched max |diff| = {err0:.2g}, alpha=1 differs by {err1:.2g}; text branch bit-identical")


def step_export(args: argparse.Namespace) -> str:
    from tsattn.export.exporter import export
    from tsattn.export.manifest import load_manifest, parity_table
    from tsattn.export.models import MODELS

    out = _calf_demo(args)["tmp"] / "exports" / "reference"
    _progress("exporting the reference forecaster (ONNX, TorchScript) and checking parity")
    export(MODELS["reference"].build({}, None, 0), out, progress=True)
    m = load_manifest(out)  # re-reads the manifest and checks every file's sha256
    cfg, c = m.source["config"], m.cache
    files = ", ".join(f"{f.path} ({f.bytes / 1e6:.1f} MB)" for f in m.files)
    table = "\n".join("        " + line for line in parity_table(m.parity).splitlines())
    return (f"reference forecaster (d_model {cfg['d_model']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, "
            f"max_context {c.max_context}) -> {out}: {files} + manifest.json, sha256 verified; {m.exporter} exporter, "
            f"opset {m.opset}; one graph for prefill and decode, cache tensors past_key_values.{{i}}.key/value -> "
            f"present.{{i}}.key/value. Parity against eager (max abs error, tol 1e-4):\n{table}")


def step_wave_transformer(args: argparse.Namespace) -> str:
    import git

    from tsattn.examples import import_from, lookalike_repo
    from tsattn.injector import engine

    state = _calf_demo(args)
    tmp = state["tmp"]
    repo = lookalike_repo("wave_transformer_lookalike", tmp / "Wave-Transformer")
    base = lookalike_repo("wave_transformer_lookalike", tmp / "Wave-Transformer-unpatched")
    t0 = time.perf_counter()
    engine.inject(repo, "enhancements", patch_out=tmp / "patches" / "wave_transformer-enhancements.patch")
    git.Repo(repo).git.add("-A")  # commit before the next feature
    actor = git.Actor("tsattn", "tsattn@example.invalid")
    git.Repo(repo).index.commit("tsattn: enhancements", author=actor, committer=actor)
    engine.inject(repo, "wcmha", patch_out=tmp / "patches" / "wave_transformer-wcmha.patch")
    ms = (time.perf_counter() - t0) * 1e3

    def model(root: Path, seed: int = 0, **flags):
        wt = import_from(root / "src", "wave_transformer.core.wave_transformer")
        enc = import_from(root / "src", "wave_transformer.language_modelling.token_encoder")
        dec = import_from(root / "src", "wave_transformer.language_modelling.token_decoder")
        torch.manual_seed(seed)
        return wt.WaveTransformer(enc.TokenToWaveEncoder(64, 8, 16), dec.WaveToTokenDecoder(64, 8, 16, 2, 2),
                                  num_harmonics=8, transformer_num_layers=3, transformer_num_heads=4,
                                  transformer_heads_kv=2, transformer_d_ff_multi=2, dropout=0.0, use_flash=False,
                                  **flags), wt.WaveTransformer, enc.TokenToWaveEncoder, dec.WaveToTokenDecoder

    x = {"token_ids": torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))}
    unpatched, off = model(base)[0].eval(), model(repo)[0].eval()
    with torch.no_grad():
        same = torch.equal(unpatched(x), off(x)) and list(unpatched.state_dict()) == list(off.state_dict())
    if not same:
        raise RuntimeError("with every flag off the patched WaveTransformer differs from the unpatched one")
    on, cls, enc_cls, dec_cls = model(repo, use_ahs=True, use_fcl=True, use_pcca=True, use_mrwp=True,
                                      pyramid_interval=1, use_wcmha=True)
    logits, stats = on.train()(x, freq_limit=0.5, return_ahs_stats=True)
    logits.logsumexp(-1).mean().backward()
    on.eval().save(tmp / "wave-model")
    with torch.no_grad():
        err = (cls.load(tmp / "wave-model", enc_cls, dec_cls).eval()(x) - on(x)).abs().max().item()
    if err != 0 or not torch.isfinite(logits).all():
        raise RuntimeError(f"save -> load changed the outputs by {err:.3g}")
    return (f"tsattn-inject --feature enhancements, commit, --feature wcmha on the Wave-Transformer look-alike in "
            f"{ms:.0f} ms; flags off: outputs and weights identical to the unpatched model; every flag on "
            f"(AHS keeps {stats['actual_k_mean']:.0f}/8 harmonics, FCL, PCCA, MRWP, WCMHA): forward and backward "
            f"run; save -> load: outputs identical")


def step_runtime(args: argparse.Namespace) -> str:
    import statistics

    import numpy as np
    import statsmodels.api as sm

    from tsattn.export.exporter import export
    from tsattn.export.models import MODELS
    from tsattn.runtime import load

    data = sm.datasets.sunspots.load_pandas().data  # yearly sunspot numbers 1700-2008, shipped with statsmodels
    years, spots = data["YEAR"].astype(int).to_numpy(), data["SUNACTIVITY"].to_numpy(np.float32)
    options = {"loc": round(float(spots.mean()), 1), "scale": round(float(spots.std()), 1)}  # the graph's normalisation
    out = _calf_demo(args)["tmp"] / "exports" / "reference-sunspots"
    t0 = time.perf_counter()
    _progress("exporting the reference forecaster for sunspots (ONNX)")
    export(MODELS["reference"].build(options, None, 0), out, formats=["onnx"], exporter="legacy", progress=True)
    export_s = time.perf_counter() - t0
    with load(out, device="cpu") as rt:
        stream = rt.open_stream()
        shown, step_ms = [], []
        for year, value in zip(years, spots):
            if year % 25 == 0:
                _progress(f"streaming sunspots: {year}")
            t0 = time.perf_counter()
            forecast = rt.append(stream, float(value))  # one observation: one cached step
            step_ms.append((time.perf_counter() - t0) * 1e3)
            if year in (1800, 1900, 2008):
                shown.append(f"after {year}: next 3 years {', '.join(f'{v:.0f}' for v in forecast[:3])}")
        history = spots[None]
        recompute = rt.predict({"values": history})["forecast"][0, -1]  # the same forecast from scratch
        err = float(np.abs(recompute - forecast).max())
        recompute_ms = []
        for _ in range(5):
            t0 = time.perf_counter()
            rt.predict({"values": history})
            recompute_ms.append((time.perf_counter() - t0) * 1e3)
        providers = rt.providers["model"]
    if err > 1e-3 * max(1.0, float(np.abs(recompute).max())):
        raise RuntimeError(f"the streamed forecast differs from the recomputed one by {err:.3g}")
    cached = statistics.median(step_ms[-100:])
    full = statistics.median(recompute_ms)
    return (f"sunspots (statsmodels, {len(spots)} yearly values {years[0]}-{years[-1]}) streamed one value at a time "
            f"through tsattn.runtime ({providers[0]}; reference model exported with the legacy exporter in "
            f"{export_s:.1f} s, random weights: the numbers show the plumbing, not skill): "
            f"{'; '.join(shown)}; export at {out}. Last forecast vs a recompute over all {len(spots)} values: max |diff| = "
            f"{err:.2g}. Cached step {cached:.2f} ms vs recompute {full:.1f} ms: {full / cached:.0f}x faster")


def step_hephaestus(args: argparse.Namespace) -> str:
    from tsattn.examples import import_from, lookalike_repo
    from tsattn.export.exporter import _stepwise, eager_runner
    from tsattn.export.hephaestus import HephaestusExportConfig, build_hephaestus_export, time_series_config
    from tsattn.injector import engine

    state = _calf_demo(args)
    tmp = state["tmp"]
    repo = lookalike_repo("hephaestus_lookalike", tmp / "Hephaestus")
    base = lookalike_repo("hephaestus_lookalike", tmp / "Hephaestus-unpatched")
    t0 = time.perf_counter()
    engine.inject(repo, "efficient", patch_out=tmp / "patches" / "hephaestus-efficient.patch")
    ms = (time.perf_counter() - t0) * 1e3
    cfg = HephaestusExportConfig.from_options({}, "efficient", with_checkpoint=False)
    reservoir = torch.randint(1, 64, (len(cfg.tokens), 8), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    numeric = torch.randn(2, 3, 24, generator=g)
    ids = torch.tensor([cfg.tokens.index(t) for t in cfg.object_tokens], dtype=torch.float32)
    categorical = ids[torch.randint(0, len(ids), (2, 1, 24), generator=g)]

    def decoder(root: Path, **kwargs):
        models = import_from(root, "hephaestus.timeseries_models.models")
        torch.manual_seed(0)
        model = models.TimeSeriesDecoder(time_series_config(models.TimeSeriesConfig, cfg, reservoir, 64), 16, 2,
                                         **kwargs).eval()
        with torch.no_grad():
            return model(numeric, categorical).numeric

    unpatched, standard = decoder(base), decoder(repo)
    flash = decoder(repo, attention_type="flash")
    local = decoder(repo, attention_type="local", attention_kwargs={"window_size": 4})
    if not torch.equal(unpatched, standard) or (flash - standard).abs().max() > 1e-5:
        raise RuntimeError("the patched TimeSeriesDecoder's default (standard) or flash differs from the unpatched one")
    worst = 0.0
    for attention_type, kwargs in (("local", {"window_size": 4}), ("chunked", {"chunk_size": 4, "overlap": 1}),
                                   ("wcmha", {"alpha": 0.5})):
        exportable = build_hephaestus_export(repo, "efficient", {"attention_type": attention_type,
                                                                 "attention_kwargs": kwargs}, None, 0)
        run = eager_runner(exportable.module)
        rows = _stepwise(exportable.spec, run, run, "eager")
        if not all(r["ok"] for r in rows):
            raise RuntimeError(f"cached decoding with {attention_type} differs from one forward")
        worst = max(worst, max(r["max_abs_err"] for r in rows))
    return (f"tsattn-inject --feature efficient on the Hephaestus look-alike in {ms:.0f} ms; TimeSeriesDecoder: "
            f"default (standard) bit-identical to the unpatched model, flash equal (<= 1e-5), local window 4 differs "
            f"by {(local - standard).abs().max():.2f}; cached decoding (local, chunked, wcmha) equals one forward "
            f"(max error {worst:.1e})")


def step_stream_hephaestus(args: argparse.Namespace) -> str:
    import numpy as np
    import statsmodels.api as sm

    from tsattn.examples import lookalike_repo
    from tsattn.export.exporter import export
    from tsattn.export.hephaestus import build_hephaestus_export
    from tsattn.injector import engine
    from tsattn.runtime import CacheFull, load

    tmp = _calf_demo(args)["tmp"]
    repo = tmp / "Hephaestus-stream"
    lookalike_repo("hephaestus_lookalike", repo)
    engine.inject(repo, "efficient", patch_out=tmp / "patches" / "hephaestus-stream.patch")
    t0 = time.perf_counter()
    options = {"attention_type": "local", "attention_kwargs": {"window_size": 8}, "numeric_columns":
               ["realgdp", "realcons", "realinv"], "categorical_columns": ["quarter"],
               "object_tokens": ["Q1", "Q2", "Q3", "Q4"]}
    _progress("exporting the patched Hephaestus decoder (ONNX, cached decode step)")
    export(build_hephaestus_export(repo, "efficient", options, None, 0), tmp / "exports" / "hephaestus-local",
           formats=["onnx"], progress=True)
    export_s = time.perf_counter() - t0
    data = sm.datasets.macrodata.load_pandas().data  # US quarterly macro data 1959-2009, shipped with statsmodels
    growth = np.diff(np.log(data[["realgdp", "realcons", "realinv"]].to_numpy()), axis=0).T  # (3, 202)
    numeric = ((growth - growth.mean(1, keepdims=True)) / growth.std(1, keepdims=True)).astype(np.float32)
    with load(tmp / "exports" / "hephaestus-local", device="cpu") as rt:
        tokens = rt.manifest.task.client["tokens"]
        quarter = np.asarray([[tokens.index(f"Q{int(q)}") for q in data["quarter"][1:]]], np.float32)  # (1, 202)
        whole = rt.predict({"numeric_inputs": numeric[None], "categorical_inputs": quarter[None]})
        stream, start, pieces, sizes = rt.open_stream(), 0, [], (1, 3, 1, 7, 2, 5)
        t0 = time.perf_counter()
        while start < numeric.shape[1]:
            _progress(f"streaming US macro data: quarter {start}/{numeric.shape[1]}")
            n = min(sizes[len(pieces) % len(sizes)], numeric.shape[1] - start)
            out = rt.append(stream, {"numeric_inputs": numeric[:, start:start + n],
                                     "categorical_inputs": quarter[:, start:start + n]})
            pieces.append(out["numeric"])
            start += n
        stream_ms = (time.perf_counter() - t0) * 1e3 / len(pieces)
        err = float(np.abs(np.concatenate(pieces, axis=1) - whole["numeric"][0]).max())
        capacity = rt.manifest.cache.max_context
        try:  # absolute positions: a stream holds at most the positional table's length
            rt.append(stream, {"numeric_inputs": np.zeros((3, capacity), np.float32),
                               "categorical_inputs": np.zeros((1, capacity), np.float32)})
            refused = "not refused"
        except CacheFull:
            refused = f"refused (409), the stream unchanged at {rt.get_stream(stream).observed} steps"
    if err > 1e-4:
        raise RuntimeError(f"the streamed Hephaestus outputs differ from one predict by {err:.3g}")
    return (f"Hephaestus look-alike patched (efficient), TimeSeriesDecoder with local attention exported in "
            f"{export_s:.1f} s (cache: {rt.manifest.cache.layers} layers, absolute positions up to {capacity}); "
            f"US macro growth (statsmodels macrodata: realgdp, realcons, realinv, quarter as a token; {start} "
            f"quarters) streamed in chunks of 1, 3, 1, 7, ... steps ({len(pieces)} appends, {stream_ms:.1f} ms "
            f"each): every step's outputs equal one stateless predict over the whole series (max |diff| "
            f"{err:.1e}); {capacity} more steps: {refused}")


def step_analysis(args: argparse.Namespace) -> str:
    from tsattn.analysis import experiment, generators, plots
    from tsattn.analysis.model import ModelConfig

    out = _calf_demo(args)["tmp"] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    series = generators.make_series("HeavyTailedAR1", 600, seed=0)
    model_cfg = ModelConfig(d_model=32, n_heads=2, d_ff=64, input_len=48, horizon=8)
    train_cfg = experiment.TrainConfig(epochs=2, metric_samples=8)
    lines = []
    for attention in ("standard", "wcmha"):
        def on_epoch(epoch, train_loss, val_loss, attention=attention):
            _progress(f"training {attention} on HeavyTailedAR1: epoch {epoch + 1}/{train_cfg.epochs}, "
                      f"val MSE {val_loss:.3f}")

        result = experiment.run("HeavyTailedAR1", series, attention, model_cfg, train_cfg, seed=0, on_epoch=on_epoch)
        last = len(result.maps) - 1
        weights = result.maps[last][:, 0].mean(0)  # (L, L): the last layer's first head, averaged over windows
        path = out / f"attention_{attention}_L{last}_H0.png"
        plots.heatmap(weights, path, f"HeavyTailedAR1, {attention}: layer {last}, head 0 (mean of "
                                     f"{result.maps[last].shape[0]} windows)")
        mean = result.metrics["mean"]
        lines.append(f"{attention}: val MSE {result.val_mse:.3f}, entropy {mean['entropy']:.2f}, lag exponent "
                     f"{mean['lag_exponent']:.2f} -> {path.name}")
    return (f"seed 004's forecaster (tsattn.analysis, 2 epochs, small) on HeavyTailedAR1 with standard and WCMHA "
            f"attention; heatmaps in {out}: " + "; ".join(lines))


STEPS: List[Step] = [
    ("tsattn-inject: CALF look-alike + WCMHA (libcst), patch written", step_inject),
    ("the patch applies to a pristine clone (git apply)", step_patch),
    ("the patched CALF model: alpha=0 reproduces the unpatched forecast", step_calf_model),
    ("tsattn-inject: Wave-Transformer look-alike + the four enhancements and WCMHA", step_wave_transformer),
    ("tsattn-inject: Hephaestus look-alike + every efficient attention; cached decoding", step_hephaestus),
    ("WCMHA against an independent float64 reference", step_reference),
    ("KV cache: step-by-step decoding equals one full forward", step_cache),
    ("long inputs: blockwise decay bias vs a dense bias", step_long),
    ("export: the reference streaming forecaster to ONNX + TorchScript with parity checks", step_export),
    ("runtime: stream a real series (sunspots) through ONNX Runtime with a per-stream KV cache", step_runtime),
    ("runtime: inject, export and stream the Hephaestus look-alike (multivariate steps, named inputs)",
     step_stream_hephaestus),
    ("analysis: attention maps of a small forecaster, standard vs WCMHA, as heatmaps", step_analysis),
]

# what the demo leaves in --out, and what to try next with it
KEPT = {
    "CALF": "the CALF look-alike, injected with wcmha (git -C CALF diff shows the change)",
    "pristine": "a clone of the CALF look-alike with the patch applied by git apply",
    "unpatched": "the CALF look-alike as it was",
    "Wave-Transformer": "the Wave-Transformer look-alike with the enhancements and WCMHA",
    "Wave-Transformer-unpatched": "the Wave-Transformer look-alike as it was",
    "wave-model": "a WaveTransformer saved with every enhancement on (WaveTransformer.save)",
    "Hephaestus": "the Hephaestus look-alike with the efficient attentions",
    "Hephaestus-unpatched": "the Hephaestus look-alike as it was",
    "Hephaestus-stream": "the Hephaestus look-alike patched for the streaming step",
    "patches": "the patches tsattn-inject wrote (git apply them to a clean clone)",
    "exports": "exports: ONNX/TorchScript graphs and manifest.json (tsattn-serve serves them)",
    "analysis": "attention heatmaps (PNG) of the analysis step",
}


def _next_steps(out: Path) -> List[str]:
    return [
        f"git -C {out / 'CALF'} diff --stat",
        f"tsattn-inject --target {out / 'CALF'} --status",
        f"tsattn-export --target {out / 'CALF'} --feature wcmha --out {out / 'exports' / 'calf-wcmha'}",
        f"tsattn-serve {out / 'exports' / 'reference'}",
        f"tsattn-analyze --quick --out {out / 'analysis-quick'}",
    ]


def _report(out: Optional[Path], work: Optional[Path]) -> None:
    if out is None or work is None:
        print("demo: everything above was made in a temporary folder, removed now; `tsattn demo --out DIR` keeps "
              "it (patched clones, patches, exports, heatmaps)")
        return
    print(f"demo: kept in {work}:")
    for entry in sorted(work.iterdir()):
        print(f"  {entry.name + ('/' if entry.is_dir() else ''):<28}{KEPT.get(entry.name, '')}")
        if entry.name in ("patches", "exports", "analysis") and entry.is_dir():
            for sub in sorted(entry.iterdir()):
                print(f"    {sub.name + ('/' if sub.is_dir() else '')}")
    print("next, try:")
    for command in _next_steps(work):
        print(f"  {command}")


@contextlib.contextmanager
def _third_party_quiet() -> Iterator[None]:
    """Third-party libraries (transformers, peft, torch's exporters) warn about their own deprecations: not the
    demo's business. Warnings are ignored and transformers logs errors only within the block; restored after."""
    import logging

    name = "TRANSFORMERS_VERBOSITY"
    saved_env = os.environ.get(name)
    os.environ[name] = "error"  # read when transformers is first imported
    saved_level = logging.getLogger("transformers").level
    if "transformers" in sys.modules:
        logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env
        if "transformers" in sys.modules:
            logging.getLogger("transformers").setLevel(saved_level or logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tsattn demo",
        description="Run the embedded demo: each step prints what it checked and measured.",
        epilog="examples:\n  tsattn demo\n  tsattn demo --out demo-out     # keep what it makes, then try the "
               "commands it prints\n\nExit codes: 0 every step passed, 1 a step failed (its error is printed), "
               "2 usage error (e.g. --out not empty).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--length", type=int, default=4096, help="sequence length of the long-input step "
                        "(default %(default)s)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="keep everything the demo makes in DIR (new or empty): patched clones, patches, "
                             "exports, heatmaps (default: a temporary folder, removed at exit)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.exit(2, f"tsattn demo: --out {args.out}: {'not a folder' if not args.out.is_dir() else 'not empty'}"
                       f"; give a new or empty folder\n")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with _third_party_quiet():
        for i, (title, fn) in enumerate(STEPS, 1):
            print(f"[{i}/{len(STEPS)}] {title}", flush=True)
            try:
                text = fn(args)
            except Exception as exc:  # a failed check: report which step and why
                _progress("")
                print(f"      FAILED: {exc}", file=sys.stderr)
                return 1
            _progress("")
            print(f"      {text}", flush=True)
    print("demo: all steps passed")
    state = getattr(args, "_calf_demo", None)
    _report(args.out, None if state is None else state["tmp"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
