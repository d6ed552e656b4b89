"""Sessions of an export: the verified ONNX bytes of every graph opened on the chosen device, and the streaming
graph as the manifest's task declares it (``_StreamGraph``: step inputs and outputs with their time axes, the
inputs an encoder feeds, the position input, or why the export does not stream). ``Sessions`` is a base of
``tsattn.runtime.engine.Runtime``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from tsattn.export.manifest import CacheSpec, GraphSpec, ManifestError, TensorSpec
from tsattn.export.task import Task
from tsattn.runtime import validate
from tsattn.runtime.device import Placement, open_session, placement
from tsattn.runtime.errors import NotSupported


@dataclass(frozen=True)
class _StreamGraph:
    """How the streaming graph is driven, read from the manifest's task (checked against its graphs): the step
    inputs and outputs with their time axes (graph axes, batch at 0), the inputs an encoder feeds, the position
    input, and the fixed dims of one observation for the ``values`` form (None: that form does not fit)."""

    graph: GraphSpec
    cache: CacheSpec
    task: Task
    inputs: Tuple[Tuple[TensorSpec, int], ...]
    outputs: Tuple[Tuple[TensorSpec, int], ...]
    statics: Tuple[str, ...]
    encoder: Optional[GraphSpec]
    position: Optional[str]
    features: Optional[Tuple[int, ...]]

    @property
    def primary(self) -> Tuple[TensorSpec, int]:
        return self.outputs[0]


class Sessions:
    """Opening an export's graphs and reading its stream contract (see the module docstring)."""

    def _open_sessions(self, device: str, threads: Optional[int]) -> None:
        """One session per graph on ``device`` from the verified bytes, checked against the manifest
        (``tsattn.runtime.validate``); sets ``sessions``, ``placement`` and ``providers``."""
        manifest = self.manifest
        where = placement(device)
        self.sessions: Dict[str, Any] = {}
        for name in manifest.graphs:
            try:
                session, where = open_session(self._verified_model(name), where, threads,
                                              label=f"{manifest.name}/{name}")
            except Exception as exc:
                if validate.is_ort_error(exc):  # not a graph ONNX Runtime can load
                    raise validate.open_error(manifest, name, exc) from None
                raise
            self.sessions[name] = session
        validate.check_export(manifest, self.sessions)  # the manifest tells the truth about its graphs
        self.placement: Placement = where
        self.providers = {n: list(s.get_providers()) for n, s in self.sessions.items()}

    def _verified_model(self, graph: str) -> Union[bytes, Path]:
        """The ONNX model of ``graph``: its bytes, hashed again here so that the session is built from exactly
        the bytes that match the manifest (a path when the graph keeps weights in external data files)."""
        path = self.manifest.graph_file(graph, "onnx")
        entry = next((f for f in self.manifest.files if f.path == self.manifest.graphs[graph].files["onnx"]), None)
        if entry is None:
            raise ManifestError(f"{path}: not listed in the manifest's files")
        if any(f.format == "data" and f.graph == graph for f in self.manifest.files):
            return path  # external data: verified by load_manifest, resolved by ONNX Runtime beside the file
        data = path.read_bytes()
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ManifestError(f"{path}: changed since the manifest was verified (size or sha256 differs); "
                                f"refusing to load it")
        return data

    @property
    def _device_type(self) -> str:
        return "cuda" if self.placement.kind == "cuda" else "cpu"

    @property
    def device(self) -> str:
        return self.placement.name

    def _streaming_spec(self) -> Tuple[Optional[_StreamGraph], Optional[str]]:
        """The streaming graph as the task declares it, or why the export does not stream."""
        cache, task = self.manifest.cache, self.manifest.task
        if not task.streams:
            return None, f"the export's task is {task.kind!r}, a stateless graph with no KV cache (use predict)"
        if cache is None or cache.graph != task.graph:
            return None, "the export has no KV cache on its step graph (use predict)"
        graph = self.manifest.graphs[task.graph]
        statics = tuple(dst for _, dst in task.encoder.feeds) if task.encoder else ()
        known = set(task.input_names) | set(cache.past_names()) | set(statics) | {task.position}
        others = [t.name for t in graph.inputs if t.name not in known]
        if others:
            return None, f"the graph has inputs neither the task nor the cache feeds: {others}"
        steps = []
        for side, tensors, get in (("input", task.inputs, graph.input), ("output", task.outputs, graph.output)):
            resolved = []
            for t in tensors:
                spec = get(t.name)
                if not spec.shape or spec.shape[0] != cache.batch_dim:
                    return None, f"{side} {t.name!r} has shape {list(spec.shape)}; its first dim must be the batch"
                free = [d for i, d in enumerate(spec.shape) if isinstance(d, str) and i not in (0, t.time_axis)]
                if side == "input" and free:
                    return None, f"input {t.name!r} has symbolic dims {free} besides batch and time"
                resolved.append((spec, t.time_axis))
            steps.append(tuple(resolved))
        first, axis = steps[0][0]
        features = tuple(int(d) for d in first.shape[2:]) if len(steps[0]) == 1 and axis == 1 else None
        encoder = self.manifest.graphs[task.encoder.graph] if task.encoder else None
        return _StreamGraph(graph, cache, task, steps[0], steps[1], statics, encoder, task.position, features), None

    def _streams_or_raise(self) -> _StreamGraph:
        if self._stream_graph is None:
            raise NotSupported(f"export {self.name!r} does not stream: {self.streams_unsupported}")
        return self._stream_graph


__all__ = ["Sessions"]
