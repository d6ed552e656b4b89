"""The manifest checked against the graphs it describes, when an export is loaded (``Runtime`` calls these).

The sha256 check proves that the files are the ones the manifest lists, not that the manifest tells the truth about
them: a manifest edited to say ``kv_heads: 3`` for a graph with 4, or a false ``horizon`` or ``max_context``, would
be served and fail on every call, or be reported to clients as true. So, with the sessions ONNX Runtime built from
the verified bytes (no ``onnx`` package needed):

- ``open_error``: a file that ONNX Runtime cannot load as a graph -> ``ManifestError`` naming the file.
- ``check_graph``: the graph's inputs and outputs are exactly the manifest's (names), each with the manifest's
  dtype, rank and fixed dims (a dim the manifest calls symbolic must not be fixed in the graph; one the graph
  leaves symbolic may be fixed by the manifest).
- ``check_cache``: every cache tensor agrees with the graph's input and output of that name (batch, heads,
  length and dim axes; ``dtype``), no cache-shaped input is left out of the cache, and one probe call (batch 1,
  one new position after ``max_context`` cached ones, or ``max_context - 1`` when the cache does not slide) gives
  presents of the length the cache spec says (``max_context`` is the graph's) and outputs of the manifest's fixed
  dims.
- ``check_task``: (the task's inputs and outputs are tensors of its graphs with the time dim on their time axes:
  ``Task.check`` when the manifest is read) ``horizon`` (> 1) a fixed dim of its primary output, a client
  ``context`` a fixed dim of its primary input.

Each refusal is a ``ManifestError`` naming the manifest field (``graphs.model.inputs[values].dtype``,
``cache.kv_heads``, ``task.horizon``, ...), what the manifest says and what the graph has; ``tsattn-serve`` exits 3.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from tsattn.export.manifest import CacheSpec, GraphSpec, Manifest, ManifestError, TensorSpec

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def open_error(manifest: Manifest, graph: str, exc: BaseException) -> ManifestError:
    """The ``ManifestError`` for a graph file ONNX Runtime could not load (not ONNX, a torn or foreign file)."""
    path = manifest.graph_file(graph, "onnx")
    detail = " ".join(str(exc).split())[:300]
    return ManifestError(f"graphs.{graph}.files.onnx: {path} is not a valid ONNX graph ({type(exc).__name__}: "
                         f"{detail}); refusing to load it")


def is_ort_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of ONNX Runtime's own errors (InvalidProtobuf, InvalidGraph, Fail, ...)."""
    return type(exc).__module__.startswith("onnxruntime")


def check_graph(manifest: Manifest, graph: str, session) -> None:
    spec = manifest.graphs[graph]
    for kind, declared, actual in (("inputs", spec.inputs, session.get_inputs()),
                                   ("outputs", spec.outputs, session.get_outputs())):
        have = {a.name: a for a in actual}
        missing = [t.name for t in declared if t.name not in have]
        if missing:
            raise ManifestError(f"graphs.{graph}.{kind}: {missing} are not {kind} of the ONNX graph, which has "
                                f"{list(have)}")
        extra = [n for n in have if n not in {t.name for t in declared}]
        if extra:
            raise ManifestError(f"graphs.{graph}.{kind}: the ONNX graph has {kind} {extra} that the manifest does "
                                f"not list")
        for t in declared:
            _check_tensor(f"graphs.{graph}.{kind}[{t.name}]", t, have[t.name])


def _check_tensor(field: str, t: TensorSpec, actual) -> None:
    dtype = ORT_DTYPES.get(actual.type, actual.type)
    if dtype != t.dtype:
        raise ManifestError(f"{field}.dtype: the manifest says {t.dtype}, the ONNX graph has {dtype}")
    shape = actual.shape
    if shape is None:
        return
    if len(shape) != len(t.shape):
        raise ManifestError(f"{field}.shape: the manifest says {list(t.shape)} ({len(t.shape)} dims), the ONNX "
                            f"graph has {list(shape)} ({len(shape)} dims)")
    for axis, (want, got) in enumerate(zip(t.shape, shape)):
        if isinstance(got, int) and got > 0:
            if isinstance(want, str):
                raise ManifestError(f"{field}.shape[{axis}]: the manifest says {want!r} (any size), the ONNX graph "
                                    f"fixes it to {got}")
            if want != got:
                raise ManifestError(f"{field}.shape[{axis}]: the manifest says {want}, the ONNX graph has {got}")


def _cache_field(cache: CacheSpec, index: int, axis: str) -> str:
    if cache.tensors:
        return f"cache.tensors[{index}].{axis}"
    return {"heads": "cache.kv_heads", "dim": "cache.head_dim"}.get(axis, f"cache.{axis}")


def check_cache(manifest: Manifest, session) -> None:
    """The cache spec against its graph's tensors (the manifest's and the ONNX graph's), then one probe call."""
    cache = manifest.cache
    if cache is None:
        return
    graph = manifest.graphs[cache.graph]
    specs = {t.name: t for t in graph.inputs + graph.outputs}
    for index, (ct, past, present) in enumerate(zip(cache.cache_tensors(), cache.past_specs(),
                                                   cache.present_specs())):
        for want in (past, present):
            got = specs[want.name]
            if got.dtype != cache.dtype:
                raise ManifestError(f"cache.dtype: the cache says {cache.dtype}, graph {graph.name!r} has "
                                    f"{got.name!r} as {got.dtype}")
            if len(got.shape) != 4:
                raise ManifestError(f"cache.layout: {got.name!r} has shape {list(got.shape)}; the cache layout is "
                                    f"{list(cache.layout)}")
            for axis, label in enumerate(("batch_dim", "heads", "past_dim" if want is past else "present_dim",
                                          "dim")):
                if got.shape[axis] != want.shape[axis]:
                    raise ManifestError(f"{_cache_field(cache, index, label)}: the cache says {want.shape[axis]!r}, "
                                        f"graph {graph.name!r} has {got.name!r} with shape {list(got.shape)}")
    known = set(cache.past_names())
    stray = [t.name for t in graph.inputs if t.name not in known and len(t.shape) == 4
             and t.shape[2] == cache.past_dim]
    if stray:
        raise ManifestError(f"cache.layers: graph {graph.name!r} has cache inputs {stray} that the cache "
                            f"({cache.layers} layer(s)) does not list")
    _probe(manifest, cache, graph, session)


def _probe(manifest: Manifest, cache: CacheSpec, graph: GraphSpec, session) -> None:
    """One call: batch 1, one new position (every other symbolic dim 1) after a full cache."""
    if cache.max_context is None:
        past = 3
    else:
        past = cache.max_context if cache.sliding else cache.max_context - 1
    sizes: Dict[str, int] = {cache.batch_dim: 1, cache.past_dim: past}
    feeds: Dict[str, np.ndarray] = {}
    pasts = set(cache.past_names())
    for t in graph.inputs:
        shape = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in t.shape)
        feeds[t.name] = np.zeros(shape, dtype=t.numpy_dtype)
        if t.name not in pasts:
            for d, n in zip(t.shape, shape):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    try:
        outputs = session.run(None, feeds)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ManifestError(f"cache.max_context: graph {graph.name!r} cannot take one new position after {past} "
                            f"cached one(s) (max_context {cache.max_context}, sliding {cache.sliding}): "
                            f"{type(exc).__name__}: {detail}") from None
    by_name = {o.name: v for o, v in zip(session.get_outputs(), outputs)}
    expected = past + 1 if cache.max_context is None or not cache.sliding else min(past + 1, cache.max_context)
    for index, (ct, name) in enumerate(zip(cache.cache_tensors(), cache.present_names())):
        got = tuple(by_name[name].shape)
        if got[2] != expected:
            raise ManifestError(f"cache.max_context: the cache says {cache.max_context} (sliding {cache.sliding}); "
                                f"after one position on {past} cached, graph {graph.name!r} keeps {got[2]} "
                                f"in {name!r}, not {expected}")
        if got[1] != ct.heads or got[3] != ct.dim:
            raise ManifestError(f"{_cache_field(cache, index, 'heads')}: the cache says (heads {ct.heads}, dim "
                                f"{ct.dim}); graph {graph.name!r} gives {name!r} the shape {list(got)}")
    for t in graph.outputs:
        got = tuple(by_name[t.name].shape)
        for axis, (d, n) in enumerate(zip(t.shape, got)):
            if isinstance(d, int) and d != n:
                raise ManifestError(f"graphs.{graph.name}.outputs[{t.name}].shape[{axis}]: the manifest says {d}, "
                                    f"the graph gives {n}")


def check_task(manifest: Manifest) -> None:
    """The task against its graphs beyond what ``Task.check`` holds at reading (names, time axes): a ``horizon``
    above 1 is a fixed dim of the primary output, a client ``context`` a fixed dim of the primary input."""
    task = manifest.task
    graph = manifest.graphs[task.graph]
    inp, out = graph.input(task.inputs[0].name), graph.output(task.outputs[0].name)
    horizon = task.horizon
    fixed = [d for d in out.shape if isinstance(d, int)]
    if horizon is not None and horizon > 1 and horizon not in fixed:
        raise ManifestError(f"task.horizon: the task says {horizon}, but output {out.name!r} has shape "
                            f"{list(out.shape)} (fixed dims {fixed})")
    context = task.client.get("context")
    if context is not None and not isinstance(context, str):
        if isinstance(context, bool) or not isinstance(context, int) or context not in inp.shape:
            raise ManifestError(f"task.client.context: the task says {context!r}, but input {inp.name!r} has shape "
                                f"{list(inp.shape)}")


def check_export(manifest: Manifest, sessions: Mapping[str, Any]) -> None:
    """Every check above, for a loaded export (``sessions``: graph name -> InferenceSession)."""
    for name, session in sessions.items():
        check_graph(manifest, name, session)
    if manifest.cache is not None:
        check_cache(manifest, sessions[manifest.cache.graph])
    check_task(manifest)


__all__ = ["ORT_DTYPES", "check_cache", "check_export", "check_graph", "check_task", "is_ort_error", "open_error"]
