"""The one export loop: an ``Exportable`` -> ONNX and TorchScript files, parity checks and ``manifest.json``.

``export(exportable, out_dir)``:
    1. validate the spec (names, example sizes that dodge the 0/1 and equal-size traps, parity sizes);
    2. trace at the example sizes: ONNX (``dynamo`` or ``legacy`` exporter) and/or TorchScript (``torch.jit.trace``);
    3. check the ONNX graph's contract: ``onnx.checker`` (full check), input/output names and dtypes in order, fixed
       dims fixed and symbolic dims still symbolic and named as the spec says (a dim the exporter specialised is an
       error; output-only dims that the dynamo exporter names by expression, e.g. ``Max(0, past + seq - 512)``,
       get the spec's name);
    4. parity: ONNX Runtime (CPU) and the reloaded TorchScript against eager at every ``parity_sizes`` (none of
       them the traced sizes), every output's max abs error; with a cache, step-by-step decoding (a prefill on an
       empty cache, then single steps and a chunk, each present fed back as the next past) against one full
       forward, outputs and final caches;
    5. write ``manifest.json`` (files with sha256 and size, graphs, cache spec, parity, versions).
Everything is written to a temporary directory beside ``out_dir`` and renamed into place at the end: a failure
(``ParityError``, ``GraphContractError``, anything) leaves no export directory behind.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from tsattn import __version__
from tsattn.export.manifest import FileEntry, GraphSpec, Manifest, TensorSpec, parity_table, upgrade_task
from tsattn.export.spec import EXPORTERS, Exportable, ExportSpec
from tsattn.export.task import Task

log = logging.getLogger("tsattn.export")

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18
MIN_OPSET = 13


def max_opset(exporter: str) -> int:
    """The newest opset ``exporter`` writes (torch's own constants; the legacy exporter stops earlier)."""
    from torch.onnx import _constants

    if exporter == "legacy":
        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    return int(getattr(_constants, "ONNX_MAX_OPSET", 23))
FILE_NAMES = {"onnx": "{graph}.onnx", "torchscript": "{graph}.pt"}

Arrays = Tuple[np.ndarray, ...]
Runner = Callable[[Arrays], Arrays]


class ExportError(Exception):
    """The export cannot be made faithfully; nothing was written."""


class GraphContractError(ExportError):
    """The exported graph's inputs/outputs differ from the spec (names, dtypes, a specialised dim)."""


class ParityError(ExportError):
    """A backend's outputs differ from eager beyond the tolerance. ``rows``: every parity row, failures included."""

    def __init__(self, message: str, rows: List[Dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


def versions(exporter: Optional[str] = None) -> Dict[str, Optional[str]]:
    """Versions of the software an export depends on."""
    import onnx
    import onnxruntime

    out = {"tsattn": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "onnxscript": None, "python": platform.python_version()}
    try:
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return out


def known_breakage() -> Optional[str]:
    """What in this environment is known to break the ``dynamo`` exporter, with the fix; None if nothing is.

    einops < 0.7 (CALF pins 0.4.1): ``torch.export`` cannot trace ``einops.rearrange`` with a dynamic dim
    (``TypeError: unhashable type: non-nested SymInt``, from einops' shape cache); 0.7 traces it."""
    import importlib.metadata as metadata

    try:
        version = metadata.version("einops")
    except metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    if tuple(parts) >= (0, 7):
        return None
    return (f"einops {version} is installed: with einops < 0.7, torch.export (the dynamo exporter's first capture) "
            f"fails on einops.rearrange with a dynamic dim (TypeError: unhashable type: non-nested SymInt) and the "
            f"exporter falls back to a capture that may fix a dim; if the export fails, fix: "
            f"`pip install 'einops>=0.7'` (CALF's code runs unchanged with it), or --exporter legacy")


# ---------------------------------------------------------------------------------------------------- tracing


@contextlib.contextmanager
def _quiet():
    """Exporters print progress to stdout and warn about their own deprecations and optional packages (e.g.
    torchvision): keep stdout for results and stderr for what the user needs (``-v`` shows it all)."""
    verbose = log.isEnabledFor(logging.DEBUG)
    # torch.onnx, and the graph passes of onnx_ir and onnxscript (they log each rewrite at INFO)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        if not verbose:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(module: nn.Module, example: Tuple[torch.Tensor, ...], spec: ExportSpec, path: Path, opset: int,
                exporter: str) -> None:
    """Trace ``module`` at ``example`` into ``path`` with symbolic dims named as in ``spec``."""
    inputs, outputs = spec.graph_inputs, spec.graph_outputs
    names_in, names_out = [t.name for t in inputs], [t.name for t in outputs]
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > (1 << 30)  # protobuf's 2 GB limit
    with _quiet():
        if exporter == "legacy":
            axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in inputs + outputs}
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset, input_names=names_in,
                              output_names=names_out, dynamic_axes={k: v for k, v in axes.items() if v},
                              do_constant_folding=True)
        elif exporter == "dynamo":
            dims = {d: torch.export.Dim(d, min=spec.dim_min.get(d, 1), max=spec.dim_max.get(d))
                    for d in spec.input_dims}
            shapes = tuple({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} or None for t in inputs)
            shapes = _match_signature(module, shapes)
            try:
                torch.onnx.export(module, example, str(path), dynamo=True, opset_version=opset, input_names=names_in,
                                  output_names=names_out, dynamic_shapes=shapes, external_data=big,
                                  verbose=False, report=False)
            except Exception as exc:
                text = str(exc)
                if "Constraints violated" in text or "specializ" in text.lower():
                    raise GraphContractError(f"the dynamo exporter specialised a symbolic dim of {spec.name}: "
                                             f"{text.strip().splitlines()[0]}") from exc
                raise
        else:
            raise ValueError(f"exporter must be one of {EXPORTERS}; got {exporter!r}")


def _match_signature(module: nn.Module, shapes: tuple) -> tuple:
    """torch.export wants one dynamic-shape entry per parameter of ``forward``: a ``*tensors`` parameter (as in
    ``FlatCache``) takes a tuple of the remaining inputs' entries."""
    out = []
    for k, param in enumerate(inspect.signature(module.forward).parameters.values()):
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(out) + (tuple(shapes[k:]),)
        if k < len(shapes):
            out.append(shapes[k])
    return tuple(out)


_ONNX_DTYPES = {"float32": 1, "int64": 7, "int32": 6, "bool": 9, "float16": 10, "float64": 11}


def check_onnx_io(model, spec: ExportSpec) -> List[str]:
    """Hold the ONNX graph (a ``ModelProto``, edited in place) to the spec's inputs and outputs.

    Names and dtypes must match in order; a fixed dim must be that size; a symbolic dim must still be symbolic
    (an exporter that specialised it, e.g. after tracing at size 0 or 1, fails here) and inputs' dims carry the
    spec's names. Output dims that only outputs have (a cache's ``present``) are renamed to the spec's name
    (the dynamo exporter writes an expression). Returns the renames made; raises ``GraphContractError``.
    """
    initializers = {i.name for i in model.graph.initializer}
    input_dims = set(spec.input_dims)
    renames: List[str] = []
    actual_inputs = [v for v in model.graph.input if v.name not in initializers]
    for kind, declared, actual in (("input", spec.graph_inputs, actual_inputs),
                                   ("output", spec.graph_outputs, list(model.graph.output))):
        got_names = [v.name for v in actual]
        want_names = [t.name for t in declared]
        if got_names != want_names:
            raise GraphContractError(f"the graph's {kind}s are {got_names}; the spec declares {want_names}")
        for want, value in zip(declared, actual):
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type != _ONNX_DTYPES[want.dtype]:
                raise GraphContractError(f"{kind} {want.name!r} has ONNX element type {tensor_type.elem_type}; "
                                         f"the spec declares {want.dtype}")
            dims = tensor_type.shape.dim
            if len(dims) != len(want.shape):
                raise GraphContractError(f"{kind} {want.name!r} has rank {len(dims)}; the spec declares "
                                         f"{list(want.shape)}")
            for axis, (w, dim) in enumerate(zip(want.shape, dims)):
                has_value = dim.HasField("dim_value")
                if isinstance(w, int):
                    if has_value and dim.dim_value != w:
                        raise GraphContractError(f"{kind} {want.name!r} dim {axis} is {dim.dim_value}; the spec "
                                                 f"declares {w}")
                    if not has_value:  # symbolic where the spec fixes it: record the fixed size (parity checks it)
                        dim.Clear()
                        dim.dim_value = w
                    continue
                if has_value:
                    raise GraphContractError(
                        f"{kind} {want.name!r} dim {axis} ({w!r}) was specialised to {dim.dim_value} by the "
                        f"exporter; it must stay symbolic (was it traced at size 0 or 1, or equal to another dim? With "
                        f"dynamo: did torch.export fail, so that the exporter fell back to a capture that specialises? "
                        f"-v shows why)")
                if dim.dim_param != w:
                    if kind == "input" or w in input_dims:
                        raise GraphContractError(f"{kind} {want.name!r} dim {axis} is named {dim.dim_param!r}; the "
                                                 f"spec declares {w!r} (the exporter did not keep the dim's name)")
                    renames.append(f"{want.name}[{axis}]: {dim.dim_param!r} -> {w!r}")
                    dim.Clear()
                    dim.dim_param = w
    return renames


def export_torchscript(module: nn.Module, example: Tuple[torch.Tensor, ...], path: Path,
                       freeze: bool = False) -> None:
    """``torch.jit.trace`` at ``example``, saved to ``path``; ``freeze``: only the weights the graph uses, inlined
    (``torch.jit.freeze`` without its numerics-changing optimisations)."""
    with _quiet():
        traced = torch.jit.trace(module, example, check_trace=False)
        if freeze:
            traced = torch.jit.freeze(traced.eval(), optimize_numerics=False)
        torch.jit.save(traced, str(path))


# ---------------------------------------------------------------------------------------------------- parity


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def eager_runner(module: nn.Module) -> Runner:
    def run(arrays: Arrays) -> Arrays:
        with torch.no_grad():
            return tuple(t.numpy() for t in _as_tuple(module(*(torch.from_numpy(a) for a in arrays))))
    return run


@contextlib.contextmanager
def _simple_jit_executor():
    """TorchScript's profiling executor re-profiles and re-optimises the graph for every new input shape (about
    0.5 s per shape here), and parity checks visit many shapes; run them on the simple executor instead."""
    setter = getattr(torch._C, "_jit_set_profiling_executor", None)
    previous = setter(False) if setter else None
    try:
        yield
    finally:
        if setter:
            setter(previous)


def torchscript_runner(path: Path) -> Runner:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    run_eager = eager_runner(loaded)

    def run(arrays: Arrays) -> Arrays:
        with _simple_jit_executor():
            return run_eager(arrays)
    return run


def onnxruntime_runner(path: Path, spec: ExportSpec) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [t.name for t in spec.graph_inputs]

    def run(arrays: Arrays) -> Arrays:
        return tuple(session.run(None, dict(zip(names, arrays))))
    return run


def _compare(got: Arrays, want: Arrays, specs: Sequence[TensorSpec], tol: float, row: Dict[str, Any]) -> List[Dict]:
    rows = []
    if len(got) != len(want):
        return [dict(row, output="*", max_abs_err=None, tol=tol, ok=False,
                     error=f"{len(got)} outputs, eager has {len(want)}")]
    for spec, g, w in zip(specs, got, want):
        r = dict(row, output=spec.name, tol=tol)
        if tuple(g.shape) != tuple(w.shape):
            r.update(max_abs_err=None, ok=False, error=f"shape {tuple(g.shape)} != eager {tuple(w.shape)}")
        elif g.dtype != w.dtype:
            r.update(max_abs_err=None, ok=False, error=f"dtype {g.dtype} != eager {w.dtype}")
        else:
            err = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) if g.size else 0.0
            r.update(max_abs_err=err, ok=bool(err <= tol))  # NaN compares False: a failure
        rows.append(r)
    return rows


def _stepwise(spec: ExportSpec, eager: Runner, backend: Runner, name: str) -> List[Dict[str, Any]]:
    """Cached decoding in ``backend`` vs one eager forward over the same positions (see ``StepwiseCheck``)."""
    sw, cache = spec.stepwise, spec.cache
    total = sum(sw.lengths)
    sizes = dict(spec.example_sizes, **{cache.batch_dim: sw.batch, sw.sequence_dim: total, cache.past_dim: 0})
    full = tuple(t.numpy() for t in spec.example_inputs(sizes, seed=4321))
    want = eager(full)
    n_in, n_out = len(spec.inputs), len(spec.outputs)
    seq_axes_in = [t.shape.index(sw.sequence_dim) if sw.sequence_dim in t.shape else None for t in spec.inputs]
    seq_axes_out = [t.shape.index(sw.sequence_dim) if sw.sequence_dim in t.shape else None for t in spec.outputs]
    past = full[n_in:]
    pieces: List[List[np.ndarray]] = [[] for _ in range(n_out)]
    start = 0
    at = [t.name for t in spec.inputs].index(sw.position) if sw.position else None
    for n in sw.lengths:
        chunk = tuple(a if ax is None else np.ascontiguousarray(np.take(a, range(start, start + n), axis=ax))
                      for a, ax in zip(full[:n_in], seq_axes_in))
        if at is not None:
            chunk = chunk[:at] + (np.asarray(full[at] + start, dtype=full[at].dtype),) + chunk[at + 1:]
        out = backend(chunk + tuple(past))
        for i, ax in enumerate(seq_axes_out):
            pieces[i].append(out[i])
        past = out[n_out:]
        start += n
    got = tuple(np.concatenate(p, axis=ax) if ax is not None else p[-1] for p, ax in zip(pieces, seq_axes_out))
    row = {"graph": spec.graph, "backend": name, "check": "stepwise",
           "sizes": {cache.batch_dim: sw.batch, sw.sequence_dim: total}, "steps": list(sw.lengths)}
    return _compare(got + tuple(past), want, spec.graph_outputs, spec.atol, row)


def run_parity(spec: ExportSpec, module: nn.Module, backends: Dict[str, Runner]) -> List[Dict[str, Any]]:
    """Parity rows of every backend against eager: at each ``parity_sizes``, then stepwise decoding."""
    eager = eager_runner(module)
    rows: List[Dict[str, Any]] = []
    for k, sizes in enumerate(spec.parity_sizes):
        inputs = tuple(t.numpy() for t in spec.example_inputs(sizes, seed=100 + k))
        want = eager(inputs)
        for name, run in backends.items():
            row = {"graph": spec.graph, "backend": name, "check": "forward", "sizes": dict(sizes)}
            try:
                got = run(inputs)
            except Exception as exc:  # a backend that cannot run a shape it should: a parity failure
                rows.append(dict(row, output="*", max_abs_err=None, tol=spec.atol, ok=False,
                                 error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"))
                continue
            rows += _compare(got, want, spec.graph_outputs, spec.atol, row)
    if spec.stepwise is not None:
        for name, run in backends.items():
            try:
                rows += _stepwise(spec, eager, run, name)
            except Exception as exc:
                rows.append({"graph": spec.graph, "backend": name, "check": "stepwise", "sizes": {}, "output": "*",
                             "max_abs_err": None, "tol": spec.atol, "ok": False,
                             "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"})
    return rows


def describe_failures(rows: Sequence[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if r.get("ok"):
            continue
        sizes = ",".join(f"{k}={v}" for k, v in (r.get("sizes") or {}).items())
        what = r.get("error") or f"max abs error {r['max_abs_err']:.3g} > tol {r['tol']:.0e}"
        lines.append(f"graph {r['graph']!r}, {r['backend']} {r.get('check', '')} at {sizes}: output "
                     f"{r['output']!r}: {what}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the loop


def check_out_dir(out: Union[str, os.PathLike], overwrite: bool) -> Path:
    """The resolved export directory; ``FileExistsError`` if it is a file, or a non-empty directory without
    ``overwrite``."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out}: directory exists and is not empty (pass --overwrite to replace it)")
    return out


def export(
    exportable: Exportable,
    out: Union[str, os.PathLike],
    formats: Sequence[str] = FORMATS,
    opset: int = DEFAULT_OPSET,
    exporter: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Export, check and describe ``exportable`` in ``out`` (see the module docstring); returns the manifest.

    Raises ``FileExistsError`` (``out`` not empty, no ``overwrite``), ``SpecError``, ``GraphContractError``,
    ``ParityError`` (its ``rows`` hold the table); on any error nothing is left at ``out``.
    """
    from tqdm import tqdm

    spec, module = exportable.spec, exportable.module.eval()
    spec.validate()
    exporter = exporter or spec.exporter
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}; got {list(formats)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}; got {exporter!r}")
    for extra in exportable.extra:
        extra[1].validate()
    if "onnx" in formats:
        for graph_spec in [spec] + [sp for _, sp in exportable.extra]:
            graph_spec.check_exporter(exporter)
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export directory is an ordinary one
    bar = tqdm(total=len(formats) + 2, desc=f"export {spec.name}", file=sys.stderr, leave=False,
               disable=None if progress else True)  # None: only on a terminal
    try:
        graphs: Dict[str, GraphSpec] = {}
        rows: List[Dict[str, Any]] = []
        fmt_of: Dict[str, str] = {}
        for module_k, spec_k in [(module, spec)] + [(m.eval(), sp) for m, sp in exportable.extra]:
            files, graph_rows, opset = _export_graph(module_k, spec_k, tmp, formats, opset, exporter, bar)
            graphs[spec_k.graph] = GraphSpec(spec_k.graph, tuple(spec_k.graph_inputs), tuple(spec_k.graph_outputs),
                                             files)
            rows += graph_rows
            fmt_of.update({p: f for f, p in files.items()})
        if not all(r["ok"] for r in rows):
            raise ParityError(f"parity failed, nothing written:\n{describe_failures(rows)}", rows)

        entries = [FileEntry.of(tmp, p.relative_to(tmp).as_posix(), fmt_of.get(p.name, "data"),
                                _graph_of(p.name, graphs, spec.graph))
                   for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest = Manifest(
            name=spec.name,
            source=exportable.source,
            task=task_of(spec, graphs),
            exporter=exporter if "onnx" in formats else "",
            opset=opset if "onnx" in formats else None,
            files=entries,
            graphs=graphs,
            cache=spec.cache,
            parity=rows,
            versions=versions(),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        manifest.check_consistency()
        manifest.write(tmp)
        bar.update()
        _move_into_place(tmp, out)
        manifest.root = out
        return manifest
    finally:
        bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _graph_of(file_name: str, graphs: Dict[str, GraphSpec], default: str) -> str:
    """The graph a file of the export belongs to (its own file, or an external-data file: the main graph)."""
    return next((g.name for g in graphs.values() if file_name in g.files.values()), default)


def task_of(spec: ExportSpec, graphs: Dict[str, GraphSpec]) -> Task:
    """The spec's ``Task`` (a free-form task dict, as specs wrote before tasks were typed, is upgraded)."""
    if isinstance(spec.task, Task):
        return spec.task
    return upgrade_task(spec.task or {}, graphs, spec.cache)


def _export_graph(module: nn.Module, spec: ExportSpec, tmp: Path, formats: Sequence[str], opset: int,
                  exporter: str, bar) -> Tuple[Dict[str, str], List[Dict[str, Any]], int]:
    """One graph of an export into ``tmp``: its files (format -> name), its parity rows, and the opset written."""
    example = spec.example_inputs(spec.example_sizes, seed=0)
    with torch.no_grad():
        outputs = _as_tuple(module(*example))
    if len(outputs) != len(spec.graph_outputs):
        raise GraphContractError(f"{spec.name}: the module returns {len(outputs)} outputs; the spec declares "
                                 f"{[t.name for t in spec.graph_outputs]}")
    files: Dict[str, str] = {}
    backends: Dict[str, Runner] = {}
    notes: List[str] = []
    if "onnx" in formats:
        import onnx

        bar.set_description(f"{spec.name}: ONNX ({exporter}, opset {opset})")
        files["onnx"] = FILE_NAMES["onnx"].format(graph=spec.graph)
        path = tmp / files["onnx"]
        with torch.no_grad():
            export_onnx(module, example, spec, path, opset, exporter)
        proto = onnx.load(str(path), load_external_data=False)
        notes = check_onnx_io(proto, spec)
        if notes:
            log.debug("renamed output dims: %s", "; ".join(notes))
            onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        if written != opset:  # the dynamo exporter keeps 18 when converting down fails
            log.warning("asked for opset %d, the %s exporter wrote opset %d; the manifest records %d",
                        opset, exporter, written, written)
            opset = written
        try:
            backends["onnxruntime"] = onnxruntime_runner(path, spec)
        except Exception as exc:  # e.g. an opset this onnxruntime does not implement
            row = {"graph": spec.graph, "backend": "onnxruntime", "check": "load", "sizes": {}, "output": "*",
                   "max_abs_err": None, "tol": spec.atol, "ok": False,
                   "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
            raise ParityError(f"onnxruntime cannot load the graph, nothing written:\n{describe_failures([row])}",
                              [row]) from None
        bar.update()
    if "torchscript" in formats:
        bar.set_description(f"{spec.name}: TorchScript")
        files["torchscript"] = FILE_NAMES["torchscript"].format(graph=spec.graph)
        path = tmp / files["torchscript"]
        with torch.no_grad():
            export_torchscript(module, example, path, freeze=spec.torchscript_freeze)
        backends["torchscript"] = torchscript_runner(path)
        bar.update()
    bar.set_description(f"{spec.name}: parity")
    rows = run_parity(spec, module, backends)
    bar.update()
    return files, rows, opset


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary directory to ``out`` (replacing an existing one only at the last moment)."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["DEFAULT_OPSET", "FORMATS", "ExportError", "GraphContractError", "ParityError", "check_onnx_io",
           "export", "parity_table", "run_parity", "versions"]
